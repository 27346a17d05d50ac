"""Deterministic shard planning: shard i holds rows [i*S, (i+1)*S) of the source's row order.

The plan depends only on the source (its fingerprint and row count) and the shard size, so a re-run
of the same run id finds the same shards and can skip the committed ones.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    index: int
    start: int  # first row position (inclusive)
    stop: int  # last row position (exclusive)

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan(n_rows: int, shard_size: int) -> list[Shard]:
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    return [Shard(i, start, min(start + shard_size, n_rows)) for i, start in enumerate(range(0, n_rows, shard_size))]
