"""Lookahead policies: tables of outcomes -> k, in the style of vLLM's test_ngram.py."""
from __future__ import annotations

import itertools as it
import math
import random

import pytest

from speccore.lookahead import (
    BATCH_MARGIN, FRESH_FORWARDS, ConfidenceStop, Constant, CostAware, CostModel, Heuristic, LookaheadPolicy, Oracle,
    batch_k, expected_tokens, fraction_of_oracle, make_policy, non_decreasing, oracle_k, oracle_speedup, policy_speedup,
)


def drive(policy, accepted_seq):
    """Feed outcomes (accepted count per step, capped by k) and collect the k proposed."""
    ks = []
    for a in accepted_seq:
        k = policy.propose_k()
        ks.append(k)
        policy.observe(k, k, min(a, k), 0.0, 0.0)
    return ks


def strong(alpha):
    """A CostAware prior so strong that the estimate stays at alpha."""
    return dict(alpha_prior=alpha, prior_strength=1e9)


# ------------------------------------------------------------------ Constant / Heuristic

@pytest.mark.parametrize("k, accepted, expected", [
    (5, [0, 5, 2], [5, 5, 5]),
    (0, [0, 0], [0, 0]),
    (1, [1, 0, 1], [1, 1, 1]),
])
def test_constant(k, accepted, expected):
    assert drive(Constant(k), accepted) == expected


@pytest.mark.parametrize("k0, k_min, k_max, accepted, expected", [
    # +2 after a fully accepted draft, -1 otherwise
    (5, 1, 16, [5, 7, 0, 3], [5, 7, 9, 8]),
    # clamped at k_max
    (5, 1, 8, [99, 99, 99, 0], [5, 7, 8, 8]),
    # clamped at k_min
    (2, 1, 16, [0, 0, 0, 1, 3], [2, 1, 1, 1, 3]),
    # k0 outside the range is clamped first
    (20, 1, 10, [0], [10]),
    # partial acceptance never grows k
    (4, 1, 16, [3, 2, 1], [4, 3, 2]),
])
def test_heuristic(k0, k_min, k_max, accepted, expected):
    ks = drive(Heuristic(k0=k0, k_min=k_min, k_max=k_max), accepted)
    assert ks == expected


def test_heuristic_full_means_all_k_proposed():
    # a draft cut short (drafted < k) and fully accepted is not "fully accepted" (as transformers)
    p = Heuristic(k0=5)
    p.observe(5, 3, 3, 0.0, 0.0)
    assert p.propose_k() == 4
    assert p.decision()["reason"] == "rejection"


# ------------------------------------------------------------------ ConfidenceStop

def drafted_until_stop(policy, probs):
    k = policy.propose_k()
    drafted = 0
    for i, p in enumerate(probs[:k], start=1):
        drafted = i  # the i-th token is kept
        if not policy.should_continue(i, p):
            break
    return drafted


@pytest.mark.parametrize("k_max, threshold, probs, drafted", [
    (16, 0.4, [0.9, 0.8, 0.3, 0.9], 3),  # stops after the first unsure token, which is kept
    (16, 0.4, [0.1, 0.9], 1),
    (16, 0.4, [0.4, 0.4, 0.39], 3),  # exactly at the threshold continues
    (16, 0.4, [0.95] * 40, 16),  # never unsure: k_max
    (4, 0.4, [0.95] * 40, 4),
    (16, 0.0, [0.01] * 40, 16),  # threshold 0 never stops
    (16, 1.0, [0.99, 0.99], 1),  # threshold 1 stops after one token
])
def test_confidence_stop(k_max, threshold, probs, drafted):
    p = ConfidenceStop(k_max=k_max, threshold=threshold)
    assert p.propose_k() == k_max
    assert drafted_until_stop(p, probs) == drafted


def test_default_should_continue_is_true():
    for p in (Constant(3), Heuristic(), CostAware()):
        assert all(p.should_continue(i, 0.0) for i in range(1, 20))


# ------------------------------------------------------------------ CostModel

def test_cost_model_defaults_from_design():
    cm = CostModel()
    assert cm.c == pytest.approx(0.18)
    for k, v in {0: 1.0, 1: 2.11, 3: 2.62, 5: 2.82, 7: 2.92}.items():
        assert cm.v(k) == pytest.approx(v)
    assert cm.v(2) == pytest.approx((2.11 + 2.62) / 2)  # interpolated
    assert cm.v(9) == pytest.approx(2.92 + 2 * 0.05)  # last slope continued
    assert cm.step_cost(0) == 1.0
    assert cm.step_cost(3) == pytest.approx(3 * 0.18 + 2.62)


def test_cost_model_sequence_and_callable():
    assert CostModel(c=0.1, v=[1.0, 1.5, 1.7]).v(2) == pytest.approx(1.7)
    assert CostModel(c=0.1, v=lambda k: 1 + k).v(4) == 5


def test_a_verify_curve_that_dips_is_pooled_into_one_that_never_falls():
    # one bench run's own steps: v(5) under v(4), and v(8)..v(11) under v(7)'s neighbours
    got = non_decreasing({1: 1.05, 2: 1.09, 3: 1.18, 4: 1.26, 5: 1.20, 6: 1.27, 7: 1.31, 8: 1.44, 9: 1.45, 10: 1.50,
                          11: 1.42})
    assert got == pytest.approx({1: 1.05, 2: 1.09, 3: 1.18, 4: 1.23, 5: 1.23, 6: 1.27, 7: 1.31, 8: 1.44, 9: 1.45,
                                 10: 1.46, 11: 1.46})
    assert non_decreasing({3: 2.0, 1: 3.0, 2: 1.0}) == pytest.approx({1: 2.0, 2: 2.0, 3: 2.0})  # a run of three
    assert non_decreasing({}) == {}
    # a prior mapping and the measured ratios are both read through it: a cost stop sees no free token
    assert CostModel(v={0: 1.0, 4: 1.26, 5: 1.20}).v(5) == pytest.approx(1.23)
    cm = CostModel(ewma=1.0)
    cm.set_step_time(1.0)
    for k, seconds in ((4, 1.26), (5, 1.20), (6, 1.27)):
        cm.update(k, 0.1 * k, seconds)
    assert [cm.v(k) for k in (4, 5, 6)] == pytest.approx([1.23, 1.23, 1.27])
    assert cm.step_cost(5) - cm.step_cost(4) == pytest.approx(cm.c)


def test_a_width_timed_once_weighs_less_than_one_timed_often():
    # one high reading of v(2) against v(3)'s many: pooled by the readings behind each, not one for one, and a
    # width weighs at most what the EWMA retains ((2 - 0.2) / 0.2 = 9 readings)
    cm = CostModel(ewma=0.2)
    for _ in range(20):
        cm.set_step_time(1.0)  # a plain step before each verify: its ratio is fresh
        cm.update(3, 0.3, 1.20)
    cm.set_step_time(1.0)
    cm.update(2, 0.2, 1.40)
    assert cm.v(2) == pytest.approx((1.40 + 9 * 1.20) / 10) and cm.v(3) == cm.v(2)
    assert non_decreasing({2: 1.40, 3: 1.20}) == pytest.approx({2: 1.30, 3: 1.30})  # unweighted: halfway


