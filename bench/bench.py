"""speccore against transformers' own generate(): one process, the same prompt ids, interleaved.

Parts (see bench/README.md):
- costs: v(k) = a target forward over k+1 new tokens with a KV cache / a one-token step, and each
  drafter's one-token step c relative to the target's (speccore's CachedLM, as the engine runs them).
- main: every configuration on every prompt at batch size 1, round-robin (rotated order per prompt),
  after an uncounted warm-up prompt; speccore rows and their transformers peers.
- batch: speccore AR and speculative at each batch size on the whole prompt set (no HF peer there).
Greedy outputs are checked against the reference (HF AR, else speccore AR) before any ratio: a ratio
uses only the rows where both of its configurations are identical to the reference.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
AR, PLD = "ar", "prompt-lookup"
HF_VARIANTS = {  # applied to the assistant's generation_config, which is what transformers reads
    "default": {},
    "heuristic": {"num_assistant_tokens": 5, "num_assistant_tokens_schedule": "heuristic_transient",
                  "assistant_confidence_threshold": 0.0},
}
log = logging.getLogger("bench")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--target", required=True, help="catalog name, local model directory or hub id")
    a("--pairs", default="ar,prompt-lookup", help="comma list: ar, prompt-lookup, drafter refs (catalog/dir/hub); "
      "a drafter ref ending in @int8 runs that drafter int8-packed (its transformers peer stays fp32)")
    a("--policies", default="constant,heuristic,confidence,cost", help="speccore lookahead policies to run per pair")
    a("--dataset", default="humaneval", help="humaneval | sharegpt | a .jsonl/.csv/.parquet file")
    a("--n", type=int, default=10, help="counted prompts: the first N valid rows (row N+1 is the warm-up)")
    a("--max-new-tokens", type=int, default=128)
    a("--max-prompt-tokens", type=int, default=1024, help="longer prompts are skipped as not valid here")
    a("--warmup-tokens", type=int, default=16, help="token budget of the uncounted warm-up prompt")
    a("--batch-sizes", default="1", help="comma list; any size > 1 adds the batch part (run at every size listed)")
    a("--batch-policy", default="heuristic", help="the lookahead policy of the speculative rows in the batch part")
    a("--parts", default=None, help="comma list of costs,main,batch (default: costs,main (+batch, see above))")
    a("--measure-costs", action="store_true", help="only measure and print v(k) and c (same as --parts costs)")
    a("--cost-ks", default="0-8,12,16", help="k values for v(k), e.g. 0-8,12,16")
    a("--cost-batch-sizes", default="1", help="comma list: also measure v(k) with this many rows per forward "
                                             "(each row k+1 new tokens), relative to a plain step of as many rows")
    a("--cost-reps", type=int, default=5, help="timed repetitions per k (median), after one untimed")
    a("--cost-prior", choices=["library", "measured"], default="library",
      help="the cost policy's CostModel prior: speccore's defaults (as build_engine does) or the costs measured here")
    a("--k", type=int, default=5, help="constant k and the heuristic's starting k")
    a("--k-max", type=int, default=16)
    a("--confidence-threshold", type=float, default=0.4)
    a("--oracle-k", type=int, default=16, help="a constant-k run per pair whose steps feed the oracle (0: use the "
                                               "constant policy's log)")
    a("--no-hf", action="store_true", help="skip transformers' generate() peers")
    a("--hf-variants", default="default", help=f"assisted-generation settings to run: {', '.join(HF_VARIANTS)}")
    a("--prompt-lookup-num-tokens", type=int, default=10)
    a("--prepack", choices=["on", "off"], default="on",
      help="speccore's models run with oneDNN pre-packed linears on CPU fp32 (as build_engine does); transformers' "
           "peers always run the plain dense linears, as transformers runs them (each model then holds both copies, "
           "except with --no-hf)")
    a("--dtype", default="float32")
    a("--device", default="cpu")
    a("--threads", type=int, default=None, help="torch threads (default: torch's own); the same for every config")
    a("--out", default=None, help="JSON path; the markdown table goes next to it (.md)")
    args = p.parse_args(argv)
    args.pairs = [s.strip() for s in args.pairs.split(",") if s.strip()]
    args.policies = [s.strip() for s in args.policies.split(",") if s.strip()]
    args.batch_sizes = sorted({int(s) for s in args.batch_sizes.split(",")})
    args.cost_batch_sizes = sorted({int(s) for s in args.cost_batch_sizes.split(",")} | {1})
    args.hf_variants = [s.strip() for s in args.hf_variants.split(",") if s.strip()]
    if unknown := set(args.hf_variants) - set(HF_VARIANTS):
        p.error(f"unknown --hf-variants {sorted(unknown)}")
    ks = set()
    for part in args.cost_ks.split(","):
        lo, _, hi = part.partition("-")
        ks.update(range(int(lo), int(hi or lo) + 1))
    args.cost_ks = sorted(ks | {0})
    parts = "costs" if args.measure_costs else args.parts or "costs,main" + (",batch" if max(args.batch_sizes) > 1 else "")
    args.parts = {s.strip() for s in parts.split(",")}
    if args.cost_prior == "measured" and "costs" not in args.parts:
        p.error("--cost-prior measured needs the costs part")
    return args


# ------------------------------------------------------------------------------------------ small helpers

def _now(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def _median(xs):
    return statistics.median(xs) if xs else None


INT8 = "@int8"  # a pair suffix: the same drafter, packed int8 (speccore.prepack); transformers' peer stays fp32


def _label(ref: str) -> str:
    ref, suffix = (ref[: -len(INT8)], INT8) if ref.endswith(INT8) else (ref, "")
    return (Path(ref).name if Path(ref).expanduser().is_dir() else ref) + suffix


def _rss_now() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _loadavg() -> tuple:
    try:
        return os.getloadavg()
    except OSError:
        return ()


def _param_bytes(model) -> tuple[int, int]:
    """(parameter bytes, buffer bytes), each tensor once (tied embeddings count once)."""
    out, seen = [0, 0], set()
    for i, ts in enumerate((model.parameters(), model.buffers())):
        for t in ts:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                out[i] += t.numel() * t.element_size()
    return out[0], out[1]


def _git() -> dict:
    def run(*cmd):
        try:
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"sha": run("git", "rev-parse", "HEAD") or None, "dirty": bool(run("git", "status", "--porcelain"))}


# ------------------------------------------------------------------------------------------ prompts

def load_rows(args, target) -> tuple[list, tuple | None, dict]:
    """The first N+1 valid rows as (Row, target prompt ids): N counted, then the warm-up row."""
    from speccore.prompts import encode_row
    from speccore.sources import SourceSpec, iter_rows

    kind = args.dataset if args.dataset in ("humaneval", "sharegpt") else "file"
    spec = SourceSpec(kind=kind, path=None if kind != "file" else args.dataset)
    budget = max(args.max_new_tokens, args.warmup_tokens)
    rows, skipped = [], Counter()
    for row in iter_rows(spec):
        if len(rows) == args.n + 1:
            break
        if not row.ok:
            skipped[row.error_type] += 1
            continue
        # Greedy, one budget for all: per-row sampling settings and stop strings (HF has no peer) go.
        row = dataclasses.replace(row, max_new_tokens=None, temperature=None, top_p=None, top_k=None, seed=None,
                                  stop=None)
        try:
            ids = encode_row(target.tokenizer, row)
        except Exception:  # noqa: BLE001
            skipped["encode_error"] += 1
            continue
        if not ids or len(ids) > args.max_prompt_tokens or len(ids) + budget > target.context_length:
            skipped["prompt_too_long"] += 1
            continue
        rows.append((row, ids))
    if len(rows) <= args.n:
        log.warning("only %d valid rows for --n %d: the warm-up reuses the first row", len(rows), args.n)
        return rows, (rows[0] if rows else None), dict(skipped)
    return rows[: args.n], rows[args.n], dict(skipped)


# ------------------------------------------------------------------------------------------ costs

def measure_costs(args, target, drafters: dict, ids: list[int]) -> dict:
    """Median times of target forwards over k+1 new tokens and of one drafter token, with KV caches."""
    from speccore.decoder import CachedLM
    from speccore.ngram import lookup

    dev, ks = args.device, args.cost_ks
    t_lms = {}
    for B in args.cost_batch_sizes:
        t_lms[B] = CachedLM(target.model, B)
        t_lms[B].forward([ids] * B)
    feed = (ids * (max(ks) + 2))[: max(ks) + 1]  # real token ids; what they are does not change the cost
    d_lms = {}
    text = target.tokenizer.decode(ids)
    for label, d in drafters.items():
        dids = list(d.tokenizer(text)["input_ids"]) or [0]
        lm = CachedLM(d.model, 1)
        lm.forward([dids])
        d_lms[label] = (lm, dids)
    tb = {B: {k: [] for k in ks} for B in t_lms}
    t = tb[1]
    td = {label: [] for label in d_lms}
    tp = []
    for rep in range(args.cost_reps + 1):  # rep 0 is untimed (warm-up); interleaved so noise hits all alike
        for B, t_lm in t_lms.items():
            for k in ks:
                t0 = _now(dev)
                t_lm.forward([feed[: k + 1]] * B)
                dt = _now(dev) - t0
                t_lm.keep([0] * B)
                if rep:
                    tb[B][k].append(dt)
        for label, (lm, dids) in d_lms.items():
            t0 = _now(dev)
            lm.forward([dids[-1:]])
            dt = _now(dev) - t0
            lm.keep([0])
            if rep:
                td[label].append(dt)
        t0 = time.perf_counter()
        lookup(ids, 10, 3, 1)
        if rep:
            tp.append(time.perf_counter() - t0)
    t1 = _median(t[0])
    out = {"prompt_tokens": len(ids), "reps": args.cost_reps,
           "target": {"t_ms": {k: _median(t[k]) * 1e3 for k in ks}, "v": {k: _median(t[k]) / t1 for k in ks}},
           "target_batch": {B: {"t_ms": {k: _median(x[k]) * 1e3 for k in ks},
                                "v": {k: _median(x[k]) / _median(x[0]) for k in ks},
                                "plain_vs_one_row": _median(x[0]) / t1} for B, x in tb.items()},
           "drafters": {label: {"step_ms": _median(x) * 1e3, "c": _median(x) / t1} for label, x in td.items()},
           PLD: {"step_ms": _median(tp) * 1e3, "c": _median(tp) / t1}}
    return out


def cost_model_for(costs: dict, pair: str):
    from speccore.lookahead import CostModel

    c = costs[PLD]["c"] if pair == PLD else costs["drafters"][pair]["c"]
    return CostModel(c=c, v={int(k): v for k, v in costs["target"]["v"].items()})


# ------------------------------------------------------------------------------------------ configurations

@dataclass
class Config:
    name: str
    impl: str  # speccore | hf
    pair: str  # ar | prompt-lookup | drafter label
    policy: str = "none"
    algorithm: str = "none"
    settings: dict = field(default_factory=dict)
    run: Callable | None = None  # (row, ids, max_new) -> (output ids, stats)
    spec: tuple | None = None  # speccore: (proposer, policy factory, algorithm, sampling config)
    own_ar: str | None = None
    peer: str | None = None
    error: str | None = None
    results: dict = field(default_factory=dict)  # counted row index -> (out ids, wall s, stats)


def pair_setup(args, target, pair: str, drafter):
    """(RunConfig, proposer, algorithm) as build_engine makes them. One proposer per pair serves every
    policy: its per-batch state (drafter cache, views) is rebuilt by `start` at every batch."""
    from speccore.config import compose
    from speccore.speculate import make_proposer

    memo = args.__dict__.setdefault("_pairs", {})  # per run: Hydra (~1 s) and the proposer once per pair
    if pair in memo:
        return memo[pair]
    ov = ["target=hf", f"target.ref='{args.target}'", "sampling=greedy", f"sampling.max_new_tokens={args.max_new_tokens}",
          f"speculation.k_max={args.k_max}", f"speculation.confidence_threshold={args.confidence_threshold}"]
    if pair == AR:
        ov.append("drafter=none")
    elif pair == PLD:
        ov.append("drafter=prompt-lookup")
    else:
        ov += ["drafter=hf", f"drafter.ref='{drafter.ref}'"]
    cfg = compose(ov, config_dir=CONF)
    if pair == AR:
        memo[pair] = cfg, None, "none"
    else:
        proposer, _, algo = make_proposer(cfg, target, drafter)
        memo[pair] = cfg, proposer, algo
    return memo[pair]


def policy_spec(args, cfg, proposer, algo, pair: str, policy: str, k: int, costs: dict | None) -> tuple:
    """(proposer, policy factory, algorithm, sampling) for one policy of a pair."""
    from speccore.speculate import policy_factory

    if proposer is None:
        return None, None, "none", cfg.sampling
    factory = policy_factory(dataclasses.replace(cfg, speculation=dataclasses.replace(
        cfg.speculation, lookahead=policy, k=k)))
    if policy == "cost" and args.cost_prior == "measured":  # the library's factory, with the measured prior
        shared = cost_model_for(costs, pair)
        base = factory
        factory = partial(base.func, *base.args, **{**base.keywords, "cost_model": shared})
        if hasattr(base, "cost_model"):  # the engine feeds this one once per batched step
            factory.cost_model = shared
    return proposer, factory, algo, cfg.sampling


def make_engine(target, spec, batch_size: int):
    from speccore.engine import Engine

    proposer, factory, algo, sampling = spec
    return Engine(target, proposer=proposer, policy_factory=factory, sampling=sampling, batch_size=batch_size,
                  algorithm=algo)


def speccore_runner(engine):
    def run(row, ids, max_new):
        results, steps = engine.generate([dataclasses.replace(row, max_new_tokens=max_new)])
        r = results[0]
        if r.status != "ok":
            raise RuntimeError(f"{r.error_type}: {r.error_message}")
        if r.n_prompt_tokens != len(ids):
            raise RuntimeError(f"speccore encoded {r.n_prompt_tokens} prompt tokens, the harness {len(ids)}")
        return list(r.output_ids), {
            "steps": r.steps, "drafted": r.drafted, "accepted": r.accepted, "draft_s": r.draft_s,
            "verify_s": r.verify_s, "fallback": r.fallback,
            "log": [{"k": s.k, "drafted": s.drafted, "drafted_drafter": s.drafted_drafter, "accepted": s.accepted,
                     "draft_ms": round(s.draft_ms, 3), "verify_ms": round(s.verify_ms, 3)} for s in steps]}
    return run


class HfRecorder:
    """Wraps each candidate generator transformers builds, to log (drafted, accepted) per step and the
    time spent drafting. Costs one Python call per step; transformers' own logic is untouched."""

    def __init__(self):
        self.steps, self.draft_s, self._orig = [], 0.0, None

    def install(self):
        from transformers.generation.utils import GenerationMixin

        self._orig = orig = GenerationMixin._get_candidate_generator
        rec = self

        def wrapped(model, *a, **kw):
            gen = orig(model, *a, **kw)
            get, update = gen.get_candidates, gen.update_candidate_strategy

            def get_candidates(*a2, **kw2):
                t0 = time.perf_counter()
                try:
                    return get(*a2, **kw2)
                finally:
                    rec.draft_s += time.perf_counter() - t0

            def update_candidate_strategy(input_ids, scores, num_matches):
                rec.steps.append((int(scores.shape[1]) - 1, int(num_matches)))
                return update(input_ids, scores, num_matches)

            gen.get_candidates, gen.update_candidate_strategy = get_candidates, update_candidate_strategy
            return gen

        GenerationMixin._get_candidate_generator = wrapped

    def uninstall(self):
        if self._orig is not None:
            from transformers.generation.utils import GenerationMixin

            GenerationMixin._get_candidate_generator = self._orig
            self._orig = None


