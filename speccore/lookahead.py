"""Lookahead policies: how many tokens k the drafter proposes at the next step.

Small pure objects, one instance per row (the engine builds them with `make_policy`), so all
state is per row. The engine calls, for every step of a row:

    k = policy.propose_k()                      # 0 = plain decoding, draft nothing
    ... after drafting token i (1-based): stop early if not policy.should_continue(i, top_prob) ...
    policy.observe(k, drafted, accepted, draft_s, verify_s)
    log(policy.decision())                      # what the choice was based on, for offline comparison

Words as in DESIGN.md section 3: accepted = draft tokens the target kept, bonus = the one token the
target adds per step, tokens per step = accepted + 1.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

__all__ = [
    "LookaheadPolicy", "Constant", "Heuristic", "ConfidenceStop", "CostModel", "CostAware",
    "Oracle", "expected_tokens", "oracle_k", "oracle_speedup", "policy_speedup",
    "fraction_of_oracle", "make_policy", "POLICY_NAMES", "batch_k",
]


@runtime_checkable
class LookaheadPolicy(Protocol):
    name: str

    def propose_k(self) -> int:
        """k for the next step; 0 means plain decoding (draft nothing)."""

    def should_continue(self, i: int, drafter_top_prob: float) -> bool:
        """After the drafter proposed its i-th token (1-based, kept) with top probability
        `drafter_top_prob`: False means draft no further tokens this step. A draft loop calls it for every
        token it drafts, the last one too (its answer is then moot), so a policy sees each confidence."""

    def observe(self, k: int, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        """The step's outcome: k proposed, `drafted` actually drafted (<= k), `accepted` kept."""

    def decision(self) -> dict:
        """The last decision and its inputs, for the steps log."""