def test_cost_model_update_from_timings():
    cm = CostModel(ewma=0.5)
    # before any plain step, the prior curve anchors the step time: 1.048 s / 2.62 = 0.4 s
    cm.update(3, draft_s=0.3, verify_s=2.62 * 0.4)
    assert cm.v(3) == pytest.approx(2.62)
    assert cm.c == pytest.approx(0.1 / 0.4)
    # a measured plain step anchors it: v(3) = 1.048 / 0.5, c = 0.1 / 0.5
    cm.update(0, draft_s=0.0, verify_s=0.5)
    assert cm.v(3) == pytest.approx(2.62 * 0.4 / 0.5)
    assert cm.c == pytest.approx(0.2)
    # EWMA with weight 0.5 on the new sample
    cm.update(3, draft_s=0.6, verify_s=2.048)
    assert cm.v(3) == pytest.approx((1.048 + 2.048) / 2 / 0.5)
    assert cm.c == pytest.approx((0.1 + 0.2) / 2 / 0.5)
    # not measured: the prior's shape, scaled to the nearest measured point (k=3)
    v3 = (1.048 + 2.048) / 2 / 0.5
    assert cm.v(5) == pytest.approx(v3 * 2.82 / 2.62)
    assert cm.v(1) == pytest.approx(v3 * 2.11 / 2.62)
    # between two measured points: linear in the measured values
    cm.update(7, draft_s=0.7, verify_s=1.75)
    assert cm.v(7) == pytest.approx(1.75 / 0.5)
    assert cm.v(5) == pytest.approx(v3 + (3.5 - v3) * 2 / 4)
    assert cm.v(9) == pytest.approx(3.5 * (2.92 + 2 * 0.05) / 2.92)


@pytest.mark.parametrize("before, after", [(0.30, 0.45), (0.45, 0.30)])
def test_cost_model_costs_survive_the_machine_changing_speed(before, after):
    """v(1) = 1.1 measured beside plain steps of one speed stays 1.1 when the machine then runs plain steps
    at another (a shared CPU drifts by 1.5x within minutes): kept as seconds, the old verify divided by the
    new plain steps read v(1) = 0.73 or 1.65, and c likewise."""
    cm = CostModel(ewma=0.2)
    for _ in range(10):
        cm.update(0, draft_s=0.0, verify_s=before)
        cm.update(1, draft_s=0.06 * before / 0.3, verify_s=1.1 * before)
    for _ in range(30):
        cm.update(0, draft_s=0.0, verify_s=after)
    assert cm.step_time == pytest.approx(after, rel=1e-3)
    assert cm.v(1) == pytest.approx(1.1)
    assert cm.c == pytest.approx(0.2)


def test_cost_model_a_row_that_never_goes_plain_keeps_its_ratios_and_follows_the_speed():
    """Long after the last plain step, verifies say how fast the machine runs now at the ratio known for
    their width: v(3) and c stay as measured, and the plain step time follows the machine (1.5x slower)."""
    cm = CostModel(ewma=0.2)
    cm.update(0, draft_s=0.0, verify_s=0.3)
    for _ in range(FRESH_FORWARDS):
        cm.update(3, draft_s=0.15, verify_s=0.36)
    assert (cm.v(3), cm.c) == (pytest.approx(1.2), pytest.approx(0.05 / 0.3))
    for _ in range(40):
        cm.update(3, draft_s=0.225, verify_s=0.54)
    assert cm.step_time == pytest.approx(0.45, rel=1e-3)
    assert cm.v(3) == pytest.approx(1.2)
    assert cm.c == pytest.approx(0.075 / 0.45, rel=1e-3)
    # within FRESH_FORWARDS of a plain step, a verify is a ratio again
    cm.update(0, draft_s=0.0, verify_s=0.45)
    for _ in range(FRESH_FORWARDS):
        cm.update(3, draft_s=0.225, verify_s=0.675)
    assert cm.v(3) == pytest.approx(1.5 - 0.3 * 0.8 ** FRESH_FORWARDS, rel=1e-3)


def test_expected_tokens_from_the_cache_are_the_sums_bit_for_bit():
    """The cached curves give the very floats the plain sum gave, so caching changed no decision."""
    for alpha in (0.0, 0.1, 0.37, 0.5, 0.8125, 0.9, 0.999, 1.0):
        for k in range(0, 24):
            assert expected_tokens(alpha, k) == float(sum(alpha ** i for i in range(k + 1)))


def test_cost_model_keeps_costs_per_batch_size():
    """One row's costs say nothing of eight rows': a batch size not measured yet reads the priors."""
    cm = CostModel(c=0.18, ewma=1.0)
    cm.update(0, draft_s=0.0, verify_s=0.3)
    cm.update(3, draft_s=0.15, verify_s=0.36)
    assert (cm.c, cm.v(3)) == (pytest.approx(0.05 / 0.3), pytest.approx(1.2))
    cm.batch_size = 8
    assert (cm.c, cm.v(3)) == (0.18, 2.62)  # the priors, not the one-row costs
    assert cm.snapshot()["batch_sizes_measured"] == [1]  # reading at 8 rows measures nothing there
    cm.update(0, draft_s=0.0, verify_s=0.45)
    cm.update(3, draft_s=0.3, verify_s=1.08)
    assert (cm.c, cm.v(3)) == (pytest.approx(0.1 / 0.45), pytest.approx(2.4))
    cm.batch_size = 1
    assert (cm.c, cm.v(3)) == (pytest.approx(0.05 / 0.3), pytest.approx(1.2))
    assert cm.snapshot()["batch_sizes_measured"] == [1, 8]


def test_cost_policy_drafts_once_a_pessimistic_prior_meets_a_measurement():
    """A prior from slower kernels (v(3) = 2.62) on hardware where verifying is cheap: at alpha 0.6 the
    prior says plain decoding; one measured v(3) = 1.3 rescales the whole curve and drafting pays."""
    cm = CostModel(c=0.05, ewma=1.0)
    cm.update(0, draft_s=0.0, verify_s=1.0)
    p = CostAware(cost_model=cm, k_max=16, **strong(0.6))
    p.propose_k()
    assert p.decision()["argmax_k"] == 0
    cm.update(3, draft_s=0.15, verify_s=1.3)
    assert cm.v(8) == pytest.approx(1.3 * (2.92 + 0.05) / 2.62)
    p.propose_k()
    assert p.decision()["argmax_k"] == 2


def test_policy_learns_costs_unless_told_not_to():
    cm = CostModel(ewma=1.0)
    CostAware(cost_model=cm, learn_costs=False).observe(3, 3, 1, 0.3, 1.0)
    assert cm.c == pytest.approx(0.18)
    CostAware(cost_model=cm).observe(0, 0, 0, 0.0, 0.5)
    assert cm.snapshot()["t1_s"] == 0.5


# ------------------------------------------------------------------ CostAware

@pytest.mark.parametrize("alpha, k", [(0.0, 1), (0.5, 1.75), (1.0, 4), (0.9, 1 + 0.9 + 0.81)])
def test_expected_tokens(alpha, k):
    ks = {0.0: 3, 0.5: 2, 1.0: 3, 0.9: 2}
    assert expected_tokens(alpha, ks[alpha]) == pytest.approx(k)
    assert expected_tokens(alpha, 0) == 1.0


FLAT = CostModel(c=0.01, v=lambda k: 1.0 + 0.01 * k)  # cheap draft, nearly free verify
LINEAR = CostModel(c=0.1, v=lambda k: 1.0 + 0.2 * k)