def dense(*models):
    """transformers' peers run every model's plain dense linears, as transformers itself runs them."""
    from speccore.prepack import dense_linears

    stack = contextlib.ExitStack()
    for m in models:
        if m is not None:
            stack.enter_context(dense_linears(m.model))
    return stack


def hf_runner(target, rec: HfRecorder, device: str, assistant=None, overrides: dict | None = None, **kw):
    eos = list(target.eos_token_ids)
    pad = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else eos[0]

    def run(row, ids, max_new):
        x = torch.tensor([ids], device=device)
        saved = {}
        if assistant is not None:
            kw["assistant_model"] = assistant.model
            for key, val in (overrides or {}).items():
                saved[key] = getattr(assistant.model.generation_config, key, None)
                setattr(assistant.model.generation_config, key, val)
        rec.steps, rec.draft_s = [], 0.0
        try:
            with dense(target, assistant):
                out = target.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new,
                                            eos_token_id=eos, pad_token_id=pad, **kw)
        finally:
            for key, val in saved.items():
                setattr(assistant.model.generation_config, key, val)
        new = out[0, len(ids):].tolist()
        steps = [{"k": d, "drafted": d, "accepted": a} for d, a in rec.steps]
        return new, {"steps": len(steps), "drafted": sum(d for d, _ in rec.steps),
                     "accepted": sum(a for _, a in rec.steps), "draft_s": rec.draft_s if steps else 0.0,
                     "verify_s": None, "log": steps}
    return run


