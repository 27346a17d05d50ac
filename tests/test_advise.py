"""The drafter advisor over the fabricated run set (tests/analytics_data.py); rankings worked out by hand."""
from __future__ import annotations

import pytest

from speccore import advise
from speccore.cli import main
from tests.analytics_data import fabricate, write_run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("advise")
    fabricate(out)
    # another dataset: a local file, labelled by its file name
    write_run(out, "f1", "d1", "heuristic", 3.6, [("z", 1000, 100, 10.0, 1.0, 8.0, 0, [(1, 2, 2, 1, 1.0, 2.0)])],
              dataset={"kind": "file", "path": "/some/dir/prompts.jsonl"})
    return out


def _ranked(ranks, bucket, dataset="humaneval"):
    r = next(r for r in ranks if (r.dataset, r.prompt_bucket) == (dataset, bucket))
    return [(e["rank"], e["drafter"], e["lookahead_policy"], e["cost_per_1m_output_tokens"], e["runs"], e["rows"],
             e["output_tokens"]) for e in r.entries], r


def test_rankings_by_bucket(data):
    ranks = advise.rankings(data, "humaneval")
    assert {r.dataset for r in ranks} == {"humaneval"}
    # all lengths: d2/cost = r2 + r3: (3 s + 1 s) x $0.72/h = $0.0008 for 48 tokens -> 16.6667 per 1M;
    # d1/heuristic = r1: 6 s x $0.36/h = $0.0006 for 24 tokens -> 25
    got, r = _ranked(ranks, "all")
    assert got == [(1, "d2", "cost", 16.6667, 2, 2, 48), (2, "d1", "heuristic", 25.0, 1, 3, 24)]
    # per run: r3 $5, r2 $75 per 1M; r1's $25 falls inside that range
    assert (r.entries[0]["min_run_cost_per_1m"], r.entries[0]["max_run_cost_per_1m"]) == (5.0, 75.0)
    assert "the two cheapest overlap run by run: no clear winner" in r.warnings()
    # < 128 prompt tokens: r1's row a holds 2.0 / (2.0 + 1.5) of its batch's 2.0 s = 1.142857 s,
    # x $0.36/h = $0.000114286 for 10 tokens -> 11.4286 per 1M: d1 wins here
    got, _ = _ranked(ranks, "<128")
    assert got == [(1, "d1", "heuristic", 11.4286, 1, 1, 10), (2, "d2", "cost", 16.6667, 2, 2, 48)]
    # 128-511: row b, 2.0 x 1.5 / 3.5 = 0.857143 s -> 14.2857; 512-2047: row c, 4 s for 8 tokens -> 50
    got, r = _ranked(ranks, "128-511")
    assert got == [(1, "d1", "heuristic", 14.2857, 1, 1, 6)]
    assert r.warnings()[0] == "only one configuration was run here: nothing to compare it with"
    assert _ranked(ranks, "512-2047")[0] == [(1, "d1", "heuristic", 50.0, 1, 1, 8)]


def test_dataset_label_and_filter(data):
    ranks = advise.rankings(data, "file")
    assert {(r.dataset, r.prompt_bucket) for r in ranks} == {("file:prompts.jsonl", "all"), ("file:prompts.jsonl", "512-2047")}
    # 10 s x $3.6/h = $0.01 for 100 tokens -> $100 per 1M
    assert _ranked(ranks, "all", "file:prompts.jsonl")[0] == [(1, "d1", "heuristic", 100.0, 1, 1, 100)]
    assert advise.rankings(data, "file:prompts.jsonl") == ranks


def test_evidence_is_stated_and_thin_flagged(data, capsys):
    assert main(["advise", "--data", str(data), "--dataset", "humaneval"]) == 0
    out = capsys.readouterr().out
    assert "dataset humaneval, target t, prompt tokens all:" in out
    assert "1. drafter=d2 algorithm=standard lookahead=cost: $16.6667 per 1M output tokens" in out
    assert "2. drafter=d1 algorithm=standard lookahead=heuristic: $25.0000 per 1M output tokens (1.50x the best)" in out
    assert "evidence: 2 runs, 2 rows, 48 output tokens, 4.0 device-s; per run $5.0000-$75.0000 [thin]" in out
    assert "thin evidence (< 2 runs or < 20 rows)" in out


def test_no_data(tmp_path, capsys):
    assert advise.rankings(tmp_path) == []
    assert main(["advise", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"no data: no finished runs with rows and a manifest under {tmp_path}")


def test_unknown_dataset_is_no_data(data, capsys):
    assert main(["advise", "--data", str(data), "--dataset", "sharegpt"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no data:") and "for dataset 'sharegpt'" in out