@pytest.mark.parametrize("alpha, cm, k_max, expected", [
    (0.99, FLAT, 16, 16),  # predictable text, cheap draft: as far as allowed
    (0.99, FLAT, 7, 7),
    (0.0, FLAT, 16, 0),  # nothing is ever accepted: plain decoding
    # by hand, score = E(k) / (0.1 k + 1 + 0.2 k): k=1 1.8/1.3 = 1.385, k=2 2.44/1.6 = 1.525,
    # k=3 2.952/1.9 = 1.554, k=4 3.362/2.2 = 1.528
    (0.8, LINEAR, 16, 3),
    # alpha=0.5: k=1 1.5/1.3 = 1.154, k=2 1.75/1.6 = 1.094: k=1
    (0.5, LINEAR, 16, 1),
    # with the CPU costs of DESIGN.md, alpha=0.75 does not pay (k=6: 3.466 / 3.95 < 1) and
    # alpha=0.8 is break-even (k=6: 3.951 / 3.95)
    (0.75, CostModel(), 16, 0),
    (0.8, CostModel(), 16, 6),
    (0.95, CostModel(), 16, 16),
])
def test_cost_aware_argmax(alpha, cm, k_max, expected):
    p = CostAware(k_max=k_max, cost_model=cm, **strong(alpha))
    p.propose_k()
    assert p.decision()["argmax_k"] == expected


def test_cost_aware_expensive_verify_picks_smaller_k():
    cheap = CostModel(c=0.05, v=lambda k: 1.0 + 0.02 * k)
    steep = CostModel(c=0.05, v=lambda k: 1.0 + 0.3 * k)
    k_cheap = CostAware(cost_model=cheap, **strong(0.9)).propose_k()
    k_steep = CostAware(cost_model=steep, **strong(0.9)).propose_k()
    assert 0 < k_steep < k_cheap


@pytest.mark.parametrize("probe_every, probe_max, probe_k, expected", [
    # alpha ~ 0: probe at once, then after 2, 4, 8, 8 plain steps (gap doubles up to probe_max)
    (2, 8, 1, [1] + [0] * 2 + [1] + [0] * 4 + [1] + [0] * 8 + [1] + [0] * 8 + [1]),
    (3, 3, 2, [2] + [0] * 3 + [2] + [0] * 3 + [2]),
])
def test_cost_aware_probes_after_plain_runs(probe_every, probe_max, probe_k, expected):
    p = CostAware(cost_model=CostModel(), probe_every=probe_every, probe_max=probe_max,
                  probe_k=probe_k, **strong(0.01))
    ks = drive(p, [0] * len(expected))
    assert ks == expected


def test_probes_cost_at_most_the_budget_once_costs_are_measured():
    """At 8 rows a probe loses about a plain step; the backoff alone (8, 16, 32) spent ~9% on probes."""
    cm = CostModel(c=0.2, v=lambda k: 1 + 0.35 * k)
    p = CostAware(cost_model=cm, probe_every=4, probe_max=8, probe_k=3, probe_budget=0.05, **strong(0.01))
    assert drive(p, [0] * 6)[:6] == [3, 0, 0, 0, 0, 3]  # priors only: the backoff (probe at once, then 4)
    cm.update(0, draft_s=0.0, verify_s=0.5)  # measured: a probe costs 3 * 0.2 + v(3) = 2.65 for 1.01 tokens
    cm.update(3, draft_s=0.3, verify_s=1.025)
    assert cm.measured and p.cost_model.v(3) == pytest.approx(2.05)
    loss = 3 * 0.2 + 2.05 - expected_tokens(0.01, 3)
    ks = drive(p, [0] * 120)
    gaps = [j - i - 1 for i, j in it.pairwise([i for i, k in enumerate(ks) if k])]
    assert gaps and set(gaps) == {math.ceil(loss / 0.05)}  # 33 plain steps per probe: ~5% spent on probes
    assert p.decision()["probe_wait"] == math.ceil(loss / 0.05)
    cm.batch_size = 8  # not measured at this batch size: the priors, and the backoff alone
    assert not cm.measured and p._probe_wait(p.alpha, None) == p._gap
    with pytest.raises(ValueError, match="probe_budget"):
        CostAware(probe_budget=0)


def test_cost_aware_fully_accepted_probe_probes_again():
    p = CostAware(cost_model=CostModel(), probe_every=4, probe_k=2, **strong(0.01))
    assert drive(p, [2, 2, 0, 0, 0, 0, 0, 0]) == [2, 2, 2, 0, 0, 0, 0, 2]
    assert p.decision()["reason"] == "probe"


def test_a_lone_probe_that_drafts_nothing_probes_again_at_the_next_step():
    """Prompt lookup without a match drafts nothing: at one row that step was a plain one and taught nothing,
    so the probe comes again at once; one that drafted and was rejected backs off, and in a batch (whose
    probe is verified at its width anyway) a probe without a draft counts as made."""
    def run(outcomes, batch_size=1):
        p = CostAware(cost_model=CostModel(), probe_every=4, probe_k=2, **strong(0.01))
        p.cost_model.batch_size = batch_size
        ks = []
        for drafted in outcomes:
            k = p.propose_k()
            ks.append(k)
            p.observe(k, min(drafted, k), 0, 0.0, 0.0)
        return ks

    # a rejected probe (2 drafted, 0 kept) backs off 4 plain steps; the next probe finds no match (0) twice,
    # and probes again each time until it drafts; that one's rejection backs off 8
    assert run([2, 0, 0, 0, 0, 0, 0, 2, 0]) == [2, 0, 0, 0, 0, 2, 2, 2, 0]
    assert run([2, 0, 0, 0, 0, 2, 0]) == [2, 0, 0, 0, 0, 2, 0]
    assert run([2, 0, 0, 0, 0, 0, 0], batch_size=4) == [2, 0, 0, 0, 0, 2, 0]


def test_cost_aware_notices_when_text_turns_predictable():
    # alpha = 0 for 300 tokens, then 1: the probes must switch speculation on within about
    # probe_max plain steps (+ a few probes), and off again is immediate when alpha falls.
    p = CostAware()  # CPU costs, default prior and probing
    ks = drive(p, [0] * 300)
    assert set(ks) <= {0, p.probe_k}
    later = drive(p, [99] * 200)
    first_big = next(i for i, k in enumerate(later) if k > p.probe_k)
    assert first_big <= p.probe_max + 8
    assert later[-1] == p.k_max


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("decay, tol", [(1.0, 0.02), (0.95, 0.08)])
def test_alpha_estimate_converges(alpha, decay, tol):
    rng = random.Random(7)
    p = CostAware(decay=decay)
    naive_acc = naive_drafted = 0
    estimates = []
    for _ in range(3000):
        k = 5
        a = 0
        while a < k and rng.random() < alpha:
            a += 1
        p.observe(k, k, a, 0.0, 0.0)
        naive_acc, naive_drafted = naive_acc + a, naive_drafted + k
        estimates.append(p.alpha)
    tail = estimates[1000:]
    assert abs(sum(tail) / len(tail) - alpha) < 0.02
    assert max(abs(e - alpha) for e in tail) < (tol if decay == 1.0 else 0.3)
    assert abs(estimates[-1] - alpha) < tol
    if alpha < 0.95:  # accepted / drafted is the wrong likelihood: it is biased low
        assert naive_acc / naive_drafted < alpha - 0.05