def hf_assist_settings(drafter, same_vocab: bool, overrides: dict) -> dict:
    """What transformers' AssistedCandidateGenerator will use: the assistant's generation_config filled in
    with transformers' global defaults (the same two lines as its __init__), plus the variant's overrides."""
    gc = copy.deepcopy(drafter.model.generation_config)
    gc.update(**gc._get_default_generation_params(), defaults_only=True)
    for key, val in overrides.items():
        setattr(gc, key, val)
    thr = gc.assistant_confidence_threshold
    sk = importlib.util.find_spec("sklearn") is not None
    return {"num_assistant_tokens": gc.num_assistant_tokens, "num_assistant_tokens_schedule": gc.num_assistant_tokens_schedule,
            "assistant_confidence_threshold": thr, "confidence_stop": bool(thr and thr > 0),
            "threshold_adapts": bool(thr and sk and same_vocab),  # ROC update: needs sklearn, same-vocab only
            "sklearn_available": sk, "generator": "AssistedCandidateGenerator" if same_vocab
            else "AssistedCandidateGeneratorDifferentTokenizers (UAG)"}


def build_configs(args, target, drafters: dict, costs: dict | None, rec: HfRecorder) -> list[Config]:
    cfgs: list[Config] = []
    hf = not args.no_hf
    cfg_ar, _, _ = pair_setup(args, target, AR, None)
    cfgs.append(Config("sc:ar", "speccore", AR, own_ar="sc:ar", peer="hf:ar" if hf else None,
                       spec=policy_spec(args, cfg_ar, None, "none", AR, "none", args.k, costs)))
    if hf:
        cfgs.append(Config("hf:ar", "hf", AR, own_ar="hf:ar", run=hf_runner(target, rec, args.device)))
    for pair in [p for p in args.pairs if p != AR]:
        label = PLD if pair == PLD else _label(pair)
        drafter = drafters.get(label)
        runs = [(pol, args.k) for pol in args.policies]
        if args.oracle_k:
            runs.append((f"k{args.oracle_k}", args.oracle_k))
        hf_label = label.removesuffix(INT8)  # an int8 drafter's peer is transformers with the fp32 drafter
        hf_peer = f"hf:{hf_label}" if hf else None
        try:
            cfg, proposer, algo = pair_setup(args, target, label, drafter)
        except Exception as e:  # noqa: BLE001 - e.g. a pair speccore refuses: say so, go on
            cfg, proposer, algo = None, None, None
            why = f"{type(e).__name__}: {e}"
            cfgs += [Config(f"sc:{label}/{pol}", "speccore", label, pol, error=why) for pol, _ in runs]
        for pol, k in runs if proposer is not None else ():
            spec = policy_spec(args, cfg, proposer, algo, label, "constant" if pol == f"k{args.oracle_k}" else pol,
                               k, costs)
            cfgs.append(Config(f"sc:{label}/{pol}", "speccore", label, pol, algo, {"k": k, "k_max": args.k_max},
                               spec=spec, own_ar="sc:ar", peer=hf_peer))
        if not hf or any(c.name == hf_peer for c in cfgs):
            continue
        if label == PLD:
            cfgs.append(Config(f"hf:{PLD}", "hf", PLD, "prompt_lookup", "prompt_lookup",
                               {"prompt_lookup_num_tokens": args.prompt_lookup_num_tokens, "max_matching_ngram_size": 2},
                               run=hf_runner(target, rec, args.device,
                                             prompt_lookup_num_tokens=args.prompt_lookup_num_tokens),
                               own_ar="hf:ar"))
            continue
        same, kw = assist_kwargs(target, drafter)
        for var in args.hf_variants:
            ov = HF_VARIANTS[var]
            cfgs.append(Config(hf_peer + ("" if var == "default" else f"/{var}"), "hf", hf_label, var,
                               "assisted" if same else "uag", hf_assist_settings(drafter, same, ov),
                               run=hf_runner(target, rec, args.device, assistant=drafter, overrides=ov, **kw),
                               own_ar="hf:ar"))
    for c in cfgs:
        if c.spec is not None and c.run is None:
            c.run = speccore_runner(make_engine(target, c.spec, 1))
    return cfgs


