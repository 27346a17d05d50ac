"""The engine on a GPU: verify cost and tokens/s versus batch size, with random-weight models.

No real checkpoint reaches the GPU machine, so the models are random-weight models of the real shapes
(qwen2.5-coder-1.5b as the target, smollm2-135m as the drafter) and the acceptance is controlled: a
proposer runs the real drafter loop (so drafting costs what it costs), then replaces each drafted
token by the target's own next token with probability alpha (a per-token Bernoulli, seeded per row
and step), so acceptance lengths follow the i.i.d. model E(k) = (1 - a^(k+1)) / (1 - a). The target's
own next tokens come from a speccore AR run at the same batch size.

What it measures, each at batch sizes 1..64:
- `verify`: v_B(k), the target forward over k+1 new tokens per row after a cached context, relative
  to the one-token step at the same batch size; and c_B, the drafter step relative to the target step;
- `engine`: tokens/s of transformers' `generate` (batched AR, the peer), speccore AR, and speccore
  speculative (constant k and the cost-aware policy) at each alpha, each cell timed interleaved with a
  speccore AR run for its ratio; the share of a speccore AR step
  that is not the model forward (the engine's own overhead); and whether the speculative outputs equal
  the AR ones.

    python -m bench.gpu --out bench/results/DATE-gpu            # on the GPU machine
    python -m bench.gpu --device cpu --tiny --batch-sizes 1,2   # a smoke run of the harness itself
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench import _now as now  # noqa: E402  (synchronises CUDA before reading the clock)
from speccore.decoder import CachedLM  # noqa: E402
from speccore.draft_model import draft_loop, feed_for, pick_from  # noqa: E402
from speccore.engine import Engine  # noqa: E402
from speccore.lookahead import CostModel, make_policy  # noqa: E402
from speccore.rows import Row  # noqa: E402
from speccore.sampling import SamplingParams  # noqa: E402
from speccore.verify import Draft  # noqa: E402

# The real models' shapes (config.json of Qwen2.5-Coder-1.5B and SmolLM2-135M).
TARGET_SHAPE = dict(arch="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                    num_attention_heads=12, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
                    tie_word_embeddings=True)
DRAFTER_SHAPE = dict(arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, rope_theta=1e5, rms_norm_eps=1e-5,
                     tie_word_embeddings=True)
# --tiny: the same code on shapes a CPU runs in seconds.
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float32", choices=["bfloat16", "float16", "float32"],
                   help="float32 by default: in bf16, a k+1-token verify rounds differently from a one-token step, "
                        "and random weights have near-ties everywhere, so greedy leaves the AR reference within "
                        "a few tokens and the controlled acceptance collapses")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    p.add_argument("--ks", default="0,1,2,3,4,5,7,11,15", help="verify widths for the verify part")
    p.add_argument("--context", type=int, default=None,
                   help="cached tokens per row before the timed verify (default: mid-generation of the engine part)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--alphas", default="0.6,0.8,0.9", help="per-token acceptance of the controlled proposer")
    p.add_argument("--proposers", default="drafter,free",
                   help="drafter: the drafter-shaped model runs its draft loop; free: drafts cost nothing")
    p.add_argument("--k", type=int, default=4, help="lookahead of the constant policy")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (median), after one warm-up")
    p.add_argument("--parts", default="verify,engine")
    p.add_argument("--no-hf", action="store_true", help="skip transformers' generate")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke run of the harness)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    a = p.parse_args(argv)
    a.batch_sizes = [int(x) for x in a.batch_sizes.split(",")]
    a.ks = [int(x) for x in a.ks.split(",")]
    a.alphas = [float(x) for x in a.alphas.split(",")]
    a.proposers = [x.strip() for x in a.proposers.split(",")]
    a.parts = {x.strip() for x in a.parts.split(",")}
    if a.context is None:
        a.context = a.prompt_len + a.max_new_tokens // 2
    return a


# ------------------------------------------------------------------------------------------ models

def random_model(shape: dict, device: str, dtype: torch.dtype, seed: int, tiny: bool):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    kw = {k: v for k, v in shape.items() if k != "arch"}
    if tiny:
        kw.update(TINY)
    config = (Qwen2Config if shape["arch"] == "qwen2" else LlamaConfig)(max_position_embeddings=4096, **kw)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class IdsTokenizer:
    """Prompts are space-separated token ids: the engine's text paths run, with no vocabulary file."""

    pad_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=True, split_special_tokens=True):
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(t)) for t in ids)


@dataclass
class Loaded:  # what the Engine reads of models.LoadedModel
    model: object
    tokenizer: object
    eos_token_ids: tuple = ()  # none: every row runs to max_new_tokens, so every config does the same work
    context_length: int = 4096


# ------------------------------------------------------------------------------------------ verify part

