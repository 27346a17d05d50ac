"""What a CUDA-graph decode step would buy: eager forwards against the same forward captured and replayed.

bench/gpu.py found the eager transformers step host-bound on an H100: 25-50 ms at every batch size for
both the 1.5B-shaped target and the 135M-shaped drafter, so the drafter costs as much as the target
(c ~ 1). This measures the lead it named, on the same random-weight models (bench.gpu's shapes and
builder), after a cached context, for each batch size and width (new tokens per row):

- `eager`: model forward on a transformers DynamicCache, with the inputs the engine passes (2D
  attention mask, per-row position ids, cache_position): the raw forward of what runs today;
- `engine`: speccore's CachedLM.forward on the same context (the forward plus the engine's own host
  work), as bench/gpu.py times it;
- `static`: the same forward on a transformers StaticCache (fixed-size KV buffers holding the context,
  an explicit 4D additive mask, static position ids and cache_position), run eagerly;
- `graph`: that static forward captured once with torch.cuda.CUDAGraph and replayed. If the manual
  capture fails, torch.compile(mode="reduce-overhead") runs instead when triton imports (`path` says
  which ran, `capture_error` why);
- `compiled` (opt-in, `--compiled`): the same static forward compiled by torch.compile (inductor,
  `--compile-mode`, dynamic=False, fullgraph unless that fails) and captured by the same manual CUDA-graph
  capture, so that beside `graph` it isolates what fused kernels buy; if that capture fails,
  torch.compile(mode="reduce-overhead") instead (`compiled_path`, `compiled_capture_error`,
  `compiled_compile_s`: the first call of each shape, which compiles it).

Each replay writes the new tokens' keys/values at the same positions (context .. context+width-1), so
every repetition sees the same context. Correctness: the graph's logits against the eager DynamicCache
forward's on the same tokens (max |diff|, identical argmax), and against the eager static forward
(same kernels: expected bit-identical). From the graph timings: c = drafter 1-token step / target
1-token step and v(w) = target forward over w tokens / target 1-token step (a verify of k drafts is w =
k+1 tokens), at the same batch size; the same from the eager (and, with --compiled, the compiled) timings.

    python -m bench.cudagraph --out bench/results/DATE-gpu-h100-cudagraph   # on the GPU machine
    python -m bench.cudagraph --compiled --out ...                          # + inductor-fused kernels
    python -m bench.cudagraph --device cpu --tiny                           # smoke run, eager only
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gpu import DRAFTER_SHAPE, TARGET_SHAPE, random_model, setup, write  # noqa: E402
from speccore.decoder import CachedLM  # noqa: E402

CPU_PATH = "none: CUDA graphs are CUDA-only (skipped on cpu)"
PATHS = ("eager", "engine", "static", "graph", "compiled")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float32", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--widths", default="1,4,8", help="new tokens per row in the timed forward")
    p.add_argument("--context", type=int, default=128, help="cached tokens per row before the timed forward")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per path (median), after one warm-up; "
                   "the paths are interleaved per repetition (default 20; 2 with --tiny)")
    p.add_argument("--models", default="target,drafter")
    p.add_argument("--no-engine", action="store_true", help="skip the CachedLM path")
    p.add_argument("--tiny", action="store_true", help="bench.gpu's tiny shapes (a smoke run of the harness)")
    p.add_argument("--compiled", action="store_true", help="add the `compiled` path (CUDA only; needs triton)")
    p.add_argument("--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    a = p.parse_args(argv)
    a.batch_sizes = [int(x) for x in a.batch_sizes.split(",")]
    a.widths = sorted({int(x) for x in a.widths.split(",")})
    a.models = [x.strip() for x in a.models.split(",")]
    if a.reps is None:
        a.reps = 2 if a.tiny else 20
    return a


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def triton_available() -> bool:
    try:
        importlib.import_module("triton")
        return True
    except Exception:  # noqa: BLE001  (any failure to import means: no triton)
        return False


# ------------------------------------------------------------------------------------------ static forward

class StaticForward:
    """One model at one batch size: a StaticCache holding `context` tokens per row, and per width the
    static inputs of a forward that writes its keys/values at positions context .. context+width-1."""

    def __init__(self, model, ctx_ids: torch.Tensor, max_width: int):
        from transformers import StaticCache

        self.model, self.device = model, ctx_ids.device
        self.dtype = next(model.parameters()).dtype
        self.B, self.ctx = ctx_ids.shape
        self.L = self.ctx + max_width
        kw = dict(config=model.config, max_cache_len=self.L)
        try:  # transformers 5 allocates lazily and ignores the rest; 4.x needs them
            self.cache = StaticCache(**kw, max_batch_size=self.B, device=self.device, dtype=self.dtype)
        except TypeError:
            self.cache = StaticCache(**kw)
        self.pass_cache_position = True  # the engine passes it too; transformers versions that want it use it
        self.inputs: dict[int, dict] = {}
        self.model(**self._make_inputs(ctx_ids, offset=0), past_key_values=self.cache, use_cache=True, logits_to_keep=1)

    def _mask(self, q: int, offset: int) -> torch.Tensor:
        """4D additive mask [B, 1, q, L]: query i (position offset+i) sees keys 0 .. offset+i. A 4D mask
        goes to attention as it is: no mask building (and no host reads of the cache length) in the step."""
        j = torch.arange(self.L, device=self.device)[None, :]
        i = torch.arange(q, device=self.device)[:, None]
        m = torch.zeros(q, self.L, dtype=self.dtype, device=self.device)
        m.masked_fill_(j > offset + i, torch.finfo(self.dtype).min)
        return m[None, None].expand(self.B, 1, q, self.L).contiguous()

    def _make_inputs(self, ids: torch.Tensor, offset: int) -> dict:
        q = ids.shape[1]
        pos = torch.arange(offset, offset + q, device=self.device)
        d = dict(input_ids=ids.clone(), attention_mask=self._mask(q, offset),
                 position_ids=pos[None, :].expand(self.B, q).contiguous())
        if self.pass_cache_position:
            d["cache_position"] = pos.clone()
        return d

    def set_ids(self, ids: torch.Tensor) -> dict:
        w = ids.shape[1]
        if w not in self.inputs:
            self.inputs[w] = self._make_inputs(ids, offset=self.ctx)
        self.inputs[w]["input_ids"].copy_(ids)
        return self.inputs[w]

    def _rewind(self) -> None:
        """Put the cache's write position back to `ctx` (transformers 5's StaticLayer counts the tokens it
        has written in a device tensor, `cumulative_length`, and writes there; older ones use
        cache_position). Inside the captured step, so each replay writes the same positions."""
        for layer in getattr(self.cache, "layers", []):
            for name in ("cumulative_length", "cumulative_length_int"):
                v = getattr(layer, name, None)
                if isinstance(v, torch.Tensor):
                    v.fill_(self.ctx)
                elif isinstance(v, int):
                    setattr(layer, name, self.ctx)

    def step(self, w: int) -> torch.Tensor:
        self._rewind()
        return self.model(**self.inputs[w], past_key_values=self.cache, use_cache=True).logits


def capture(fn, device: str, pool=None):
    """Manual CUDA-graph capture of fn (after warm-up on a side stream, as torch's docs do it)."""
    s = torch.cuda.Stream(device=device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    sync(device)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool):
        out = fn()
    sync(device)
    return g, out


def raise_recompile_limit() -> None:
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # one graph per batch size and width: stay compiled
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)