def test_prior_is_a_parameter():
    assert CostAware(alpha_prior=0.9).alpha == pytest.approx(0.9)
    p = CostAware(alpha_prior=0.5, prior_strength=2.0)
    p.observe(3, 3, 1, 0.0, 0.0)  # one success, one failure
    assert p.alpha == pytest.approx((1 + 1) / (2 + 2))
    p = CostAware(alpha_prior=0.5, prior_strength=2.0, decay=1.0)
    p.observe(3, 3, 3, 0.0, 0.0)  # three successes, no failure observed
    assert p.alpha == pytest.approx((1 + 3) / (2 + 3))


def test_decision_is_logged():
    p = CostAware(**strong(0.99))
    k = p.propose_k()
    d = p.decision()
    assert d["k"] == k and d["reason"] == "argmax" and d["alpha"] == pytest.approx(0.99)
    assert {"c", "v_k", "expected_tokens", "tokens_per_cost", "argmax_k", "policy"} <= set(d)


# ------------------------------------------------------------------ Oracle

# Hand-made costs: c = 0.25, v(k) = 1.25 + 0.25 k (k >= 1), so a step of k costs 1.5 + 0.5 k.
HAND = CostModel(c=0.25, v=lambda k: 1.25 + 0.25 * k)
# A log of a run with constant k = 4: accepted 0, 4, 2, 1.
LOG = [{"k": 4, "accepted": 0}, {"k": 4, "accepted": 4}, {"k": 4, "accepted": 2},
       {"k": 4, "accepted": 1}]


def test_oracle_by_hand():
    # tokens: 1 + 5 + 3 + 2 = 11 for policy and oracle alike.
    # policy: 4 steps of 4*0.25 + 2.25 = 3.25 -> 13.0; speedup 11 / 13.
    # oracle: a=0 -> plain, 1; a=4 -> min(3.25, 5) = 3.25; a=2 -> min(2.25, 3) = 2.25;
    #         a=1 -> min(1.75, 2) = 1.75; total 8.25; speedup 11 / 8.25.
    assert oracle_k([s["accepted"] for s in LOG]) == [0, 4, 2, 1]
    assert policy_speedup(LOG, HAND) == pytest.approx(11 / 13)
    assert oracle_speedup(LOG, HAND) == pytest.approx(11 / 8.25)
    assert fraction_of_oracle(LOG, HAND) == pytest.approx(8.25 / 13)
    assert Oracle.fraction(LOG, HAND) == pytest.approx(8.25 / 13)


def test_oracle_prefers_plain_when_verify_is_dear():
    dear = CostModel(c=0.5, v=[1.0, 2.0, 2.5, 3.0, 3.5])
    # a=4: 2 + 3.5 = 5.5 > 5 plain; a=2: 1 + 2.5 = 3.5 > 3; a=1: 0.5 + 2 = 2.5 > 2
    assert oracle_k([0, 4, 2, 1], dear) == [0, 0, 0, 0]
    assert oracle_speedup(LOG, dear) == pytest.approx(1.0)
    assert oracle_k([0, 4, 2, 1], HAND) == [0, 4, 2, 1]


def test_speedup_counts_drafted_and_plain_steps():
    # a confidence-stopped step (k=4, drafted=2) pays for 2 drafts; a k=0 step is plain (cost 1)
    steps = [{"k": 4, "drafted": 2, "accepted": 2}, (0, 0)]
    assert policy_speedup(steps, HAND) == pytest.approx((3 + 1) / ((0.5 + 1.75) + 1))


# ------------------------------------------------------------------ factory

@pytest.mark.parametrize("name, cls", [
    ("constant", Constant), ("heuristic", Heuristic), ("confidence", ConfidenceStop),
    ("cost", CostAware), ("cost-aware", CostAware), ("Cost-Aware", CostAware),
])
def test_make_policy(name, cls):
    p = make_policy(name)
    assert isinstance(p, cls) and isinstance(p, LookaheadPolicy)
    assert make_policy(name) is not p  # one instance per row


def test_make_policy_params_and_errors():
    assert make_policy("constant", k=7).propose_k() == 7
    cm = CostModel()
    a, b = make_policy("cost", cost_model=cm), make_policy("cost", cost_model=cm)
    assert a.cost_model is b.cost_model  # costs and the pair's acceptance shared, each row's evidence its own
    a.observe(3, 3, 0, 0.0, 0.0)
    b.observe(3, 3, 3, 0.0, 0.0)
    pair = (3 + 4) / (3.99 + 8)  # 0 of 3 (1 trial), decayed 0.99, then 3 of 3; smoothed by 8 trials at 0.5
    assert cm.pair_alpha == pytest.approx(pair)
    assert a.alpha == pytest.approx(2 * pair / 3) and b.alpha == pytest.approx((2 * pair + 3) / 5)
    with pytest.raises(ValueError, match="analysis"):
        make_policy("oracle")
    with pytest.raises(ValueError, match="unknown"):
        make_policy("bogus")
    with pytest.raises(TypeError):
        make_policy("constant", nonsense=1)


# ------------------------------------------------------------------ simulation

def simulate(make, rows, cost_model, alpha, n_tokens, seed, k_max=16):
    """Throughput (tokens per unit cost) of a policy, the best constant k and the oracle on the
    same per-position Bernoulli(alpha) acceptance streams: a draft starting at position t keeps
    tokens while b[t], b[t+1], ... are true; the bonus fills the first rejected position."""
    rng = random.Random(seed)
    totals = {"policy": [0.0, 0.0], "oracle": [0.0, 0.0]}
    totals.update({k: [0.0, 0.0] for k in range(k_max + 1)})

    def run(policy_or_k, b):
        t, tokens, cost = 0, 0.0, 0.0
        while t < n_tokens:
            if policy_or_k == "oracle":
                k = a = 0
                while a < k_max and b[t + a]:
                    a += 1
                c = min(cost_model.step_cost(a), a + 1.0)
            else:
                k = policy_or_k if isinstance(policy_or_k, int) else policy_or_k.propose_k()
                a = 0
                while a < k and b[t + a]:
                    a += 1
                if not isinstance(policy_or_k, int):
                    policy_or_k.observe(k, k, a, 0.0, 0.0)
                c = cost_model.step_cost(k)
            tokens, cost, t = tokens + a + 1, cost + c, t + a + 1
        return tokens, cost

    for _ in range(rows):
        b = [rng.random() < alpha for _ in range(n_tokens + k_max + 1)]
        for key in totals:
            pol = make() if key == "policy" else key
            tok, cost = run(pol, b)
            totals[key][0] += tok
            totals[key][1] += cost
    return {key: tok / cost for key, (tok, cost) in totals.items()}


CPU = CostModel()  # DESIGN.md section 9
GPU_LIKE = CostModel(c=0.05, v=lambda k: 1.0 + 0.02 * k)


@pytest.mark.parametrize("label, cm", [("cpu", CPU), ("gpu-like", GPU_LIKE)])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.8, 0.95])
def test_cost_aware_simulated_throughput(label, cm, alpha, capsys):
    # The oracle knows each step's accepted length, which no online policy can: with iid
    # acceptance the best a policy can do is the best constant k (the renewal-reward optimum),
    # so that is the bar; the fraction of oracle is reported, not asserted.
    r = simulate(lambda: CostAware(cost_model=cm), rows=20, cost_model=cm, alpha=alpha,
                 n_tokens=512, seed=1234)
    best_k = max(range(17), key=lambda k: r[k])
    frac_best, frac_oracle = r["policy"] / r[best_k], r["policy"] / r["oracle"]
    with capsys.disabled():
        print(f"\n[{label} alpha={alpha}] cost-aware {r['policy']:.3f}  best constant k={best_k} "
              f"{r[best_k]:.3f} ({frac_best:.3f})  oracle {r['oracle']:.3f} ({frac_oracle:.3f})")
    assert r["oracle"] >= r[best_k]
    assert frac_best >= 0.93


