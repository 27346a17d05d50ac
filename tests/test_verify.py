"""verify_row and speccore.sampling, in the style of vLLM's rejection-sampler tests.

A toy target over a small vocabulary (V=6) gives a next-token distribution for every prefix of up to
two tokens, a toy drafter proposes from its own q, and verify_row decides. One speculative step
emits 1..n+1 tokens; the rest of a 3-token continuation is drawn from the target alone (what the
engine's next steps do). Lossless means the emitted sequence has the target's joint law, so the
checks compare with the exact law of (x1), (x1, x2) and (x1, x2, x3): the first-token marginal, the
second token given the first, and the whole sequence (which includes the bonus token's law).

The empirical total-variation distance must shrink as the samples grow (nested prefixes of one fixed
seeded run): at every N it stays under tv_limits(p, N), and at the largest N it is below the mean TV
that i.i.d. draws from p show at the smallest N. tv_limits takes the tighter of two bounds that N i.i.d.
draws from p exceed with tiny probability: McDiarmid's (mean TV <= sum_i sqrt(p_i (1 - p_i) / N) / 2,
and one draw moves TV by at most 1/N: P(more than sqrt(ln(1/delta) / 2N) above) < delta = 1e-6),
and the Monte-Carlo null (TV of 200 seeded i.i.d. samples of size N from p: mean + 6 sd). The second
is ~2x tighter for laws with many small bins, which is what lets the end-to-end tests see a biased
residual or a q row that is not the distribution the draft was drawn from.
"""
from __future__ import annotations

import math

import pytest
import torch

from speccore import sampling as smp
from speccore.verify import Draft, verify_row

# Nested prefixes of one run of NS[-1] trials. verify_row costs ~0.2-0.5 ms a call here (2 busy
# cores), so the larger counts are kept for the canonical case only.
NS = (500, 2000, 8000)
NS_LONG = (1000, 4000, 16000)
V = 6


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- stats


def tv_sparse(codes: torch.Tensor, p: torch.Tensor) -> float:
    """TV between the empirical law of outcome codes (flat indices into p) and p; cost ~ len(codes)."""
    p = p.to(torch.float64).flatten()
    ids, counts = codes.unique(return_counts=True)
    seen = p[ids]
    return 0.5 * (float((counts / len(codes) - seen).abs().sum()) + float(p.sum() - seen.sum()))


def tv_curve(codes: torch.Tensor, p: torch.Tensor, ns=NS) -> list[float]:
    """TV of the first n outcome codes against p, for each n in ns."""
    return [tv_sparse(codes[:n], p) for n in ns]


def tv_mean_bound(p: torch.Tensor, n: int) -> float:
    """An upper bound on the mean TV of n i.i.d. draws from p: per bin E|f - p| <= min(sd, 2p)."""
    p = p.to(torch.float64).flatten()
    return 0.5 * float(torch.minimum((p * (1 - p)).clamp_min(0).sqrt() / math.sqrt(n), 2 * p).sum())


def null_tv(p: torch.Tensor, ns, reps: int = 200, seed: int = 12345) -> list[tuple[float, float]]:
    """(mean, sd) of the TV that `reps` i.i.d. samples of size n drawn from p itself show, per n."""
    p = p.to(torch.float64).flatten()
    g = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(p / p.sum(), reps * ns[-1], replacement=True, generator=g).view(reps, ns[-1])
    out = []
    for n in ns:
        tvs = torch.tensor([tv_sparse(draws[r, :n], p) for r in range(reps)], dtype=torch.float64)
        out.append((float(tvs.mean()), float(tvs.std())))
    return out


def tv_limits(p: torch.Tensor, ns, delta: float = 1e-6) -> list[float]:
    """Per n: a TV that n i.i.d. draws from p exceed with tiny probability (see the module doc)."""
    null = null_tv(p, ns)
    mcdiarmid = [tv_mean_bound(p, n) + math.sqrt(math.log(1 / delta) / (2 * n)) for n in ns]
    return [min(b, m + 6 * s) for b, (m, s) in zip(mcdiarmid, null)]