class Compiled:
    """Fallback when the manual capture fails: torch.compile(mode="reduce-overhead") (cudagraph trees)."""

    def __init__(self, sf: StaticForward):
        raise_recompile_limit()
        self.sf = sf
        self.fn = torch.compile(sf.model, mode="reduce-overhead", dynamic=False)

    def __call__(self, w: int) -> torch.Tensor:
        self.sf._rewind()
        if hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            torch.compiler.cudagraph_mark_step_begin()
        return self.fn(**self.sf.inputs[w], past_key_values=self.sf.cache, use_cache=True).logits


class Fused:
    """The `compiled` path: one model's forward compiled by inductor (no cudagraphs of its own, dynamic=False,
    so each batch size and width compiles once), fullgraph unless that fails. step() is StaticForward.step
    with the compiled forward (the cache rewind stays eager, as in the graph path)."""

    def __init__(self, model, mode: str):
        raise_recompile_limit()
        self.model, self.mode, self.fullgraph, self.fullgraph_error = model, mode, True, None
        self.fn = torch.compile(model, mode=mode, dynamic=False, fullgraph=True)

    def step(self, sf: StaticForward, w: int) -> torch.Tensor:
        sf._rewind()
        return self.fn(**sf.inputs[w], past_key_values=sf.cache, use_cache=True).logits

    def warm(self, sf: StaticForward, w: int) -> float:
        """The first call at this shape (it compiles); seconds. A fullgraph failure recompiles with graph breaks."""
        t0 = time.perf_counter()
        try:
            self.step(sf, w)
        except Exception as e:  # noqa: BLE001  (recorded: compiled again without fullgraph)
            if not self.fullgraph:
                raise
            self.fullgraph, self.fullgraph_error = False, f"{type(e).__name__}: {str(e)[:400]}"
            self.fn = torch.compile(self.model, mode=self.mode, dynamic=False)
            self.step(sf, w)
        sync(sf.device.type)
        return time.perf_counter() - t0


