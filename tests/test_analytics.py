"""Named queries over a fabricated run set (tests/analytics_data.py); every expected number is worked
out by hand from that file's literals, in the comments here."""
from __future__ import annotations

import pytest

from speccore import analytics
from speccore.cli import main
from tests.analytics_data import fabricate, write_run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("analytics")
    fabricate(out)
    return out


def rows(name, data, **kw):
    con = analytics.connect(data, kw.pop("run_ids", None))
    try:
        return analytics.records(con, name, kw or None)
    finally:
        con.close()


def test_shipped_queries_are_listed(capsys):
    assert main(["sql", "--list"]) == 0
    listed = {ln.split()[0] for ln in capsys.readouterr().out.splitlines()}
    assert {"throughput", "run_summary", "acceptance_by_position", "k_over_time", "k_distribution", "acceptance",
            "drafter_overhead", "cost", "advise", "hindsight_steps"} <= listed


def test_throughput_charges_each_batch_its_longest_row(data):
    # r1: batch 0 = a (2.0 s) + b (1.5 s) -> 2.0 s, batch 1 = c 4.0 s; 24 tokens / 6 s; 3 ok rows / 6 s.
    # The error row e counts nowhere. r2: 8 tokens / 3 s.
    got = {r["run_id"]: r for r in rows("throughput", data)}
    assert got["r1"] == {"run_id": "r1", "device": "cpu", "rows": 3, "output_tokens": 24, "wall_s": 6.0,
                         "tok_per_s": 4.0, "rows_per_s": 0.5}
    assert (got["r2"]["tok_per_s"], got["r2"]["rows_per_s"]) == (2.667, 0.3333)


def test_run_summary_counts_errors_but_not_their_time(data):
    # rows 4 (a, b, c, e), 1 error; 1 + 8 accepted / 9 steps = 1.889; 8 / 14 drafted = 0.571
    assert analytics.run_summary(data, "r1") == [{
        "target": "t", "drafter": "d1", "algorithm": "standard", "lookahead_policy": "heuristic", "device": "cpu",
        "rows": 4, "errors": 1, "output_tokens": 24, "tok_per_s": 4.0, "mean_acceptance_length": 1.889,
        "acceptance_rate": 0.571}]


def test_acceptance_by_position(data):
    # r1 steps (drafted, accepted): (3,3) (2,1) (1,0) (3,2) (1,0) (1,1) (1,1) (2,0); (0,0) drafts nothing.
    # p=1: drafted 8, accepted 5 (a>=1), reached 8.  p=2: drafted 4 (d>=2), accepted 2 (a>=2),
    # reached 3 (d>=2 and a>=1).  p=3: drafted 2, accepted 1, reached 2.
    got = [(r["position"], r["drafted"], r["accepted"], r["reached"], r["acceptance_rate"], r["alpha"])
           for r in rows("acceptance_by_position", data) if r["run_id"] == "r1"]
    assert got == [(1, 8, 5, 8, 0.625, 0.625), (2, 4, 2, 3, 0.5, 0.6667), (3, 2, 1, 2, 0.5, 0.5)]
    # r2 steps (4,4) (6,2): position 5 is drafted once but never reached with 1..4 kept -> alpha NULL
    r2 = {r["position"]: r for r in rows("acceptance_by_position", data) if r["run_id"] == "r2"}
    assert sorted(r2) == [1, 2, 3, 4, 5, 6]
    assert (r2[4]["drafted"], r2[4]["accepted"], r2[4]["reached"], r2[4]["alpha"]) == (2, 1, 1, 1.0)
    assert (r2[5]["drafted"], r2[5]["accepted"], r2[5]["alpha"]) == (1, 0, None)


def test_k_over_time(data):
    # step 1: k a=3 b=3 c=1; step 2: 5 2 1; step 3: a=4 c=0; step 4: c=2
    got = [(r["step"], r["rows"], r["mean_k"], r["mean_drafted"], r["mean_accepted"])
           for r in rows("k_over_time", data) if r["run_id"] == "r1"]
    assert got == [(1, 3, 2.333, 2.333, 2.0), (2, 3, 2.667, 1.333, 0.667), (3, 2, 2.0, 0.5, 0.0), (4, 1, 2.0, 2.0, 0.0)]
    assert {r["lookahead_policy"] for r in rows("k_over_time", data) if r["run_id"] == "r2"} == {"cost"}


def test_k_distribution(data):
    # r1 k values: 3 5 4 | 3 2 | 1 1 0 2 -> 9 steps
    got = [(r["k"], r["steps"], r["share"]) for r in rows("k_distribution", data) if r["run_id"] == "r1"]
    assert got == [(0, 1, 0.1111), (1, 2, 0.2222), (2, 2, 0.2222), (3, 2, 0.2222), (4, 1, 0.1111), (5, 1, 0.1111)]


