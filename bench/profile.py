"""Where a speccore run's time goes: one configuration sampled by py-spy, and the samples sorted by what they do.

`run` loads the models as the bench does (pre-packed, an `@int8` drafter int8), decodes the warm-up prompt, then
attaches py-spy to its own process for the counted prompts only and writes py-spy's raw (collapsed-stack) file.
`summary` reads such a file and splits the samples taken inside `Engine._run_batch` (the decoding, not the
loading) by who runs (drafting, inside the proposer's `propose`; or the target's verify and plain steps and the
engine around them) and by what:

- the model forwards (`CachedLM.forward`), split into the linear layers (pre-packed or int8 kernels), attention,
  and everything else a forward does (norms, rotary embeddings, the KV cache, the modules' Python);
- outside the forwards: the drafter's pick (softmax, argmax), the cross-vocab text work (decode, re-encode, id
  maps), the lookahead policy, verification (argmax, acceptance), the cache bookkeeping (keep, sync, rollback),
  and the engine's other Python.

py-spy samples the Python threads' stacks at `--rate` per second (the OpenMP workers are not sampled, so a
sample inside a kernel stands for the whole step's wall time there, which is what a share should mean).
py-spy is a dev dependency; `run` needs permission to ptrace its own process (root, or ptrace_scope 0).

    python -m bench.profile run --target qwen2.5-coder-1.5b --pair qwen2.5-coder-0.5b@int8 --policy cost \\
        --dataset sharegpt --n 3 --max-new-tokens 128 --threads 2 --out /tmp/profile-0.5b.txt
    python -m bench.profile summary /tmp/profile-0.5b.txt
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT_FRAME = "Engine._run_batch"
FORWARD = "CachedLM.forward"
LINEAR_FRAMES = ("PackedLinear.", "Int8Linear.", "OutlierInt8Linear.", "Linear.forward")
ATTENTION_FRAMES = ("sdpa_attention_forward", "eager_attention_forward", "scaled_dot_product_attention")
PROPOSER_FILES = ("speccore/draft_model.py", "speccore/crossvocab.py", "speccore/ngram.py", "speccore/slrs.py")
TEXT_FILES = ("speccore/crossvocab.py", "speccore/vocab.py", "speccore/slrs.py", "tokenizers/", "transformers/tokenization")
# (what, test on the frames below Engine._run_batch), the first that holds names a sample outside the forwards
OUTSIDE = (
    ("drafter pick (softmax, argmax)", lambda fr: any(f.startswith("pick_from") or f.endswith(".pick") for f, _ in fr)),
    ("cross-vocab text (decode, re-encode, id maps)", lambda fr: any(p.startswith(TEXT_FILES) for _, p in fr[1:])),
    ("lookahead policy", lambda fr: any(p == "speccore/lookahead.py" for _, p in fr)),
    ("verification (argmax, acceptance)", lambda fr: any(p == "speccore/verify.py" or f == "Engine._argmax"
                                                         for f, p in fr)),
    ("cache bookkeeping (keep, sync, rollback)", lambda fr: any(p == "speccore/decoder.py" for _, p in fr)),
)
OTHER = "the engine's other Python"
DRAFTING, TARGET = "drafting", "target step and engine"


PACKAGES = ("speccore/", "transformers/", "tokenizers/", "torch/")


def _frame(text: str) -> tuple[str, str]:
    """("Func.name", "pkg/path.py") of one py-spy frame, "Func.name (pkg/path.py:123)". py-spy writes a path
    relative to the working directory or site-packages where it can, else absolute (an editable install run from
    elsewhere): a path inside one of PACKAGES is cut to start there, so the rules below see one spelling."""
    name, _, rest = text.partition(" (")
    path = rest.rsplit(":", 1)[0] if rest else ""
    if not path.startswith(PACKAGES):
        at = max(path.rfind("/" + pkg) for pkg in PACKAGES)
        path = path[at + 1:] if at >= 0 else path
    return name, path


def classify(frames: list[tuple[str, str]]) -> tuple[str, str] | None:
    """(who, what) for one sample's stack (outermost first), or None outside Engine._run_batch."""
    names = [f for f, _ in frames]
    if ROOT_FRAME not in names:
        return None
    below = frames[names.index(ROOT_FRAME) + 1:]
    who = DRAFTING if any(p in PROPOSER_FILES or f.endswith(".propose") for f, p in below) else TARGET
    if any(f == FORWARD for f, _ in below):
        inner = below[[f for f, _ in below].index(FORWARD) + 1:]
        if any(f.startswith(LINEAR_FRAMES) for f, _ in inner):
            return who, "forward: linear layers"
        if any(f.startswith(ATTENTION_FRAMES) for f, _ in inner):
            return who, "forward: attention"
        return who, "forward: the rest (norms, rotary, KV cache, modules' Python)"
    for what, holds in OUTSIDE:
        if holds(below):
            return who, what
    return who, OTHER