# ------------------------------------------------------------------ batch_k

def batch_costs() -> CostModel:
    """A step drafting K costs 0.2K + 1 + 0.2K. Fresh per test: the model also keeps the pair's acceptance."""
    return CostModel(c=0.2, v=lambda k: 1 + 0.2 * k)


def _rows(*alphas, cm=None, **kw):
    """Rows as a batch engine makes them: one shared cost model, which the engine (not the rows) feeds."""
    cm = cm or batch_costs()
    return [CostAware(cost_model=cm, learn_costs=False, **{"k_max": 4, **strong(a), **kw}) for a in alphas]


def test_batch_k_one_width_for_the_batch():
    # alpha 0.9 twice: tokens per cost 2E(0.9, K) / (1 + 0.4K): K=3 2*3.439/2.2 = 3.126, K=4 2*4.0951/2.6 = 3.150
    rows = _rows(0.9, 0.9)
    assert batch_k(rows, [p.propose_k() for p in rows], [16, 16], rows[0].cost_model) == [4, 4]
    # a sure row and an unsure one: alone they would draft 4 and probe 3 (the batch pays K=4 for both);
    # together K=1: (1.9 + 1.05) / 1.4 = 2.107 beats plain 2 / 1 and K=2: (2.71 + 1.0525) / 1.8 = 2.090
    rows = _rows(0.9, 0.05)
    proposed = [p.propose_k() for p in rows]
    assert proposed == [4, 3] and batch_k(rows, proposed, [16, 16], rows[0].cost_model, margin=1.0) == [1, 1]
    # ... but by 5% only: under the default margin (10%) the batch decodes plainly
    rows = _rows(0.9, 0.05)
    assert batch_k(rows, [4, 0], [16, 16], rows[0].cost_model) == [0, 0]
    # a row near its budget: K=2: (2.71 + 2.71) / 1.8 = 3.011 beats K=3: (2.71 + 3.439) / 2.2 = 2.795
    rows = _rows(0.9, 0.9)
    assert batch_k(rows, [4, 4], [2, 16], rows[0].cost_model) == [2, 2]


def test_batch_k_goes_plain_and_the_batch_probes_together():
    rows = _rows(0.9, 0.05, 0.05, 0.05)
    proposed = [p.propose_k() for p in rows]  # the unsure rows probe at once (gap 0)
    assert proposed == [4, 3, 3, 3]
    # plain 4 / 1 beats K=1: (1.9 + 3 * 1.05) / 1.4 = 3.607: K = 0, but the batch verifies the probes'
    # width anyway, so the sure row joins the probe (and restarts its schedule with the others)
    assert batch_k(rows, proposed, [16] * 4, rows[0].cost_model) == [3, 3, 3, 3]
    assert [p.decision()["reason"] for p in rows] == ["probe"] * 4 and rows[0].decision()["joined"]
    for p in rows:
        p.observe(k=3, drafted=3, accepted=0, draft_s=0.0, verify_s=0.0)  # rejected probe: back off
    proposed = [p.propose_k() for p in rows]
    assert proposed == [4, 0, 0, 0]  # alone, the sure row would make the whole batch pay v(4)
    assert batch_k(rows, proposed, [16] * 4, rows[0].cost_model) == [0, 0, 0, 0]


def test_batch_probes_at_the_probe_width_when_a_lone_probe_would_extend():
    rows = _rows(*[0.05] * 4, k_max=12)
    for p in rows:
        p.should_continue(1, 0.9)  # the drafter reports confidences: a lone probe would go on to k_max
    proposed = [p.propose_k() for p in rows]
    assert proposed == [12] * 4 and {p.decision()["cost_k"] for p in rows} == {3}
    assert batch_k(rows, proposed, [16] * 4, rows[0].cost_model) == [3] * 4  # the batch pays v(3), not v(12)
    assert all(p.should_continue(3, 0.01) for p in rows)  # and every row drafts all of it


def test_batch_decodes_plainly_until_its_own_plain_step_is_timed():
    # the priors are one row's costs: at 16 rows on the CPU they drew a first step of K = 16 costing 15 plain steps
    cm = batch_costs()
    cm.batch_size = 4
    rows = _rows(*[0.9] * 4, cm=cm)
    proposed = [p.propose_k() for p in rows]
    assert proposed == [4] * 4 and batch_k(rows, proposed, [16] * 4, cm) == [0] * 4
    cm.set_step_time(0.5)
    assert batch_k(rows, [p.propose_k() for p in rows], [16] * 4, cm) == [4] * 4


def test_cost_model_predicts_an_unmeasured_verify_from_the_prompt_rate():
    # a forward = a fixed cost + the prompt rate per cell; each drafted token adds a cell per row
    cm = CostModel(c=0.2, v=lambda k: 1 + 0.2 * k, ewma=1.0)
    cm.observe_prefill(32, 10.0)  # too few cells to be bound by compute: ignored
    cm.observe_prefill(4096, 40.96)  # 10 ms per cell
    cm.batch_size = 16
    assert cm.v(16) == pytest.approx(1 + 0.2 * 16)  # no plain step timed at 16 rows: the prior
    cm.set_step_time(0.5)
    assert cm.v(16) == pytest.approx(1 + 16 * 16 * 0.01 / 0.5)  # 6.12 where the one-row prior says 4.2
    cm.update(4, 0.8, 2.0)  # v(4) = 4 measured: it wins, and anchors the rest
    assert cm.v(4) == pytest.approx(4.0) and cm.v(16) == pytest.approx(4.0 + 16 * 12 * 0.01 / 0.5)
    assert cm.v(2) == pytest.approx(4.0 - 16 * 2 * 0.01 / 0.5)  # below the point too, never under 1
    cm.batch_size = 1
    cm.set_step_time(0.25)
    assert cm.v(7) == pytest.approx(1 + 7 * 0.01 / 0.25)  # one row: 1.28
    cm.observe_prefill(4096, 4 * 40.96)  # a slower prompt rate moves what was read a moment ago
    assert cm.v(7) == pytest.approx(1 + 7 * 0.04 / 0.25) and cm.step_costs(7)[7] == pytest.approx(7 * 0.2 + cm.v(7))
    assert CostModel().v(7) == pytest.approx(2.92)  # no rate: the prior


def test_batch_probe_waits_until_it_can_repay_the_drafters_catch_up():
    cm = CostModel(c=0.2, v=lambda k: 1 + 0.2 * k, ewma=1.0)
    cm.batch_size = 4
    cm.set_step_time(0.5)
    cm.observe_catch_up(400, 0.8)  # 2 ms per cell: 4 rows 500 tokens behind cost 8 plain steps

    def probe(rooms, behind):
        rows = _rows(*[0.05] * 4, cm=cm)
        return batch_k(rows, [p.propose_k() for p in rows], rooms, cm, behind=behind)

    # the probe loses 2.2 - 1.05 steps plus the catch-up; the pair has no record, so at alpha 1 the best K
    # (4: 5 / 2.6) would win back 48% of each remaining step
    assert cm.catch_up_steps(4 * 500) == pytest.approx(8.0)
    assert probe([16] * 4, [2] * 4) == [3] * 4  # a short catch-up: 1.2 lost, up to 7.7 won back
    assert probe([16] * 4, [500] * 4) == [0] * 4  # 9.2 lost: more than the 16 tokens left could win back
    assert probe([64] * 4, [500] * 4) == [3] * 4  # 64 tokens left: up to 30.8 won back
    # without a measured catch-up, the drafter's c times the target's prompt rate prices it
    fresh = CostModel(c=0.2, ewma=1.0)
    fresh.observe_prefill(1000, 10.0)
    fresh.batch_size = 4
    fresh.set_step_time(0.5)
    assert fresh.catch_up_steps(1200) == pytest.approx(1200 * 0.2 * 0.01 / 0.5)