def replayable(fn, sf: StaticForward, w: int, dev: str, pool, graphs: list, label: str):
    """fn captured by capture() and replayed; if the capture fails, torch.compile(mode="reduce-overhead") when
    triton imports. Returns (replay or None, path, {"capture_error", "compile_s"} as they apply)."""
    info = {}
    try:
        gr, out = capture(fn, dev, pool)
        graphs.append(gr)
        return (lambda: (gr.replay(), out)[1]), f"cuda-graph (manual capture, {label})", info
    except Exception as e:  # noqa: BLE001  (recorded: the fallback runs instead)
        info["capture_error"] = f"{type(e).__name__}: {str(e)[:400]}"
        try:
            sync(dev)
        except Exception as e2:  # noqa: BLE001
            info["capture_error"] += f"; then sync: {type(e2).__name__}: {str(e2)[:200]}"
    if not triton_available():
        return None, "none: capture failed and triton is not importable", info
    comp = Compiled(sf)
    t0 = time.perf_counter()
    for _ in range(3):
        comp(w)
    sync(dev)
    info["compile_s"] = time.perf_counter() - t0
    return (lambda: comp(w)), "torch.compile(mode='reduce-overhead'), StaticCache", info


# ------------------------------------------------------------------------------------------ measurement

def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.float(), b.float()
    same = (a.argmax(-1) == b.argmax(-1))
    return {"max_abs_diff": float((a - b).abs().max()), "argmax_same": int(same.sum()), "positions": same.numel(),
            "max_abs_logit": float(b.abs().max())}