def assist_kwargs(target, drafter) -> tuple[bool, dict]:
    """(same vocabulary?, the extra generate() kwargs transformers needs for this assistant)."""
    from speccore.vocab import same_vocab

    same = same_vocab(target.tokenizer, drafter.tokenizer)
    return same, {} if same else {"tokenizer": target.tokenizer, "assistant_tokenizer": drafter.tokenizer}


def hf_batch_refusal(target, drafter, ids, device) -> str | None:
    """transformers' answer to assisted generation at batch size 2 (it refuses: recorded, not assumed)."""
    x = torch.tensor([ids, ids], device=device)
    try:
        with dense(target, drafter):
            target.model.generate(x, attention_mask=torch.ones_like(x), assistant_model=drafter.model, do_sample=False,
                                  max_new_tokens=2, pad_token_id=list(target.eos_token_ids)[0],
                                  **assist_kwargs(target, drafter)[1])
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


# ------------------------------------------------------------------------------------------ main part

def run_main(args, cfgs: list[Config], counted, warm) -> None:
    live = [c for c in cfgs if c.error is None]
    row, ids = warm
    for c in live:  # warm-up, not counted
        try:
            c.run(row, ids, args.warmup_tokens)
        except Exception as e:  # noqa: BLE001
            c.error = f"warm-up: {type(e).__name__}: {e}"
            log.warning("%s failed in the warm-up: %s", c.name, c.error)
    live = [c for c in live if c.error is None]
    for i, (row, ids) in enumerate(counted):
        order = live[i % len(live):] + live[: i % len(live)] if live else []  # rotate: no config always first
        for c in order:
            if c.error is not None:
                continue
            try:
                t0 = _now(args.device)
                out, st = c.run(row, ids, args.max_new_tokens)
                wall = _now(args.device) - t0
            except Exception as e:  # noqa: BLE001
                c.error = f"row {row.row_id}: {type(e).__name__}: {e}"
                log.warning("%s failed: %s (dropped from here on)", c.name, c.error)
                continue
            c.results[i] = (out, wall, st)
            print(f"[{i + 1}/{len(counted)}] {c.name:<44} {len(out):4d} tok {wall:7.2f} s {len(out) / wall:7.2f} tok/s",
                  file=sys.stderr, flush=True)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for j, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return j
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.inference_mode()
def divergence_gap(target, ids, ref, got, j, device) -> dict:
    """The target's top-2 logit gap after prompt + common prefix (full forward, no cache): near-tie or not."""
    logits = target.model(input_ids=torch.tensor([ids + ref[:j]], device=device)).logits[0, -1].float()
    top = logits.topk(2)
    rt, gt = (ref[j] if j < len(ref) else None), (got[j] if j < len(got) else None)
    dec = lambda t: None if t is None else target.tokenizer.decode([t])  # noqa: E731
    return {"top2_gap": float(top.values[0] - top.values[1]), "top1": int(top.indices[0]), "top2": int(top.indices[1]),
            "ref_token": rt, "got_token": gt, "ref_text": dec(rt), "got_text": dec(gt),
            "logit_ref_minus_got": None if rt is None or gt is None else float(logits[rt] - logits[gt])}


