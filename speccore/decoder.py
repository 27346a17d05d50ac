"""A causal LM with a batched, ragged KV cache that can be rolled back per row.

Every row of the batch shares one cache tensor per layer, laid out by column (time of insertion).
A column is valid for a row when its mask bit is set. Rolling back a row after a rejected draft is
just clearing mask bits; positions come from each row's count of valid tokens, so holes are harmless
to attention. Holes cost memory and attention time, so `compact` right-aligns the valid columns when
they pile up. Rows that finish leave the batch with `select`.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

# Compact once holes exceed this share of the cache (and this many columns): copying the cache costs
# about one cheap attention pass, holes cost attention work on every later step.
_COMPACT_SHARE = 0.25
_COMPACT_MIN_COLS = 16


class CachedLM:
    """One model plus its cache for the rows of one batch. All ids are in this model's vocabulary."""

    def __init__(self, model, batch_size: int):
        self.model = model
        self.device = next(model.parameters()).device
        self.cache = DynamicCache()
        self.mask = torch.zeros(batch_size, 0, dtype=torch.bool, device=self.device)  # [B, T]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # valid tokens per row
        self.fed: list[list[int]] = [[] for _ in range(batch_size)]  # ids in the cache, per row
        self._last_cols = 0  # columns added by the last forward

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def forward(self, new_ids: list[list[int]], last_only: bool = False) -> torch.Tensor:
        """Feed a ragged list of new ids per row; return logits [B, n, V] (n = longest list).

        Row b's j-th new token's logits sit at [b, j]; slots past a row's list are padding.
        With last_only, return [B, V]: each row's logits after its last new token, computing the
        vocabulary projection only at those positions (a prefill needs one position, not T).
        """
        B = self.batch_size
        n = max((len(x) for x in new_ids), default=0)
        assert len(new_ids) == B and n > 0
        ids = torch.zeros(B, n, dtype=torch.long)
        valid = torch.zeros(B, n, dtype=torch.bool)
        for b, row in enumerate(new_ids):
            if row:
                ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
                valid[b, : len(row)] = True
            self.fed[b].extend(row)
        ids, valid = ids.to(self.device), valid.to(self.device)
        positions = self.lengths[:, None] + torch.arange(n, device=self.device)[None, :]  # [B, n]
        self.mask = torch.cat([self.mask, valid], dim=1)  # [B, T+n]
        self.lengths = self.lengths + valid.sum(1)
        T = self.mask.shape[1]
        keep: int | torch.Tensor = 0  # 0: logits at every position
        if last_only:
            last = torch.tensor([max(len(x), 1) - 1 for x in new_ids], device=self.device)  # [B]
            cols, where = torch.unique(last, return_inverse=True)  # [U] distinct last columns
            keep = cols
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask.long(),
            position_ids=positions,
            past_key_values=self.cache,
            cache_position=torch.arange(T - n, T, device=self.device),
            use_cache=True,
            logits_to_keep=keep,
        )
        self._last_cols = n
        if last_only:
            return out.logits[torch.arange(B, device=self.device), where]  # [B, V]
        return out.logits  # [B, n, V]

    def keep(self, n_keep: list[int]) -> None:
        """After the last forward, keep the first n_keep[b] of row b's new tokens; drop the rest."""
        n = self._last_cols
        cols = self.mask[:, -n:]  # [B, n] valid slots of the last forward
        for b, k in enumerate(n_keep):
            fed_now = int(cols[b].sum())
            drop = fed_now - k
            assert 0 <= k <= fed_now, (k, fed_now)
            if drop:
                idx = torch.nonzero(cols[b]).flatten()[k:]
                self.mask[b, self.mask.shape[1] - n + idx] = False
                del self.fed[b][-drop:]
                self.lengths[b] -= drop
        self._maybe_compact()

    def rollback_to(self, b: int, n_tokens: int) -> None:
        """Shrink row b to its first n_tokens cached tokens (any columns, not just the last forward's)."""
        drop = len(self.fed[b]) - n_tokens
        if drop <= 0:
            return
        idx = torch.nonzero(self.mask[b]).flatten()[n_tokens:]
        self.mask[b, idx] = False
        del self.fed[b][n_tokens:]
        self.lengths[b] -= drop

    def sync(self, b: int, true_ids: list[int]) -> list[int]:
        """Roll row b back to its longest cached prefix of true_ids; return the ids still to feed."""
        fed = self.fed[b]
        n = 0
        limit = min(len(fed), len(true_ids))
        while n < limit and fed[n] == true_ids[n]:
            n += 1
        self.rollback_to(b, n)
        return true_ids[n:]

    def select(self, rows: list[int]) -> None:
        """Keep only these rows (finished rows leave the batch)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(0, idx)
                layer.values = layer.values.index_select(0, idx)
        self.mask = self.mask.index_select(0, idx)
        self.lengths = self.lengths.index_select(0, idx)
        self.fed = [self.fed[r] for r in rows]
        self._maybe_compact(force_trim=True)

    def _maybe_compact(self, force_trim: bool = False) -> None:
        B, T = self.mask.shape
        if T == 0:
            return
        width = int(self.lengths.max()) if B else 0
        holes = T - width
        if holes == 0:
            return
        if not force_trim and (holes < _COMPACT_MIN_COLS or holes < _COMPACT_SHARE * T):
            return
        # Right-align each row's valid columns into `width` columns: [B, width] gather index.
        order = torch.argsort(self.mask.to(torch.int8), dim=1, stable=True)  # invalid first, then valid in order
        idx = order[:, T - width :]  # [B, width]
        new_mask = torch.arange(width, device=self.device)[None, :] >= (width - self.lengths)[:, None]
        for layer in self.cache.layers:
            if not getattr(layer, "is_initialized", False) or layer.keys is None or not layer.keys.numel():
                continue
            H, D = layer.keys.shape[1], layer.keys.shape[3]
            g = idx[:, None, :, None].expand(B, H, width, D)
            layer.keys = layer.keys.gather(2, g)
            layer.values = layer.values.gather(2, g)
        self.mask = new_mask