def test_batch_probes_only_where_the_pairs_acceptance_would_pay():
    # a probe asks whether rows that went plain have recovered: worth it only if accepting as well as the pair
    # does would beat plain decoding at this batch size
    cm = CostModel(c=0.2, v=lambda k: 1 + 0.6 * k, ewma=1.0)  # a steep verify, as at 16 rows on the CPU
    cm.batch_size = 4
    cm.set_step_time(0.5)
    for _ in range(300):
        cm.observe_acceptance(3, 0)
    rows = _rows(*[0.05] * 4, cm=cm)
    assert cm.pair_alpha < 0.05 and batch_k(rows, [p.propose_k() for p in rows], [64] * 4, cm) == [0] * 4
    for _ in range(500):
        cm.observe_acceptance(3, 3)
    rows = _rows(*[0.05] * 4, cm=cm)
    assert cm.pair_alpha > 0.95 and batch_k(rows, [p.propose_k() for p in rows], [64] * 4, cm) == [3] * 4


def test_batch_of_plain_rows_probes_once_per_schedule_not_once_per_row():
    # 8 rows whose drafter is useless: alone each probes on its own clock; in a batch they share one,
    # so the batch pays about as many probes as one row would (not 8x as many)
    rows = _rows(*[0.01] * 8, probe_every=4, probe_max=16)
    single = _rows(0.01, probe_every=4, probe_max=16)[0]
    batch_probes = single_probes = 0
    for step in range(100):
        proposed = [p.propose_k() for p in rows]
        ks = batch_k(rows, proposed, [16] * 8, rows[0].cost_model)
        batch_probes += any(ks)
        for p, k in zip(rows, ks):
            p.observe(k=k, drafted=k, accepted=0, draft_s=0.0, verify_s=0.0)
        k1 = single.propose_k()
        single_probes += bool(k1)
        single.observe(k=k1, drafted=k1, accepted=0, draft_s=0.0, verify_s=0.0)
    assert batch_probes == single_probes == 8  # at steps 0, 5, 14, 31, 48, 65, 82, 99


def test_cost_aware_backs_off_probing_where_no_alpha_can_pay():
    # a drafter as slow as the target: even alpha = 1 gives (k+1) / (k + v(k)) < 1 for every k
    dear = CostModel(c=1.0, v=lambda k: 1.0 + 0.1 * k)
    p = CostAware(k_max=8, cost_model=dear, probe_every=4, probe_max=32, **strong(0.99))
    assert not p.can_pay()
    ks = drive(p, [99] * 100)  # every probe fully accepted, yet the gap doubles as after a rejection
    assert [i for i, k in enumerate(ks) if k] == [0, 5, 14, 31, 64, 97] and set(ks) == {0, p.probe_k}
    cheap = CostAware(k_max=8, cost_model=CostModel(c=0.2, v=lambda k: 1.0 + 0.1 * k), probe_k=2, **strong(0.01))
    assert cheap.can_pay() and drive(cheap, [2, 2, 0]) == [2, 2, 2]  # payable: a full accept probes again


def test_where_no_k_can_pay_rows_and_batches_go_plain_without_pricing_and_decide_as_if_priced(monkeypatch):
    # The shortcut (CostModel.can_pay) must give the very decisions that pricing k = 0..k_max gives, on both
    # sides of the line: costs where some k pays at alpha = 1 and costs where none does, at any alpha.
    rng = random.Random(7)
    cases = [(c, slope, alphas, rooms) for c in (0.05, 0.3, 0.5, 0.7, 0.9, 1.0, 1.6) for slope in (0.0, 0.05, 0.3, 1.0)
             for alphas, rooms in [([1.0] * 4, [64] * 4), ([0.99, 0.9, rng.random(), rng.random()], [64, 64, 3, 0])]]
    pays = {CostModel(c=c, v=lambda k, s=s: 1 + s * k).can_pay(8, BATCH_MARGIN) for c, s, _, _ in cases}
    assert pays == {True, False}

    def decide(c, slope, alphas, rooms, priced):
        if priced:  # what the policy did before the shortcut: price every k
            monkeypatch.setattr(CostModel, "can_pay", lambda self, k_max, margin=1.0: True)
        rows = _rows(*alphas, cm=CostModel(c=c, v=lambda k: 1 + slope * k), k_max=8)
        proposed = [p.propose_k() for p in rows]
        logged = [dict(p.decision()) for p in rows]
        ks = batch_k(rows, proposed, rooms, rows[0].cost_model)
        monkeypatch.undo()
        return proposed, logged, ks, [p.decision() for p in rows]

    for case in cases:
        assert decide(*case, priced=False) == decide(*case, priced=True), case


def test_cost_aware_decides_whether_to_draft_and_the_drafters_confidence_how_far():
    cm = CostModel(c=0.2, v=lambda k: 1 + 0.1 * k)
    p = CostAware(k_max=12, cost_model=cm, confidence_threshold=0.4, stop="confidence", **strong(0.6))
    k_star = p.propose_k()
    assert 0 < k_star < 12 and p.decision()["reason"] == "argmax"  # no confidence seen yet: k* only
    assert p.should_continue(1, 0.01)  # within k*: no confidence stop
    p.observe(k_star, k_star, 0, 0.0, 0.0)
    assert p.propose_k() == 12
    d = p.decision()
    assert (d["reason"], d["cost_k"], d["k"]) == ("argmax+confidence", k_star, 12)
    # alpha and the costs chose to draft; the drafter's confidence says how far, from the first token on
    assert not p.should_continue(1, 0.39) and p.should_continue(1, 0.4) and p.should_continue(k_star + 3, 0.9)
    p.join_batch(5)  # in a batch the row drafts the batch's k, with no confidence stop
    assert p.should_continue(k_star + 1, 0.01) and p.decision()["k"] == 5
    told = CostAware(k_max=12, cost_model=cm, confidence_threshold=0.4, stop="confidence", **strong(0.6))
    told.drafter_confidence = True  # the engine's proposer says it reports confidences: from the first step
    assert told.propose_k() == 12 and told.decision()["cost_k"] == k_star


def drafts(p, tops):
    """How many of `tops` (the drafter's confidences, in order) a drafting step of p drafts."""
    k = p.propose_k()
    for i, top in enumerate(tops[:k], 1):
        if not p.should_continue(i, top):
            return i
    return min(k, len(tops))