def assert_shrinks(tvs: list[float], p: torch.Tensor, ns=NS, what: str = "", slack: float = 0.0) -> None:
    """Under tv_limits at every N, and at the largest N below the mean null TV at the smallest N
    (unbiased: ~sqrt(ns[0] / ns[-1]) of it; a bias b would keep TV near b instead). Not a pairwise
    decrease: with few live bins TV is about |normal|, too noisy to order pairs."""
    limits = [t + slack for t in tv_limits(p, ns)]
    assert all(t <= b for t, b in zip(tvs, limits)), (what, tvs, limits)
    first_mean = null_tv(p, ns[:1])[0][0]
    assert tvs[-1] < first_mean + slack, (what, tvs, first_mean)


# ------------------------------------------------------------------------------------------ toy models


def toy_logits(seed: int, scale: float = 1.5, base: list | None = None, noise: float = 0.0):
    """Logit tables for every prefix of up to 2 tokens: L0 [V], L1 [V, V], L2 [V, V, V].

    With `base`, a noisy copy of another table (a drafter that agrees with its target often)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(V,), (V, V), (V, V, V)]
    fresh = [torch.randn(s, generator=g, dtype=torch.float64) * scale for s in shapes]
    if base is None:
        return fresh
    return [b + noise * f for b, f in zip(base, fresh)]


def exact_law(tables, params: smp.SamplingParams) -> torch.Tensor:
    """The target-alone law of (x1, x2, x3): [V, V, V]."""
    P0, P1, P2 = (smp.probs(t, params) for t in tables)
    return P0[:, None, None] * P1[:, :, None] * P2


def speculate(target, params, n: int, trials: int, drafts, seed: int = 0):
    """Run `trials` independent speculative steps from the empty prefix, each completed to 3 tokens.

    drafts: (d [trials, n], q [trials, n, V] or None), made up front (a draft depends only on its own
    prefix, never on the verifier's uniforms). Returns (codes x1*V^2 + x2*V + x3 [trials], drafted,
    accepted)."""
    d, q = drafts
    gen, cgen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    full = torch.stack([target[0].expand(trials, V), target[1][d[:, 0]], target[2][d[:, 0], d[:, 1]]], 1)
    logits = full[:, : n + 1]  # [trials, n+1, V]: the target's logits after [pending, d1..dn]
    ids = d[:, :n].tolist()
    outs, accepted = [], 0
    for i in range(trials):
        a, new = verify_row(logits[i], Draft(ids=ids[i], q=None if q is None else q[i, :n]), params, gen)
        assert new[:a] == ids[i][:a] and len(new) == a + 1
        accepted += a
        outs.append(new)
    # complete each row to 3 tokens from the target alone (vectorised; its own generator)
    P = [smp.probs(t, params) for t in target]
    for L in (1, 2):
        idx = [i for i, o in enumerate(outs) if len(o) == L]
        if idx:
            rows = torch.stack([P[L][tuple(outs[i])] for i in idx])  # [m, V]
            nxt = torch.multinomial(rows, 1, generator=cgen).flatten().tolist()
            for i, x in zip(idx, nxt):
                outs[i] = outs[i] + [x]
    x = torch.tensor([o[:3] for o in outs])  # [trials, 3]
    return x[:, 0] * V * V + x[:, 1] * V + x[:, 2], n * trials, accepted


def sampled_drafts(drafter_tables, params, trials: int, mask: torch.Tensor | None = None, seed: int = 100):
    """Two draft tokens per trial, d_j ~ q(. | d_<j), and their q rows (optionally restricted to `mask`)."""
    lg = drafter_tables[:2]
    if mask is not None:
        lg = [t.masked_fill(~mask, float("-inf")) for t in lg]
    Q0, Q1 = (smp.probs(t, params) for t in lg)  # [V], [V, V]
    g = torch.Generator().manual_seed(seed)
    d1 = torch.multinomial(Q0, trials, replacement=True, generator=g)  # [trials]
    d2 = torch.multinomial(Q1[d1], 1, generator=g).flatten()  # [trials]
    return torch.stack([d1, d2], 1), torch.stack([Q0.expand(trials, V), Q1[d1]], 1)  # [T, 2], [T, 2, V]


def check_law(codes: torch.Tensor, law: torch.Tensor, what: str, ns=NS) -> dict[str, list[float]]:
    """First-token marginal, (x1, x2) and the whole (x1, x2, x3) sequence against the exact law."""
    x12 = codes // V
    out = {
        "x1": tv_curve(codes // (V * V), law.sum((1, 2)), ns),
        "x1x2": tv_curve(x12, law.sum(2), ns),
        "x1x2x3": tv_curve(codes, law, ns),
    }
    assert_shrinks(out["x1"], law.sum((1, 2)), ns, what=f"{what} x1")
    assert_shrinks(out["x1x2"], law.sum(2), ns, what=f"{what} x1x2")
    assert_shrinks(out["x1x2x3"], law, ns, what=f"{what} x1x2x3")
    # the second token given the most frequent first token (what a 2-token draft must get right)
    x1 = codes[: ns[-1]] // (V * V)
    top = int(torch.bincount(x1, minlength=V).argmax())
    cond = law[top].sum(1) / law[top].sum()
    sel = x12[: ns[-1]][x1 == top] % V
    t = tv_sparse(sel, cond)
    assert t <= tv_limits(cond, [len(sel)])[0], (what, "x2 | x1", t)
    out["x2|x1"] = [t]
    print(f"\n{what}: TV at N={ns}: " + "  ".join(f"{k} {['%.4f' % v for v in vs]}" for k, vs in out.items()))
    return out


# ---------------------------------------------------------------------------------- statistical cases

T1 = smp.SamplingParams(temperature=1.0)
TARGET = toy_logits(seed=1)
DRAFTER = toy_logits(seed=2, base=TARGET, noise=1.0)  # agrees often, not always


@pytest.mark.parametrize("n", [1, 2])
def test_rejection_sampling_dense_q_is_lossless(n):
    ns = NS_LONG if n == 2 else NS
    codes, drafted, accepted = speculate(TARGET, T1, n, ns[-1], sampled_drafts(DRAFTER, T1, ns[-1]))
    assert 0.2 * drafted < accepted < 0.9 * drafted  # both accept and reject paths really ran
    check_law(codes, exact_law(TARGET, T1), f"dense n={n}", ns)


def test_rejection_sampling_subset_q_is_lossless():
    """TLI's shape: the drafter proposes only shared tokens, q is zero elsewhere; p is not."""
    shared = torch.tensor([True, False, True, True, False, True])
    n = 2
    codes, drafted, accepted = speculate(TARGET, T1, n, NS[-1], sampled_drafts(DRAFTER, T1, NS[-1], mask=shared))
    assert 0 < accepted < drafted
    law = exact_law(TARGET, T1)
    assert float(law.sum((1, 2))[~shared].sum()) > 0.1  # tokens the drafter never proposes matter
    check_law(codes, law, "subset q")


