"""Prompt lookup: draft the tokens that followed the latest earlier occurrence of the current suffix.

No model: the proposal is deterministic, so verification is exact match (lossless under sampling too).
"""
from __future__ import annotations

import numpy as np

from .verify import Draft


def lookup(ids: list[int], k: int, n_max: int, n_min: int) -> list[int]:
    """Up to k ids following the most recent earlier match of the longest suffix n-gram (n_max..n_min)."""
    seq = np.asarray(ids, dtype=np.int64)
    L = len(seq)
    for n in range(min(n_max, L - 1), n_min - 1, -1):
        suffix = seq[L - n :]
        windows = np.lib.stride_tricks.sliding_window_view(seq[: L - 1], n)  # [L-n, n] starts 0..L-1-n
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        hits = hits[hits + n < L]  # something must follow the match
        if hits.size:
            start = int(hits[-1]) + n  # latest match: the nearest context is the best predictor
            return seq[start : start + k].tolist()
    return []


class NgramProposer:
    """Prompt-lookup proposer over each row's prompt + output so far."""

    name = "ngram"

    def __init__(self, n_max: int = 3, n_min: int = 1):
        self.n_max, self.n_min = n_max, n_min

    def start(self, states) -> None:
        pass

    def propose(self, states, ks: list[int]) -> list[Draft]:
        drafts = []
        for st, k in zip(states, ks):
            ids = lookup(st.ids, k, self.n_max, self.n_min) if k else []
            drafts.append(Draft(ids=ids, stop_reason="k" if len(ids) == k else "no_match"))
        return drafts

    def observe(self, states, accepted: list[int]) -> None:
        pass

    def select(self, rows: list[int]) -> None:
        pass
