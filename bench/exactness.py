"""Greedy exactness on real models: speculative output vs target-alone, row by row.

    python -m bench.exactness --target qwen2.5-coder-1.5b-instruct \
        --drafters qwen2.5-coder-0.5b-instruct,smollm2-135m-instruct,gemma-3-270m --n 10 --max-new-tokens 128

For every row that differs it prints the first divergent position and the target's top-2 logit gap
there (computed on the common prefix), to show whether the difference is a near-tie of fp32 rounding.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from speccore import models
from speccore.config import compose
from speccore.engine import Engine
from speccore.prompts import encode_row
from speccore.sources import SourceSpec, iter_rows
from speccore.speculate import make_proposer


def top2_gap(target, prompt_ids: list[int], prefix: list[int]) -> float:
    with torch.inference_mode():
        logits = target.model(input_ids=torch.tensor([prompt_ids + prefix])).logits[0, -1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--drafters", default="qwen2.5-coder-0.5b-instruct,smollm2-135m-instruct,gemma-3-270m")
    ap.add_argument("--dataset", default="humaneval")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--lookahead", default="heuristic")
    ap.add_argument("--prepack", choices=["on", "off"], default="on",
                    help="oneDNN pre-packed linears for target and drafters (as runs do on CPU fp32)")
    ap.add_argument("--out", default=None, help="write a JSON report here")
    args = ap.parse_args(argv)

    rows = [r for r in itertools.islice(iter_rows(SourceSpec(kind=args.dataset)), args.n * 2) if r.ok][: args.n]
    pack = args.prepack == "on"
    target = models.load_model(args.target, prepack=pack)
    cfg = compose([f"sampling.max_new_tokens={args.max_new_tokens}", f"speculation.lookahead={args.lookahead}"],
                  config_dir="conf")
    t = time.perf_counter()
    ref, _ = Engine(target, sampling=cfg.sampling, batch_size=args.batch_size).generate(rows)
    report = {"target": args.target, "n": len(rows), "max_new_tokens": args.max_new_tokens, "prepack": args.prepack,
              "reference_s": time.perf_counter() - t, "drafters": {}}
    prompt_ids = {r.row_id: encode_row(target.tokenizer, r) for r in rows}
    for name in [d for d in args.drafters.split(",") if d]:
        if name == "prompt-lookup":
            c = compose([f"sampling.max_new_tokens={args.max_new_tokens}", "drafter=prompt-lookup",
                         f"speculation.lookahead={args.lookahead}"], config_dir="conf")
            drafter = None
        else:
            c = cfg
            drafter = models.load_model(name, prepack=pack)
        proposer, factory, algo = make_proposer(c, target, drafter)
        eng = Engine(target, proposer=proposer, policy_factory=factory, sampling=c.sampling,
                     batch_size=args.batch_size, algorithm=algo)
        t = time.perf_counter()
        out, _ = eng.generate(rows)
        secs = time.perf_counter() - t
        diffs = []
        for a, b in zip(ref, out):
            if a.output_ids != b.output_ids:
                pos = next((i for i, (x, y) in enumerate(zip(a.output_ids, b.output_ids)) if x != y),
                           min(len(a.output_ids), len(b.output_ids)))
                gap = top2_gap(target, prompt_ids[a.row_id], a.output_ids[:pos])
                diffs.append({"row_id": a.row_id, "first_divergence": pos, "top2_logit_gap": gap})
        same = len(rows) - len(diffs)
        steps = sum(r.steps for r in out)
        rep = {"algorithm": algo, "identical": same, "rows": len(rows), "seconds": secs,
               "accepted": sum(r.accepted for r in out), "drafted": sum(r.drafted for r in out),
               "mean_acceptance_length": 1 + sum(r.accepted for r in out) / max(1, steps), "diffs": diffs,
               "fallbacks": [r.fallback for r in out if r.fallback]}
        report["drafters"][name] = rep
        print(f"{name:<30} {algo:<9} identical {same}/{len(rows)}  mean acceptance length "
              f"{rep['mean_acceptance_length']:.2f}  acceptance rate {rep['accepted'] / max(1, rep['drafted']):.2f}"
              f"  {secs:.0f}s (target alone {report['reference_s']:.0f}s)", flush=True)
        for d in diffs:
            print(f"    {d['row_id']}: first divergence at token {d['first_divergence']}, "
                  f"top-2 logit gap {d['top2_logit_gap']:.4f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