def analyse_main(args, target, cfgs: list[Config], counted, costs: dict | None) -> tuple[list[dict], list[dict], dict]:
    from speccore.lookahead import oracle_speedup, policy_speedup

    by = {c.name: c for c in cfgs}
    n = len(counted)
    ref_cfg = next((by[x] for x in ("hf:ar", "sc:ar") if x in by and len(by[x].results) == n), None)
    ref = {i: ref_cfg.results[i][0] for i in range(n)} if ref_cfg else {}
    same = {c.name: {i: i in c.results and i in ref and c.results[i][0] == ref[i] for i in range(n)} for c in cfgs}
    divs, gaps = [], {}
    for c in cfgs:
        for i, (out, _, _) in sorted(c.results.items()):
            if i in ref and out != ref[i]:
                j = first_divergence(ref[i], out)
                key = (i, j, tuple(out[j:j + 1]))
                if key not in gaps:
                    gaps[key] = divergence_gap(target, counted[i][1], ref[i], out, j, args.device)
                divs.append({"config": c.name, "row_id": counted[i][0].row_id, "position": j, **gaps[key]})

    def ratio(a: str, b: str | None, seconds: Callable = lambda result: result[1]):
        """Speedup of a over b (b's seconds / a's) on rows where both equal the reference; a row's seconds are its
        wall time unless `seconds` reads others off its (out, wall, stats) result."""
        if b is None or b not in by or a not in by:
            return None, 0
        rows = [i for i in range(n) if same[a][i] and same[b][i]]
        num, den = (sum(seconds(by[x].results[i]) for i in rows) for x in (b, a))
        if not rows or not den:
            return None, 0
        return num / den, len(rows)

    oracle_cfg, ologs = {}, {}
    for c in cfgs:
        if c.impl == "speccore" and c.pair != AR and c.results and (
                c.policy == f"k{args.oracle_k}" or (not args.oracle_k and c.policy == "constant")):
            oracle_cfg[c.pair] = c
    rows_out = []
    for c in cfgs:
        res = [c.results[i] for i in sorted(c.results)]
        tokens, wall = sum(len(r[0]) for r in res), sum(r[1] for r in res)
        steps = sum(r[2].get("steps", 0) for r in res)
        drafted = sum(r[2].get("drafted", 0) for r in res)
        accepted = sum(r[2].get("accepted", 0) for r in res)
        draft_s = sum(r[2].get("draft_s") or 0.0 for r in res)
        verify_s = sum(r[2].get("verify_s") or 0.0 for r in res) if c.impl == "speccore" else None
        sp, n_sp = ratio(c.name, c.own_ar)
        pr, n_pr = ratio(c.name, c.peer)
        hf_ar, _ = ratio(c.name, "hf:ar")
        d = {"name": c.name, "impl": c.impl, "pair": c.pair, "policy": c.policy, "algorithm": c.algorithm,
             "settings": c.settings, "error": c.error, "rows_run": len(res), "total_rows": n,
             "identical_rows": sum(same[c.name].values()), "identical": bool(res) and len(res) == n and all(same[c.name].values()),
             "tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall if wall else None,
             "own_ar": c.own_ar, "speedup_vs_own_ar": sp, "rows_vs_own_ar": n_sp,
             "peer": c.peer, "ratio_vs_peer": pr, "rows_vs_peer": n_pr, "ratio_vs_hf_ar": hf_ar,
             "steps": steps, "drafted": drafted, "accepted": accepted,
             "mean_acceptance_length": 1 + accepted / steps if steps and c.pair != AR else None,
             "acceptance_rate": accepted / drafted if drafted else None, "mean_k": drafted / steps if steps else None,
             "draft_s": draft_s, "verify_s": verify_s, "draft_share": draft_s / wall if wall else None,
             "verify_share": verify_s / wall if wall and verify_s is not None else None,
             "fallbacks": sum(bool(r[2].get("fallback")) for r in res),
             "per_row": [{"row_id": counted[i][0].row_id, "tokens": len(c.results[i][0]), "wall_s": c.results[i][1],
                          "identical": same[c.name][i]} for i in sorted(c.results)],
             "steps_log": [s for r in res for s in r[2].get("log", [])] if c.impl == "speccore" else
                          [[s["drafted"], s["accepted"]] for r in res for s in r[2].get("log", [])]}
        # the decoding steps' seconds alone, without each row's prompt forward, which every configuration pays
        # alike and which the oracle's pricing leaves out too (speccore rows only: transformers' steps are not timed)
        d["speedup_vs_own_ar_decoding"] = ratio(c.name, c.own_ar, lambda result: step_seconds(result[2]))[0] \
            if c.impl == "speccore" and by.get(c.own_ar) is not None and by[c.own_ar].impl == "speccore" else None
        if costs and c.impl == "speccore" and c.pair != AR and c.pair in oracle_cfg and res:
            cm = cost_model_for(costs, c.pair)
            olog = ologs[c.pair] = [s for r in oracle_cfg[c.pair].results.values() for s in r[2]["log"]]
            orc = oracle_speedup(olog, cm)
            pol = policy_speedup(d["steps_log"], cm)
            d["oracle"] = {"from": oracle_cfg[c.pair].name, "c": cm.c, "oracle_speedup": orc,
                           "policy_speedup_model": pol, "fraction_of_oracle": pol / orc,
                           "fraction_of_oracle_measured": sp / orc if sp else None}
        rows_out.append(d)
    inrun = inrun_costs(rows_out)
    for d in rows_out:
        if "oracle" in d:
            d["oracle"].update(in_run_oracle(inrun, d["pair"], ologs[d["pair"]], d["speedup_vs_own_ar_decoding"]))
    return rows_out, divs, {"reference": ref_cfg.name if ref_cfg else None, "in_run_costs": inrun}


def step_seconds(stats: dict) -> float:
    """A speccore row's decoding seconds: its steps' draft and verify time, without the prompt's forward."""
    return sum(s["draft_ms"] + s["verify_ms"] for s in stats.get("log", [])) / 1e3


def in_run_oracle(inrun: dict, pair: str, olog: list, measured: float | None) -> dict:
    """The oracle priced at the run's own costs (`inrun_costs`: its AR steps, and its verifies and drafts per
    width), and the fraction of it that `measured`, the decoding steps' measured speedup, reaches. Like with
    like: the costs part times c and v apart, on a short context, without the catch-ups and per-step Python a
    run pays (on a 10-row ShareGPT run the drafter's c read 0.167 there and 0.221 in the run), and a row's wall
    time also holds its prompt's forward (19-21% of the speculative rows' seconds in the 10 x 128 runs), which
    no lookahead changes and the oracle's pricing leaves out."""
    from speccore.lookahead import CostModel, oracle_speedup

    c, v = inrun.get("c", {}).get(pair), inrun.get("v")
    if c is None or not v:
        return {}
    orc = oracle_speedup(olog, CostModel(c=c, v={**{int(k): x for k, x in v.items()}, 0: 1.0}))
    return {"oracle_speedup_in_run": orc, "fraction_of_oracle_in_run": measured / orc if measured else None}