@torch.inference_mode()
def verify_costs(args, target, drafter) -> list[dict]:
    """v_B(k) and c_B: median forward times after a cached context, widths as the engine runs them."""
    g = torch.Generator().manual_seed(args.seed)
    out = []
    for B in args.batch_sizes:
        ctx = torch.randint(1, 500, (B, args.context), generator=g).tolist()
        prompts = [row[: args.prompt_len] for row in ctx]
        ts = []
        for rep in range(args.reps + 1):  # the engine part's prefill, to take out of its step time
            t0 = now(args.device)
            CachedLM(target, B).forward(prompts, last_only=True)
            if rep:
                ts.append(now(args.device) - t0)
        prefill = statistics.median(ts)
        lms = {"target": CachedLM(target, B), "drafter": CachedLM(drafter, B)}
        for lm in lms.values():
            lm.forward(ctx, last_only=True)
        times = {}
        for name, lm in lms.items():
            for k in (args.ks if name == "target" else [0]):
                new = [[7] * (k + 1) for _ in range(B)]
                ts = []
                for rep in range(args.reps + 1):
                    t0 = now(args.device)
                    lm.forward(new)
                    t1 = now(args.device)
                    lm.keep([0] * B)  # roll the verified tokens back: the context stays the same
                    lm.select(list(range(B)))  # and drop the holes, so every rep sees the same cache
                    if rep:
                        ts.append(t1 - t0)
                times[(name, k)] = statistics.median(ts)
        t1 = times[("target", 0)]
        row = {"batch_size": B, "target_step_ms": t1 * 1e3, "prefill_ms": prefill * 1e3, "drafter_step_ms": times[("drafter", 0)] * 1e3,
               "c": times[("drafter", 0)] / t1,
               "v": {k: times[("target", k)] / t1 for k in args.ks}}
        out.append(row)
        print(f"verify B={B}: step {t1 * 1e3:.2f} ms, c {row['c']:.3f}, "
              + " ".join(f"v({k})={v:.2f}" for k, v in row["v"].items()), flush=True)
        del lms
    return out


# ------------------------------------------------------------------------------------------ engine part

class ControlledProposer:
    """The real drafter loop for its cost, then each drafted token is the target's own next token with
    probability alpha: acceptance is i.i.d. per token, whatever the random weights predict. With no
    drafter, drafts cost nothing: what is left is the verify cost and the engine's own work."""

    name = "controlled"

    def __init__(self, drafter, alpha: float, reference: dict[str, list[int]], target_vocab: int, seed: int):
        self.drafter, self.alpha, self.reference = drafter, alpha, reference
        self.V, self.seed = target_vocab, seed
        self.Vd = drafter.config.vocab_size if drafter is not None else target_vocab
        self.lm: CachedLM | None = None

    def start(self, states) -> None:
        self.lm = CachedLM(self.drafter, len(states)) if self.drafter is not None else None

    def _drafter_tokens(self, states, ks: list[int]) -> list[list[int]]:
        if self.lm is None:
            return [[0] * k for k in ks]
        feeds = [feed_for(self.lm, b, [t % self.Vd for t in st.ids]) if k else []
                 for b, (st, k) in enumerate(zip(states, ks))]
        greedy = SamplingParams()

        def pick(b, logits):
            return pick_from(logits, greedy, None, greedy_draft=True)

        return draft_loop(self.lm, feeds, ks, states, pick)[0]

    def propose(self, states, ks: list[int]) -> list[Draft]:
        toks = self._drafter_tokens(states, ks)
        drafts = []
        for b, st in enumerate(states):
            ref, m = self.reference[st.row.row_id], len(st.out_ids)
            known = ref[:m] == st.out_ids  # the row still follows the AR reference
            rng = random.Random(f"{self.seed}:{st.row.row_id}:{m}")  # str seeds are stable across processes
            ids, right = [], known
            for i in range(len(toks[b])):
                truth = ref[m + i] if m + i < len(ref) else 0
                right = right and rng.random() < self.alpha
                ids.append(truth if right else (truth + 1 + i) % self.V)
            drafts.append(Draft(ids=ids))
        return drafts

    def observe(self, states, accepted: list[int]) -> None:
        pass

    def select(self, rows: list[int]) -> None:
        if self.lm is not None:
            self.lm.select(rows)


def policy_factory(name: str, k: int):
    if name == "constant":
        return lambda: make_policy("constant", k=k)
    shared = CostModel()

    def factory():
        return make_policy("cost", k_max=16, cost_model=shared, learn_costs=False)
    factory.cost_model = shared
    return factory


def hf_generate(model, prompts: list[list[int]], max_new: int, device: str) -> list[list[int]]:
    x = torch.tensor(prompts, device=device)  # equal lengths: no padding
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new,
                         min_new_tokens=max_new, eos_token_id=None, pad_token_id=0)
    return out[:, x.shape[1]:].tolist()


