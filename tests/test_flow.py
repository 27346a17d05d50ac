"""The Prefect flow end to end on tiny models: Hydra config -> shards -> Parquet -> DuckDB."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from speccore import analytics, store
from speccore.config import compose
from speccore.run import RunConflict

ROOT = Path(__file__).resolve().parent.parent
TIMING = {"wall_s", "draft_s", "verify_s", "batch"}


def overrides(tiny_zoo, prompts, out, *extra) -> list[str]:
    """The Hydra overrides of a tiny greedy fp64 run (also usable on the flow's command line)."""
    return [
        "target=hf", f"target.ref={tiny_zoo['target-llama-g']}", "target.dtype=float64",
        "drafter=hf", f"drafter.ref={tiny_zoo['drafter-llama-g']}", "drafter.dtype=float64",
        "dataset=file", f"dataset.path={prompts}", "+dataset.fields.row_id=id",
        "sampling.max_new_tokens=12", "runner.shard_size=4", "runner.batch_size=3",
        # a policy that does not follow the clock: a redone shard must give the same rows, statistics included
        # (the default, cost, learns from wall-clock timings, so its k and acceptance counts vary run to run)
        "speculation.lookahead=heuristic",
        f"run.output_dir={out}", *extra]


def config(tiny_zoo, prompts, out, *extra):
    return compose(overrides(tiny_zoo, prompts, out, *extra), config_dir=ROOT / "conf")


def rows_of(out: Path, run_id: str) -> dict[str, dict]:
    t = pq.read_table(store.run_dir(out, "generations", run_id))
    return {r["row_id"]: {k: v for k, v in r.items() if k not in TIMING} for r in t.to_pylist()}


def test_flow_writes_every_row_once_and_resumes(prefect, tiny_zoo, prompts, tmp_path):
    from flows.generate import run_config

    out = tmp_path / "data"
    cfg = config(tiny_zoo, prompts, out, "run.run_id=r1")
    result = run_config(cfg)
    assert result["run_id"] == "r1" and result["shards"] == 3 and result["generated"] == 3
    rows = rows_of(out, "r1")
    assert sorted(rows) == sorted([f"p{i}" for i in range(9)] + ["bad"])
    assert rows["bad"]["status"] == "error" and rows["bad"]["error_type"] == "invalid_prompt"
    assert all(r["status"] == "ok" for k, r in rows.items() if k != "bad")
    assert {r["algorithm"] for k, r in rows.items() if k != "bad"} == {"standard"}
    assert {r["device"] for r in rows.values()} == {"cpu"}  # every row records its device kind
    assert sum(r["drafted"] for r in rows.values()) > 0

    # DuckDB sees the same rows, once each, and the steps add up
    con = analytics.connect(out)
    assert con.execute("SELECT count(*), count(DISTINCT row_id) FROM generations").fetchone() == (10, 10)
    per_row = dict(con.execute("SELECT row_id, count(*) FROM steps GROUP BY row_id").fetchall())
    assert all(per_row[k] == r["steps"] for k, r in rows.items() if k != "bad")
    manifest = con.execute("SELECT run_id, n_rows, n_shards, config_hash, target_revision FROM runs").fetchone()
    con.close()
    assert manifest[:3] == ("r1", 10, 3)
    # the manifest names the same model revision that loading the model reports
    from speccore.models import load_model

    assert manifest[4] == load_model(str(tiny_zoo["target-llama-g"]), dtype="float64").revision

    # each Parquet file carries the manifest's provenance in its key-value metadata
    man = store.read_manifest(out, "r1")
    for table in ("generations", "steps"):
        meta = {k.decode(): v.decode() for k, v in pq.read_schema(store.shard_path(out, table, "r1", 2)).metadata.items()}
        assert meta["speccore.run_id"] == "r1" and meta["speccore.shard"] == "2"
        for key in ("config_yaml", "config_hash", "versions", "git_sha", "model_files", "target_revision", "device"):
            assert meta[f"speccore.{key}"] == (man[key] or ""), key
        assert json.loads(meta["speccore.versions"])["torch"] and "target-llama-g" in meta["speccore.config_yaml"]
        assert len(meta["speccore.git_sha"]) == 40
    assert man["git_sha"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True).stdout.strip()

    # a re-run of the same run id skips every committed shard
    again = run_config(cfg)
    assert again["generated"] == 0
    # a lost shard is redone, and its rows come back identical
    lost = store.shard_path(out, "generations", "r1", 1)
    lost.unlink()
    redo = run_config(cfg)
    assert redo["generated"] == 1
    assert rows_of(out, "r1") == rows

    # the same run id with another config is refused ...
    with pytest.raises(RunConflict, match="already exists with another configuration"):
        run_config(config(tiny_zoo, prompts, out, "run.run_id=r1", "sampling.max_new_tokens=5"))
    # ... unless a new run is asked for
    fresh = run_config(config(tiny_zoo, prompts, out, "run.run_id=r1", "sampling.max_new_tokens=5",
                              "run.new_run=true"))
    assert fresh["run_id"] != "r1"


def test_flow_rows_do_not_depend_on_sharding(prefect, tiny_zoo, prompts, tmp_path):
    from flows.generate import run_config

    out = tmp_path / "data"
    run_config(config(tiny_zoo, prompts, out, "run.run_id=a", "runner.shard_size=10", "runner.batch_size=8"))
    run_config(config(tiny_zoo, prompts, out, "run.run_id=b", "runner.shard_size=3", "runner.batch_size=1"))
    a, b = rows_of(out, "a"), rows_of(out, "b")
    strip = lambda d: {k: {f: v for f, v in r.items() if f not in ("run_id", "shard")} for k, r in d.items()}  # noqa: E731
    assert strip(a) == strip(b)


def test_sql_cli(prefect, tiny_zoo, prompts, tmp_path):
    from flows.generate import run_config

    out = tmp_path / "data"
    run_config(config(tiny_zoo, prompts, out, "run.run_id=q"))
    cmd = [sys.executable, "-m", "speccore.cli", "sql", "--data", str(out),
           "SELECT status, count(*) AS n FROM generations GROUP BY status ORDER BY status"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split(" | ")[0].strip() == "status"
    assert [ln.split("|")[1].strip() for ln in lines[2:4]] == ["1", "9"]
    csv = tmp_path / "t.csv"
    res = subprocess.run(cmd[:-1] + ["throughput", "--csv", str(csv)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    header, row = csv.read_text().splitlines()[:2]
    assert header.split(",")[:4] == ['"run_id"', '"device"', '"rows"', '"output_tokens"'] or \
        header.split(",")[:4] == ["run_id", "device", "rows", "output_tokens"]
    assert row.split(",")[2] == "9"
