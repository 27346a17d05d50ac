"""Drafting with a model: the batched autoregressive draft loop and the same-vocab proposer.

The drafter keeps its own ragged KV cache across steps. Before drafting, each row's cache is synced to
the row's true ids: the longest cached prefix is kept (accepted drafts stay), the rest rolls back, and
only the new tail is fed. It never re-encodes the whole context.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from . import sampling as smp
from .decoder import CachedLM
from .verify import Draft

# pick(b, logits [V_d]) -> (drafter token or None to stop, q row or None, top probability)
Pick = Callable[[int, torch.Tensor], tuple[int | None, torch.Tensor | None, float]]

# A row's feed after a drafting step is at most 2 tokens (the last drafted token, never fed, and the bonus).
# A longer one is a catch-up: over the prompt at a row's first draft, or over the tokens of plain steps.
STEADY_FEED = 2


def feed_for(lm: CachedLM, b: int, true_ids: list[int]) -> list[int]:
    """The ids row b must feed so its next logits follow true_ids (at least one, to get logits)."""
    tail = lm.sync(b, true_ids)
    if not tail:  # everything is cached already: re-feed the last token to get its logits again
        lm.rollback_to(b, len(true_ids) - 1)
        tail = true_ids[-1:]
    return tail


def catch_up_cells(feeds: list[list[int]]) -> int:
    """Rows x columns of a draft's first forward when it catches up (it pads to the longest feed); else 0."""
    longest = max(map(len, feeds), default=0)
    return len(feeds) * longest if longest > STEADY_FEED else 0


def draft_loop(lm: CachedLM, feeds: list[list[int]], ks: list[int], states, pick: Pick,
               stop_ids: frozenset[int] = frozenset()):
    """Draft up to ks[b] drafter tokens for each row.

    Returns (tokens, q rows, stop reasons) per row, and catch_up_s: the seconds the first forward spent
    catching up over feeds longer than STEADY_FEED, beyond what a steady draft forward costs (0.0 when no
    feed was that long; None when it was, but no later forward measured a steady one). A cost model must
    not read a one-off catch-up (a whole prompt) as the cost of each drafted token.

    The last drafted token is not fed: it costs a forward and is only needed if it is accepted, in
    which case the next step's sync feeds it.
    """
    B = len(feeds)
    toks: list[list[int]] = [[] for _ in range(B)]
    qs: list[list[torch.Tensor | None]] = [[] for _ in range(B)]
    reasons = ["k"] * B
    live = [ks[b] > 0 and bool(feeds[b]) for b in range(B)]
    cur = [feeds[b] if live[b] else [] for b in range(B)]
    long_feed = max(map(len, cur), default=0) > STEADY_FEED
    times: list[float] = []
    while any(cur):
        t = time.perf_counter()
        logits = lm.forward(cur, last_only=True)  # [B, V_d]
        nxt: list[list[int]] = [[] for _ in range(B)]
        for b in range(B):
            if not live[b]:
                continue
            tok, q, top = pick(b, logits[b])
            if tok is None:
                live[b], reasons[b] = False, "vocab"
                continue
            toks[b].append(tok)
            qs[b].append(q)
            i = len(toks[b])
            go = states[b].policy.should_continue(i, top)  # every token: the policy learns from each confidence
            if tok in stop_ids:
                live[b], reasons[b] = False, "eos"
            elif i >= ks[b]:
                live[b] = False
            elif not go:
                live[b], reasons[b] = False, "confidence"
            else:
                nxt[b] = [tok]
        cur = nxt
        times.append(time.perf_counter() - t)  # the picks synchronise, so this is the forward's time
    catch_up_s: float | None = 0.0
    if long_feed:
        catch_up_s = max(0.0, times[0] - min(times[1:])) if len(times) > 1 else None
    return toks, qs, reasons, catch_up_s


def pick_from(logits: torch.Tensor, params: smp.SamplingParams, gen: torch.Generator,
              greedy_draft: bool) -> tuple[int, torch.Tensor | None, float]:
    """Greedy drafts need no q (verification is exact match); sampled drafts carry their q row."""
    if greedy_draft or params.greedy:
        top = float(torch.softmax(logits.float(), -1).max())
        return int(logits.argmax()), None, top
    q = smp.probs(logits, params)  # [V]
    return smp.sample(q, gen), q, float(q.max())


class DraftModelProposer:
    """Standard speculative decoding with a drafter that shares the target's vocabulary."""

    name = "standard"
    reports_confidence = True  # its draft loop asks policy.should_continue with the drafter's top probability

    def __init__(self, drafter, target_vocab: int):
        self.drafter = drafter
        self.V = target_vocab  # the target's logits width; drafter ids beyond it are never proposed
        self.stop_ids = frozenset(drafter.eos_token_ids)
        self.lm: CachedLM | None = None
        self.catch_up_s: float | None = 0.0  # of the last propose (see draft_loop)
        self.catch_up_cells = 0  # and the cells it caught up over

    def start(self, states) -> None:
        self.lm = CachedLM(self.drafter.model, len(states))

    def propose(self, states, ks: list[int]) -> list[Draft]:
        feeds = [feed_for(self.lm, b, st.ids) if k else [] for b, (st, k) in enumerate(zip(states, ks))]

        def pick(b: int, logits: torch.Tensor):
            st = states[b]
            return pick_from(logits[: self.V], st.params, st.gen, greedy_draft=False)

        self.catch_up_cells = catch_up_cells(feeds)
        toks, qs, reasons, self.catch_up_s = draft_loop(self.lm, feeds, ks, states, pick, self.stop_ids)
        drafts = []
        for b, st in enumerate(states):
            q = None
            if toks[b] and qs[b][0] is not None:
                q = torch.stack(qs[b])  # [k, V']
                if q.shape[-1] < self.V:
                    q = torch.nn.functional.pad(q, (0, self.V - q.shape[-1]))
            drafts.append(Draft(ids=toks[b], q=q, stop_reason=reasons[b]))
        return drafts

    def observe(self, states, accepted: list[int]) -> None:
        pass  # the next propose syncs each row's cache to its true ids

    def select(self, rows: list[int]) -> None:
        self.lm.select(rows)
