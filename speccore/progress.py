"""A live progress bar over a run's rows: rows done, output tokens/s and acceptance, as shards finish.

Fed with the small dicts that worker.run_shard returns, so it works the same whichever runner ran the
shard. tqdm shows it only on a terminal (disable=None), so logs and CI stay clean.
"""
from __future__ import annotations

import time

from tqdm.auto import tqdm


class Progress:
    def __init__(self, total_rows: int, done_rows: int = 0, *, desc: str = "rows", file=None,
                 disable: bool | None = None):
        self.tokens = self.drafted = self.accepted = self.steps = 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total_rows, initial=done_rows, desc=desc, unit="row", file=file, disable=disable,
                        dynamic_ncols=True, smoothing=0)

    def update(self, shard: dict) -> None:
        """One shard finished: `shard` is run_shard's result (a skipped shard adds rows only)."""
        self.tokens += shard.get("tokens", 0)
        self.drafted += shard.get("drafted", 0)
        self.accepted += shard.get("accepted", 0)
        self.steps += shard.get("steps", 0)
        self.bar.set_postfix_str(self.postfix(), refresh=False)
        self.bar.update(shard.get("rows", 0))

    def postfix(self) -> str:
        wall = time.perf_counter() - self.t0
        parts = [f"{self.tokens / wall if wall > 0 else 0.0:.1f} tok/s"]
        if self.drafted:  # acceptance rate = accepted / drafted; mean acceptance length = 1 + accepted / steps
            parts.append(f"acceptance {self.accepted / self.drafted:.2f}")
            parts.append(f"mean acceptance length {1 + self.accepted / max(1, self.steps):.2f}")
        return ", ".join(parts)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