@pytest.mark.parametrize("n", [1, 2])
def test_exact_match_deterministic_draft_is_lossless(n):
    """q=None (prompt lookup, SLEM under sampling): a draft that is likely on even trials and very
    unlikely on odd ones; verification draws the target's own sample and keeps the draft if equal."""
    P0, P1 = (smp.probs(t, T1) for t in TARGET[:2])
    likely = [int(P0.argmax()), int(P1[P0.argmax()].argmax())]
    unlikely = [int(P0.argmin()), int(P1[P0.argmin()].argmin())]
    assert P0[unlikely[0]] < 0.1 < 0.25 < P0[likely[0]]
    d = torch.tensor([likely, unlikely]).repeat(NS[-1] // 2, 1)  # [trials, 2]: alternating
    codes, drafted, accepted = speculate(TARGET, T1, n, NS[-1], (d, None))
    assert 0 < accepted < drafted
    check_law(codes, exact_law(TARGET, T1), f"exact match n={n}")


@pytest.mark.parametrize("case", ["both_processed", "p_top_k_q_dense"])
def test_rejection_sampling_top_k_top_p_is_lossless(case):
    """The target samples from its processed p (temperature, top-k, top-p); so must speculation.
    both_processed: the drafter applies the same settings to its own logits (zeros in q where its
    top-k/top-p cut). p_top_k_q_dense: q puts mass on tokens that p has cut (always rejected)."""
    params = smp.SamplingParams(temperature=0.8, top_k=4, top_p=0.9)
    qparams = params if case == "both_processed" else smp.SamplingParams(temperature=1.0)
    n = 2
    codes, drafted, accepted = speculate(TARGET, params, n, NS[-1], sampled_drafts(DRAFTER, qparams, NS[-1]))
    assert 0 < accepted < drafted
    law = exact_law(TARGET, params)
    assert int((law.sum((1, 2)) == 0).sum()) >= 1  # the cut really removes tokens
    codes_in_support = law.flatten()[codes] > 0
    assert bool(codes_in_support.all())  # never emits a token that top-k/top-p removed
    check_law(codes, law, case)


# ---------------------------------------------------------------------------------- exact rules


def test_acceptance_is_exactly_u_below_p_over_q(monkeypatch):
    """Accept d iff u * q(d) < p(d); on rejection the next uniform samples norm(max(p - q, 0))."""
    logits = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).log().repeat(2, 1)  # [2, V]
    p = smp.probs(logits[0], T1)  # ~[0.1, 0.2, 0.3, 0.4]
    # q = [0.1, 0.4, 0.1, 0.4] built from p's own floats, so that p - q is exactly 0 at ids 0 and 3
    q = torch.stack([p[0], 2 * p[1], p[2] - p[1], p[3]])[None]  # p(1)/q(1) = 0.5

    def run(us):
        it = iter(us)
        monkeypatch.setattr(smp, "uniform", lambda gen: next(it))
        return verify_row(logits, Draft(ids=[1], q=q), T1, torch.Generator())

    assert run([0.49, 0.0]) == (1, [1, 0])  # accepted; the bonus takes the first live id of p
    # rejected: residual max(p - q, 0) = [0, 0, 0.2, 0] -> always id 2, whatever the next uniform
    assert run([0.51, 0.0]) == (0, [2])
    assert run([0.51, 0.999]) == (0, [2])
    # p(d) >= q(d): accepted whatever u
    monkeypatch.undo()
    assert verify_row(logits, Draft(ids=[3], q=q), T1, torch.Generator().manual_seed(0))[0] == 1


