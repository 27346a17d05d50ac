"""Per-row sampling: processed distributions and reproducible draws.

Each row owns a torch.Generator seeded from (run seed, row_id) or the row's own seed, and draws its
uniforms one at a time in the order the algorithm consumes them. So a row's output depends on its
own trajectory only, never on which batch or shard it lands in.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def row_seed(run_seed: int, row_id: str, row_own_seed: int | None = None) -> int:
    """A 63-bit seed that depends on the row only (not its batch, shard or position)."""
    if row_own_seed is not None:
        return int(row_own_seed)
    digest = hashlib.sha256(f"{run_seed}\x00{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def uniform(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen, dtype=torch.float64))


def probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Processed next-token distribution(s) [..., V] in float64: temperature, then top-k, then top-p.

    Greedy rows get the one-hot of the argmax so that one rejection-sampling code path serves both.
    """
    logits = logits.to(torch.float64)
    if p.greedy:
        out = torch.zeros_like(logits)
        return out.scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / p.temperature
    if p.top_k and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (the first token always stays)
        cum_before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = cum_before >= p.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(dist: torch.Tensor, gen: torch.Generator) -> int:
    """Draw one id from a 1-D distribution by inverse CDF with one uniform from the row's generator.

    The draw runs on the CPU, where the generator lives: the same distribution gives the same id
    whichever device computed it (a GPU's parallel cumsum rounds differently).
    """
    dist = dist.to("cpu", torch.float64)
    u = uniform(gen)
    cdf = dist.cumsum(0)
    idx = int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])], dtype=cdf.dtype)))
    idx = min(idx, dist.shape[0] - 1)
    if dist[idx] <= 0:  # u fell on a flat stretch of the cdf (u == 0, or rounding): take the next live id
        live = torch.nonzero(dist > 0).flatten()
        after = live[live >= idx]
        idx = int(after[0]) if after.numel() else int(live[-1])
    return idx