def inrun_costs(rows: list[dict]) -> dict:
    """v(k) and c as the speccore runs themselves saw them (verify/draft ms per step), for comparison."""
    ar = next((r for r in rows if r["name"] == "sc:ar"), None)
    t1 = _median([s["verify_ms"] for s in ar["steps_log"]]) if ar and ar["steps_log"] else None
    if not t1:
        return {}
    by_d: dict[int, list] = {}
    c = {}
    for r in rows:
        if r["impl"] != "speccore" or r["pair"] == AR:
            continue
        for s in r["steps_log"]:
            by_d.setdefault(s["drafted"], []).append(s["verify_ms"])
        dd = sum(s["drafted_drafter"] for s in r["steps_log"])
        if dd:
            c.setdefault(r["pair"], []).append(sum(s["draft_ms"] for s in r["steps_log"]) / dd / t1)
    return {"t1_ms": t1, "v": {k: _median(v) / t1 for k, v in sorted(by_d.items())},
            "v_steps": {k: len(v) for k, v in sorted(by_d.items())}, "c": {p: _median(v) for p, v in c.items()}}


# ------------------------------------------------------------------------------------------ batch part

def run_batch(args, target, cfgs: list[Config], counted, warm, ref: dict | None, warm_done: bool, costs) -> dict:
    by = {c.name: c for c in cfgs}
    todo = [by["sc:ar"]]
    for c in cfgs:  # one row per pair that speccore accepted, with --batch-policy
        if c.impl == "speccore" and c.pair != AR and c.spec is not None and c.pair not in {t.pair for t in todo}:
            cfg, proposer, algo = pair_setup(args, target, c.pair, None)  # memoised: the same proposer
            todo.append(Config(f"sc:{c.pair}/{args.batch_policy}", "speccore", c.pair, args.batch_policy, algo,
                               spec=policy_spec(args, cfg, proposer, algo, c.pair, args.batch_policy, args.k, costs)))
    rows = [dataclasses.replace(r, max_new_tokens=args.max_new_tokens) for r, _ in counted]
    if not warm_done:
        for c in todo:
            make_engine(target, c.spec, 1).generate([dataclasses.replace(warm[0], max_new_tokens=args.warmup_tokens)])
    out = {"sizes": args.batch_sizes, "policy": args.batch_policy, "configs": [],
           "reference": "main part's reference" if ref is not None else f"sc:ar at batch size {args.batch_sizes[0]}"}
    res = {c.name: {} for c in todo}
    snaps = {c.name: {} for c in todo}  # the shared cost model after each batch size, as the last step left it
    for j, bs in enumerate(args.batch_sizes):
        order = todo[j % len(todo):] + todo[: j % len(todo)]
        for c in order:
            eng = make_engine(target, c.spec, bs)
            t0 = _now(args.device)
            results, steps = eng.generate(rows)
            wall = _now(args.device) - t0
            if ref is None and c.name == "sc:ar":
                ref = {i: list(r.output_ids) for i, r in enumerate(results)}
            res[c.name][bs] = (results, steps, wall)
            cm = getattr(eng.policy_factory, "cost_model", None)
            snaps[c.name][bs] = cm.snapshot() if cm is not None else None
            tok = sum(r.n_output_tokens for r in results)
            print(f"[batch {bs}] {c.name:<40} {tok:5d} tok {wall:7.2f} s {tok / wall:7.2f} tok/s", file=sys.stderr,
                  flush=True)
    for c in todo:
        by_size = {}
        for bs, (results, steps, wall) in res[c.name].items():
            tok = sum(r.n_output_tokens for r in results)
            acc, drf, nst = sum(r.accepted for r in results), sum(r.drafted for r in results), sum(r.steps for r in results)
            by_size[bs] = {"tokens": tok, "wall_s": wall, "tok_per_s": tok / wall if wall else None,
                           "identical_rows": sum(r.status == "ok" and list(r.output_ids) == ref.get(i) for i, r in enumerate(results)),
                           "errors": sum(r.status != "ok" for r in results), "steps": nst,
                           "mean_acceptance_length": 1 + acc / nst if nst and c.pair != AR else None,
                           "acceptance_rate": acc / drf if drf else None}
            by_size[bs]["forwards_log"] = batch_forwards(steps)
            by_size[bs]["cost_model"] = snaps[c.name][bs]
            by_size[bs]["drafting_decisions"] = [json.loads(s.decision) for s in steps if s.drafted][:8]
        ar = res["sc:ar"]
        for bs, d in by_size.items():
            d["speedup_vs_ar_same_bs"] = ar[bs][2] / res[c.name][bs][2] if c.name != "sc:ar" else 1.0
            d["scaling_vs_smallest_bs"] = d["tok_per_s"] / by_size[min(by_size)]["tok_per_s"]
        out["configs"].append({"name": c.name, "algorithm": c.algorithm, "total_rows": len(rows), "by_size": by_size})
    return out


def batch_forwards(steps) -> list[list]:
    """One entry per target forward of a batch run: [rows, width, accepted, probing rows, draft_ms, verify_ms].

    A forward's rows are logged one after another with the same timings; width = its longest draft (the verify
    is that wide for every row), probing rows = rows whose policy chose or joined a probe."""
    out: list[list] = []
    prev = None
    for s in steps:
        key = (s.batch_size, s.draft_ms, s.verify_ms)
        probe = '"reason":"probe"' in s.decision
        if key != prev:
            out.append([s.batch_size, s.drafted, s.accepted, int(probe), round(s.draft_ms, 1), round(s.verify_ms, 1)])
            prev = key
        else:
            f = out[-1]
            f[1], f[2], f[3] = max(f[1], s.drafted), f[2] + s.accepted, f[3] + int(probe)
    return out


# ------------------------------------------------------------------------------------------ report