def test_draft_with_zero_q_or_zero_p_is_rejected():
    p = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    logits = p.log().repeat(2, 1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        # q(d) = 0 (a malformed proposal) and p(d) = 0: never accepted, never emitted
        a, new = verify_row(logits, Draft(ids=[2], q=torch.tensor([[0.5, 0.5, 0.0, 0.0]])), T1, gen)
        assert a == 0 and new[0] in (0, 1)
        a, new = verify_row(logits, Draft(ids=[3], q=torch.tensor([[0.0, 0.0, 0.0, 1.0]])), T1, gen)
        assert a == 0 and new[0] in (0, 1)
        a, new = verify_row(logits, Draft(ids=[3]), T1, gen)
        assert a == 0 and new[0] in (0, 1)


GREEDY = smp.SamplingParams(temperature=0.0)
GREEDY_LOGITS = torch.tensor([
    [0.0, 1.0, 3.0, 0.5, 0.0, 0.0],  # argmax 2
    [2.0, 1.0, 0.0, 0.5, 0.0, 0.0],  # argmax 0
    [0.0, 1.0, 0.0, 0.5, 0.0, 4.0],  # argmax 5
], dtype=torch.float64)


@pytest.mark.parametrize("draft,expected", [
    ([], (0, [2])),
    ([2], (1, [2, 0])),
    ([2, 0], (2, [2, 0, 5])),  # all accepted: the bonus is the argmax after the last draft token
    ([2, 1], (1, [2, 0])),
    ([3, 0], (0, [2])),  # the first mismatch ends the step, later matches do not count
    ([1, 1], (0, [2])),
])
@pytest.mark.parametrize("with_q", [False, True])
def test_greedy_accepts_while_draft_equals_argmax(draft, expected, with_q):
    n = len(draft)
    q = torch.full((n, 6), 1 / 6, dtype=torch.float64) if with_q and n else None
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    assert verify_row(GREEDY_LOGITS[: n + 1], Draft(ids=draft, q=q), GREEDY, gen) == expected
    assert torch.equal(gen.get_state(), state)  # greedy never consumes the row's randomness


def test_greedy_ties_take_the_lowest_id():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]], dtype=torch.float64)
    assert verify_row(logits, Draft(ids=[]), GREEDY, torch.Generator())[1] == [1]
    assert torch.equal(smp.probs(logits, GREEDY), torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64))


