"""Verification of one row's draft against the target's logits from one forward pass.

Three rules, all lossless (the emitted tokens are distributed exactly as target-alone decoding):
- greedy: accept while the draft equals the target's argmax, then add the argmax (bonus);
- exact match (deterministic proposers, and SLEM under sampling): draw the target's own sample at each
  position from the row's generator and accept while it equals the draft;
- rejection sampling (a drafter distribution q in target ids): accept d with probability
  min(1, p(d)/q(d)); on rejection resample from norm(max(p - q, 0)); if all pass, sample a bonus from p.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import sampling as smp


@dataclass
class Draft:
    ids: list[int]  # draft tokens in target ids
    q: torch.Tensor | None = None  # [k, V] drafter probabilities in target ids; None: a deterministic proposal
    n_drafter_tokens: int | None = None  # drafter tokens spent (cross-vocab); None: same as len(ids)
    stop_reason: str = "k"  # why drafting stopped: k | confidence | no_match | eos | error


def verify_row(logits: torch.Tensor, draft: Draft, params: smp.SamplingParams,
               gen: torch.Generator, argmax: list[int] | None = None) -> tuple[int, list[int]]:
    """logits [n+1, V] for positions after [pending, d1..dn]; return (accepted, tokens to emit).

    `argmax`: the target's argmax at those positions when the caller has it already (a batch computes
    it in one pass and one device sync, instead of one per row); greedy rows then skip the logits.
    """
    d = draft.ids
    n = len(d)
    if params.greedy:
        g = argmax if argmax is not None else logits[: n + 1].argmax(-1).tolist()  # [n+1]
        a = 0
        while a < n and d[a] == g[a]:
            a += 1
        return a, d[:a] + [g[a]]
    p = smp.probs(logits[: n + 1], params)  # [n+1, V]
    if draft.q is None:
        for i in range(n):
            x = smp.sample(p[i], gen)
            if x != d[i]:
                return i, d[:i] + [x]
        return n, d + [smp.sample(p[n], gen)]
    q = draft.q.to(p.device, p.dtype)  # [n, V]
    for i in range(n):
        pi, qi = float(p[i, d[i]]), float(q[i, d[i]])
        u = smp.uniform(gen)
        if qi > 0 and u * qi < pi:
            continue
        residual = (p[i] - q[i]).clamp_min(0)  # [V]
        if float(residual.sum()) <= 0:  # p == q up to rounding: the rejection had probability ~0
            residual = p[i]
        return i, d[:i] + [smp.sample(residual, gen)]
    return n, d + [smp.sample(p[n], gen)]