@torch.no_grad()
def measure_model(args, name: str, model, notes: list[str]) -> list[dict]:
    dev = args.device
    cuda = dev.startswith("cuda")
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)
    rows = []
    graph_path = None if cuda else CPU_PATH
    compiled_path = None
    fused = Fused(model, args.compile_mode) if args.compiled and cuda else None
    for B in args.batch_sizes:
        ctx = torch.randint(1, min(V, 50000), (B, args.context), generator=g).to(dev)
        # eager: DynamicCache filled by a prefill with the engine's inputs
        ones = torch.ones(B, args.context, dtype=torch.long, device=dev)
        pos0 = torch.arange(args.context, device=dev)
        dyn = model(input_ids=ctx, attention_mask=ones, position_ids=pos0[None].expand(B, -1),
                    cache_position=pos0, use_cache=True, logits_to_keep=1).past_key_values
        sf = StaticForward(model, ctx, max(args.widths))
        lm = None
        if not args.no_engine:
            lm = CachedLM(model, B)
            lm.forward(ctx.tolist(), last_only=True)
        pool = torch.cuda.graph_pool_handle() if cuda else None
        graphs = []
        for w in args.widths:
            ids = torch.randint(1, min(V, 50000), (B, w), generator=g).to(dev)
            ids_list = ids.tolist()
            pos = torch.arange(args.context, args.context + w, device=dev)
            eager_in = dict(input_ids=ids, attention_mask=torch.ones(B, args.context + w, dtype=torch.long, device=dev),
                            position_ids=pos[None].expand(B, -1), cache_position=pos)
            sf.set_ids(ids)
            rec = {"model": name, "batch_size": B, "width": w, "path": None}

            def run_eager():
                out = model(**eager_in, past_key_values=dyn, use_cache=True).logits
                return out

            def after_eager():
                dyn.crop(-w)  # back to the context (a negative count: remove w tokens, in every version)

            def run_engine():
                return lm.forward(ids_list)

            def after_engine():
                lm.keep([0] * B)  # roll back as bench.gpu does, so every rep sees the same cache
                lm.select(list(range(B)))

            def run_static():
                return sf.step(w)

            replay = fused_replay = None
            if cuda:
                replay, rec["path"], info = replayable(lambda: sf.step(w), sf, w, dev, pool, graphs, "StaticCache")
                rec.update(info)
                graph_path = rec["path"]
            else:
                rec["path"] = CPU_PATH
            if fused is not None:
                try:
                    rec["compiled_compile_s"] = fused.warm(sf, w)
                    fused_replay, rec["compiled_path"], info = replayable(
                        lambda: fused.step(sf, w), sf, w, dev, pool, graphs, f"inductor mode={fused.mode}, StaticCache")
                    rec.update({f"compiled_{k}": v for k, v in info.items()})
                except Exception as e:  # noqa: BLE001  (recorded: no compiled path for this row)
                    rec["compiled_path"] = "none: compile failed"
                    rec["compiled_error"] = f"{type(e).__name__}: {str(e)[:400]}"
                rec["compiled_fullgraph"] = fused.fullgraph
                if fused.fullgraph_error:
                    rec["compiled_fullgraph_error"] = fused.fullgraph_error
                compiled_path = rec["compiled_path"]
            elif args.compiled:
                rec["compiled_path"] = compiled_path = "none: CUDA-only (skipped on cpu)"
            paths = {"eager": (run_eager, after_eager), "static": (run_static, None)}
            if lm is not None:
                paths["engine"] = (run_engine, after_engine)
            if replay is not None:
                paths["graph"] = (replay, None)
            if fused_replay is not None:
                paths["compiled"] = (fused_replay, None)
            times = {p: [] for p in paths}
            last = {}
            for rep in range(args.reps + 1):  # the paths interleaved per repetition; rep 0 is a warm-up
                for p, (fn, after) in paths.items():
                    sync(dev)
                    t0 = time.perf_counter()
                    out = fn()
                    sync(dev)
                    t = time.perf_counter() - t0
                    if rep == args.reps and p != "engine":
                        last[p] = out.clone()
                    if after is not None:
                        after()
                    if rep:
                        times[p].append(t * 1e3)
            for p, ts in times.items():
                rec[f"{p}_ms"] = statistics.median(ts)
                rec[f"{p}_min_ms"] = min(ts)
                rec[f"{p}_times_ms"] = [round(t, 3) for t in ts]
            rec["static_vs_eager"] = compare(last["static"], last["eager"])
            if "graph" in last:
                rec["graph_speedup"] = rec["eager_ms"] / rec["graph_ms"]
                rec["graph_vs_eager"] = compare(last["graph"], last["eager"])
                rec["graph_vs_static"] = compare(last["graph"], last["static"])
            if "compiled" in last:
                rec["compiled_speedup"] = rec["eager_ms"] / rec["compiled_ms"]
                rec["compiled_vs_eager"] = compare(last["compiled"], last["eager"])
            rows.append(rec)
            print(f"{name} B={B} w={w}: " + ", ".join(f"{p} {rec[f'{p}_ms']:.2f} ms" for p in PATHS if f"{p}_ms" in rec)
                  + (f", graph x{rec['graph_speedup']:.1f}, graph vs eager max|d| "
                     f"{rec['graph_vs_eager']['max_abs_diff']:.2e} argmax {rec['graph_vs_eager']['argmax_same']}/"
                     f"{rec['graph_vs_eager']['positions']}" if "graph_speedup" in rec else
                     f", static vs eager max|d| {rec['static_vs_eager']['max_abs_diff']:.2e}")
                  + f" [{rec['path']}]"
                  + (f"; compiled ({rec.get('compiled_compile_s', 0):.0f} s to compile) vs eager max|d| "
                     f"{rec['compiled_vs_eager']['max_abs_diff']:.2e} argmax {rec['compiled_vs_eager']['argmax_same']}/"
                     f"{rec['compiled_vs_eager']['positions']} [{rec['compiled_path']}]" if "compiled_vs_eager" in rec
                     else f"; compiled: {rec['compiled_path']}" if "compiled_path" in rec else ""), flush=True)
        graphs.clear()  # free this batch size's graphs and caches before the next
        sf = dyn = lm = None
        if cuda:
            torch.cuda.empty_cache()
    if graph_path and graph_path not in notes:
        notes.append(f"{name}: {graph_path}")
    if compiled_path:
        notes.append(f"{name} compiled: {compiled_path}"
                     + ("" if fused is None else f" (fullgraph {fused.fullgraph})"))
    return rows