def timed(args, *fns) -> tuple:
    """One warm-up, then the median wall time of `reps` runs of each fn, the fns interleaved within each
    repetition; returns (seconds, last result) per fn, flattened: (s1, r1, s2, r2, ...). Interleaved, because
    this host's speed moves by 20% between identical runs: a cell timed minutes after its AR reference
    read 0.65x with the very same forwards (BENCHMARKS.md, GPU re-runs)."""
    res, ts = [None] * len(fns), [[] for _ in fns]
    for rep in range(args.reps + 1):
        for i, fn in enumerate(fns):
            t0 = now(args.device)
            res[i] = fn()
            t = now(args.device) - t0
            if rep:
                ts[i].append(t)
    return tuple(x for i in range(len(fns)) for x in (statistics.median(ts[i]), res[i]))


@torch.inference_mode()
def engine_curve(args, target, drafter, verify_rows: dict[int, dict], save, out: list[dict]) -> list[dict]:
    g = torch.Generator().manual_seed(args.seed + 1)
    tok = IdsTokenizer()
    loaded = Loaded(model=target, tokenizer=tok)
    vocab = target.config.vocab_size

    class S:  # what Engine reads of config.SamplingConfig
        temperature, top_p, top_k, max_new_tokens, stop = 0.0, 1.0, 0, args.max_new_tokens, ()

    for B in args.batch_sizes:
        prompts = torch.randint(1, min(vocab, 50000), (B, args.prompt_len), generator=g).tolist()
        rows = [Row(row_id=f"r{i}", prompt=" ".join(map(str, p))) for i, p in enumerate(prompts)]
        n_tokens = B * args.max_new_tokens

        def run(engine):
            res, steps = engine.generate(rows)
            bad = [r for r in res if r.status != "ok"]
            if bad:
                raise RuntimeError(f"{bad[0].row_id}: {bad[0].error_type}: {bad[0].error_message}")
            return res, steps

        ar = Engine(loaded, sampling=S, batch_size=B)
        t_ar, (res_ar, steps_ar) = timed(args, lambda: run(ar))
        reference = {r.row_id: list(r.output_ids) for r in res_ar}
        n_steps = max(s.step for s in steps_ar)  # after the prefill, which emits the first token
        rec = {"batch_size": B, "tokens": n_tokens, "speccore_ar_tok_s": n_tokens / t_ar}
        if B in verify_rows:  # the share of an AR step that is not the model's one-token forward
            v = verify_rows[B]
            rec["speccore_ar_step_ms"] = (t_ar * 1e3 - v["prefill_ms"]) / n_steps
            rec["engine_overhead"] = 1 - v["target_step_ms"] / rec["speccore_ar_step_ms"]
        if not args.no_hf:
            t_hf, hf_out = timed(args, lambda: hf_generate(target, prompts, args.max_new_tokens, args.device))
            rec["hf_ar_tok_s"] = n_tokens / t_hf
            rec["hf_equals_speccore_ar"] = sum(hf_out[i] == reference[f"r{i}"] for i in range(B))
        print(f"engine B={B}: speccore AR {rec['speccore_ar_tok_s']:.1f} tok/s"
              + (f", HF AR {rec['hf_ar_tok_s']:.1f} tok/s" if "hf_ar_tok_s" in rec else ""), flush=True)
        rec["spec"] = []
        for kind, alpha in [(kind, a) for kind in args.proposers for a in args.alphas]:
            for pol in ("constant", "cost"):
                proposer = ControlledProposer(drafter if kind == "drafter" else None, alpha, reference, vocab,
                                              args.seed)
                eng = Engine(loaded, proposer=proposer, policy_factory=policy_factory(pol, args.k), sampling=S,
                             batch_size=B, algorithm="standard")
                t_ref, _, t, (res, steps) = timed(args, lambda: run(ar), lambda: run(eng))  # AR beside each cell
                drafted = sum(s.drafted for s in steps)
                accepted = sum(s.accepted for s in steps)
                n_step = len({(s.row_id, s.step) for s in steps}) / B
                spec = {"proposer": kind, "alpha": alpha, "policy": pol if pol == "cost" else f"constant-{args.k}",
                        "tok_s": n_tokens / t, "vs_speccore_ar": t_ref / t,
                        "speccore_ar_tok_s_beside": n_tokens / t_ref,
                        "acceptance_rate": accepted / drafted if drafted else None,
                        "mean_acceptance_length": 1 + accepted / max(1, len(steps)),
                        "steps_per_row": n_step, "mean_k": sum(s.k for s in steps) / max(1, len(steps)),
                        "draft_share": sum(r.draft_s for r in res) / max(1e-9, sum(r.wall_s for r in res)),
                        "identical_rows": sum(list(r.output_ids) == reference[r.row_id] for r in res)}
                rec["spec"].append(spec)
                print(f"  {kind} alpha {alpha} {spec['policy']}: {spec['tok_s']:.1f} tok/s, "
                      f"{spec['vs_speccore_ar']:.2f}x AR, accept {spec['mean_acceptance_length']:.2f}/step, "
                      f"k {spec['mean_k']:.1f}, identical {spec['identical_rows']}/{B}", flush=True)
        out.append(rec)
        save()
    return out


