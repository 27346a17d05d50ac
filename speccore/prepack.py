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

`prepack(drafter, int8=True)` packs a drafter's linears as int8 instead (fbgemm dynamic quantisation:
int8 weights with a scale per output channel, each activation row quantised as it comes: fbgemm quantises
a whole input with one scale, so `Int8Linear` maps each row onto the same range first). Its weights
stream a quarter of the bytes, and a qwen2.5-coder-0.5b step ran 1.7-1.8x faster. This is lossy, and that
is allowed only because a drafter merely proposes: the target verifies every token, so the output is
the same; only the acceptance rate moves.

The MLP's down projection (`down_proj`) needs care: its input, the gated activation, has a few channels
whose values are tens of times the rest, and they swamp the one int8 scale an activation row gets (on
qwen2.5-coder-0.5b, the drafter's agreement with the target on ShareGPT was 0.82 fp32, 0.72 with
down_proj int8 as it comes). Those channels are the same from one text to the next. So, given calibration
ids (`prepack(..., calibration=ids)`; `models.load_model` passes CALIBRATION_TEXT), one fp32 forward finds
each down projection's OUTLIER_CHANNELS loudest input channels, and `OutlierInt8Linear` runs them in fp32
beside an int8 product over the rest (LLM.int8()'s decomposition, with the channels fixed once).
Agreement stays where keeping the whole projection fp32 put it (0.79), and a 0.5B drafter step streams a
third fewer bytes (down_proj is more than half of them in fp32). Without calibration ids the down
projections stay fp32 (pre-packed). (Those agreements were measured over whole texts in one forward, while
fbgemm still gave all of a forward's rows one scale; each row now gets its own, see `Int8Linear._per_row`.)
A tied LM head is quantised too: its int8 copy is a quarter of the embedding it shares, and the
embedding keeps reading the dense weight. The target is never quantised (the engine's exactness depends on it).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import sys
import warnings
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)


def available() -> bool:
    """True where this torch build can pack linear weights with oneDNN."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def int8_available() -> bool:
    """True where this torch build has fbgemm's dynamic int8 linear (x86 CPUs)."""
    q = torch.backends.quantized
    return hasattr(torch.ops.quantized, "linear_dynamic") and bool({"fbgemm", "x86"} & set(q.supported_engines))


# Linears whose input has outlier channels, by module name (see the module docstring): with calibration ids an
# int8 drafter runs their OUTLIER_CHANNELS loudest input channels in fp32, without them the whole linear.
INT8_KEEP_FP32 = frozenset({"down_proj"})
# Of qwen2.5-coder-0.5b's 4,864 down_proj inputs, keeping 8 in fp32 left ShareGPT agreement at 0.74, 16 or
# 32 at 0.79 (as the whole projection in fp32); each costs a column of fp32 weights per layer.
OUTLIER_CHANNELS = 16
# What the calibration forward reads: code and chat, as drafters see them. Outlier channels belong to the
# model, not the text (calibrated on this text or on 20 HumanEval and ShareGPT prompts: the same agreement).
CALIBRATION_TEXT = """Write a function that merges two sorted lists into one sorted list, and explain how it works.

def merge(a: list[int], b: list[int]) -> list[int]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i]); i += 1
        else:
            out.append(b[j]); j += 1
    return out + a[i:] + b[j:]

The loop walks both lists once, so it takes O(n + m) time. Can you also tell me a short story about a
lighthouse keeper who learns to paint, in three paragraphs? Then list five tips for a job interview,
and translate "good morning, how are you?" into French, Spanish and German."""


class PackedLinear(nn.Module):
    """y = x W^T + b with W pre-packed for oneDNN. `dense` is kept only when asked (for A/B runs)."""

    def __init__(self, linear: nn.Linear, keep_dense: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.packed = self._pack(weight.contiguous())
        self.bias = linear.bias  # a Parameter or None: stays in state_dict and parameters()
        self.dense = weight if keep_dense else None
        self.use_dense = False

    @staticmethod
    def _pack(weight: torch.Tensor):
        return torch.ops.mkldnn._reorder_linear_weight(weight, None)

    @property
    def weight(self) -> torch.Tensor:
        """For code that reads a linear's shape, dtype or device (e.g. the output embedding's width):
        the packed tensor has all three. It is not a dense tensor: compute through forward()."""
        return self.dense if self.dense is not None else self.packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_dense:
            return F.linear(x, self.dense, self.bias)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(PackedLinear):
    """y ~ x W^T + b with W in int8 (a scale per output row) and x quantised per call: drafters only.

    `packed` is fbgemm's packed weight (an opaque object, not a tensor), so `weight` reads the dense
    weight when it is kept and otherwise a zero of the right shape, dtype and device that holds no memory
    (one CPU scalar expanded), for code that only reads a linear's width or device.
    """

    def __init__(self, linear: nn.Linear, keep_dense: bool = False):
        super().__init__(linear, keep_dense)
        # W 1 of the int8 weights, for the shift in _run: with the fp32 weights' W 1 instead, the int8 weights' error
        # would meet the shifted row (all of it >= 0), and a row fed alone came out 30% further from fp32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.row_sums = torch.ops.quantized.linear_unpack(self.packed)[0].dequantize().sum(dim=1)

    @staticmethod
    def _pack(weight: torch.Tensor):
        scale = (weight.abs().amax(dim=1).clamp_min(1e-12) / 127).double()
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantised tensors are deprecated in torch 2.1x but fbgemm still runs
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)

    @property
    def weight(self) -> torch.Tensor:
        if self.dense is not None:
            return self.dense
        return torch.zeros((), dtype=torch.float32).expand(self.out_features, self.in_features)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        # reduce_range=True: 7-bit activations, so fbgemm's AVX2 int8 multiply-adds cannot saturate
        if x.shape[0] == 1:  # one row is quantised on its own range anyway, and a drafter's step feeds one
            y = torch.ops.quantized.linear_dynamic(x, self.packed, True)
        else:
            y = self._per_row(x)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def _per_row(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T for a [rows, in] x, each row quantised on its own range."""
        # fbgemm quantises the whole input with one scale, so a row's product would depend on the rows fed with
        # it: a loud row beside it (a prompt's catch-up, another row of the batch) coarsens it. Each row is mapped
        # onto [0, 1] first, x = lo + span * x', so that every row spans the same range and is quantised as if
        # alone: W x = span * (W x') + lo * (W 1). A 576-wide linear's rows came out 1.5x further from fp32 fed
        # together than fed one by one (BENCHMARKS.md).
        # [0, 1], not [-1, 1]: its zero point is exact, where [-1, 1]'s is rounded and clips a row's top value. The
        # mapping's 9 small ops per linear made a one-row smollm2 step 25% slower (33.5 -> 42 ms), hence _run
        # sends one row straight through.
        lo = x.amin(-1, keepdim=True)
        span = (x.amax(-1, keepdim=True) - lo).clamp_min(1e-12)
        return torch.ops.quantized.linear_dynamic((x - lo) / span, self.packed, True) * span + lo * self.row_sums


class OutlierInt8Linear(Int8Linear):
    """y ~ x W^T + b as Int8Linear, except over the input channels `outliers`, which run in fp32: the int8
    product sees those channels zeroed (in its weights and in x, so they do not set x's int8 scale), and
    x[..., outliers] @ W[:, outliers]^T is added back. Drafters only."""

    def __init__(self, linear: nn.Linear, outliers: torch.Tensor, keep_dense: bool = False):
        w = linear.weight.detach()
        cols = torch.as_tensor(outliers, dtype=torch.long, device=w.device).unique()
        inlier = torch.ones(w.shape[1], dtype=w.dtype, device=w.device)
        inlier[cols] = 0.0
        stripped = nn.Linear(w.shape[1], w.shape[0], bias=False)
        stripped.weight = nn.Parameter(w * inlier, requires_grad=False)
        super().__init__(stripped, keep_dense=False)
        self.bias = linear.bias
        self.dense = w if keep_dense else None
        self.outliers = cols
        self.inlier = inlier  # [in]: 1.0, and 0.0 at the outlier channels
        self.outlier_weight = w[:, cols].t().contiguous()  # [n_outliers, out], fp32

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return super()._run(x * self.inlier) + x.index_select(-1, self.outliers) @ self.outlier_weight

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fp32 input channels={len(self.outliers)}"


def input_outliers(model: nn.Module, ids: list[int], names: frozenset[str] = INT8_KEEP_FP32,
                   n: int = OUTLIER_CHANNELS) -> dict[int, torch.Tensor]:
    """{id(linear): its n input channels of largest |activation|} for each nn.Linear named in `names`, from
    one forward of `model` over `ids` (a list of token ids)."""
    peaks: dict[int, torch.Tensor] = {}

    def hook(module, inputs):
        x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
        peaks[id(module)] = torch.maximum(peaks[id(module)], x) if id(module) in peaks else x

    handles = [child.register_forward_pre_hook(hook) for parent in model.modules()
               for name, child in parent.named_children() if type(child) is nn.Linear and name in names]
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(input_ids=torch.tensor([list(ids)], dtype=torch.long, device=device))
    finally:
        for h in handles:
            h.remove()
    return {k: torch.topk(v, min(n, v.numel())).indices.sort().values.clone() for k, v in peaks.items()}


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


def prepack(model: nn.Module, keep_dense: bool = False, int8: bool = False,
            calibration: list[int] | None = None) -> int:
    """Swap every packable linear of `model` in place; returns how many were swapped.

    Packable: an `nn.Linear` whose weight is fp32, on the CPU and not shared with another module.
    Does nothing (returns 0) where oneDNN is not available. keep_dense keeps the dense weight too,
    so that `dense_linears(model)` can run the same model the plain way (benchmarks only).
    int8 (drafters only, see the module docstring): linears become `Int8Linear`, a tied head included,
    except those named in INT8_KEEP_FP32: with `calibration` (token ids) they become `OutlierInt8Linear`,
    their loudest input channels found by one forward over those ids; without, they are pre-packed fp32.
    Without fbgemm it warns and packs everything fp32.
    """
    if not available():
        log.warning("oneDNN is not available in this torch build; linears stay as they are")
        return 0
    if int8 and not int8_available():
        log.warning("this torch build has no fbgemm int8 linear; the drafter stays fp32")
        int8 = False
    shared = _shared_weights(model)
    outliers = input_outliers(model, calibration) if int8 and calibration else {}
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            w = getattr(child, "weight", None)
            if not (type(child) is nn.Linear and w is not None and w.dtype == torch.float32 and w.device.type == "cpu"):
                continue
            if id(child) in outliers:
                swaps.append((parent, name, child, partial(OutlierInt8Linear, outliers=outliers[id(child)])))
            elif int8 and name not in INT8_KEEP_FP32:
                swaps.append((parent, name, child, Int8Linear))
            elif id(w) not in shared:
                swaps.append((parent, name, child, PackedLinear))
    mappings = [] if keep_dense else _file_mappings()
    with torch.no_grad():
        for parent, name, child, kind in swaps:
            setattr(parent, name, kind(child, keep_dense=keep_dense))
            if mappings and id(child.weight) not in shared:  # a tied weight is still read by its embedding
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
