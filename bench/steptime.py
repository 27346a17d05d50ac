"""One-token and verify forwards timed in isolation, with the models loaded as a run loads them (pre-packed).

Two questions the bench's costs part does not ask:
- does a drafter forward just before a target forward change what the target forward costs (caches,
  memory bandwidth)? Each repetition times, interleaved: a plain target step, a 2-token verify, and the same
  two right after one drafter forward (`d+`), and a verify after five drafter forwards (`d5+v1`);
- what does one drafter step cost, fp32 against int8 (`--drafters`, each loaded both ways)?

Run it several times minutes apart to see how far this machine's speed drifts while the ratios stay:

    python -m bench.steptime --target qwen2.5-coder-1.5b --drafter smollm2-135m
    python -m bench.steptime --drafters smollm2-135m,gemma-3-270m --no-target
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from speccore.decoder import CachedLM
from speccore.models import load_model

TEXT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n' * 6  # a cached context of ~100 tokens
TOKEN = 100  # the token fed at every timed step (what it is does not change the cost)


def cached(m) -> CachedLM:
    lm = CachedLM(m.model, 1)
    lm.forward([m.tokenizer(TEXT)["input_ids"]], last_only=True)
    return lm


def ms(ts: list[float]) -> str:
    return f"median {1e3 * statistics.median(ts):7.1f} ms  min {1e3 * min(ts):7.1f} ms"


@torch.inference_mode()
def verify_after_drafts(target_ref: str, drafter_ref: str, reps: int) -> None:
    t, d = cached(load_model(target_ref, prepack=True)), cached(load_model(drafter_ref, prepack=True))
    res: dict[str, list[float]] = {"plain": [], "v1": [], "d+plain": [], "d+v1": [], "d5+v1": []}
    for rep in range(reps + 1):  # rep 0 warms up
        for mode, ts in res.items():
            for _ in range(5 if mode.startswith("d5") else 1 if mode.startswith("d") else 0):
                d.forward([[TOKEN]], last_only=True)
            t0 = time.perf_counter()
            t.forward([[TOKEN] * (1 if mode.endswith("plain") else 2)])  # every position's logits, as a verify
            if rep:
                ts.append(time.perf_counter() - t0)
            t.keep([1])  # the cache stays one token longer per forward: the same for every mode
    for mode, ts in res.items():
        print(f"{target_ref} {mode:8s} {ms(ts)}")
    print(f"v(1) = {statistics.median(res['v1']) / statistics.median(res['plain']):.2f}; after a drafter forward "
          f"{statistics.median(res['d+v1']) / statistics.median(res['d+plain']):.2f}")


@torch.inference_mode()
def drafter_steps(ref: str, reps: int) -> None:
    for int8 in (False, True):
        lm = cached(load_model(ref, prepack=True, int8=int8))
        ts = []
        for i in range(reps + 5):  # 5 warm-up steps
            t0 = time.perf_counter()
            lm.forward([[TOKEN]], last_only=True)
            if i >= 5:
                ts.append(time.perf_counter() - t0)
        print(f"{ref} {'int8' if int8 else 'fp32'} one-token step {ms(ts)}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="qwen2.5-coder-1.5b")
    p.add_argument("--drafter", default="smollm2-135m", help="the drafter run before the target's forwards")
    p.add_argument("--no-target", action="store_true", help="skip the target's verify timing")
    p.add_argument("--drafters", default="", help="comma-separated drafters to time fp32 against int8")
    p.add_argument("--reps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not a.no_target:
        verify_after_drafts(a.target, a.drafter, a.reps)
    for ref in filter(None, a.drafters.split(",")):
        drafter_steps(ref, 4 * a.reps)


if __name__ == "__main__":
    main()