def read_raw(path: str | Path) -> Counter:
    """{(who, what): samples} over a py-spy raw file (one "frame;frame;... count" line per distinct stack)."""
    out: Counter = Counter()
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        key = classify([_frame(f) for f in stack.split(";")])
        if key is not None:
            out[key] += int(count)
    return out


def table(counts: Counter, rate: float | None = None) -> str:
    """Markdown: each (who, what) with its samples and its share of the decoding's samples, largest first."""
    total = sum(counts.values())
    if not total:
        return f"no samples inside {ROOT_FRAME}"
    lines = ["| who | what | samples | share |", "|---|---|---|---|"]
    for who in (TARGET, DRAFTING):
        part = sum(n for (w, _), n in counts.items() if w == who)
        lines.append(f"| **{who}** | all | {part} | **{100 * part / total:.1f}%** |")
        for (w, what), n in sorted(counts.items(), key=lambda kv: -kv[1]):
            if w == who:
                lines.append(f"| {who} | {what} | {n} | {100 * n / total:.1f}% |")
    note = f"{total} samples in {ROOT_FRAME}" + (f" (about {total / rate:.0f} s at {rate:g} Hz)" if rate else "")
    return "\n".join(lines) + "\n\n" + note


def spy_path() -> str | None:
    """py-spy's executable: on PATH, or beside this Python's (a virtual environment not activated)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def _start_spy(spy: str, out: Path, rate: float) -> subprocess.Popen:
    proc = subprocess.Popen([spy, "record", "--pid", str(os.getpid()), "--rate", str(rate), "--format", "raw",
                             "--output", str(out), "--nonblocking"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # py-spy attaches before the counted prompts start
    if proc.poll() is not None:
        raise SystemExit(f"py-spy could not sample this process:\n{proc.stdout.read()}")
    return proc


def _stop_spy(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
    try:
        text, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        text, _ = proc.communicate()
    return text


def run(args) -> None:
    import dataclasses

    import torch

    from bench.bench import AR, PLD, _label, load_models, load_rows, make_engine, pair_setup, parse_args, policy_spec
    from speccore.models import load_model

    spy = spy_path()
    if spy is None:
        raise SystemExit("py-spy is not installed (pip install py-spy; it is in the dev extras)")
    bargs = parse_args(["--target", args.target, "--pairs", args.pair, "--policies", args.policy, "--dataset",
                        args.dataset, "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens), "--no-hf",
                        "--parts", "main", "--dtype", args.dtype])
    if args.threads:
        torch.set_num_threads(args.threads)
    target, drafters, _, _ = load_models(bargs, load_model)
    counted, warm, _ = load_rows(bargs, target)
    label = args.pair if args.pair in (AR, PLD) else _label(args.pair)
    cfg, proposer, algo = pair_setup(bargs, target, label, drafters.get(label))
    engine = make_engine(target, policy_spec(bargs, cfg, proposer, algo, label, args.policy, bargs.k, None), 1)

    def decode(rows, max_new: int) -> int:
        results, _ = engine.generate([dataclasses.replace(r, max_new_tokens=max_new) for r, _ in rows])
        return sum(len(r.output_ids) for r in results)

    with torch.inference_mode():
        decode([warm], bargs.warmup_tokens)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)  # a file left by an earlier run must not pass for this one's
        proc = _start_spy(spy, out, args.rate)
        t0 = time.perf_counter()
        try:
            tokens = sum(decode([row], args.max_new_tokens) for row in counted)
        finally:
            wall = time.perf_counter() - t0
            said = _stop_spy(proc)
    if not out.exists():
        raise SystemExit(f"py-spy wrote no profile:\n{said}")
    print(f"{args.pair} / {args.policy}: {len(counted)} prompts, {tokens} tokens in {wall:.1f} s "
          f"({tokens / wall:.2f} tok/s, sampled at {args.rate:g} Hz)\n")
    print(table(read_raw(out), args.rate))


def summary(args) -> None:
    counts: Counter = Counter()
    for path in args.raw:
        counts.update(read_raw(path))
    print(table(counts, args.rate))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="decode with one configuration under py-spy, then summarise")
    r.add_argument("--target", required=True)
    r.add_argument("--pair", required=True, help="ar, prompt-lookup or a drafter ref (an @int8 suffix packs it int8)")
    r.add_argument("--policy", default="cost")
    r.add_argument("--dataset", default="humaneval")
    r.add_argument("--n", type=int, default=3)
    r.add_argument("--max-new-tokens", type=int, default=128)
    r.add_argument("--dtype", default="float32")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    r.add_argument("--out", required=True, help="py-spy's raw output file")
    s = sub.add_parser("summary", help="the table of one or more py-spy raw files")
    s.add_argument("raw", nargs="+")
    s.add_argument("--rate", type=float, default=None, help="the sampling rate, to print seconds")
    args = p.parse_args(argv)
    {"run": run, "summary": summary}[args.cmd](args)


if __name__ == "__main__":
    main()
