"""A Hydra multirun sweep: one run per combination, each with its own run id, queryable together."""
from __future__ import annotations

import os
import subprocess

from speccore import analytics
from tests.killing import ROOT, flow_command, prefect_env
from tests.test_flow import overrides


def test_multirun_two_drafters_by_two_policies_gives_four_runs(prefect, tiny_zoo, prompts, tmp_path):  # noqa: F811
    out = tmp_path / "data"
    same, cross = tiny_zoo["drafter-llama-g"], tiny_zoo["drafter-llama-m"]  # same-vocab and cross-vocab
    args = [a for a in overrides(tiny_zoo, prompts, out, "dataset.limit=4") if not a.startswith("drafter.ref=")]
    cmd = flow_command("-m", *args, f"drafter.ref={same},{cross}", "speculation.lookahead=heuristic,cost")
    res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **prefect_env()}, capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    printed = [ln.split("=", 1)[1] for ln in res.stdout.splitlines() if ln.startswith("run_id=")]
    assert len(printed) == len(set(printed)) == 4

    con = analytics.connect(out)
    runs = con.execute("""
        SELECT g.run_id, g.drafter, g.lookahead_policy, any_value(g.algorithm) AS algorithm, count(*) AS n_rows,
               1 + sum(g.accepted) / sum(g.steps) AS mean_acceptance_length,
               string_agg(g.output_text, '|' ORDER BY g.row_id) AS outputs
        FROM generations g JOIN runs r USING (run_id)
        GROUP BY ALL ORDER BY g.drafter, g.lookahead_policy""").fetchall()
    con.close()
    assert sorted(r[0] for r in runs) == sorted(printed)
    assert sorted((r[1], r[2], r[3], r[4]) for r in runs) == sorted([
        (str(same), "cost", "standard", 4), (str(same), "heuristic", "standard", 4),
        (str(cross), "cost", "slem", 4), (str(cross), "heuristic", "slem", 4)])
    assert all(r[5] >= 1 for r in runs)
    assert len({r[6] for r in runs}) == 1  # greedy: every drafter and policy gives the target's own output