# ------------------------------------------------------------------------------------------ probs


def L(*ps: float) -> torch.Tensor:
    return torch.tensor(ps, dtype=torch.float64).log()


@pytest.mark.parametrize("logits,params,expected", [
    (L(1, 2, 4), smp.SamplingParams(1.0), [1 / 7, 2 / 7, 4 / 7]),
    (L(1, 2, 4), smp.SamplingParams(0.5), [1 / 21, 4 / 21, 16 / 21]),  # p^(1/T), renormalised
    (L(1, 2, 4), smp.SamplingParams(2.0), [1 / (3 + 2 ** 0.5), 2 ** 0.5 / (3 + 2 ** 0.5), 2 / (3 + 2 ** 0.5)]),
    (L(1, 2, 4, 3), smp.SamplingParams(1.0, top_k=2), [0, 0, 4 / 7, 3 / 7]),
    (L(1, 2, 2, 4), smp.SamplingParams(1.0, top_k=2), [0, 2 / 8, 2 / 8, 4 / 8]),  # ties at the k-th stay
    (L(1, 2, 4), smp.SamplingParams(1.0, top_k=3), [1 / 7, 2 / 7, 4 / 7]),  # k >= V: off
    (L(1, 2, 4), smp.SamplingParams(1.0, top_k=9), [1 / 7, 2 / 7, 4 / 7]),
    (L(0.5, 0.25, 0.15, 0.1), smp.SamplingParams(1.0, top_p=0.7), [2 / 3, 1 / 3, 0, 0]),
    # the smallest set whose mass reaches top_p: 0.5 + 0.25 = 0.75 exactly
    (L(0.5, 0.25, 0.15, 0.1), smp.SamplingParams(1.0, top_p=0.75), [2 / 3, 1 / 3, 0, 0]),
    (L(0.5, 0.25, 0.15, 0.1), smp.SamplingParams(1.0, top_p=0.76), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0]),
    (L(0.1, 0.5, 0.15, 0.25), smp.SamplingParams(1.0, top_p=0.7), [0, 2 / 3, 0, 1 / 3]),  # order-free
    (L(0.9, 0.05, 0.05), smp.SamplingParams(1.0, top_p=0.1), [1, 0, 0]),  # the top token always stays
    # top-k first, then top-p on the renormalised top-k: [4/9, 3/9, 2/9] -> mass before the third is
    # 7/9 >= 0.75, so it goes; top-p alone would keep three tokens (mass before the third is 0.7)
    (L(0.4, 0.3, 0.2, 0.1), smp.SamplingParams(1.0, top_k=3, top_p=0.75), [4 / 7, 3 / 7, 0, 0]),
    (L(0.4, 0.3, 0.2, 0.1), smp.SamplingParams(1.0, top_p=0.75), [4 / 9, 3 / 9, 2 / 9, 0]),
    # temperature before top-p: T=0.5 squares the odds: [16, 9, 4, 1] / 30
    (L(0.4, 0.3, 0.2, 0.1), smp.SamplingParams(0.5, top_p=0.8), [16 / 25, 9 / 25, 0, 0]),
    (L(1, 2, 4), smp.SamplingParams(0.0), [0, 0, 1]),
    (L(1, 2, 4), smp.SamplingParams(0.0, top_k=1, top_p=0.1), [0, 0, 1]),
])
def test_probs_hand_computed(logits, params, expected):
    got = smp.probs(logits, params)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    # batched rows give the same answer as one row at a time
    torch.testing.assert_close(smp.probs(torch.stack([logits, logits.flip(0)]), params)[0], got)