def test_acceptance_per_run_and_prompt_bucket(data):
    # a (100 tokens): 3 steps, 6 drafted, 4 accepted; b (300): 2, 4, 2; c (600): 4, 4, 2
    got = [(r["prompt_bucket"], r["rows"], r["steps"], r["drafted"], r["accepted"], r["mean_acceptance_length"],
            r["acceptance_rate"]) for r in rows("acceptance", data) if r["run_id"] == "r1"]
    assert got == [("all", 3, 9, 14, 8, 1.889, 0.571), ("<128", 1, 3, 6, 4, 2.333, 0.667),
                   ("128-511", 1, 2, 4, 2, 2.0, 0.5), ("512-2047", 1, 4, 4, 2, 1.5, 0.5)]


def test_prompt_buckets_edges(tmp_path):
    con = analytics.connect(tmp_path)
    got = con.sql("SELECT n, prompt_bucket(n) AS b, prompt_bucket_lo(n) AS lo FROM "
                  "(VALUES (0), (127), (128), (511), (512), (2047), (2048), (100000)) t(n)").fetchall()
    assert got == [(0, "<128", 0), (127, "<128", 0), (128, "128-511", 128), (511, "128-511", 128),
                   (512, "512-2047", 512), (2047, "512-2047", 512), (2048, ">=2048", 2048), (100000, ">=2048", 2048)]


def test_drafter_overhead(data):
    # r1: draft = max(0.5, 0.4) + 1.0 = 1.5, verify = 1.2 + 2.5 = 3.7 over 6.0 s
    got = {r["run_id"]: r for r in rows("drafter_overhead", data)}
    assert got["r1"] == {"run_id": "r1", "draft_s": 1.5, "verify_s": 3.7, "wall_s": 6.0, "draft_share": 0.25,
                         "verify_share": 0.6167, "other_share": 0.1333}
    assert (got["r2"]["draft_share"], got["r2"]["other_share"]) == (0.1, 0.2333)


def test_cost_per_million_output_tokens(data):
    # r1: 6 s x $0.36/h = $0.0006 for 24 tokens -> $25 per 1M; r2: 3 s x $0.72/h = $0.0006 / 8 -> $75
    got = {r["run_id"]: r for r in rows("cost", data)}
    assert got["r1"] == {"run_id": "r1", "device": "cpu", "price_per_hour": 0.36, "rows": 3, "output_tokens": 24,
                         "device_s": 6.0, "cost_usd": 0.0006, "cost_per_1m_output_tokens": 25.0}
    assert got["r2"]["cost_per_1m_output_tokens"] == 75.0 and got["r3"]["cost_per_1m_output_tokens"] == 5.0


def test_views_restricted_to_runs(data):
    assert {r["run_id"] for r in rows("throughput", data, run_ids=["r2", "r3"])} == {"r2", "r3"}
    assert analytics.list_runs(data) == ["r1", "r2", "r3"]


def test_cost_without_manifest_is_null(tmp_path):
    write_run(tmp_path, "m", "d", "constant", 1.0, [("z", 10, 5, 1.0, 0.1, 0.5, 0, [(1, 2, 2, 1, 1.0, 2.0)])])
    (tmp_path / "runs" / "run_id=m" / "manifest.parquet").unlink()
    got = rows("cost", tmp_path)
    assert [(r["output_tokens"], r["price_per_hour"], r["cost_per_1m_output_tokens"]) for r in got] == [(5, None, None)]


def test_sql_cli_writes_csv(data, tmp_path):
    out = tmp_path / "cost.csv"
    assert main(["sql", "cost", "--data", str(data), "--csv", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith('"run_id"') and len(lines) == 4


def test_sql_cli_into_a_pipe_closed_early_ends_quietly(data):
    """`speccore sql ... | head -1` ends without a traceback when head stops reading."""
    import subprocess
    import sys

    query = "SELECT range AS i, repeat('x', 200) AS pad FROM range(20000)"
    proc = subprocess.Popen([sys.executable, "-m", "speccore.cli", "sql", "--data", str(data), query],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline()  # the header; then the reader goes away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "Broken pipe" not in err, err


def test_steps_of_an_uncommitted_shard_are_not_data(tmp_path):
    """A writer killed between a shard's steps file and its generations file (the commit) leaves the
    steps file alone on disk: the steps view must not count it until the re-run commits the shard."""
    write_run(tmp_path, "k", "d", "cost", 1.0, [("p", 10, 5, 1.0, 0.04, 0.5, 0, [(1, 2, 2, 1, 10.0, 100.0)])])
    shard0 = tmp_path / "steps" / "run_id=k" / "shard-00000.parquet"
    orphan = shard0.with_name("shard-00001.parquet")
    orphan.write_bytes(shard0.read_bytes())  # a complete steps file whose generations never landed
    con = analytics.connect(tmp_path)
    try:
        assert con.sql("SELECT count(*) FROM steps").fetchall() == [(1,)]
    finally:
        con.close()
    assert analytics.run_files(tmp_path, "steps") == [shard0]