@pytest.mark.parametrize("c, tops, drafted", [
    # fresh calibration: a token's P(accepted) is its bin's midpoint (0.99 over 0.98-1, 0.6 over 0.5-0.7).
    # Go on while P(all so far) x P(next, as this one) >= c + v(i+1) - v(i) = c + 0.1.
    (0.2, [0.99] * 12, 12),  # 0.99^13 = 0.88 >= 0.3: the whole k_max
    (0.2, [0.6] * 12, 2),  # 0.6^2 = 0.36 >= 0.3 goes on; 0.6^3 = 0.22 < 0.3 stops after token 2
    (0.05, [0.6] * 12, 3),  # a cheaper drafter: 0.6^3 = 0.22 >= 0.15 goes on; 0.6^4 = 0.13 stops
    (0.5, [0.6] * 12, 1),  # a dearer one: 0.36 < 0.6 stops at once
    (0.2, [0.99, 0.99, 0.2, 0.99], 3),  # an unsure token ends the draft, kept (its cost is already paid)
])
def test_cost_stop_drafts_while_the_next_token_pays_for_itself(c, tops, drafted):
    p = CostAware(k_max=12, cost_model=CostModel(c=c, v=lambda k: 1 + 0.1 * k), **strong(0.9))
    p.drafter_confidence = True
    assert p.stop == "cost" and drafts(p, tops) == drafted
    assert p.decision()["stop"] == "cost"


@pytest.mark.parametrize("tops, drafted", [
    # c + v(2) - v(1) = 1.0 > 0.99 x 0.99: the next token alone does not pay for the step, but drafting on to
    # token 3 adds 0.99 x (0.99 + 0.99^2) = 1.95 tokens for 2c + v(3) - v(1) = 1.11, and past the step each
    # token costs c + 0.01: the whole k_max
    ([0.99] * 12, 12),
    # 0.6 tokens: at most 0.6 x (0.6 + 0.36 + ...) = 0.9 more tokens, less than the 1.0 or more that drafting
    # past the step costs: the draft ends after its first token
    ([0.6] * 12, 1),
])
def test_cost_stop_drafts_past_a_step_in_the_verify_cost_when_the_tokens_beyond_it_pay(tops, drafted):
    step = CostModel(c=0.1, v=lambda k: 1.0 if k == 0 else 1.1 if k == 1 else 2.0 + 0.01 * (k - 2))
    p = CostAware(k_max=12, cost_model=step, learn_costs=False, **strong(0.9))
    p.drafter_confidence = True
    assert p.rate == 1.0 and drafts(p, tops) == drafted


def test_cost_stop_prices_a_token_against_the_rows_tokens_per_cost():
    """A token is drafted if it adds more tokens per unit of cost than the row makes on average: a fresh row
    (rate 1, as plain decoding) drafts two 0.6 tokens; once its drafts yield 5 tokens for 2.2 plain steps,
    a 0.6 token no longer pays and the draft ends after the first, while confident tokens still run to k_max."""
    cm = CostModel(c=0.2, v=lambda k: 1 + 0.1 * k)  # a drafted token costs c + 0.1 = 0.3
    p = CostAware(k_max=12, cost_model=cm, learn_costs=False, **strong(0.9))
    p.drafter_confidence = True
    assert p.rate == 1.0 and drafts(p, [0.6] * 12) == 2  # 0.6^2 = 0.36 >= 0.3 goes on, 0.6^3 stops
    p.observe(12, 2, 0, 0.0, 0.0)  # 1 token for 1.6 plain steps: still worth no more than plain
    assert p.rate == 1.0
    p.observe(12, 4, 4, 0.0, 0.0)  # 5 tokens for 0.8 + 1.4 = 2.2
    tokens, cost = 0.95 * 1 + 5, 0.95 * 1.6 + 2.2
    assert p.rate == pytest.approx((tokens + 2) / (cost + 2))  # 1.40
    assert drafts(p, [0.6] * 12) == 1  # 0.36 < 1.40 x 0.3 = 0.42
    assert p.decision()["rate"] == pytest.approx(p.rate)
    assert drafts(p, [0.99] * 12) == 12  # 0.99^13 = 0.88 >= 0.42
    p.observe(0, 0, 0, 0.0, 0.0)  # a plain step: 1 token for 1
    assert 1.0 < p.rate < (tokens + 2) / (cost + 2)


def test_the_pair_calibration_pairs_each_confidence_with_its_verdict():
    cm = CostModel()
    for first in (True, False):
        assert cm.accept_prob(0.99, first) == pytest.approx(0.99) and cm.accept_prob(0.6, first) == pytest.approx(0.6)
    # 4 drafted, 2 accepted: tokens 1-2 accepted, token 3 rejected, token 4 never tried
    cm.observe_confidences([0.99, 0.99, 0.6, 0.1], drafted=4, accepted=2)
    assert cm.accept_prob(0.99, first=True) == pytest.approx((1 + 4 * 0.99) / (1 + 4))  # token 1
    assert cm.accept_prob(0.99) == pytest.approx((1 + 4 * 0.99) / (1 + 4))  # token 2, a later one
    assert cm.accept_prob(0.6) == pytest.approx((0 + 4 * 0.6) / (1 + 4))  # token 3
    assert cm.accept_prob(0.6, first=True) == pytest.approx(0.6)  # no first token at 0.6 yet
    assert cm.accept_prob(0.1) == pytest.approx(0.15)  # untried: still the prior
    before = cm.accept_prob(0.99)
    cm.observe_confidences([0.99, 0.5], drafted=3, accepted=0)  # not one confidence per draft token: unpaired
    assert cm.accept_prob(0.99) == before
    # a confident first token kept and a confident second one rejected, each step: the pair learns that 0.99
    # means ~1 for a draft's first token and ~0 for a later one
    for _ in range(200):
        cm.observe_confidences([0.99, 0.99], drafted=2, accepted=1)
    assert cm.accept_prob(0.99, first=True) == pytest.approx(1.0, abs=0.02)
    assert cm.accept_prob(0.99) == pytest.approx(0.0, abs=0.05)


def test_cost_stop_drafts_less_once_the_pair_finds_its_drafter_overconfident():
    cm = CostModel(c=0.2, v=lambda k: 1 + 0.1 * k)
    rows = [CostAware(k_max=12, cost_model=cm, **strong(0.9)) for _ in range(30)]
    lengths = []
    for p in rows:  # each row: one draft of confident tokens, of which the first 2 are accepted
        p.drafter_confidence = True
        d = drafts(p, [0.99] * 12)
        p.observe(12, d, min(d, 2), 0.0, 0.0)
        lengths.append(d)
    # token 3 is never kept: the drafts shorten to 2 tokens, and a full draft of 2 (no rejection seen) now and
    # then tries a third
    assert lengths[0] == 12 and lengths[:6] == sorted(lengths[:6], reverse=True) and set(lengths[-10:]) <= {2, 3}
    assert cm.accept_prob(0.99, first=True) > 0.99  # first tokens: always kept
    with pytest.raises(ValueError, match="stop"):
        CostAware(stop="never")


def test_cost_aware_without_confidence_stop_or_when_not_drafting_does_not_extend():
    cm = CostModel(c=0.2, v=lambda k: 1 + 0.1 * k)
    off = CostAware(k_max=12, cost_model=cm, confidence_threshold=None, **strong(0.6))
    off.should_continue(1, 0.9)
    assert off.propose_k() == off.decision()["argmax_k"] < 12
    plain = CostAware(k_max=12, cost_model=cm, probe_every=4, stop="confidence", **strong(0.01))
    plain.should_continue(1, 0.9)
    # a probe drafts probe_k, then goes on while the drafter is confident (how a plain row finds a burst)
    assert plain.propose_k() == 12
    assert (plain.decision()["reason"], plain.decision()["cost_k"]) == ("probe", plain.probe_k)
    assert not plain.should_continue(1, 0.39) and plain.should_continue(plain.probe_k + 1, 0.4)
    plain.observe(12, plain.probe_k, 0, 0.0, 0.0)
    assert plain.propose_k() == 0  # and plain stays plain (the rejected probe backs off)
    with pytest.raises(ValueError, match="confidence_threshold"):
        CostAware(confidence_threshold=1.5)