class _Policy:
    """Defaults shared by the policies: no confidence stop, nothing learnt."""

    name = "base"
    # Set by the engine when its proposer reports the drafter's confidence while drafting (a model's draft
    # loop calls should_continue; prompt lookup does not), so a policy knows it from a row's first step.
    drafter_confidence = False

    def should_continue(self, i: int, drafter_top_prob: float) -> bool:
        return True

    def observe(self, k: int, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        pass

    def decision(self) -> dict:
        return dict(self._decision)


class Constant(_Policy):
    """The same k at every step."""

    name = "constant"

    def __init__(self, k: int = 5):
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = int(k)
        self._decision = {"policy": self.name, "k": self.k, "reason": "constant"}

    def propose_k(self) -> int:
        return self.k


class Heuristic(_Policy):
    """Transformers' schedule: +2 after a fully accepted draft, -1 otherwise, clamped to [k_min, k_max].

    Trades: reacts within a step or two and needs no costs, but it never drops to plain decoding
    (k_min >= 1), so it loses to k=0 where verification is expensive and acceptance low.
    """

    name = "heuristic"

    def __init__(self, k0: int = 5, k_min: int = 1, k_max: int = 16):
        if not 0 <= k_min <= k_max:
            raise ValueError(f"need 0 <= k_min <= k_max, got {k_min}, {k_max}")
        self.k_min, self.k_max = int(k_min), int(k_max)
        self.k = min(max(int(k0), self.k_min), self.k_max)
        self._decision = {"policy": self.name, "k": self.k, "reason": "initial"}

    def propose_k(self) -> int:
        return self.k

    def observe(self, k: int, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        full = k > 0 and accepted >= k  # as transformers: all k proposed were accepted
        self.k = min(max(self.k + (2 if full else -1), self.k_min), self.k_max)
        self._decision = {"policy": self.name, "k": self.k, "last_k": k, "last_accepted": accepted,
                          "reason": "full_accept" if full else "rejection"}


class ConfidenceStop(_Policy):
    """Propose k_max; stop drafting after a token whose drafter top probability is under `threshold`.

    Trades: a cheap per-token signal of the drafter's own uncertainty, against drafts cut short
    when the drafter is unsure yet right (and drafts run long when it is sure yet wrong).
    """

    name = "confidence"

    def __init__(self, k_max: int = 16, threshold: float = 0.4):
        if k_max < 0 or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"need k_max >= 0 and threshold in [0, 1], got {k_max}, {threshold}")
        self.k_max, self.threshold = int(k_max), float(threshold)
        self._decision = {"policy": self.name, "k": self.k_max, "threshold": self.threshold,
                          "reason": "k_max"}

    def propose_k(self) -> int:
        return self.k_max

    def should_continue(self, i: int, drafter_top_prob: float) -> bool:
        return drafter_top_prob >= self.threshold

    def observe(self, k: int, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        self._decision = {"policy": self.name, "k": self.k_max, "threshold": self.threshold,
                          "last_drafted": drafted, "last_accepted": accepted,
                          "reason": "confidence_stop" if drafted < k else "k_max"}


# ---------------------------------------------------------------------------------------------
# Costs, in units of one plain (one-token) target step.

# DESIGN.md section 9, eager fp32 on the CPU machines: target forward over k+1 tokens / one token.
DEFAULT_V: dict[int, float] = {0: 1.00, 1: 2.11, 3: 2.62, 5: 2.82, 7: 2.92}
DEFAULT_C = 0.18  # SmolLM2-135M step (~83 ms) / 1.5B step (~470 ms)
# A drafted step's verify, divided by the plain step time, is a cost ratio while a plain step was timed within
# this many target forwards; later, the machine's speed may have moved (CostModel).
FRESH_FORWARDS = 8
# A prompt forward over fewer cells (rows x columns) than this is bound by streaming the weights, not by
# compute, so it says nothing about the seconds per token of a wide forward.
PREFILL_MIN_CELLS = 64
# A batch of rows drafts only where that beats plain decoding by this factor (see batch_k).
BATCH_MARGIN = 1.1
# The pair's acceptance starts as this many trials at alpha = 0.5 (CostModel.pair_alpha): about what a few
# rows' first drafts add, so that it takes more than one unlucky row to turn a pair off.
PAIR_PRIOR_TRIALS = 8.0
# Upper edges of the drafter top-probability bins of the pair's calibration (CostModel.accept_prob), and the
# pseudo-trials each bin starts with at its own midpoint (a drafter's confidence, taken at its word).
CONFIDENCE_EDGES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0)
CALIBRATION_PRIOR = 4.0


def confidence_bin(top: float) -> int:
    """The CONFIDENCE_EDGES bin of a drafter top probability."""
    return min(bisect.bisect_left(CONFIDENCE_EDGES, top), len(CONFIDENCE_EDGES) - 1)


# A row's tokens per cost (CostAware.rate) starts as this many plain steps: the cost stop then prices a fresh
# row's tokens at their cost alone, and more dearly as the row's drafts pay.
RATE_PRIOR_STEPS = 2.0


def non_decreasing(points: Mapping[int, float], weights: Mapping[int, float] | None = None) -> dict[int, float]:
    """The points with every run that falls as k grows replaced by its weighted mean (pool adjacent violators;
    a point weighs 1 unless `weights` says otherwise): a forward over more tokens never costs less, so a dip is
    timing noise."""
    blocks: list[list] = []  # [weighted sum, weight, ks] of pooled runs, their means non-decreasing
    for k in sorted(points):
        w = 1.0 if weights is None else float(weights.get(k, 1.0))
        blocks.append([w * float(points[k]), w, [k]])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, n, ks = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += n
            blocks[-1][2] += ks
    return {k: total / n for total, n, ks in blocks for k in ks}


def _curve(points: Mapping[int, float]) -> Callable[[int], float]:
    """Piecewise-linear through the points; beyond the last point, the last segment's slope."""
    ks = sorted(points)
    vs = [float(points[k]) for k in ks]
    if len(ks) == 1:
        return lambda k: vs[0]

    def v(k: int) -> float:
        j = min(max(bisect.bisect_right(ks, k) - 1, 0), len(ks) - 2)
        k0, k1 = ks[j], ks[j + 1]
        return vs[j] + (vs[j + 1] - vs[j]) * (k - k0) / (k1 - k0)

    return v


@dataclass
class _Timings:
    """What a CostModel measured at one batch size: the plain step's seconds, and the other costs as ratios
    to the plain step measured alongside them (EWMA)."""

    t1: float | None = None  # seconds per plain step, now: the machine's current speed
    since_plain: int = 0  # target forwards since the last plain step
    v: dict[int, float] = field(default_factory=dict)  # drafted -> verify seconds / t1
    n: dict[int, int] = field(default_factory=dict)  # drafted -> verifies folded into v or verify_s
    c: float | None = None  # draft seconds per drafted token / t1
    # Before the first plain step there is no t1 to divide by: seconds, turned into ratios at that step.
    verify_s: dict[int, float] = field(default_factory=dict)
    draft_tok_s: float | None = None


class CostModel:
    """Draft cost c (per drafted token) and verify cost v(k) (target forward over k+1 tokens),
    both relative to one plain target step. One object is shared by all rows of an engine.

    `v` is a sequence (v[k] for k = 0, 1, ...), a {k: v} mapping of measured points (interpolated),
    or a callable. `update` folds measured timings in (EWMA, weight `ewma` for the new sample): the plain
    step time t1 (from k=0 steps or `set_step_time`), and each drafted step's verify seconds and draft
    seconds per token as ratios to t1. Until t1 is measured, the prior curve anchors it (t1 ~ verify_s /
    v_prior(k)), so c is still learnt relative to the target while v stays the prior.

    Ratios, not seconds, because the machine's speed drifts: on the shared 2-core CPU a plain step took
    286, 413 and 526 ms in three runs of one script within ten minutes, while v(1) stayed 1.10-1.13. Kept
    as seconds, a verify timed in a slow minute and divided by plain steps timed in a fast one read v(1) =
    1.3 (the isolated 1.1), which sent 124 of 154 steps of a batch-1 run plain; the other way round, v read
    cheap. So a drafted step teaches a ratio only while a plain step was timed within FRESH_FORWARDS
    forwards; after that (a row that drafts every step), its verify instead keeps t1 current at the ratio
    known for its width (t1 ~ verify_s / v(k)), and c is read against that t1.

    Costs depend on the rows per forward: on the 2-core CPU a plain step of 8 rows costs 1.5 one-row steps,
    and v(7) is 3.4 at 8 rows against 1.6 at one. So timings are kept per batch size (`batch_size`, which the
    engine sets before each step; rows that finish shrink it), and a batch size not measured yet starts from
    the priors, not from another size's costs.

    It also keeps the pair's acceptance (`observe_acceptance`, `pair_alpha`, `pair_first_accept`): a row's
    cost-aware policy starts from it instead of a blind prior, so a new row does not go plain on its first
    rejection when the pair is known to be good.

    Two rates say what wide forwards cost, whatever the batch size: the target's seconds per cell (row x
    column) of a prompt forward (`observe_prefill`), where compute, not weight streaming, sets the time; and
    the drafter's seconds per cell of a catch-up (`observe_catch_up`: its first draft over a prompt, or over
    the tokens of plain steps). The first predicts v(k) where it was not measured (see `v`), which is what
    the one-row priors miss at 16 rows (v(16) is 10, not 4). The second prices a probe's catch-up
    (`catch_up_steps`).
    """

    def __init__(self, c: float = DEFAULT_C,
                 v: Sequence[float] | Mapping[int, float] | Callable[[int], float] | None = None,
                 ewma: float = 0.2):
        if v is None:
            v = DEFAULT_V
        if isinstance(v, Mapping):
            v = _curve(non_decreasing(v))
        elif not callable(v):
            v = _curve(non_decreasing(dict(enumerate(v))))
        self._c_prior = float(c)
        self._v_prior: Callable[[int], float] = v
        self.ewma = float(ewma)
        # Rows per forward of the steps being decided and measured; the engine sets it before each step.
        self.batch_size = 1
        self._at: dict[int, _Timings] = {}
        self._acc_s = self._acc_n = 0.0  # the pair's discounted accepted tokens and trials
        self._first_s = self._first_n = 0.0  # the pair's discounted drafts whose first token was kept, and drafts
        # Per confidence bin, for a draft's first token ([0]) and for its later ones ([1]): discounted accepted
        # tokens and trials. Apart, because a draft's first token comes after the target's correction: with
        # smollm2 and gemma (SLEM, HumanEval) the target kept about half of the first tokens and 76-88% of the
        # second ones in most runs (BENCHMARKS.md), and one pooled calibration, fed mostly first tokens, priced
        # the second ones as first ones and ended most drafts after one token.
        self._cal_s = [[0.0] * len(CONFIDENCE_EDGES) for _ in range(2)]
        self._cal_n = [[0.0] * len(CONFIDENCE_EDGES) for _ in range(2)]
        self._prefill_cell_s: float | None = None  # target seconds per cell of a prompt forward
        self._catch_up_cell_s: float | None = None  # drafter seconds per cell of a catch-up
        # c and v(k) read back until the next measurement: every row's propose_k prices k = 0..k_max each
        # step, which at 64 rows took 6.7 ms a step on the CPU host, against a GPU step of 20-30 ms.
        self._version = 0
        self._memo: dict = {}
        self._memo_key: tuple[int, int] | None = None

    @property
    def _m(self) -> _Timings:
        """Timings at the current batch size, to read (an empty record where nothing was measured yet)."""
        return self._at.get(self.batch_size) or _Timings()

    @property
    def _record(self) -> _Timings:
        """Timings at the current batch size, to write."""
        return self._at.setdefault(self.batch_size, _Timings())

    def _avg(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.ewma) * old + self.ewma * new

    def _memoised(self, key, compute: Callable[[], float]) -> float:
        at = (self.batch_size, self._version)
        if self._memo_key != at:
            self._memo, self._memo_key = {}, at
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def set_step_time(self, seconds: float) -> None:
        """Measured plain (one-token) target step time, e.g. from a warm-up step."""
        self._version += 1
        m = self._record
        m.t1 = self._avg(m.t1, float(seconds))
        m.since_plain = 0
        if m.verify_s or m.draft_tok_s is not None:  # seconds timed before the first plain step: ratios now
            m.v.update({k: s / m.t1 for k, s in m.verify_s.items()})
            if m.draft_tok_s is not None:
                m.c = m.draft_tok_s / m.t1
            m.verify_s, m.draft_tok_s = {}, None

    def update(self, drafted: int, draft_s: float, verify_s: float) -> None:
        """Fold in one step's timings; drafted = draft tokens the target verified (0 = plain step)."""
        if verify_s <= 0:
            return
        if drafted == 0:
            self.set_step_time(verify_s)
            return
        self._version += 1
        m = self._record
        m.since_plain += 1
        per_tok = draft_s / drafted if draft_s > 0 else None
        if m.t1 is None:
            m.n[drafted] = m.n.get(drafted, 0) + 1
            m.verify_s[drafted] = self._avg(m.verify_s.get(drafted), float(verify_s))
            if per_tok is not None:
                m.draft_tok_s = self._avg(m.draft_tok_s, per_tok)
            return
        if m.since_plain <= FRESH_FORWARDS:  # t1 is this minute's: the step's ratio to it is a cost
            m.n[drafted] = m.n.get(drafted, 0) + 1
            m.v[drafted] = self._avg(m.v.get(drafted), verify_s / m.t1)
        else:  # t1 may be another minute's: the step says how fast the machine runs now
            m.t1 = self._avg(m.t1, verify_s / self.v(drafted))
        if per_tok is not None:
            m.c = self._avg(m.c, per_tok / m.t1)

    def observe_prefill(self, cells: int, seconds: float) -> None:
        """A target forward over `cells` prompt tokens (rows x longest prompt, padding included) took `seconds`."""
        if cells >= PREFILL_MIN_CELLS and seconds > 0:
            self._version += 1
            self._prefill_cell_s = self._avg(self._prefill_cell_s, seconds / cells)

    def observe_catch_up(self, cells: int, seconds: float) -> None:
        """The drafter's catch-up over `cells` (rows x longest feed) took `seconds` beyond a steady forward."""
        if cells > 0 and seconds > 0:
            self._catch_up_cell_s = self._avg(self._catch_up_cell_s, seconds / cells)

    @property
    def step_time(self) -> float | None:
        """Seconds of a plain step at the current batch size, once measured."""
        return self._m.t1

    def catch_up_steps(self, cells: int) -> float:
        """What a drafter catch-up over `cells` costs, in plain steps at the current batch size: measured
        catch-ups, else the drafter's relative cost c times the target's prompt rate (dearer than the truth on
        the CPU: a drafter's step is bound by its weights, its prompt forward by compute); 0 if neither rate
        or no step time is known yet."""
        t1 = self._m.t1
        rate = self._catch_up_cell_s
        if rate is None and self._prefill_cell_s is not None:
            rate = self.c * self._prefill_cell_s
        return cells * rate / t1 if cells > 0 and rate and t1 else 0.0

    @property
    def measured(self) -> bool:
        """Whether a plain step and a verify have been timed at the current batch size."""
        return self._m.t1 is not None and bool(self._m.v)

    def observe_acceptance(self, drafted: int, accepted: int, decay: float = 0.99) -> None:
        """One row's step: `accepted` of `drafted` draft tokens kept (trials as in CostAware.observe)."""
        if drafted > 0:
            self._acc_s = decay * self._acc_s + accepted
            self._acc_n = decay * self._acc_n + accepted + (1 if accepted < drafted else 0)
            self._first_s = decay * self._first_s + (accepted > 0)
            self._first_n = decay * self._first_n + 1

    def observe_confidences(self, tops: Sequence[float], drafted: int, accepted: int, decay: float = 0.99) -> None:
        """One row's step: the drafter's top probability of each drafted token, in order (`drafted` of them),
        `accepted` kept. Token j <= accepted was accepted and token accepted + 1 rejected, each given that the
        tokens before it were accepted; later tokens were never tried."""
        # A cross-vocab draft is re-encoded into target tokens: where their count differs from the drafter
        # tokens' there is nothing to pair; where it is the same (SLEM on like tokenizers), token j is read as j.
        if drafted <= 0 or len(tops) != drafted:
            return
        self._cal_s = [[decay * x for x in row] for row in self._cal_s]
        self._cal_n = [[decay * x for x in row] for row in self._cal_n]
        for j, p in enumerate(tops[: accepted + 1]):
            b = confidence_bin(p)
            self._cal_n[j > 0][b] += 1
            self._cal_s[j > 0][b] += j < accepted

    def accept_prob(self, top: float, first: bool = False) -> float:
        """P(a drafted token is accepted | its drafter top probability, the tokens before it accepted): the
        pair's calibration for a draft's first token or for a later one, starting at the drafter's own word
        (the bin's midpoint)."""
        b = confidence_bin(top)
        mid = (CONFIDENCE_EDGES[b] + (CONFIDENCE_EDGES[b - 1] if b else 0.0)) / 2
        return (self._cal_s[not first][b] + CALIBRATION_PRIOR * mid) / (self._cal_n[not first][b] + CALIBRATION_PRIOR)

    @property
    def pair_alpha(self) -> float | None:
        """The pair's per-token acceptance over the steps observed so far (None before any), smoothed by
        PAIR_PRIOR_TRIALS at 0.5: one rejected warm-up draft read as alpha = 0 (or 0.25 with 2 trials) started
        every later row plain, and their probes waited longer than the rows lasted."""
        return _pair_rate(self._acc_s, self._acc_n)

    @property
    def pair_first_accept(self) -> float | None:
        """The pair's rate of drafts whose first token was accepted (None before any), smoothed as pair_alpha.
        Not alpha, which pools a draft's tokens: with SLEM pairs a draft's first token is kept far less often
        than the ones after it (about half, against 76-88% for the second)."""
        return _pair_rate(self._first_s, self._first_n)

    def _anchor(self) -> float | None:
        """Seconds of one plain target step before any was timed, as the prior v curve implies them."""
        if not self._m.verify_s:
            return None
        implied = [s / self._v_prior(k) for k, s in self._m.verify_s.items()]
        return sum(implied) / len(implied)

    @property
    def c(self) -> float:
        return self._memoised("c", self._c)

    def _c(self) -> float:
        m = self._m
        if m.c is not None:
            return m.c
        t1 = self._anchor()
        if m.draft_tok_s is None or not t1:
            return self._c_prior
        return m.draft_tok_s / t1

    def v(self, k: int) -> float:
        """v(k): measured where k was measured; between measured points, interpolated. Elsewhere, once the
        plain step at this batch size and the target's prompt rate are known, a forward is a fixed cost plus
        the prompt rate per extra cell: each drafted token adds B cells, so v(k) = 1 + B*k*rate/t1 (from the
        nearest measured point, if any). On the 2-core CPU that predicted v(7) = 1.5 at one row, v(3) = 2.6 and
        v(16) = 9.7 at 16 rows, against 1.5-1.6, 2.55 and 10.4 measured. Before that, the prior, scaled to the
        nearest measured point: a prior off by a factor steers only until one k is measured."""
        return 1.0 if k == 0 else self._memoised(k, lambda: self._v(k))

    def _v(self, k: int) -> float:
        m = self._m
        if m.t1 is None:  # timed before any plain step: the prior's shape through those points
            t1 = self._anchor()
            return self._v_scaled(non_decreasing({j: s / t1 for j, s in m.verify_s.items()}, self._weights()), k)
        points = self._memoised("points", self._points)
        slope = self.batch_size * self._prefill_cell_s / m.t1 if self._prefill_cell_s else None
        if slope is not None and not min(points, default=0) <= k <= max(points, default=-1):
            near = min(points, key=lambda j: abs(j - k), default=0)
            return max(1.0, points.get(near, 1.0) + slope * (k - near))
        return self._v_scaled(points, k)

    def _weights(self) -> dict[int, float]:
        """Each measured width's weight in `_points`: the verifies folded into it, up to what an EWMA retains
        ((2 - ewma) / ewma samples' worth: its variance is ewma / (2 - ewma) of one sample's)."""
        cap = (2 - self.ewma) / self.ewma if self.ewma > 0 else float("inf")
        return {k: min(n, cap) for k, n in self._m.n.items()}

    def _points(self) -> dict[int, float]:
        """The measured v ratios, pooled where they fall as k grows (`non_decreasing`), each weighing the
        verifies behind it. Few verifies teach a ratio (those within FRESH_FORWARDS of a plain step), and a width
        is re-timed only when a step drafts exactly that many tokens. In one smollm2 run (SLEM, 4 HumanEval
        rows) v(2) read 1.39 beside v(1) 1.16 and v(3) 1.23: the cost stop priced every second drafted token at
        c + 0.23, ended 51 of its 85 drafts after the first token, and so seldom timed v(2) again. Pooled, the
        same run stopped drafts after 1, 2 and 3 tokens about equally often (BENCHMARKS.md)."""
        return non_decreasing(self._m.v, self._weights())

    def _v_scaled(self, points: Mapping[int, float], k: int) -> float:
        """v(k) from measured ratios: k itself, else interpolated between two, else the prior's shape
        scaled to the nearest (the prior itself where none was measured)."""
        if not points:
            return float(self._v_prior(k))
        if k in points:
            return points[k]
        ks = sorted(points)
        j = bisect.bisect_left(ks, k)
        if 0 < j < len(ks):
            k0, k1 = ks[j - 1], ks[j]
            return points[k0] + (points[k1] - points[k0]) * (k - k0) / (k1 - k0)
        near = ks[0] if j == 0 else ks[-1]
        return points[near] * float(self._v_prior(k)) / float(self._v_prior(near))

    def step_cost(self, k: int) -> float:
        """Cost of a step that drafts k tokens; a plain step (k=0) costs 1."""
        return 1.0 if k == 0 else k * self.c + self.v(k)

    def step_costs(self, k_max: int) -> tuple[float, ...]:
        """step_cost(k) for k = 0..k_max, computed once per measurement."""
        return self._memoised(("steps", k_max), lambda: tuple(self.step_cost(k) for k in range(k_max + 1)))

    def can_pay(self, k_max: int, margin: float = 1.0) -> bool:
        """Whether some k in 1..k_max could beat plain decoding by `margin` even at alpha = 1 (E(k) <= k + 1),
        computed once per measurement. Where none can, every row's and every batch's best k is 0 without
        pricing it: at 64 rows on a GPU, whose 135M drafter costs a target step, pricing k = 0..16 for each
        row every step was host work the AR engine beside it does not do."""
        return self._memoised(("pays", k_max, margin),
                              lambda: any(k + 1 > margin * c for k, c in enumerate(self.step_costs(k_max)) if k))

    def snapshot(self) -> dict:
        return {"c": self.c, "t1_s": self._m.t1, "v_measured": sorted(self._m.v),
                "pair_alpha": self.pair_alpha, "pair_first_accept": self.pair_first_accept,
                "batch_size": self.batch_size, "batch_sizes_measured": sorted(self._at),
                "prefill_cell_s": self._prefill_cell_s, "catch_up_cell_s": self._catch_up_cell_s}


def _pair_rate(successes: float, trials: float) -> float | None:
    """A pair-level rate smoothed by PAIR_PRIOR_TRIALS at 0.5; None before any trial."""
    return None if trials <= 0 else (successes + 0.5 * PAIR_PRIOR_TRIALS) / (trials + PAIR_PRIOR_TRIALS)


EXPECTED_CURVE_LEN = 16  # E(0..16) of one alpha at once: a row's propose_k and the batch's batch_k read them all


def expected_tokens(alpha: float, k: int) -> float:
    """E(k) = 1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha); k+1 at alpha = 1."""
    return _expected_curve(float(alpha), max(int(k), EXPECTED_CURVE_LEN))[k]


@functools.lru_cache(maxsize=4096)
def _expected_curve(alpha: float, k_max: int) -> tuple[float, ...]:
    """E(0), ..., E(k_max), each the same left-to-right sum of alpha^i that sum() gives."""
    return tuple(itertools.accumulate(alpha ** i for i in range(k_max + 1)))


class CostAware(_Policy):
    """Choose k in 0..k_max maximising E(k) / (k*c + v(k)); k = 0 (plain) unless some k beats it. Where the
    drafter reports confidences and the cost stop ends each draft, a step drafts (to k_max, until the stop)
    when its first token pays for itself instead: first_accept >= c + v(1) - v(0).

    alpha (per-token acceptance) is a Beta posterior whose evidence decays by `decay` per observed
    step, so it follows a row whose text changes (window ~ 1/(1 - decay) steps). A step with
    accepted < drafted is `accepted` successes then one failure; a fully accepted draft is
    `accepted` successes and no failure (what would come next is unknown). The prior
    Beta(s*alpha_prior, s*(1-alpha_prior)), s = prior_strength, carries a pair-level estimate shared
    by the rows: with alpha_prior=None it is the cost model's `pair_alpha` (0.5 until the pair has drafted), and
    first_accept's is the pair's first-token rate (`pair_first_accept`).
    """

    name = "cost"

    def __init__(self, k_max: int = 16, cost_model: CostModel | None = None,
                 alpha_prior: float | None = None, prior_strength: float = 2.0, decay: float = 0.95,
                 probe_every: int = 8, probe_max: int = 64, probe_k: int = 3,
                 learn_costs: bool = True, confidence_threshold: float | None = 0.4,
                 probe_budget: float | None = 0.03, stop: str = "cost", first_prior_strength: float = 8.0):
        if (alpha_prior is not None and not 0.0 <= alpha_prior <= 1.0) or prior_strength <= 0 \
                or first_prior_strength <= 0 or not 0.0 < decay <= 1.0:
            raise ValueError("need alpha_prior in [0, 1], prior_strength > 0, first_prior_strength > 0, "
                             "decay in (0, 1]")
        self.k_max = int(k_max)
        self.cost_model = cost_model if cost_model is not None else CostModel()
        self.alpha_prior, self.prior_strength, self.decay = alpha_prior, prior_strength, decay
        # first_accept's prior weighs more than alpha's: whether a step drafts at all turns on it, and with SLEM
        # pairs a draft's first token is kept about half the time, row after row, with little to tell the rows
        # apart. At alpha's strength of 2, two rejected first tokens put a row under the break-even (0.21 with
        # smollm2) and it went plain for 8-11 steps. Replayed on 8 HumanEval rows: 76% of the oracle at 2, 77% at 8
        # (67% and 76% in a replay that also drafted from the prompt's own token, which the engine never does);
        # in the bench it did not beat the confidence stop (BENCHMARKS.md). Same-vocab replays do not move.
        self.first_prior_strength = float(first_prior_strength)
        self.probe_every, self.probe_max = int(probe_every), max(int(probe_max), int(probe_every))
        self.probe_k = max(1, min(int(probe_k), self.k_max))
        # Probes may cost at most this fraction of plain decoding, once the costs at this batch size are
        # measured: a probe that loses L plain steps waits at least L / probe_budget plain steps. At 8 rows
        # on the CPU a probe loses about 1 step (v(3) ~ 2), and the backoff alone (8, 16, 32 steps) made
        # speculation 8-10% slower than batched AR. None: the backoff alone.
        if probe_budget is not None and probe_budget <= 0:
            raise ValueError(f"need probe_budget > 0 or None, got {probe_budget}")
        self.probe_budget = probe_budget
        # In a batch engine, rows share one step's timings: pass learn_costs=False there and call
        # cost_model.update once per step instead of once per row.
        self.learn_costs = learn_costs
        # Acceptance comes in bursts (a copied line, boilerplate), which an i.i.d. alpha cannot see: it
        # drafts a short k* where a whole run would have passed, and a k* token the drafter is unsure of is
        # far likelier rejected than alpha says. So once the proposer is seen to report drafter confidences
        # (a model's draft loop calls should_continue), alpha and the costs decide only whether a step
        # drafts at all; one that does proposes k_max and drafts until the stop below ends it (one same-vocab
        # run, with the threshold as the stop: cost-aware forcing k* first 1.33x own AR, confidence 1.47x).
        # None: drafts stop at k*. The engine says up front whether its proposer reports confidences
        # (drafter_confidence); a proposer that does not say is found out at its first should_continue call.
        # (Found out only, each row's first draft went to k* with no stop: 1.54x own AR against confidence's
        # 1.67x with an int8 0.5B drafter, one row's first step at k=8 drafting 8 tokens for 0 accepted.)
        if confidence_threshold is not None and not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(f"need confidence_threshold in [0, 1] or None, got {confidence_threshold}")
        self.confidence_threshold = confidence_threshold
        # How a drafting step stops (with drafter confidences and a threshold): "cost" drafts the next token
        # while P(every token so far accepted) x P(the next one accepted) >= what it costs (c + the verify's
        # extra width) times the row's tokens per cost so far (`rate`), or while drafting on to some later
        # token pays that way as a whole (`_drafting_on_pays`: a step in v), each token's P read off the pair's
        # calibration of the drafter's top probability (CostModel.accept_prob), the next token's taken as the
        # last one's (as a later token's: the first token has a calibration of its own); "confidence" stops
        # after a token under the threshold. Replayed on 10 HumanEval and 10 ShareGPT traces with the int8
        # 0.5B drafter (bench/replay.py): cost 84% / 73% of the oracle, confidence 79% / 64% (BENCHMARKS.md);
        # in the bench, 87% / 71% against 81% / 64%, and 2.36x / 1.56x own AR against 2.05x / 1.38x.
        if stop not in ("cost", "confidence"):
            raise ValueError(f"need stop 'cost' or 'confidence', got {stop!r}")
        self.stop = stop
        self._tops: list[float] = []  # the drafter's top probability of each token drafted this step
        self._p_all = 1.0  # P(every token drafted so far this step is accepted)
        self._confidence_seen = False
        self._stop_on_confidence = False  # this step drafts while the drafter is confident
        self._s = 0.0  # discounted successes
        self._n = 0.0  # discounted trials
        self._fs = self._fn = 0.0  # discounted drafting steps whose first token was accepted, and drafting steps
        self._tokens = self._cost = 0.0  # discounted tokens the row's steps yielded, and what they cost
        # Consecutive k=0 steps, and how many of them before the next probe. The gap starts at 0:
        # the row probes at once, as the prior alone is no evidence that the drafter is useless.
        self._gap = 0
        self._plain_run = 0
        # The last probe drafted nothing (prompt lookup found no match) on a row decoding alone: it was a plain
        # step that taught nothing, so the next step probes again instead of waiting out another gap. Prompt
        # lookup on HumanEval found no match in 3 of one row's 4 probes, which then came 8, 16 and 32 steps apart
        # (BENCHMARKS.md). In a batch, a probe is verified at its width whoever drafts it (batch_k), so it was paid.
        self._probe_again = False
        self._decision: dict[str, Any] = {"policy": self.name, "reason": "initial"}

    def _prior(self, pair: float | None) -> float:
        """The prior mean of alpha or first_accept: alpha_prior, else the pair's rate (0.5 before any)."""
        if self.alpha_prior is not None:
            return self.alpha_prior
        return 0.5 if pair is None else pair

    @property
    def alpha(self) -> float:
        prior = self._prior(self.cost_model.pair_alpha)
        return (self.prior_strength * prior + self._s) / (self.prior_strength + self._n)

    @property
    def rate(self) -> float:
        """The row's tokens per cost so far (plain decoding = 1), with the same decay as alpha, from a prior
        of RATE_PRIOR_STEPS plain steps; never under 1, as the row can always decode plainly.

        The cost stop prices a drafted token against it: the aim is tokens per cost, so a token is worth
        drafting only if it adds more tokens per unit of cost than the row's steps make on average
        (Dinkelbach's rule for a ratio), not merely more than it costs. Without it, on HumanEval traces the
        rule drafted until P(accepted) fell to c + the verify's extra width (about 0.22), where the best
        threshold fitted in hindsight is 0.5-0.66 (`bench.replay bounds`); with it, cost-aware replays at
        83-85% of the oracle on 24 HumanEval rows, against 80-83% (BENCHMARKS.md)."""
        return max(1.0, (self._tokens + RATE_PRIOR_STEPS) / (self._cost + RATE_PRIOR_STEPS))

    @property
    def first_accept(self) -> float:
        """P(a step's first drafted token is accepted): a Beta posterior over this row's drafting steps, from
        the pair's first-token rate (or alpha_prior), at first_prior_strength, with alpha's decay."""
        prior = self._prior(self.cost_model.pair_first_accept)
        return (self.first_prior_strength * prior + self._fs) / (self.first_prior_strength + self._fn)

    def propose_k(self) -> int:
        alpha, cm = self.alpha, self.cost_model
        best = k = 0
        if cm.can_pay(self.k_max):  # else no k beats E(0) / 1 = 1: plain, unpriced
            scores = [e / cost for e, cost in zip(_curves([alpha], self.k_max)[0], cm.step_costs(self.k_max))]
            best = k = max(range(len(scores)), key=lambda j: (scores[j], -j))  # ties -> smaller k
        reason = "argmax" if k > 0 else "plain"
        # Under the cost stop, a drafting step runs until the next token no longer pays, which is worth more
        # than the fixed k that alpha prices: with smollm2 (SLEM), two rejected first tokens put a row's alpha
        # at 0.27-0.35, where no fixed k beats plain decoding, and the row went plain for 13-21 steps while
        # first tokens were accepted 52-55% of the time (BENCHMARKS.md). So there the row drafts whenever its
        # first token pays for itself: P(first accepted) >= c + v(1) - v(0), what a one-token draft adds.
        first = None
        if self._stop_rules_draft():
            first = self.first_accept
            k = self.k_max if first >= cm.c + cm.v(1) - 1.0 else 0  # argmax_k in the log stays k*
            reason = "first_token" if k > 0 else "plain"
        # k = 0 teaches nothing about alpha, so a row that went plain would stay plain forever.
        # Probe: after `gap` plain steps, draft probe_k tokens once. A probe with a rejection
        # doubles the gap (probe_every, 2x, ... up to probe_max); a fully accepted one probes again
        # at once; speculating resets the gap. Trades: a probe costs probe_k*c + v(probe_k) for
        # ~1 token at alpha ~ 0 (3 plain steps with the CPU costs): a fixed gap of 8 loses ~15%
        # there, the backoff ~3%; in exchange the row notices within probe_max plain steps when
        # its text turns predictable (code, copies from the prompt).
        wait = self._probe_wait(alpha, first) if k == 0 else 0
        if k == 0 and self.k_max > 0:
            if self._plain_run >= wait or self._probe_again:
                k, reason, self._plain_run = self.probe_k, "probe", 0
            else:
                self._plain_run += 1
        elif k > 0:
            self._plain_run, self._gap = 0, self.probe_every
        self._stop_on_confidence = False
        self._tops, self._p_all = [], 1.0
        e_k = expected_tokens(alpha, k)
        self._decision = {"policy": self.name, "k": k, "reason": reason, "alpha": alpha, "c": cm.c, "v_k": cm.v(k),
                          "expected_tokens": e_k, "tokens_per_cost": e_k / cm.step_cost(k), "argmax_k": best,
                          "probe_wait": wait}
        if first is not None:
            self._decision["first_accept"] = first
        # A probe too: it is how a plain row finds a burst, and the drafter's confidence finds its end.
        if reason in ("argmax", "first_token", "probe") and self._stops_on_confidence():
            self._stop_on_confidence, k = True, self.k_max
            self._decision.update(k=k, reason="argmax+confidence" if reason == "argmax" else reason,
                                  cost_k=self._decision["k"], threshold=self.confidence_threshold, stop=self.stop,
                                  rate=self.rate)
        return k

    def _stops_on_confidence(self) -> bool:
        """Whether a drafting step drafts to k_max and lets the stop end it (the proposer reports confidences)."""
        return self.confidence_threshold is not None and (self._confidence_seen or self.drafter_confidence)

    def _stop_rules_draft(self) -> bool:
        """Whether draft-or-not follows the first token's value (the cost stop ends each draft) instead of k*."""
        return self.stop == "cost" and self.k_max > 0 and self._stops_on_confidence()

    def _probe_wait(self, alpha: float, first: float | None) -> int:
        """Plain steps before a plain row's next probe: the backoff and the probe budget, or, where the cost
        stop ends the probe of a row decoding alone, the budget alone, priced at the probe's first token.

        Under the cost stop a probe drafts on only while the next token pays for itself, so what a probe can
        lose is its first token's: c + v(1) - v(0) - first_accept plain steps (0.26 at most with smollm2), not
        probe_k tokens at alpha (0.5 with smollm2 at alpha 0.1, a wait of 17). The budget then bounds the probes'
        cost by itself, and the backoff is not needed: with it, one ShareGPT row whose first 5 drafts were
        rejected went plain for 60 of its 64 tokens (its 2 probes, 20 steps apart, were rejected too), while
        one-token drafts at its next 36 steps are kept 22 times in its trace (BENCHMARKS.md). In a batch every
        row pays the probe's full width (batch_k), so there the backoff and the budget at probe_k stay."""
        cm = self.cost_model
        if first is not None and cm.batch_size == 1 and self.probe_budget is not None and cm.measured:
            return self._budget_gap(cm.c + cm.v(1) - 1.0 - first)
        return max(self._gap, self._budget_gap(cm.step_cost(self.probe_k) - expected_tokens(alpha, self.probe_k)))

    def _budget_gap(self, loss: float) -> int:
        """Plain steps a probe that loses `loss` plain steps must wait so that probing costs at most
        probe_budget of plain decoding (0 until the costs at this batch size are measured: the priors alone
        are no evidence that probing is dear)."""
        if self.probe_budget is None or not self.cost_model.measured:
            return 0
        return math.ceil(loss / self.probe_budget) if loss > 0 else 0

    def should_continue(self, i: int, drafter_top_prob: float) -> bool:
        self._confidence_seen = True
        self._tops.append(drafter_top_prob)
        if not self._stop_on_confidence:
            return True
        if self.stop == "confidence":
            return drafter_top_prob >= self.confidence_threshold
        cm = self.cost_model
        later = cm.accept_prob(drafter_top_prob)  # the next token's P, read as this token's would be were it later
        self._p_all *= cm.accept_prob(drafter_top_prob, first=True) if i == 1 else later
        return self._drafting_on_pays(i, later)

    def _drafting_on_pays(self, i: int, later: float) -> bool:
        """Whether drafting on from token i to some j <= k_max pays: the tokens it adds, P(all so far) x (later +
        later^2 + ... + later^(j - i)), at least the row's rate times what they cost, (j - i) c + v(j) - v(i).

        Where each extra verify width costs at least the last (v convex) this is the next token's test alone.
        A measured v has steps: oneDNN's kernels change blocking at some widths, and a width timed in a slow
        moment is seldom re-timed once the stop ends drafts before it. Priced one token at a time, such a step
        ended drafts in front of it. In a 10-prompt, 128-token HumanEval run the 0.5B pair's stop ended 102 of
        178 drafts at 2 tokens, all kept, and it trailed the confidence stop (2.06x own AR against 2.13x). In
        replays decided at v curves with such a step and priced at the run's measured costs, the one-token test
        reached 80-83% of the oracle on HumanEval and this one 84-86% (BENCHMARKS.md)."""
        cm, gain, p = self.cost_model, 0.0, self._p_all
        rate, c, v_i = self.rate, cm.c, cm.v(i)  # fixed for the whole scan: read once, not per width
        for j in range(i + 1, self.k_max + 1):
            p *= later
            gain += p
            if gain >= rate * ((j - i) * c + cm.v(j) - v_i):
                return True
        return False

    def join_batch(self, k: int) -> None:
        """The batch drafts k for every row: this row drafts all of it, with no confidence stop (the
        batch's verify is k wide whatever this row drafts)."""
        self._stop_on_confidence = False
        self._decision = {**self._decision, "k": k, "batch_k": k}

    def can_pay(self) -> bool:
        """Whether some k would beat plain decoding at alpha = 1, at the current costs."""
        return self.cost_model.can_pay(self.k_max)

    def join_probe(self, k: int) -> None:
        """The batch verifies a probe of width k anyway: this row drafts it too and counts it as its
        own probe, so the rows of a batch share one probe schedule instead of each making the whole
        batch pay for its own."""
        self._plain_run = 0
        self._stop_on_confidence = False
        self._decision = {**self._decision, "k": k, "reason": "probe", "joined": True}

    def observe(self, k: int, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        self._probe_again = (k > 0 and drafted == 0 and self._decision.get("reason") == "probe"
                             and self.cost_model.batch_size == 1)
        if drafted > 0:
            rejected = accepted < drafted
            if self._decision.get("reason") == "probe":
                # A fully accepted probe probes again at once, unless no alpha could make drafting pay at
                # the current costs (a drafter as slow as the target): then it backs off like a rejection.
                # The costs are never taken as final: the first draft of a row also pays the drafter's
                # catch-up over the prompt, which inflates c, so a row that stopped probing for good
                # could lock itself out of a drafter that does pay.
                backoff = rejected or not self.can_pay()
                self._gap = min(max(2 * self._gap, self.probe_every), self.probe_max) if backoff else 0
            self.cost_model.observe_confidences(self._tops, drafted, accepted)
            self._fs = self.decay * self._fs + (accepted > 0)
            self._fn = self.decay * self._fn + 1
            trials = accepted + (1 if rejected else 0)
            self._s = self.decay * self._s + accepted
            self._n = self.decay * self._n + trials
        self._tokens = self.decay * self._tokens + accepted + 1
        self._cost = self.decay * self._cost + self.cost_model.step_cost(drafted)
        if self.learn_costs:
            self.cost_model.update(drafted, draft_s, verify_s)
            self.cost_model.observe_acceptance(drafted, accepted)


def batch_k(policies: Sequence["CostAware"], proposed: Sequence[int], rooms: Sequence[int],
            cost_model: CostModel, behind: Sequence[int] | None = None, margin: float = BATCH_MARGIN) -> list[int]:
    """One lookahead for a batch of cost-aware rows that verify in one target forward.

    A batched step costs its widest draft: K drafter forwards and v(K) for the verify, whatever the
    other rows draft. So rows deciding alone over-draft (one row's k makes every row pay for it) and
    under-use the width (a row drafting less than K gains nothing by it). Instead: the K in 0..k_max
    that maximises the batch's expected tokens, sum over rows of E(alpha_row, min(K, room_row)), per
    step cost K*c + v(K) (K = 0: one token per row for cost 1); every row then drafts K. When K = 0
    and some row's own policy chose a probe (so that plain rows still learn alpha), the batch pays
    that probe's width whoever drafts: every row joins it (`CostAware.join_probe`), learns from it,
    and restarts its probe schedule with the others, unless the probe could not pay for itself (`_probe_pays`).
    `rooms`: tokens each row may still draft (its budget less the bonus token). `behind`: tokens each row's
    drafter has not seen since it last drafted (what a probe must catch up on), if known.

    A batch drafts only where its expected tokens per cost beat plain decoding by `margin`: at 2-8 rows on the
    CPU the best K gains a few percent at most, the costs of a width not yet measured were off by up to 12%,
    and a wrong guess also pays the drafter's catch-up (HumanEval, 8 rows of 32 tokens: 0.93x batched AR at
    4 rows without the margin).

    A batch size whose plain step is not timed yet decodes plainly: the priors are one row's costs, and at 16
    rows they put v(16) at 4 where it is 10, which drew a first step of K = 16 costing 15 plain steps.
    """
    if cost_model.batch_size > 1 and cost_model.step_time is None:
        return [0] * len(policies)
    kmax = max(p.k_max for p in policies)
    B, horizon = len(policies), sum(rooms) / len(policies)
    # The drafter's catch-up over the tokens it has not seen, spread over the steps drafting would take to
    # use the rows' room: 16 rows' first draft over their prompts costs 3-10 plain steps on the CPU.
    catch_up = cost_model.catch_up_steps(B * max(behind)) if behind else 0.0

    def tokens_per_cost(k: int, curves: Sequence[Sequence[float]], amortise: bool = True) -> float:
        tokens = sum(e[min(k, r)] for e, r in zip(curves, rooms))
        cost = cost_model.step_cost(k)
        if k and amortise and catch_up:
            cost += catch_up * tokens / B / max(horizon, 1.0)
        return tokens / cost

    alphas = [p.alpha for p in policies]
    best = 0  # where no K beats plain by the margin even at alpha = 1, unpriced
    if cost_model.can_pay(kmax, margin):
        curves = _curves(alphas, kmax)
        best = max(range(kmax + 1), key=lambda k: (tokens_per_cost(k, curves) / (margin if k else 1.0), -k))
    if best == 0:
        # a probe's own width, not the k_max a lone row would draft it to while its drafter is confident
        probing = [bool(k) and p.decision().get("reason") == "probe" for p, k in zip(policies, proposed)]
        if not any(probing):
            return [0] * len(policies)
        best = max(min(k, p.probe_k) for p, k, pr in zip(policies, proposed, probing) if pr)
        if not _probe_pays(best, alphas, rooms, horizon, cost_model, catch_up, kmax, tokens_per_cost):
            return [0] * len(policies)
        for p, pr in zip(policies, probing):
            if not pr:
                p.join_probe(best)
    for p in policies:
        p.join_batch(best)
    return [min(best, r) for r in rooms]


def _curves(alphas: Sequence[float], k_max: int) -> list[tuple[float, ...]]:
    """Each alpha's E(0..k_max) (expected_tokens), at the cost of a cache lookup per row."""
    n = max(k_max, EXPECTED_CURVE_LEN)
    return [_expected_curve(float(a), n) for a in alphas]


def _probe_pays(width: int, alphas: Sequence[float], rooms: Sequence[int], horizon: float, cm: CostModel,
                catch_up: float, kmax: int, tokens_per_cost) -> bool:
    """Whether a batch probe of `width` could repay what it costs before the rows run out of room.

    The probe loses, in plain steps: its step cost, plus the drafter's catch-up (`catch_up` plain steps: rows x
    the longest tail it has not seen, as the drafter's forward pads), less the tokens it is expected to
    yield per row. What it can win back, if it finds the rows accepting as well as the pair does (each row at
    the larger of its alpha and the pair's; at alpha 1 while the pair has no record): the best K's speedup S
    over the rows' mean remaining room (`horizon`), (1 - 1/S) plain steps per step. A probe finds out whether rows that
    went plain have recovered, so it is only worth its cost where the pair's own acceptance would pay at this
    batch size. At 16 rows on the CPU the catch-up over 16 prompts alone costs 5-10 plain steps, and even at
    alpha 1, S is about 1.45: with 32 new tokens the bound at alpha 1 said "probe" on some runs and lost 5%.
    """
    B = len(alphas)
    loss = cm.step_cost(width) + catch_up - sum(expected_tokens(a, min(width, r)) for a, r in zip(alphas, rooms)) / B
    if loss <= 0:
        return True
    pair = cm.pair_alpha
    hope = [1.0] * B if pair is None else [max(a, pair) for a in alphas]
    hope_curves = _curves(hope, kmax)
    s_max = max(tokens_per_cost(k, hope_curves, amortise=False) for k in range(1, kmax + 1)) / B
    return s_max > 1 and horizon * (1 - 1 / s_max) > loss


# ---------------------------------------------------------------------------------------------
# Oracle, for offline analysis only.

def _step(s: Any) -> tuple[int, int]:
    """(drafted, accepted) of a logged step: a mapping with k, accepted (and drafted), or a pair."""
    if isinstance(s, Mapping):
        drafted = s.get("drafted")
        return int(s["k"] if drafted is None else drafted), int(s["accepted"])
    k, accepted = s
    return int(k), int(accepted)


def _priced_at(cost_model: CostModel, s: Any) -> None:
    """Price a logged step at its own rows per forward, where it says (a mapping with batch_size): a plain
    step and a verify cost other seconds at 8 rows than at one (CostModel keeps each size apart)."""
    if isinstance(s, Mapping) and s.get("batch_size"):
        cost_model.batch_size = int(s["batch_size"])


def oracle_k(accepted_lengths: Iterable[int], cost_model: CostModel | None = None) -> list[int]:
    """Hindsight best k per step: the number accepted. With a cost model, 0 where decoding that
    step's accepted+1 tokens plainly is cheaper than one step drafting exactly `accepted`."""
    out = []
    for a in accepted_lengths:
        a = int(a)
        out.append(0 if cost_model is not None and a + 1 <= cost_model.step_cost(a) else a)
    return out


def oracle_speedup(steps: Iterable[Any], cost_model: CostModel) -> float:
    """Expected speedup of the hindsight oracle over plain decoding on the logged steps.

    Counting (the same for `policy_speedup`): a step yields accepted + 1 tokens. A plain step
    yields 1 token at cost 1; a step drafting k tokens costs k*c + v(k). Speedup = tokens / cost.
    The oracle yields the same tokens as the log, but for each step pays min(a*c + v(a), a + 1),
    a = accepted: it drafts exactly a tokens, or decodes those a + 1 tokens plainly if cheaper. A step
    with a batch_size is priced at that many rows per forward.
    `accepted` is capped by the logged k, so take the log of a run with a large constant k; on a
    policy's own log the oracle is a lower bound.
    """
    tokens = cost = 0.0
    size = cost_model.batch_size
    for s in steps:
        _, a = _step(s)
        _priced_at(cost_model, s)
        tokens += a + 1
        cost += min(cost_model.step_cost(a), a + 1.0)
    cost_model.batch_size = size
    return tokens / cost if cost else 1.0


def policy_speedup(steps: Iterable[Any], cost_model: CostModel) -> float:
    """Speedup over plain decoding of the logged policy: sum(accepted + 1) / sum(step cost), a step
    costing drafted*c + v(drafted) (drafted defaults to k; drafted = 0 is a plain step, cost 1)."""
    tokens = cost = 0.0
    size = cost_model.batch_size
    for s in steps:
        d, a = _step(s)
        _priced_at(cost_model, s)
        tokens += a + 1
        cost += cost_model.step_cost(d)
    cost_model.batch_size = size
    return tokens / cost if cost else 1.0


def fraction_of_oracle(steps: Sequence[Any], cost_model: CostModel) -> float:
    """Policy speedup / oracle speedup on the same logged steps (1.0 = as good as hindsight)."""
    return policy_speedup(steps, cost_model) / oracle_speedup(steps, cost_model)


class Oracle:
    """Analysis-only namespace (it needs the future, so it cannot drive an engine)."""

    oracle_k = staticmethod(oracle_k)
    speedup = staticmethod(oracle_speedup)
    policy_speedup = staticmethod(policy_speedup)
    fraction = staticmethod(fraction_of_oracle)


# ---------------------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[..., LookaheadPolicy]] = {
    "constant": Constant,
    "heuristic": Heuristic,
    "confidence": ConfidenceStop,
    "cost": CostAware,
    "cost-aware": CostAware,
    "cost_aware": CostAware,
}
POLICY_NAMES = ("constant", "heuristic", "confidence", "cost")


def make_policy(name: str, **params: Any) -> LookaheadPolicy:
    """A fresh policy for one row. Share a CostModel across rows by passing cost_model=..."""
    key = name.strip().lower()
    if key == "oracle":
        raise ValueError("the oracle needs the future: it is for offline analysis "
                         "(speccore.lookahead.oracle_speedup), not a policy for the engine")
    if key not in _FACTORIES:
        raise ValueError(f"unknown lookahead policy {name!r}; choose one of {POLICY_NAMES}")
    return _FACTORIES[key](**params)