def summarise(rows: list[dict], batch_sizes: list[int], widths: list[int]) -> list[dict]:
    """c and v(w) per batch size, from the graph timings and (beside them) the eager ones."""
    at = {(r["model"], r["batch_size"], r["width"]): r for r in rows}
    w1 = widths[0]
    out = []
    for B in batch_sizes:
        s = {"batch_size": B, "base_width": w1}
        for p in ("graph", "compiled", "eager", "engine"):
            t = at.get(("target", B, w1), {}).get(f"{p}_ms")
            d = at.get(("drafter", B, w1), {}).get(f"{p}_ms")
            if t:
                s[f"{p}_target_step_ms"] = t
                s[f"{p}_v"] = {w: at[("target", B, w)][f"{p}_ms"] / t for w in widths
                               if f"{p}_ms" in at.get(("target", B, w), {})}
                if d:
                    s[f"{p}_drafter_step_ms"] = d
                    s[f"{p}_c"] = d / t
        out.append(s)
    return out


# ------------------------------------------------------------------------------------------ report

def markdown(res: dict) -> str:
    m = res["meta"]
    L = [f"Device: {m['device_name']}; {m['dtype']} (TF32 off); torch {m['torch']}, transformers "
         f"{m['transformers']}, triton {'yes' if m['triton'] else 'no'}; {m['date']}. Context {m['context']} "
         f"cached tokens per row; median of {m['reps']} interleaved repetitions after a warm-up.", ""]
    L += ["Paths: " + "; ".join(m["paths_run"]), ""]
    L += ["Per forward (ms). eager: model forward on a DynamicCache; engine: speccore CachedLM.forward; static: "
          "StaticCache forward run eagerly; graph: that forward replayed as a CUDA graph. Correctness: graph "
          "logits against eager (max |diff|, argmax identical / positions) and against static.", "",
          "| model | batch | width | eager | engine | static | graph | speedup eager/graph | graph vs eager max abs diff | "
          "argmax same | graph vs static max abs diff |",
          "|---" * 11 + "|"]

    def f(x, fmt="{:.2f}"):
        return fmt.format(x) if x is not None else "–"

    for r in res["rows"]:
        ge, gs = r.get("graph_vs_eager"), r.get("graph_vs_static")
        se = r["static_vs_eager"]
        L.append(f"| {r['model']} | {r['batch_size']} | {r['width']} | {f(r.get('eager_ms'))} | {f(r.get('engine_ms'))} | "
                 f"{f(r.get('static_ms'))} | {f(r.get('graph_ms'))} | "
                 + (f"{r['graph_speedup']:.1f}x | {ge['max_abs_diff']:.2e} | {ge['argmax_same']}/{ge['positions']} | "
                    f"{gs['max_abs_diff']:.2e} |" if ge else
                    f"– | static vs eager {se['max_abs_diff']:.2e} | {se['argmax_same']}/{se['positions']} | – |"))
    comp = [r for r in res["rows"] if "compiled_path" in r]
    if comp:
        L += ["", f"Fused kernels: compiled = the StaticCache forward compiled by torch.compile (inductor, mode "
              f"{m['compile_mode']}, dynamic=False) and captured by the same manual CUDA-graph capture as graph (path "
              "per row); compile s = its first call at that shape. Correctness: compiled logits against eager.", "",
              "| model | batch | width | graph | compiled | graph/compiled | compiled vs eager max abs diff | "
              "argmax same | compile s | fullgraph | path |", "|---" * 11 + "|"]
        for r in comp:
            ce = r.get("compiled_vs_eager")
            L.append(f"| {r['model']} | {r['batch_size']} | {r['width']} | {f(r.get('graph_ms'))} | "
                     f"{f(r.get('compiled_ms'))} | "
                     + (f"{r['graph_ms'] / r['compiled_ms']:.2f}x | " if ce and r.get("graph_ms") else "– | ")
                     + (f"{ce['max_abs_diff']:.2e} | {ce['argmax_same']}/{ce['positions']} | " if ce else "– | – | ")
                     + f"{f(r.get('compiled_compile_s'), '{:.1f}')} | {r.get('compiled_fullgraph', '–')} | "
                       f"{r['compiled_path']} |")
    ws = m["widths"]
    cv = ("graph", "compiled", "eager") if comp else ("graph", "eager")
    L += ["", f"Drafter cost c = drafter {ws[0]}-token forward / target {ws[0]}-token forward, and v(w) = target "
          f"forward over w tokens / target {ws[0]}-token forward (a verify of k drafts is w = k+1), same batch size:", "",
          "| batch | " + " | ".join(f"{p}: target ms | {p}: drafter ms | {p}: c"
                                   + "".join(f" | {p}: v({w})" for w in ws[1:]) for p in cv) + " |",
          "|---" * (1 + len(cv) * (3 + len(ws[1:]))) + "|"]
    for s in res["summary"]:
        cells = [str(s["batch_size"])]
        for p in cv:
            cells += [f(s.get(f"{p}_target_step_ms")), f(s.get(f"{p}_drafter_step_ms")), f(s.get(f"{p}_c"), "{:.3f}")]
            cells += [f(s.get(f"{p}_v", {}).get(w)) for w in ws[1:]]
        L.append("| " + " | ".join(cells) + " |")
    errs = [f"{r['model']} B={r['batch_size']} w={r['width']}: {r['capture_error']}" for r in res["rows"]
            if r.get("capture_error")]
    if errs:
        L += ["", "Capture errors:", ""] + [f"- {e}" for e in errs]
    errs = [f"{r['model']} B={r['batch_size']} w={r['width']} {k}: {r[k]}" for r in comp
            for k in ("compiled_error", "compiled_capture_error", "compiled_fullgraph_error") if r.get(k)]
    if errs:
        L += ["", "Compiled-path errors (a fullgraph error repeats on each row compiled without fullgraph):", ""] + [
            f"- {e}" for e in errs]
    return "\n".join(L) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    dtype, meta = setup(args)
    shapes = {"target": TARGET_SHAPE, "drafter": DRAFTER_SHAPE}
    meta.update(triton=triton_available(), context=args.context, widths=args.widths, batch_sizes=args.batch_sizes,
                paths_run=[])
    if args.compiled:
        meta["compile_mode"] = args.compile_mode
    print(json.dumps(meta), flush=True)
    res: dict = {"meta": meta, "rows": [], "summary": []}

    def save():
        res["summary"] = summarise(res["rows"], args.batch_sizes, args.widths)
        write(args.out, res, markdown)

    for i, name in enumerate(args.models):
        model = random_model(shapes[name], args.device, dtype, args.seed + i, args.tiny)
        meta[f"{name}_params"] = sum(p.numel() for p in model.parameters())
        res["rows"] += measure_model(args, name, model, meta["paths_run"])
        save()
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