def test_probs_of_float32_logits_are_float64_and_sum_to_one():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)).float() * 4
    for params in (T1, smp.SamplingParams(0.7, top_k=10, top_p=0.8), GREEDY):
        p = smp.probs(logits, params)
        assert p.dtype == torch.float64
        torch.testing.assert_close(p.sum(-1), torch.ones(3, dtype=torch.float64))


# ------------------------------------------------------------------------------------------ sample


def test_sample_never_returns_a_zero_probability_id(monkeypatch):
    dist = torch.tensor([0.0, 0.0, 0.25, 0.0, 0.75, 0.0], dtype=torch.float64)
    # the edges of the uniform: u = 0 (leading zeros), u -> 1 (trailing zeros), u on a cdf step
    for u, expected in [(0.0, 2), (1e-300, 2), (0.25, 2), (0.25 + 1e-12, 4), (1 - 2 ** -53, 4)]:
        monkeypatch.setattr(smp, "uniform", lambda gen, u=u: u)
        assert smp.sample(dist, torch.Generator()) == expected, u
    # an unnormalised residual (max(p - q, 0)) with zeros in front
    monkeypatch.setattr(smp, "uniform", lambda gen: 0.0)
    assert smp.sample(torch.tensor([0.0, 0.0, 0.0, 0.1, 0.0, 0.05], dtype=torch.float64), None) == 3
    monkeypatch.undo()
    gen = torch.Generator().manual_seed(3)
    draws = torch.tensor([smp.sample(dist, gen) for _ in range(4000)])
    counts = torch.bincount(draws, minlength=6)
    assert int(counts[dist == 0].sum()) == 0
    assert tv_sparse(draws, dist) <= tv_limits(dist, [4000])[0]


def test_sample_is_reproducible_and_uses_one_uniform_per_draw():
    dist = torch.softmax(torch.arange(8, dtype=torch.float64), 0)
    a, b = smp.make_generator(11), smp.make_generator(11)
    assert [smp.sample(dist, a) for _ in range(20)] == [smp.sample(dist, b) for _ in range(20)]
    # one uniform per draw: a row's later draws do not depend on how its earlier draws came out
    g1, g2 = smp.make_generator(5), smp.make_generator(5)
    smp.sample(dist, g1)
    smp.uniform(g2)
    assert smp.uniform(g1) == smp.uniform(g2)


# ------------------------------------------------------------------------------------------ row_seed


def test_row_seed_depends_only_on_run_seed_and_row_id():
    s = smp.row_seed(0, "r1")
    assert s == smp.row_seed(0, "r1")  # stable within and across processes (sha256, not hash())
    assert s == 7040451492823341336  # pinned: changing the derivation changes every past run's outputs
    assert 0 <= s < 2 ** 63
    assert len({smp.row_seed(run, rid) for run in (0, 1, 2) for rid in ("r1", "r2", "r10", "r1 ")}) == 12
    # no ambiguity between (run seed, row id) pairs that concatenate alike
    assert smp.row_seed(1, "2") != smp.row_seed(12, "")
    # the row's own seed wins, whatever the run seed or row id
    assert smp.row_seed(0, "r1", 42) == smp.row_seed(9, "other", 42) == 42
    assert smp.row_seed(0, "r1", 0) == 0  # a seed of 0 is a seed, not "unset"
