"""A small fabricated run set for the analytics tests, written with the real store functions.

Every number the tests assert is computed by hand from the literals below (see the tests' comments).

r1: drafter d1, heuristic, price 0.36/h. shard 0: batch 0 = rows a (100 prompt tokens), b (300);
    batch 1 = row c (600); plus one error row e.
r2: drafter d2, cost policy, price 0.72/h, row x (100 prompt tokens).
r3: same configuration as r2, a faster run: row y (100 prompt tokens).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from speccore import store
from speccore.engine import RowResult, StepRecord


def _row(row_id, n_prompt, n_out, wall, draft, verify, steps, batch, policy, status="ok"):
    drafted = sum(s[2] for s in steps)
    accepted = sum(s[3] for s in steps)
    return RowResult(row_id=row_id, status=status, output_text="x" * n_out, output_ids=[1] * n_out,
                     n_prompt_tokens=n_prompt, n_output_tokens=n_out, finish_reason="length",
                     algorithm="standard", lookahead_policy=policy, wall_s=wall, draft_s=draft,
                     verify_s=verify, steps=len(steps), drafted=drafted, accepted=accepted, batch=batch)


def write_run(out, run_id, drafter, policy, price, rows, dataset=None, shard=0):
    """rows: (row_id, n_prompt, n_out, wall, draft, verify, batch, steps); steps: (step, k, drafted,
    accepted, draft_ms, verify_ms[, batch_size (default 1)]) per step of the row."""
    results, step_recs = [], []
    for row_id, n_prompt, n_out, wall, draft, verify, batch, steps in rows:
        results.append(_row(row_id, n_prompt, n_out, wall, draft, verify, steps, batch, policy))
        step_recs += [StepRecord(row_id=row_id, step=s, k=k, drafted=d, drafted_drafter=d, accepted=a,
                                 stop_reason="k", draft_ms=dm, verify_ms=vm, batch_size=size[0] if size else 1,
                                 decision="{}")
                      for s, k, d, a, dm, vm, *size in steps]
    common = {"target": "t", "drafter": drafter, "device": "cpu"}
    store.write_shard(out, run_id, shard, results, step_recs, common, {})
    store.write_manifest(out, {
        "run_id": run_id, "started_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "finished_at": datetime(2026, 1, 1, tzinfo=timezone.utc), "target": "t", "drafter": drafter,
        "dataset": json.dumps(dataset or {"kind": "humaneval", "limit": 4}), "device": "cpu",
        "price_per_hour": price, "n_shards": 1, "n_rows": len(rows)})


def fabricate(out) -> None:
    write_run(out, "r1", "d1", "heuristic", 0.36, [
        ("a", 100, 10, 2.0, 0.5, 1.2, 0, [(1, 3, 3, 3, 100.0, 200.0), (2, 5, 2, 1, 80.0, 150.0),
                                          (3, 4, 1, 0, 50.0, 120.0)]),
        ("b", 300, 6, 1.5, 0.4, 1.0, 0, [(1, 3, 3, 2, 100.0, 200.0), (2, 2, 1, 0, 80.0, 150.0)]),
        ("c", 600, 8, 4.0, 1.0, 2.5, 1, [(1, 1, 1, 1, 30.0, 100.0), (2, 1, 1, 1, 30.0, 100.0),
                                          (3, 0, 0, 0, 0.0, 90.0), (4, 2, 2, 0, 40.0, 110.0)]),
    ])
    # an error row: no tokens, no steps, no time; it must not count anywhere but `errors`
    results = [RowResult(row_id="e", status="error", error_type="invalid_prompt", error_message="empty",
                         lookahead_policy="heuristic", algorithm="standard", batch=-1)]
    store.write_shard(out, "r1", 1, results, [], {"target": "t", "drafter": "d1", "device": "cpu"}, {})
    write_run(out, "r2", "d2", "cost", 0.72, [
        ("x", 100, 8, 3.0, 0.3, 2.0, 0, [(1, 4, 4, 4, 40.0, 300.0), (2, 6, 6, 2, 60.0, 350.0)])])
    write_run(out, "r3", "d2", "cost", 0.72, [
        ("y", 100, 40, 1.0, 0.1, 0.8, 0, [(1, 4, 4, 4, 40.0, 300.0)])])