# ------------------------------------------------------------------------------------------ report

def markdown(res: dict) -> str:
    m = res["meta"]
    lines = [f"Device: {m['device_name']}; {m['dtype']}; torch {m['torch']}, transformers {m['transformers']}; "
             f"{m['date']}.", ""]
    if res.get("verify"):
        ks = list(res["verify"][0]["v"])
        lines += [f"Verify cost v_B(k) (context {m['context']} tokens; relative to the one-token step at "
                  "the same batch size) and drafter step cost c_B:", "",
                  "| batch | target step ms | drafter step ms | c | " + " | ".join(f"v({k})" for k in ks) + " |",
                  "|---" * (4 + len(ks)) + "|"]
        for r in res["verify"]:
            lines.append(f"| {r['batch_size']} | {r['target_step_ms']:.2f} | {r['drafter_step_ms']:.2f} | "
                         f"{r['c']:.3f} | " + " | ".join(f"{r['v'][k]:.2f}" for k in ks) + " |")
        lines.append("")
    if res.get("engine") and any(r["spec"] for r in res["engine"]):
        cols = list(dict.fromkeys((s["proposer"], s["alpha"], s["policy"]) for r in res["engine"] for s in r["spec"]))
        head = ["batch", "HF AR tok/s", "speccore AR tok/s", "AR vs HF", "engine overhead"]
        head += [f"{kind} a={a} {p}" for kind, a, p in cols]
        lines += [f"Tokens/s ({m['max_new_tokens']} new tokens per row, prompts of {m['prompt_len']} tokens; "
                  "speculative cells: tok/s (x own AR at that batch size, timed interleaved with the cell), "
                  "rows identical to AR):", "",
                  "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for r in res["engine"]:
            hf = r.get("hf_ar_tok_s")
            cells = [str(r["batch_size"]), f"{hf:.0f}" if hf else "–", f"{r['speccore_ar_tok_s']:.0f}",
                     f"{r['speccore_ar_tok_s'] / hf:.2f}x" if hf else "–",
                     f"{r['engine_overhead']:.0%}" if "engine_overhead" in r else "–"]
            for col in cols:
                s = next((s for s in r["spec"] if (s["proposer"], s["alpha"], s["policy"]) == col), None)
                if s is not None:
                    cells.append(f"{s['tok_s']:.0f} ({s['vs_speccore_ar']:.2f}x) {s['identical_rows']}/{r['batch_size']}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def setup(args) -> tuple[torch.dtype, dict]:
    """What every GPU bench does first: check the device, keep fp32 fp32 (TF32 off: greedy must follow the AR
    reference), and start its metadata (versions, device, date, argv). Returns (dtype, meta)."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    import transformers

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    meta = {"device": args.device, "dtype": args.dtype, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "reps": args.reps, "tiny": args.tiny, "argv": sys.argv[1:],
            "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()}
    return getattr(torch, args.dtype), meta


def write(out: str | None, res: dict, markdown) -> None:
    """OUT.json and OUT.md, if --out was given; called after every batch size or model, so a run cut short by a
    time limit still leaves what it measured."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".json").write_text(json.dumps(res, indent=1, default=str))
        Path(out + ".md").write_text(markdown(res))


def main(argv=None) -> dict:
    args = parse_args(argv)
    dtype, meta = setup(args)
    target = random_model(TARGET_SHAPE, args.device, dtype, args.seed, args.tiny)
    drafter = random_model(DRAFTER_SHAPE, args.device, dtype, args.seed + 1, args.tiny)
    meta.update(context=args.context, prompt_len=args.prompt_len, max_new_tokens=args.max_new_tokens,
                target_params=sum(p.numel() for p in target.parameters()),
                drafter_params=sum(p.numel() for p in drafter.parameters()))
    print(json.dumps(meta), flush=True)
    res: dict = {"meta": meta}

    def save():
        write(args.out, res, markdown)

    if "verify" in args.parts:
        res["verify"] = verify_costs(args, target, drafter)
        save()
    if "engine" in args.parts:
        res["engine"] = []
        verify_rows = {r["batch_size"]: r for r in res.get("verify", [])}
        engine_curve(args, target, drafter, verify_rows, save, res["engine"])
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
