"""Parquet output: explicit schemas, atomic commits, and DuckDB views over them."""
from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from speccore import analytics, store
from speccore.engine import RowResult, StepRecord


def _shard(out, shard, n=3):
    results = [RowResult(row_id=f"r{shard}-{i}", status="ok", output_text="x", output_ids=[1, 2], n_output_tokens=2,
                         steps=1, drafted=2, accepted=1, wall_s=0.5, batch=0) for i in range(n)]
    steps = [StepRecord(row_id=r.row_id, step=1, k=2, drafted=2, drafted_drafter=3, accepted=1, stop_reason="k",
                        draft_ms=1.0, verify_ms=2.0, batch_size=n) for r in results]
    common = {"target": "t", "drafter": "d", "device": "cpu"}
    return store.write_shard(out, "run1", shard, results, steps, common, {"speccore.run_id": "run1"})


def test_shard_files_have_schema_and_metadata(tmp_path):
    path = _shard(tmp_path, 0)
    t = pq.read_table(path)
    assert t.schema.remove_metadata() == store.GENERATIONS
    assert t.schema.metadata[b"speccore.run_id"] == b"run1"
    assert t.column("row_id").to_pylist() == ["r0-0", "r0-1", "r0-2"]
    assert pq.read_table(store.shard_path(tmp_path, "steps", "run1", 0)).num_rows == 3
    assert store.committed_shards(tmp_path, "run1") == {0}


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.pq, "write_table", broken)
    with pytest.raises(OSError, match="No space left"):
        _shard(tmp_path, 0)
    d = store.run_dir(tmp_path, "generations", "run1")
    assert not d.exists() or os.listdir(d) == []
    assert store.committed_shards(tmp_path, "run1") == set()
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))


def test_duckdb_views_skip_temporary_files(tmp_path):
    _shard(tmp_path, 0)
    _shard(tmp_path, 1)
    # a half-written file left by a killed writer is hidden by its temporary name
    (store.run_dir(tmp_path, "generations", "run1") / ".shard-00002.parquet.tmp-999").write_bytes(b"PAR1 garbage")
    t = analytics.query("SELECT count(*) AS n, sum(accepted) AS a FROM generations", tmp_path)
    assert t.to_pylist() == [{"n": 6, "a": 6}]
    tp = analytics.query("throughput", tmp_path).to_pylist()
    assert tp[0]["rows"] == 6 and tp[0]["output_tokens"] == 12 and tp[0]["wall_s"] == 1.0


def test_empty_output_dir_gives_empty_views(tmp_path):
    assert analytics.query("SELECT count(*) AS n FROM generations", tmp_path).to_pylist() == [{"n": 0}]
