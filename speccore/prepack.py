"""fp32 linears on the CPU with weights pre-packed once into oneDNN's blocked layout.

Why: on the CPU a decoding step streams every weight once. PyTorch's plain fp32 linear does that well
for one token row, but for a few rows (verifying a draft of k tokens is a forward over k+1 rows) it
takes a GEMM path that costs several one-row steps, and that cost decides whether speculation pays.
oneDNN with weights reordered ahead of time streams them once for a few rows too: verifying k tokens
gets much closer to one step, and the one-row step itself gets faster.

`prepack(model)` swaps each `nn.Linear` with an fp32 weight on the CPU for a `PackedLinear` that holds
only the packed copy (the dense weight is dropped, so memory does not grow). A weight shared with
another parameter (a tied LM head) stays as it is: packing it would keep two copies. The result
differs from the dense path by float rounding only (a few 1e-6 relative); a run uses the same kernels
for target-alone decoding and for verification, so its outputs are what its target alone produces.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import sys

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)


def available() -> bool:
    """True where this torch build can pack linear weights with oneDNN."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """y = x W^T + b with W pre-packed for oneDNN. `dense` is kept only when asked (for A/B runs)."""

    def __init__(self, linear: nn.Linear, keep_dense: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
        self.bias = linear.bias  # a Parameter or None: stays in state_dict and parameters()
        self.dense = weight if keep_dense else None
        self.use_dense = False

    @property
    def weight(self) -> torch.Tensor:
        """For code that reads a linear's shape, dtype or device (e.g. the output embedding's width):
        the packed tensor has all three. It is not a dense tensor: compute through forward()."""
        return self.dense if self.dense is not None else self.packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_dense:
            return F.linear(x, self.dense, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of weight tensors that more than one module refers to (tied embeddings)."""
    seen: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process mapped from regular files (safetensors weights are mmapped)."""
    if not sys.platform.startswith("linux"):
        return []
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                lo, hi = parts[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def _release_file_pages(t: torch.Tensor, mappings: list[tuple[int, int]]) -> None:
    """Drop the resident pages of a tensor read from a file mapping once it is no longer needed.

    Loading mmaps the safetensors file; packing reads every weight, so without this each one stays
    resident (counted in RSS) beside its packed copy until the whole file is unmapped, and peak memory
    doubles. After MADV_DONTNEED on a file mapping, a later read faults the file's bytes back in (a page
    of a private mapping that was modified in memory would read as the file again); the packed copy
    is already made and nothing reads the dense weight again. Anonymous memory is never touched.
    """
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    if not any(lo <= start and end <= hi for lo, hi in mappings):
        return
    page = mmap.PAGESIZE
    a, b = -(-start // page) * page, end // page * page  # whole pages inside the tensor only
    if b > a:
        ctypes.CDLL(None).madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), 4)  # MADV_DONTNEED


def prepack(model: nn.Module, keep_dense: bool = False) -> int:
    """Swap every packable linear of `model` in place; returns how many were swapped.

    Packable: an `nn.Linear` whose weight is fp32, on the CPU and not shared with another module.
    Does nothing (returns 0) where oneDNN is not available. keep_dense keeps the dense weight too,
    so that `dense_linears(model)` can run the same model the plain way (benchmarks only).
    """
    if not available():
        log.warning("oneDNN is not available in this torch build; linears stay as they are")
        return 0
    shared = _shared_weights(model)
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            w = getattr(child, "weight", None)
            if (type(child) is nn.Linear and w is not None and w.dtype == torch.float32
                    and w.device.type == "cpu" and id(w) not in shared):
                swaps.append((parent, name, child))
    mappings = [] if keep_dense else _file_mappings()
    with torch.no_grad():
        for parent, name, child in swaps:
            setattr(parent, name, PackedLinear(child, keep_dense=keep_dense))
            if mappings:
                _release_file_pages(child.weight, mappings)
    return len(swaps)


@contextlib.contextmanager
def dense_linears(model: nn.Module):
    """Run `model` with its dense weights inside the block (needs prepack(..., keep_dense=True))."""
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    if any(m.dense is None for m in packed):
        raise ValueError("dense_linears needs a model packed with keep_dense=True")
    for m in packed:
        m.use_dense = True
    try:
        yield model
    finally:
        for m in packed:
            m.use_dense = False
