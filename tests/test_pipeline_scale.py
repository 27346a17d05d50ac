"""Planning and per-shard reading at scale: memory does not grow with the source, one pass per worker."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from speccore import run, sources, worker
from speccore.config import compose

ROOT = Path(__file__).resolve().parent.parent
N = 30_000


def big_config(tmp_path: Path, shard_size: int = 1000):
    src = tmp_path / "rows.jsonl"
    with open(src, "w") as f:
        for i in range(N):
            f.write(json.dumps({"id": f"r{i}", "prompt": f"row {i}: " + "x" * 200}) + "\n")
    return compose(["drafter=none", "dataset=file", f"dataset.path={src}", "+dataset.fields.row_id=id",
                    f"runner.shard_size={shard_size}", f"run.output_dir={tmp_path / 'data'}"], config_dir=ROOT / "conf")


def test_planning_streams_the_source(tmp_path):
    cfg = big_config(tmp_path)
    tracemalloc.start()
    try:
        plan = run.prepare(cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.n_rows == N and len(plan.shards) == N // 1000
    assert peak < 4 * 2**20, peak  # the rows alone are ~7 MB of text: planning never holds them


def test_shards_in_order_read_the_source_once(tmp_path, monkeypatch):
    cfg = big_config(tmp_path, shard_size=700)
    plan = run.prepare(cfg)
    passes = []
    real = sources.iter_rows

    def counting(spec, report=None):
        passes.append(spec)
        return real(spec, report)

    monkeypatch.setattr(sources, "iter_rows", counting)
    worker._CURSORS.clear()
    ids = [r.row_id for s in plan.shards for r in worker.shard_rows(cfg, s)]
    assert ids == [f"r{i}" for i in range(N)]
    assert len(passes) == 1  # one pass for all 43 shards, not one per shard
    # a shard behind the cursor (a retry, or another worker's order) starts a fresh, correct pass
    assert [r.row_id for r in worker.shard_rows(cfg, plan.shards[2])] == [f"r{i}" for i in range(1400, 2100)]
    assert [r.row_id for r in worker.shard_rows(cfg, plan.shards[5])] == [f"r{i}" for i in range(3500, 4200)]
    assert len(passes) == 2
    # the source file changes: the cursor is not reused
    Path(cfg.dataset.path).write_text(json.dumps({"id": "new", "prompt": "p"}) + "\n")
    assert [r.row_id for r in worker.shard_rows(cfg, plan.shards[0])] == ["new"]
