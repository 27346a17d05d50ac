"""Would a learned acceptance head, trained on a big job's own verdicts, stop drafts better than the drafter's
top probability?

The cost-aware stop reads one number per drafted token: the drafter's top probability, calibrated online. A
SpecDec++-style head reads the drafter's last hidden state instead. Fitted to the benches' traces (about 1,200
positions a dataset) such a head did worse than the top probability (BENCHMARKS.md). A job of many thousands
of rows labels tens of thousands of positions as it runs, so the open question was whether more labels change
that. This measures it without decoding: both models are teacher-forced over recorded text, which labels a
position per token at the cost of a prefill.

`collect` reads ShareGPT's first exchanges (the human turn as a chat prompt, then the recorded reply), runs the
target and a same-vocab drafter over each, and writes for every reply position (npz): y (the drafter's greedy
token is the target's), the drafter's top and second probabilities and entropy, its last hidden state, and the
conversation it came from. `fit` holds out the last quarter of the conversations and, for growing numbers of
labelled positions taken in file order (as a job would label them), fits logistic heads on (a) the top
probabilities and entropy and (b) those beside the hidden state, and prints their held-out AUC against the top
probability's own.

    python -m bench.head collect --target qwen2.5-coder-1.5b --drafter qwen2.5-coder-0.5b@int8 --seconds 1500 \
        --out /tmp/head.npz
    python -m bench.head fit /tmp/head.npz
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np
import torch

SMALL = ("p", "p2", "entropy")  # the per-token numbers a stop can read without the hidden state


def exchanges(path: str | None = None, skip: int = 0) -> Iterator[tuple[int, str, str]]:
    """(record index, human turn, reply) for each ShareGPT record that opens with a human turn and a reply."""
    from speccore.sources import SourceReport, SourceSpec, _open

    # _open, not iter_rows: a Row keeps the turns up to the first human one, and the reply is what is labelled here.
    # The record stream is the loader's own, so the packaged file's truncation is recovered and warned of as a run's.
    for rec in _open(SourceSpec(kind="sharegpt", path=path), SourceReport()):
        turns = (rec.data or {}).get("conversations") if rec.index >= skip else None
        if (isinstance(turns, list) and len(turns) >= 2 and all(isinstance(t, dict) for t in turns[:2])
                and [t.get("from") for t in turns[:2]] == ["human", "gpt"]
                and all(isinstance(t.get("value"), str) and t["value"].strip() for t in turns[:2])):
            yield rec.index, turns[0]["value"], turns[1]["value"]


def exchange_ids(tokenizer, human: str, reply: str) -> tuple[list[int], list[int]]:
    """(prompt ids, prompt + reply ids). The prompt is encoded as a run encodes a chat row (the template where the
    tokenizer has one, else the text and a newline); the reply as generated text: after the prompt, on its own,
    its special-token look-alikes kept as text."""
    from types import SimpleNamespace

    from speccore.prompts import encode_row

    has_template = bool(getattr(tokenizer, "chat_template", None))
    row = SimpleNamespace(messages=[("user", human)] if has_template else None, prompt=human + "\n")
    prompt = encode_row(tokenizer, row)
    return prompt, prompt + list(tokenizer(reply, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def label(target, drafter, ids: list[int], start: int) -> dict[str, np.ndarray]:
    """Per position t in [start, len(ids) - 1): whether the drafter's argmax after ids[:t+1] is the target's, and
    what the drafter showed there (top two probabilities, entropy, last hidden state)."""
    x = torch.tensor([ids], dtype=torch.long)
    keep = len(ids) - start  # the vocabulary projection at the labelled positions (and the last) only, not the prompt's
    with torch.inference_mode():
        target_next = target(input_ids=x, logits_to_keep=keep).logits[0, :-1].argmax(-1)
        out = drafter(input_ids=x, output_hidden_states=True, logits_to_keep=keep)
    probs = torch.softmax(out.logits[0, :-1].double(), -1)
    top = probs.topk(2, -1)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(-1)
    return {"y": (top.indices[:, 0] == target_next).numpy(), "p": top.values[:, 0].numpy(),
            "p2": top.values[:, 1].numpy(), "entropy": entropy.numpy(),
            "h": out.hidden_states[-1][0, start:-1].float().numpy()}


def collect(args) -> None:
    from bench.bench import _label, load_models, parse_args
    from speccore.models import load_model

    torch.set_num_threads(args.threads)
    bargs = parse_args(["--target", args.target, "--pairs", args.drafter, "--no-hf", "--dtype", args.dtype,
                        "--prepack", "on" if args.prepack else "off"])
    target, drafters, _, _ = load_models(bargs, load_model)  # loaded and packed as the bench (and a run) does
    drafter = drafters[_label(args.drafter)]
    parts, t0 = [], time.monotonic()
    for index, human, reply in exchanges(args.path, args.skip):
        if time.monotonic() - t0 > args.seconds or sum(len(p["y"]) for p in parts) >= args.positions:
            break
        prompt, ids = exchange_ids(target.tokenizer, human, reply)
        if len(prompt) > args.max_prompt_tokens or len(ids) - len(prompt) < args.min_reply_tokens:
            continue
        part = label(target.model, drafter.model, ids[: args.max_tokens], len(prompt) - 1)
        parts.append({**part, "conversation": np.full(len(part["y"]), index)})
    if not parts:
        raise SystemExit("no exchange fitted the limits")
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    np.savez(args.out, **data)
    print(f"{len(data['y'])} positions from {len(parts)} conversations, agreement {data['y'].mean():.3f}: {args.out}")


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve: P(a kept position scores above a rejected one), ties counting a half; NaN where
    one of the two is missing."""
    score, y = np.asarray(score, dtype=np.float64), np.asarray(y, dtype=bool)
    order = np.argsort(score, kind="stable")
    sorted_ = score[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_)) + 1]
    last = np.r_[first[1:], len(score)]
    ranks = np.empty(len(score))
    ranks[order] = np.repeat((first + last + 1) / 2.0, last - first)  # tied scores share their mean rank
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")  # one class only: no pair to rank
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def features(data, hidden: bool) -> np.ndarray:
    """logit(p), logit(p2), entropy, then (hidden) the drafter's hidden state."""
    logit = lambda p: np.log(np.clip(p, 1e-9, 1 - 1e-9) / (1 - np.clip(p, 1e-9, 1 - 1e-9)))  # noqa: E731
    small = np.stack([logit(data["p"]), logit(data["p2"]), data["entropy"]], 1)
    return np.concatenate([small, data["h"]], 1) if hidden else small


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float):
    """A logistic head fitted by L-BFGS on standardised X, its L2 on the hidden state's weights only (the first
    len(SMALL) columns are free): returns a scorer of new rows."""
    X64, y64 = torch.tensor(X, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    mu, sd = X64.mean(0), X64.std(0) + 1e-9
    z = (X64 - mu) / sd
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y64) + l2 * (w[len(SMALL):] ** 2).sum()
        value.backward()
        return value

    opt.step(loss)
    w, b = w.detach(), b.detach()
    return lambda Xn: ((torch.tensor(Xn, dtype=torch.float64) - mu) / sd @ w + b).numpy()


