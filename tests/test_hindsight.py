"""Oracle and counterfactual lookahead from logged steps; expected numbers worked out by hand."""
from __future__ import annotations

import pytest

from speccore import analytics, hindsight
from tests.analytics_data import write_run

# One row, three steps (step, k, drafted, accepted, draft_ms, verify_ms): a plain step of 100 ms
# (measures t1 = 0.1 s), a 2-token draft fully kept (20 ms drafting -> 0.01 s/token, 200 ms verify),
# and the same draft all rejected. So c = 0.01 / 0.1 = 0.1, v(2) = 0.2 / 0.1 = 2.0, and v(1) is the
# prior's shape (lookahead.DEFAULT_V: v(1) = 2.11, v(2) = (2.11 + 2.62) / 2 = 2.365) scaled to the
# measured v(2): 2.0 * 2.11 / 2.365. Step costs 1 (k=0), 0.1 + V1 (k=1), 2.2 (k=2).
V1 = 2.0 * 2.11 / 2.365
STEPS = [(1, 0, 0, 0, 0.0, 100.0), (2, 2, 2, 2, 20.0, 200.0), (3, 2, 2, 0, 20.0, 200.0)]


def _analyse(out):
    con = analytics.connect(out)
    try:
        return {h.run_id: h for h in hindsight.from_store(con)}
    finally:
        con.close()


def test_oracle_policy_and_constant_k_by_hand(tmp_path):
    write_run(tmp_path, "h", "d", "heuristic", 1.0, [("p", 10, 5, 1.0, 0.04, 0.5, 0, STEPS)])
    h = _analyse(tmp_path)["h"]
    assert h.c == pytest.approx(0.1) and h.v[2] == pytest.approx(2.0) and h.v[1] == pytest.approx(V1)
    # policy: tokens 1 + 3 + 1 = 5, cost 1 + 2.2 + 2.2 = 5.4
    assert h.policy_speedup == pytest.approx(5 / 5.4)
    # oracle: per step min(cost of drafting a, a + 1): 1, min(2.2, 3) = 2.2, 1 -> 5 / 4.2
    assert h.oracle_speedup == pytest.approx(5 / 4.2)
    assert h.fraction_of_oracle == pytest.approx((5 / 5.4) / (5 / 4.2))
    # hindsight-best k: 0 (a=0), 2 (3 tokens for 2.2 beats 3 plain steps), 0
    assert h.oracle_k_counts == {0: 2, 2: 1} and h.mean_oracle_k == pytest.approx(2 / 3)
    assert h.mean_k == pytest.approx(4 / 3) and h.censored_share == pytest.approx(1 / 3)
    # constant k on the same steps: k=0 -> 3 / 3; k=1 -> tokens 1 + 2 + 1 = 4 for 3 x (0.1 + V1);
    # k=2 -> 5 tokens for 3 x 2.2
    assert h.constant_k[0] == pytest.approx(1.0)
    assert h.constant_k[1] == pytest.approx(4 / (3 * (0.1 + V1)))
    assert h.constant_k[2] == pytest.approx(5 / 6.6)
    assert sorted(h.constant_k) == list(range(9))  # up to max(8, longest draft)


def test_a_shared_forward_teaches_the_costs_once(tmp_path):
    # Row q shares p's forwards but drafts 1 token at step 2. Counted per row, that step would also
    # teach v(1) = 2.0 and a draft cost of 0.02 s/token; counted once per forward (width 2) it is as above.
    q = [(1, 0, 0, 0, 0.0, 100.0), (2, 2, 1, 1, 20.0, 200.0), (3, 2, 2, 0, 20.0, 200.0)]
    write_run(tmp_path, "h", "d", "heuristic", 1.0, [("p", 10, 5, 1.0, 0.04, 0.5, 0, STEPS),
                                                     ("q", 10, 4, 1.0, 0.04, 0.5, 0, q)])
    h = _analyse(tmp_path)["h"]
    assert h.steps == 6
    assert h.c == pytest.approx(0.1) and h.v[1] == pytest.approx(V1) and h.v[2] == pytest.approx(2.0)


def test_each_step_is_priced_at_its_own_batch_size(tmp_path):
    # p runs alone (batch 0, 1 row per forward: the costs of STEPS). q and r share batch 1's forwards at 2 rows:
    # a plain step of 150 ms (t1 at 2 rows = 0.15 s) and a 2-token draft (40 ms -> 0.02 s/token, c = 0.02 / 0.15;
    # 600 ms verify, v(2) = 4.0), both rows keeping both tokens. Mixed into one size, 150 ms would read as a
    # slow plain step at one row and v(2) as 2.0 and 4.0 averaged.
    two = [(1, 0, 0, 0, 0.0, 150.0, 2), (2, 2, 2, 2, 40.0, 600.0, 2)]
    write_run(tmp_path, "h", "d", "cost", 1.0, [("p", 10, 5, 1.0, 0.04, 0.5, 0, STEPS),
                                                ("q", 10, 4, 1.0, 0.04, 0.5, 1, two),
                                                ("r", 10, 4, 1.0, 0.04, 0.5, 1, two)])
    h = _analyse(tmp_path)["h"]
    c2 = 0.02 / 0.15
    # policy: p 5 tokens for 5.4 (as above); q and r each 1 + 3 tokens for 1 + (2 * c2 + 4.0)
    assert h.policy_speedup == pytest.approx((5 + 8) / (5.4 + 2 * (1 + 2 * c2 + 4.0)))
    # oracle: p 5 for 4.2; q and r: 1, then min(2 * c2 + 4.0, 3) = 3 (plain decoding beats that draft at 2 rows)
    assert h.oracle_speedup == pytest.approx(13 / (4.2 + 2 * 4))
    assert h.oracle_k_counts == {0: 4 + 2, 2: 1}  # q's and r's kept pair is cheaper decoded plainly
    assert h.c == pytest.approx(c2) and h.v[2] == pytest.approx(4.0)  # the run's most common batch size: 2 rows


def test_runs_are_analysed_apart(tmp_path):
    write_run(tmp_path, "h1", "d", "heuristic", 1.0, [("p", 10, 5, 1.0, 0.04, 0.5, 0, STEPS)])
    write_run(tmp_path, "h2", "d", "cost", 1.0, [("p", 10, 5, 1.0, 0.04, 0.5, 0, STEPS[:2])])
    got = _analyse(tmp_path)
    assert (got["h1"].lookahead_policy, got["h1"].steps) == ("heuristic", 3)
    assert (got["h2"].lookahead_policy, got["h2"].steps) == ("cost", 2)
    # h2: tokens 1 + 3, policy cost 1 + 2.2, oracle cost the same (it drafted exactly what was kept)
    assert got["h2"].fraction_of_oracle == pytest.approx(1.0)