def _get(d: dict, *keys):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _f(x, fmt="{:.2f}", none="–"):
    return none if x is None else fmt.format(x)


def markdown(res: dict) -> str:
    m = res["meta"]
    L = [f"# speccore benchmark: target {m['target']}",
         f"{m['dataset']} (n={m['n']}, first valid rows; {m['max_new_tokens']} new tokens), {m['dtype']} on {m['device']}, "
         f"{m['threads']} threads, torch {m['torch']}, transformers {m['transformers']}, speccore {m['git']['sha'] or '?'}"
         f"{' (dirty)' if m['git']['dirty'] else ''}. Reference for identity: {res.get('reference')}.", ""]
    if res.get("configs"):
        L += ["## Batch size 1, interleaved (ratios only over rows identical to the reference)", "",
              "| config | algorithm | policy | tok/s | × own AR | × HF peer | mean acc. len | acc. rate | mean k | "
              "draft / verify share | identical | oracle × | policy × (model) | frac. of oracle (model / measured / in-run) |",
              "|" + "---|" * 14]
        for c in res["configs"]:
            o = c.get("oracle") or {}
            split = (f"{_f(c['draft_share'], '{:.0%}')} / {_f(c['verify_share'], '{:.0%}')}"
                     if c["impl"] == "speccore" else f"{_f(c['draft_share'], '{:.0%}')} / –")
            name = c["name"] + (f" (error: {c['error'][:60]})" if c["error"] else "")
            L.append(f"| {name} | {c['algorithm']} | {c['policy']} | {_f(c['tok_per_s'])} | {_f(c['speedup_vs_own_ar'])} | "
                     f"{_f(c['ratio_vs_peer'])} | {_f(c['mean_acceptance_length'])} | {_f(c['acceptance_rate'], '{:.0%}')} | "
                     f"{_f(c['mean_k'], '{:.1f}')} | {split} | {c['identical_rows']}/{c['total_rows']} | "
                     f"{_f(o.get('oracle_speedup'))} | {_f(o.get('policy_speedup_model'))} | "
                     f"{_f(o.get('fraction_of_oracle'), '{:.0%}')} / {_f(o.get('fraction_of_oracle_measured'), '{:.0%}')} / "
                     f"{_f(o.get('fraction_of_oracle_in_run'), '{:.0%}')} |")
        L.append("")
    if res.get("hf_assist_settings"):
        L += ["## transformers assisted generation as run", ""]
        for name, s in res["hf_assist_settings"].items():
            L.append(f"- {name}: " + ", ".join(f"{k}={v}" for k, v in s.items()))
        L += [f"- batch size 2: {res.get('hf_batch_refusal') or 'not tried'}", ""]
    if res.get("costs"):
        co, inrun, cd = res["costs"], res.get("in_run_costs") or {}, res.get("costs_dense") or {}
        ct = lambda d, *ks: _f(_get(d, *ks), "{:.1f}")  # noqa: E731
        L += [f"## Costs (prompt of {co['prompt_tokens']} tokens, median of {co['reps']}; speccore's models "
              f"{'pre-packed' if m.get('prepack') == 'on' else 'dense'}, and the dense path transformers runs)", "",
              "| k | target ms | v(k) | v(k) in run | dense target ms | dense v(k) |", "|---|---|---|---|---|---|"]
        for k, v in co["target"]["v"].items():
            L.append(f"| {k} | {_f(co['target']['t_ms'][k], '{:.1f}')} | {v:.2f} | {_f(inrun.get('v', {}).get(k))} | "
                     f"{ct(cd, 'target', 't_ms', k)} | {_f(_get(cd, 'target', 'v', k))} |")
        tbm = {B: x for B, x in co.get("target_batch", {}).items() if int(B) > 1}
        if tbm:
            L += ["", "v(k) with B rows per forward, relative to a plain step of B rows (that step's cost vs one row "
                  "in brackets):", "", "| k | " + " | ".join(f"B={B} ({_f(x['plain_vs_one_row'])}×)" for B, x in tbm.items())
                  + " |", "|---|" + "---|" * len(tbm)]
            for k in co["target"]["v"]:
                L.append(f"| {k} | " + " | ".join(_f(_get(x, 'v', k)) for x in tbm.values()) + " |")
        L += ["", "| drafter | step ms | c (vs target step) | c in run | dense step ms |", "|---|---|---|---|---|"]
        for name, d in {**co["drafters"], PLD: co[PLD]}.items():
            L.append(f"| {name} | {d['step_ms']:.2f} | {d['c']:.3f} | {_f(inrun.get('c', {}).get(name), '{:.3f}')} | "
                     f"{ct(cd, 'drafters', name, 'step_ms')} |")
        L.append("")
    if res.get("divergences"):
        L += ["## Rows that differ from the reference (excluded from ratios)", "",
              "| config | row | position | ref token | got token | top-2 logit gap | logit(ref) − logit(got) |",
              "|---|---|---|---|---|---|---|"]
        for d in res["divergences"]:
            L.append(f"| {d['config']} | {d['row_id']} | {d['position']} | {d['ref_text']!r} | {d['got_text']!r} | "
                     f"{d['top2_gap']:.4f} | {_f(d['logit_ref_minus_got'], '{:.4f}')} |")
        L.append("")
    if res.get("batch"):
        b = res["batch"]
        L += [f"## Batch mode (speccore only; tok/s = output tokens / wall of the whole set; policy {b['policy']}; "
              f"identity vs {b['reference']})", "",
              "| config | " + " | ".join(f"bs={s}" for s in b["sizes"]) + " |", "|---|" + "---|" * len(b["sizes"])]
        for c in b["configs"]:
            cells = [f"{_f(d['tok_per_s'])} ({_f(d['speedup_vs_ar_same_bs'])}×, {d['identical_rows']}/{c['total_rows']})"
                     for d in (c["by_size"].get(s) for s in b["sizes"])]
            L.append(f"| {c['name']} | " + " | ".join(cells) + " |")
        L += ["", "Cells: tok/s (× speccore AR at the same batch size, rows identical to the reference).", ""]
    mem = res["memory"]
    L += ["## Memory", "", f"peak RSS {mem['peak_rss_bytes'] / 2**30:.2f} GiB; model parameters "
          f"{mem['param_bytes_total'] / 2**30:.2f} GiB ({', '.join(f'{k} {v / 2**30:.2f}' for k, v in mem['param_bytes'].items())}); "
          f"peak / parameters = {mem['peak_over_params']:.3f} (goal ≤ {mem['goal']}: {'met' if mem['meets_goal'] else 'NOT met'}); "
          f"RSS after loading {_f(mem['rss_after_load_bytes'] and mem['rss_after_load_bytes'] / 2**30)} GiB."
          + (" With --prepack on, each model also keeps its dense weights for the transformers peers, so this run "
             "holds about two copies: the memory goal is checked on the pipeline (see BENCHMARKS.md)."
             if m.get("prepack") == "on" and not m.get("no_hf") else ""), ""]
    return "\n".join(L)