def evaluate(data, sizes: list[int], l2s: list[float]) -> list[dict]:
    """For each n in sizes (capped at the training positions): held-out AUCs of the top probability, the small
    head and the hidden-state head at each L2. The last quarter of the conversations is held out."""
    conv = data["conversation"]
    convs = np.unique(conv)
    held = np.isin(conv, convs[int(len(convs) * 0.75):])
    train = np.flatnonzero(~held)
    y = data["y"].astype(bool)
    small, full = features(data, False), features(data, True)
    rows = []
    for n in sorted({min(s, len(train)) for s in sizes}):
        idx = train[:n]
        row = {"n": n, "top p": auc(data["p"][held], y[held]),
               "small head": auc(fit_logistic(small[idx], y[idx], 0.0)(small[held]), y[held])}
        for l2 in l2s:
            row[f"hidden head, L2 {l2:g}"] = auc(fit_logistic(full[idx], y[idx], l2)(full[held]), y[held])
        rows.append(row)
    return rows


def fit(args) -> None:
    data = dict(np.load(args.data))
    rows = evaluate(data, args.sizes, args.l2)
    held = len(np.unique(data["conversation"])) - int(len(np.unique(data["conversation"])) * 0.75)
    print(f"{len(data['y'])} positions, {len(np.unique(data['conversation']))} conversations ({held} held out), "
          f"agreement {data['y'].mean():.3f}; held-out AUC:\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) if c == "n" else f"{r[c]:.4f}" for c in cols) + " |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.head", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="label drafter/target agreement over ShareGPT replies, teacher-forced")
    c.add_argument("--target", required=True)
    c.add_argument("--drafter", required=True, help="a same-vocab drafter; @int8 packs it int8 as a run does")
    c.add_argument("--path", default=None, help="a ShareGPT JSON file (default: the packaged one)")
    c.add_argument("--skip", type=int, default=2000, help="records to skip: the benches' prompts are the first")
    c.add_argument("--seconds", type=float, default=1500.0)
    c.add_argument("--positions", type=int, default=10**9)
    c.add_argument("--max-prompt-tokens", type=int, default=256)
    c.add_argument("--min-reply-tokens", type=int, default=32)
    c.add_argument("--max-tokens", type=int, default=384, help="prompt + reply tokens fed per conversation")
    c.add_argument("--dtype", default="float32")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--no-prepack", dest="prepack", action="store_false")
    c.add_argument("--out", required=True)
    f = sub.add_parser("fit", help="held-out AUC of heads against the top probability, by labels seen")
    f.add_argument("data")
    f.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 4000, 16000, 10**9])
    f.add_argument("--l2", type=lambda s: [float(x) for x in s.split(",")], default=[0.01, 0.1, 1.0])
    args = p.parse_args(argv)
    collect(args) if args.cmd == "collect" else fit(args)


if __name__ == "__main__":
    main()
