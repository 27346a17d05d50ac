"""Exactly-once under a real crash: SIGKILL the flow's process in the middle of a shard, resume the
run id, and get every row once, identical to an unbroken run."""
from __future__ import annotations

import pyarrow.parquet as pq

from speccore import analytics, store
from tests.killing import flow_command, prefect_env, run_until_held
from tests.test_flow import config, overrides

TIMING = {"wall_s", "draft_s", "verify_s", "batch", "draft_ms", "verify_ms", "batch_size"}


def table_rows(out, table: str, run_id: str) -> list[tuple]:
    """The run's rows of `table`, sorted, without run_id and timing columns (what must be identical)."""
    t = pq.read_table(store.run_dir(out, table, run_id))
    keep = [c for c in t.column_names if c not in TIMING | {"run_id"}]
    return sorted(tuple(str(r[c]) for c in keep) for r in t.select(keep).to_pylist())


def test_sigkill_mid_shard_then_resume_gives_every_row_once(prefect, tiny_zoo, prompts, tmp_path):  # noqa: F811
    from flows.generate import run_config

    out = tmp_path / "data"
    # the flow's own command line; killed once shard 0 is committed and shard 1 is half written
    # (its steps file is on disk, its generations file is not)
    killed = run_until_held(flow_command(*overrides(tiny_zoo, prompts, out, "run.run_id=k")),
                            "shard-1:steps-written", env=prefect_env())
    assert killed.returncode == -9, killed.output[-3000:]
    assert store.committed_shards(out, "k") == {0}
    assert store.shard_path(out, "steps", "k", 1).exists()

    resumed = run_config(config(tiny_zoo, prompts, out, "run.run_id=k"))
    assert (resumed["shards"], resumed["generated"]) == (3, 2)  # shard 0 kept, shards 1 and 2 redone
    run_config(config(tiny_zoo, prompts, out, "run.run_id=whole"))

    con = analytics.connect(out)
    assert con.execute("SELECT count(*), count(DISTINCT row_id) FROM generations WHERE run_id = 'k'").fetchone() == (10, 10)
    assert con.execute("SELECT count(*) FROM steps WHERE run_id = 'k'").fetchone() == \
        con.execute("SELECT count(*) FROM steps WHERE run_id = 'whole'").fetchone()
    con.close()
    for table in ("generations", "steps"):
        assert table_rows(out, table, "k") == table_rows(out, table, "whole"), table