# ------------------------------------------------------------------------------------------ entry point

def main(argv=None) -> dict:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    import transformers

    from speccore.models import load_model

    transformers.logging.set_verbosity_error()
    threads0 = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args, transformers, load_model)
    finally:
        torch.set_num_threads(threads0)  # the harness may run inside another process (the smoke test)


def load_models(args, load_model) -> tuple:
    """(target, {label: drafter}, {model: (param, buffer) bytes before packing}, {model: what was packed}): the
    target and each pair's drafter once, pre-packed as a run packs them (an @int8 drafter int8) with --prepack on."""
    target = load_model(args.target, dtype=args.dtype, device=args.device)
    drafters = {}
    for pair in args.pairs:
        if pair not in (AR, PLD) and _label(pair) not in drafters:
            drafters[_label(pair)] = load_model(pair.removesuffix(INT8), dtype=args.dtype, device=args.device)
    models = {"target:" + _label(args.target): target, **{k: v for k, v in drafters.items()}}
    pbytes = {k: _param_bytes(m.model) for k, m in models.items()}  # before packing: the fp32 models' size
    packed = {}
    if args.prepack == "on":
        from speccore.models import prepack_model

        # the dense weights stay only for transformers' peers: with --no-hf, memory is the pipeline's
        packed = {k: prepack_model(m.model, m.tokenizer, int8=k.endswith(INT8), keep_dense=not args.no_hf)
                  for k, m in models.items()}
    return target, drafters, pbytes, packed


def _main(args, transformers, load_model) -> dict:
    t_start = time.time()
    target, drafters, pbytes, packed = load_models(args, load_model)
    rss_load, peak_load = _rss_now(), _peak_rss()
    counted, warm, skipped = load_rows(args, target)
    if not counted:
        raise SystemExit(f"no valid rows in {args.dataset} (skipped: {skipped})")
    res = {"meta": {"argv": args.argv, "target": args.target, "pairs": args.pairs,
                    "policies": args.policies, "dataset": args.dataset, "n": len(counted),
                    "max_new_tokens": args.max_new_tokens, "row_ids": [r.row_id for r, _ in counted],
                    "prompt_tokens": [len(i) for _, i in counted], "warmup_row": warm[0].row_id,
                    "skipped_rows": skipped, "dtype": args.dtype, "device": args.device,
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "python": platform.python_version(),
                    "machine": platform.platform(), "git": _git(), "parts": sorted(args.parts),
                    "cost_prior": args.cost_prior, "k": args.k, "k_max": args.k_max, "oracle_k": args.oracle_k,
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
                    "loadavg_start": list(_loadavg()), "prepack": args.prepack, "packed_linears": packed,
                    "no_hf": args.no_hf}}
    rec = HfRecorder()
    rec.install()
    try:
        with torch.inference_mode():
            costs = None
            if "costs" in args.parts:
                costs = res["costs"] = measure_costs(args, target, drafters, counted[0][1])
                if packed and not args.no_hf:  # the same costs on the dense path transformers runs
                    with dense(target, *drafters.values()):
                        res["costs_dense"] = measure_costs(args, target, drafters, counted[0][1])
            if "main" in args.parts or "batch" in args.parts:
                cfgs = build_configs(args, target, drafters, costs, rec)
                if "main" in args.parts:
                    res["hf_assist_settings"] = {c.name: c.settings for c in cfgs
                                                 if c.impl == "hf" and c.pair not in (AR, PLD)}
                if not args.no_hf and drafters:
                    res["hf_batch_refusal"] = hf_batch_refusal(target, next(iter(drafters.values())), warm[1][:16], args.device)
                ref = None
                if "main" in args.parts:
                    run_main(args, cfgs, counted, warm)
                    res["configs"], res["divergences"], extra = analyse_main(args, target, cfgs, counted, costs)
                    res.update(reference=extra["reference"], in_run_costs=extra["in_run_costs"])
                    ref_cfg = next((c for c in cfgs if c.name == extra["reference"]), None)
                    ref = {i: r[0] for i, r in ref_cfg.results.items()} if ref_cfg else None
                if "batch" in args.parts:
                    res["batch"] = run_batch(args, target, cfgs, counted, warm, ref, "main" in args.parts, costs)
    finally:
        rec.uninstall()
    total = sum(p for p, _ in pbytes.values())
    peak = _peak_rss()
    res["memory"] = {"param_bytes": {k: p for k, (p, _) in pbytes.items()},
                     "buffer_bytes": {k: b for k, (_, b) in pbytes.items()}, "param_bytes_total": total,
                     "peak_rss_bytes": peak, "peak_rss_after_load_bytes": peak_load, "rss_after_load_bytes": rss_load,
                     "peak_over_params": peak / total, "goal": 1.15, "meets_goal": peak <= 1.15 * total}
    res["meta"]["wall_s"] = time.time() - t_start
    res["meta"]["loadavg_end"] = list(_loadavg())
    md = markdown(res)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fields = ["k", "drafted", "drafted_drafter", "accepted", "draft_ms", "verify_ms"]
        res["meta"]["steps_log_fields"] = {"speccore": fields, "hf": ["drafted", "accepted"]}
        for c in res.get("configs", []):  # rows of numbers, not objects: the logs are most of the file
            if c["impl"] == "speccore":
                c["steps_log"] = [[s[f] for f in fields] for s in c["steps_log"]]
        text = json.dumps(res, indent=1, default=str)
        text = re.sub(r"\[\s+([-+.\deE,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
        out.write_text(text)
        out.with_suffix(".md").write_text(md + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