def test_under_the_cost_stop_a_row_drafts_while_its_first_token_pays():
    """First tokens accepted half the time, the rest of each draft rejected: alpha is too low for any fixed k
    to beat plain decoding, but the first token alone pays (0.5 >= c + v(1) - v(0) = 0.45), and the stop ends
    each draft, so the row keeps drafting. With the threshold stop it goes plain (k* = 0)."""
    v = lambda k: 1 + 0.15 * k ** 0.5  # noqa: E731
    rows = {stop: CostAware(k_max=8, cost_model=CostModel(c=0.3, v=v), stop=stop, learn_costs=False,
                            alpha_prior=0.5, prior_strength=2.0, decay=1.0) for stop in ("cost", "confidence")}
    for p in rows.values():
        p.drafter_confidence = True
        for step in range(10):  # 10 drafts of 3 tokens: 1 accepted, then 0, then 1, ...
            p.propose_k()
            p.observe(8, 3, 1 - step % 2, 0.0, 0.0)
    cost, conf = rows["cost"], rows["confidence"]
    assert cost.first_accept == pytest.approx((1 + 5) / (2 + 10))  # first tokens: 5 of 10
    assert cost.alpha == pytest.approx((1 + 5) / (2 + 15))  # tokens: 5 accepted of 15 tried
    assert cost.propose_k() == 8 and cost.decision()["reason"] == "first_token"
    assert conf.propose_k() == 0 or conf.decision()["reason"] == "probe"
    assert conf.decision()["argmax_k"] == 0
    # first tokens that keep failing: the row goes plain
    for _ in range(6):
        if cost.propose_k():
            cost.observe(8, 3, 0, 0.0, 0.0)
    assert cost.first_accept < 0.45
    assert [cost.propose_k() for _ in range(3)] == [0, 0, 0] and cost.decision()["reason"] == "plain"


def test_two_rejected_first_tokens_do_not_send_a_row_of_a_half_kept_pair_plain():
    """smollm2's costs (c = 0.105, v(1) = 1.11: a first token pays from 0.215) and a pair whose first tokens
    are kept about 4 times in 10 (0.385): a row whose first drafts are rejected drafts on for 7 steps, down to
    (8 x 0.385) / (8 + 6) = 0.22; at alpha's prior strength of 2 it read (2 x 0.385) / 4 = 0.19 after two and
    went plain."""
    cm = CostModel(c=0.105, v={0: 1.0, 1: 1.11, 4: 1.26, 8: 1.6, 16: 1.92})
    for first_kept in [1] * 3 + [0] * 7:
        cm.observe_acceptance(3, first_kept)
    assert cm.pair_first_accept == pytest.approx(0.385, abs=0.001)

    def ks(**kw) -> list[int]:
        row = CostAware(cost_model=cm, learn_costs=False, decay=1.0, **kw)
        row.drafter_confidence = True
        out = []
        for _ in range(9):
            out.append(row.propose_k())
            row.observe(out[-1], min(out[-1], 2), 0, 0.0, 0.0)  # every draft's first token rejected
        return out

    assert ks() == [16] * 7 + [0, 0]
    assert ks(first_prior_strength=2.0) == [16, 16] + [0] * 7
    with pytest.raises(ValueError, match="first_prior_strength"):
        CostAware(first_prior_strength=0)


def test_a_new_rows_first_accept_starts_from_the_pairs_first_token_rate_not_its_alpha():
    """Drafts of 4 whose first token is kept and the second rejected: alpha is 1/2 per token, but first tokens
    are always kept, and a new row of the pair starts its first-token estimate there."""
    cm = CostModel(c=0.2, v=lambda k: 1 + 0.1 * k)
    assert cm.pair_first_accept is None
    for _ in range(20):
        cm.observe_acceptance(4, 1)
    assert cm.pair_alpha == pytest.approx(0.5, abs=1e-9)
    n = sum(0.99 ** i for i in range(20))
    assert cm.pair_first_accept == pytest.approx((n + 4) / (n + 8))  # 0.85
    row = CostAware(k_max=8, cost_model=cm, learn_costs=False)
    assert row.alpha == pytest.approx(0.5) and row.first_accept == pytest.approx(cm.pair_first_accept)
    told = CostAware(k_max=8, cost_model=cm, alpha_prior=0.3, learn_costs=False)  # a given prior wins
    assert told.first_accept == pytest.approx(0.3) and told.alpha == pytest.approx(0.3)
    cm.observe_acceptance(0, 0)  # a plain step is no draft
    assert cm.pair_first_accept == pytest.approx((n + 4) / (n + 8))
    assert cm.snapshot()["pair_first_accept"] == cm.pair_first_accept


def test_under_the_cost_stop_a_lone_plain_row_probes_at_its_first_tokens_price_and_comes_back():
    """smollm2's ShareGPT costs (c = 0.1, v(1) = 1.16: a first token pays from 0.26). A row whose first 4 drafts
    are rejected goes plain. Its probe drafts until the cost stop, so it loses at most the first token's
    c + v(1) - 1 - first_accept plain steps, and it waits ceil(that / probe_budget) plain steps: 2-5 here, where
    a probe of probe_k tokens priced at alpha waited 17 and the backoff 8, 16, 32. Once probes are kept the
    row drafts again. In a batch the probe is verified at its full width, and the backoff stays."""
    cm = CostModel(c=0.1, v={0: 1.0, 1: 1.16, 2: 1.2, 4: 1.33, 8: 1.52, 16: 1.93})
    cm.update(0, 0.0, 0.3)
    cm.update(1, 0.03, 0.348)
    assert cm.measured and cm.c == pytest.approx(0.1) and cm.v(1) == pytest.approx(1.16)
    row = CostAware(cost_model=cm, learn_costs=False)
    row.drafter_confidence = True
    kept = iter([0] * 8 + [1] * 3)  # each drafting step's first token
    log = []
    while len(log) < 40 and (not log or log[-1][0] != "first_token" or len(log) < 5):
        k = row.propose_k()
        d = row.decision()
        log.append((d["reason"], d.get("first_accept"), d["probe_wait"]))
        a = next(kept) if k else 0
        row.observe(k, 1 if k else 0, a, 0.0, 0.0)
        cm.observe_acceptance(1 if k else 0, a)
    reasons = [r for r, _, _ in log]
    assert reasons[:4] == ["first_token"] * 4 and reasons[4] == "plain"
    probes = [i for i, r in enumerate(reasons) if r == "probe"]
    assert len(probes) == 6  # 4 rejected, 2 kept, and then the row drafts on its first token again
    assert reasons[-1] == "first_token" and log[-1][1] >= 0.1 + 0.16
    for i in probes:  # each probe came after the wait its first token's price sets
        _, first, wait = log[i]
        assert wait == math.ceil((0.1 + 0.16 - first) / 0.03) and 1 <= wait <= 5
        assert reasons[i - wait : i] == ["plain"] * wait
    assert probes[3] < 4 + 8 + 1 + 16  # 4 probes before the backoff (8, 16, 32 plain steps) would make its 2nd
    cm.batch_size = 2  # a batch: the probe's full width, and the backoff
    assert row._probe_wait(row.alpha, 0.2) == row._gap
