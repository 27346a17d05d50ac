"""Oracle and counterfactual lookahead from a run's logged steps (DESIGN.md section 5).

From the steps table, for each run: the hindsight-best k per step (`lookahead.oracle_k`), the oracle's
speedup over plain decoding, the logged policy's speedup and its fraction of the oracle, and what a
constant k would have given on the same steps. The speedup arithmetic is lookahead.py's; this module
only rebuilds its inputs from the log:

- Costs: a `lookahead.CostModel` (the engine's priors) fed each logged target forward once, in order,
  exactly as the engine feeds it (`update(width, draft_s, verify_s)`, width = the longest draft of
  the forward's batch) at its rows per forward. So c and v(k) are this run's own measurements, relative
  to a plain step at the same batch size, and each step is priced at its own batch size (a batch whose
  rows finish runs at 8, then 7, ... rows). The draft seconds include the drafter's catch-ups, which
  the steps table does not separate, so c reads a little high on runs that probe often.
- Counterfactual constant k: step boundaries stay as logged and a step yields min(accepted, k) + 1
  tokens. `accepted` is capped by what was drafted: on a step whose whole draft was kept
  (`censored_share`), a larger k might have kept more, so the oracle and constant k > logged k are
  lower bounds there, and the fraction of oracle an upper bound. A run with a large constant k gives
  the least censored log.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .lookahead import CostModel, oracle_k, oracle_speedup, policy_speedup


@dataclass(frozen=True)
class Hindsight:
    run_id: str
    lookahead_policy: str
    steps: int
    policy_speedup: float
    oracle_speedup: float
    fraction_of_oracle: float
    mean_k: float  # the policy's mean k
    mean_oracle_k: float  # mean hindsight-best k
    censored_share: float  # steps whose whole draft (>= 1 token) was accepted
    c: float  # draft cost per token, relative to a plain target step (at the run's most common batch size)
    v: dict[int, float] = field(default_factory=dict)  # verify cost v(k) for k = 0..k_max (the same)
    constant_k: dict[int, float] = field(default_factory=dict)  # k -> speedup of constant k
    oracle_k_counts: dict[int, int] = field(default_factory=dict)  # hindsight-best k -> steps


def learn_costs(forwards) -> CostModel:
    """A CostModel fed (width, draft_ms, verify_ms[, batch_size]) of each logged target forward, in order."""
    cm = CostModel()
    for width, draft_ms, verify_ms, *size in forwards:
        cm.batch_size = int(size[0]) if size and size[0] else 1
        cm.update(int(width), float(draft_ms) / 1e3, float(verify_ms) / 1e3)
    return cm


def analyse(run_id: str, policy: str, steps: list[dict], forwards, k_max: int | None = None) -> Hindsight:
    """Hindsight of one run: `steps` are its row steps (k, drafted, accepted[, batch_size]), `forwards` the
    (width, draft_ms, verify_ms[, batch_size]) of its target forwards in order."""
    cm = learn_costs(forwards)
    accepted = [int(s["accepted"]) for s in steps]
    sizes = [int(s.get("batch_size") or 1) for s in steps]
    best = []
    for a, size in zip(accepted, sizes):
        cm.batch_size = size
        best += oracle_k([a], cm)
    top = k_max if k_max is not None else max([8] + [int(s["drafted"]) for s in steps])
    constant = {k: policy_speedup([{"k": k, "drafted": k, "accepted": min(a, k), "batch_size": size}
                                   for a, size in zip(accepted, sizes)], cm)
                for k in range(top + 1)}
    counts: dict[int, int] = {}
    for k in best:
        counts[k] = counts.get(k, 0) + 1
    cm.batch_size = max(set(sizes), key=sizes.count) if sizes else 1  # c and v as the run mostly ran
    n = len(steps)
    pol, ora = policy_speedup(steps, cm), oracle_speedup(steps, cm)
    return Hindsight(
        run_id=run_id, lookahead_policy=policy, steps=n, policy_speedup=pol, oracle_speedup=ora,
        fraction_of_oracle=pol / ora if ora else 1.0,
        mean_k=sum(int(s["k"]) for s in steps) / n if n else 0.0,
        mean_oracle_k=sum(best) / n if n else 0.0,
        censored_share=sum(1 for s in steps if 0 < int(s["drafted"]) == int(s["accepted"])) / n if n else 0.0,
        c=cm.c, v={k: cm.v(k) for k in range(top + 1)}, constant_k=constant, oracle_k_counts=dict(sorted(counts.items())))


def from_store(con) -> list[Hindsight]:
    """Hindsight of every (run, policy) in a DuckDB connection's views (analytics.connect)."""
    from .analytics import records

    groups: dict[tuple[str, str], tuple[list, list]] = {}
    for r in records(con, "hindsight_steps"):
        steps, forwards = groups.setdefault((r["run_id"], r["lookahead_policy"]), ([], []))
        steps.append(r)
        if r["first_in_forward"]:
            forwards.append((r["width"], r["draft_ms"], r["verify_ms"], r["batch_size"]))
    return [analyse(run_id, policy, steps, forwards) for (run_id, policy), (steps, forwards) in groups.items()]
