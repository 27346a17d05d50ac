"""Replay lookahead policies on recorded drafter traces: tune a policy in seconds, not bench hours.

`trace` runs the target once per prompt (greedy) and then the drafter once over prompt + output,
teacher-forced. For each output position t it keeps the drafter's greedy token, its top probability and
whether it equals the target's token, and the target's own top probability there (`target_top`). `replay` then drives the library's policies (lookahead.py, as the
engine calls them: propose_k, should_continue after each drafted token, observe) over those traces at
fixed costs c and v(k), and prints each policy's modelled speedup over plain decoding and its fraction of
the oracle (a constant k_max run priced by lookahead.oracle_speedup, as bench.py does). `bounds` prints what
stops could reach on the same traces, for scale (see its docstring).

With `--cross-vocab` (a drafter with another tokenizer, and `--targets-from` for the target's outputs),
`trace` instead drafts as the engine's SLEM proposer does, from every output position: 16 drafter tokens
and their top probabilities, and for each prefix of j drafter tokens, how many target tokens its text
re-encodes to and how many of those the target keeps. `replay` then stops such a draft after any drafter
token as the engine's draft loop would.

What it leaves out, so take its figures as the model's, not the clock's:
- same vocabulary: after a draft's first wrong token, the probabilities of the tokens drafted after it are
  read from the target's prefix, not the drafter's own (they only decide how many wasted tokens a stop
  rule drafts); cross vocabulary: an int8 drafter's tokens are fed in other groups than a run's, which moves the
  last bits of its activations, and its int8 rounding turns some of those into whole steps (`check` finds an
  fp32 drafter's trace step-exact, an int8 one's not);
- costs are fixed at a bench run's measured c and v(k) (`--costs`): no catch-up, no per-step Python.

    python -m bench.replay trace --target qwen2.5-coder-1.5b --drafter qwen2.5-coder-0.5b --int8 \
        --dataset humaneval --n 10 --out /tmp/traces-humaneval.json
    python -m bench.replay trace --drafter qwen2.5-coder-0.5b --int8 --dataset humaneval --n 10 \
        --targets-from /tmp/traces-humaneval.json --out /tmp/traces-humaneval-b.json   # another drafter, same outputs
    python -m bench.replay trace --drafter smollm2-135m --int8 --cross-vocab --dataset humaneval --n 10 \
        --targets-from /tmp/traces-humaneval.json --out /tmp/traces-humaneval-smollm2.json
    python -m bench.replay replay /tmp/traces-*.json --costs bench/results/2026-11-22-same-vocab-1.5b-int8.json \
        --drafter-cost 'qwen2.5-coder-0.5b@int8'
    python -m bench.replay bounds /tmp/traces-humaneval.json --costs bench/results/2026-11-22-same-vocab-1.5b-int8.json
    python -m bench.replay check /tmp/traces-humaneval-smollm2.json --pair smollm2-135m@int8 --k 16
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from speccore.lookahead import (CONFIDENCE_EDGES, CostModel, confidence_bin, make_policy, oracle_speedup,
                                policy_speedup)


def trace(args) -> None:
    from bench.bench import load_rows
    from speccore.models import load_model

    torch.set_num_threads(args.threads)
    known = {}  # row_id -> the target's output, from an earlier trace of the same prompts
    if args.targets_from:
        old = json.loads(Path(args.targets_from).read_text())
        if (old["target"], old["dataset"]) != (args.target, args.dataset):
            raise SystemExit(f"{args.targets_from} traced {old['target']} on {old['dataset']}")
        known = {r["row_id"]: r for r in old["rows"]}
    if args.cross_vocab and not known:
        raise SystemExit("--cross-vocab replays the target's outputs: give --targets-from")
    target = load_model(args.target, prepack=not args.cross_vocab)  # cross vocab: its tokenizer only
    drafter = load_model(args.drafter, prepack=True, int8=args.int8)
    ns = argparse.Namespace(dataset=args.dataset, n=args.n, max_prompt_tokens=args.max_prompt_tokens,
                            max_new_tokens=args.max_new_tokens, warmup_tokens=0)
    rows, _, _ = load_rows(ns, target)
    out = []
    with torch.inference_mode():
        for row, ids in rows:
            if known:
                was = known.get(row.row_id)
                if was is None or was["prompt_tokens"] != len(ids):
                    raise SystemExit(f"{row.row_id}: not in {args.targets_from} with these {len(ids)} prompt tokens")
                y = was["target"]
                if args.cross_vocab:
                    out.append({"row_id": row.row_id, "prompt_tokens": len(ids), "target": y,
                                "slem": slem_drafts(drafter, target.tokenizer, row, ids, y, args.k_max)})
                    print(f"{row.row_id}: {len(y)} positions drafted", file=sys.stderr)
                    continue
                gen = torch.tensor([ids + y])
            else:
                x = torch.tensor([ids])
                gen = target.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.max_new_tokens,
                                            do_sample=False, eos_token_id=list(target.eos_token_ids))
                y = gen[0, len(ids):].tolist()
            at = slice(len(ids) - 1, len(ids) - 1 + len(y))  # the logits that predict each output token
            top, tok = torch.softmax(drafter.model(gen).logits[0, at].float(), -1).max(-1)
            target_top = torch.softmax(target.model(gen).logits[0, at].float(), -1).amax(-1)
            out.append({"row_id": row.row_id, "prompt_tokens": len(ids), "target": y,
                        "match": [int(a == b) for a, b in zip(tok.tolist(), y)], "top": [round(p, 5) for p in top.tolist()],
                        "target_top": [round(p, 5) for p in target_top.tolist()]})
            print(f"{row.row_id}: {len(y)} tokens, {sum(out[-1]['match'])} drafter matches", file=sys.stderr)
    Path(args.out).write_text(json.dumps({"target": args.target, "drafter": args.drafter, "int8": args.int8,
                                          "dataset": args.dataset, "cross_vocab": args.cross_vocab, "rows": out}))


class _DraftAll:
    """A row's policy while tracing: every draft runs to its k."""

    def should_continue(self, i: int, drafter_top_prob: float) -> bool:
        return True


def slem_drafts(drafter, target_tokenizer, row, ids: list[int], y: list[int], k: int) -> list[dict]:
    """The engine's SLEM draft of k drafter tokens from each output position t of y: the drafter's top
    probability of each token (`top`), and for the draft cut after its j-th token, the target tokens its text
    re-encodes to (`n`, at most k) and how many of them the target keeps (`acc`, the leading ones equal to y's)."""
    from speccore.crossvocab import SlemProposer
    from speccore.engine import RowState

    proposer = SlemProposer(drafter, target_tokenizer)
    st = RowState(row=row, prompt_ids=ids, params=None, gen=None, seed=0, max_new=len(y), stop=(), policy=_DraftAll())
    proposer.start([st])
    picked: list[tuple[int, float]] = []
    pick = proposer.pick

    def recording(state, logits):
        tok, q, top = pick(state, logits)
        if tok is not None:
            picked.append((tok, top))
        return tok, q, top

    proposer.pick = recording
    positions = []
    for t in range(len(y)):
        picked.clear()
        st.out_ids = y[:t]
        proposer.propose([st], [k])
        toks = [tok for tok, _ in picked]
        drafts = [proposer.to_draft(st, proposer.views[0], toks[:j], None, "k", k).ids for j in range(1, len(toks) + 1)]
        positions.append({"top": [round(p, 5) for _, p in picked], "n": [len(d) for d in drafts],
                          "acc": [_kept(d, y[t:]) for d in drafts]})
    return positions


def _kept(draft: list[int], truth: list[int]) -> int:
    """How many leading draft tokens equal the target's own."""
    n = 0
    while n < len(draft) and n < len(truth) and draft[n] == truth[n]:
        n += 1
    return n


class FixedCosts(CostModel):
    """A CostModel held at a bench run's measured c and v(k) (its priors, never updated: a replay times
    nothing). It counts as measured, so the probe budget applies as in a run whose costs are known.
    Acceptance is still learned."""

    def __init__(self, c: float, v: dict):
        super().__init__(c=c, v={int(k): float(x) for k, x in v.items()})

    @property
    def measured(self) -> bool:
        return True


def run_row(row: dict, policy, cm: CostModel, max_new: int) -> list[dict]:
    """One row decoded under `policy`, as the engine steps it; returns its steps (k, drafted, accepted). A step's
    room is the engine's, the budget `max_new` less what the row has emitted: a row whose output ended on EOS
    before the budget did not know it would (capped at the output's length, a constant k drafted fewer tokens
    near such a row's end than the engine did)."""
    n = len(row["target"])
    draft = _draft_for(row)
    t, steps = 1, []  # the prompt's forward emits the first token; the steps start after it
    while t < n:
        room = max(0, max_new - t - 1)
        k = min(policy.propose_k(), room)
        drafted, accepted = draft(row, t, k, policy)
        policy.observe(k, drafted, accepted, 0.0, 0.0)
        cm.observe_acceptance(drafted, accepted)
        steps.append({"k": k, "drafted": drafted, "accepted": accepted})
        t += accepted + 1
    return steps


def at_live_positions(row: dict, live: list[tuple[int, int, int]]) -> list[tuple[int, tuple, tuple]]:
    """Each live step (k, drafted, accepted) of a row beside what its trace says a step drafting k from the same
    position drafts and keeps: [(position, live (drafted, accepted), traced (drafted, accepted))]."""
    draft = _draft_for(row)
    out, t = [], 1
    for k, drafted, accepted in live:
        traced = draft(row, t, k, _DraftAll()) if k else (0, 0)
        out.append((t, (drafted, accepted), traced))
        t += accepted + 1
    return out


def check(args) -> None:
    """Decode a trace's rows live at a constant k (the engine, as bench.py builds it) and print, for each live
    step, whether the trace drafts and keeps as many target tokens from the same position: is the trace exact
    for this pair? Marks: '.' equal, '[t: live/traced]' not."""
    from bench import bench as B
    from speccore.models import load_model

    torch.set_num_threads(args.threads)
    s = json.loads(Path(args.trace).read_text())
    rows_by_id = {r["row_id"]: r for r in s["rows"]}
    pair = args.pair  # as bench --pairs names it: a drafter, "@int8" for its int8 form
    ns = B.parse_args(["--target", s["target"], "--pairs", f"ar,{pair}", "--dataset", s["dataset"], "--n",
                       str(len(s["rows"])), "--max-prompt-tokens", str(args.max_prompt_tokens),
                       "--max-new-tokens", str(args.max_new_tokens), "--no-hf"])
    target = load_model(s["target"], prepack=True)
    name, _, quant = pair.partition("@")
    drafter = load_model(name, prepack=True, int8=quant == "int8")
    rows, _, _ = B.load_rows(ns, target)
    cfg, proposer, algo = B.pair_setup(ns, target, pair, drafter)
    run = B.speccore_runner(B.make_engine(target, B.policy_spec(ns, cfg, proposer, algo, pair, "constant", args.k, None), 1))
    same = total = 0
    with torch.inference_mode():
        for row, ids in rows:
            traced = rows_by_id[row.row_id]
            out, st = run(row, ids, args.max_new_tokens)
            if out != traced["target"]:
                raise SystemExit(f"{row.row_id}: the live output is not the traced one")
            marks = at_live_positions(traced, [(x["k"], x["drafted"], x["accepted"]) for x in st["log"]])
            same += sum(a == b for _, a, b in marks)
            total += len(marks)
            print(row.row_id, "".join("." if a == b else f"[{t}: {a}/{b}]" for t, a, b in marks))
    print(f"{same} of {total} live steps draft and keep what the trace says")


def _draft_for(row: dict):
    """How a traced row drafts: `_slem_draft` for a cross-vocab trace, `_draft` for a same-vocab one."""
    return _slem_draft if "slem" in row else _draft


def _drafted(policy, tops: list[float]) -> int:
    """How many of the tokens whose top probabilities are `tops` a draft loop drafts: it asks the policy after
    each one, and the last one is drafted whatever the answer."""
    for i, top in enumerate(tops, 1):
        if not policy.should_continue(i, top):
            return i
    return len(tops)


def _draft(row: dict, t: int, k: int, policy) -> tuple[int, int]:
    """(drafted, accepted) of a same-vocab draft of up to k tokens from position t, stopped by the policy."""
    drafted = _drafted(policy, row["top"][t : t + k])
    accepted = 0
    while accepted < drafted and row["match"][t + accepted]:
        accepted += 1
    return drafted, accepted


def _slem_draft(row: dict, t: int, k: int, policy) -> tuple[int, int]:
    """(drafted, accepted) in target tokens of a SLEM draft of up to k drafter tokens from position t, stopped
    by the policy after any drafter token (or where the traced draft ended: an EOS or a control token)."""
    at = row["slem"][t]
    j = _drafted(policy, at["top"][:k])
    if not j:
        return 0, 0
    drafted = min(at["n"][j - 1], k)
    return drafted, min(at["acc"][j - 1], drafted)


def _value(text: str):
    if text == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def policy_for(spec: str, cm: CostModel, k_max: int):
    """'name' or 'name:key=value,...' (values as floats or ints) -> a fresh policy for one row."""
    name, _, rest = spec.partition(":")
    params = {}
    for kv in filter(None, rest.split(",")):
        key, _, val = kv.partition("=")
        params[key] = _value(val)
    if name == "constant":
        params.setdefault("k", k_max)
    else:
        params.setdefault("k_max", k_max)
    if name == "cost":
        params.update(cost_model=cm, learn_costs=False)
        policy = make_policy(name, **params)
        policy.drafter_confidence = True
        return policy
    return make_policy(name, **params)


def load_costs(args) -> tuple[float, dict]:
    """c and v(k) of a bench run's costs part (--costs, --drafter-cost), printed as a heading."""
    costs = json.loads(Path(args.costs).read_text())["costs"]
    c = costs["drafters"][args.drafter_cost]["c"]
    v = costs["target"]["v"]
    print(f"c = {c:.3f}; v(1, 4, 8, 16) = {', '.join(f'{v[str(k)]:.2f}' for k in (1, 4, 8, 16))}")
    return c, v


def steps_of(trace: dict, spec: str, cm: CostModel, args) -> list[dict]:
    """The steps of every row of a trace set, each row under a fresh policy from `spec` (policy_for)."""
    return [st for r in trace["rows"]
            for st in run_row(r, policy_for(spec, cm, args.k_max), cm, args.max_new_tokens)]


def constant_log(trace: dict, cm: CostModel, args) -> list[dict]:
    """The steps of a constant k_max run over a trace set: the least censored log, which the oracle prices."""
    return steps_of(trace, "constant", cm, args)


def replay(args) -> None:
    c, v = load_costs(args)
    sets = [json.loads(Path(p).read_text()) for p in args.traces]
    policies = args.policies.split(";")
    print("| policy | " + " | ".join(s["dataset"] for s in sets) + " |")
    print("|---|" + "---|" * len(sets))
    oracles = []  # per dataset: the oracle over a constant k_max run's steps
    for s in sets:
        cm = FixedCosts(c, v)
        oracles.append(oracle_speedup(constant_log(s, cm, args), cm))
    print("| oracle | " + " | ".join(f"{orc:.2f}×" for orc in oracles) + " |")
    for spec in policies:
        cells = []
        for s, orc in zip(sets, oracles):
            cm = FixedCosts(c, v)  # one per policy and dataset, shared by its rows (the pair's prior)
            log = steps_of(s, spec, cm, args)
            sp = policy_speedup(log, cm)
            cells.append(f"{sp:.2f}× ({sp / orc:.0%})")
        print(f"| {spec} | " + " | ".join(cells) + " |")


def _same_vocab(path: str) -> dict:
    """A same-vocab trace set (per-token matches and confidences), or exit saying why not."""
    s = json.loads(Path(path).read_text())
    if s.get("cross_vocab"):
        raise SystemExit(f"{path} is a cross-vocab trace: only `replay` reads those")
    return s


THETAS = tuple(x / 100 for x in range(2, 100, 2))


def bounds(args) -> None:
    """What stops could reach on these traces, in the model, beside the oracle (which knows each step's
    accepted count before drafting): a stop told, after drafting each token, whether it will be kept (it pays c
    for the rejected token it drafted, and c + a plain step where that is the first); and the best rule
    "draft while P(every token so far kept) >= theta", P the acceptance per drafter-confidence bin of these
    very traces and theta fitted on them: a yardstick, fitted in hindsight, for stops that go on the drafter's
    confidence.

    A cross-vocab trace gets the oracle and the fitted theta only, P there being a drafter token's: kept when
    the draft cut after it keeps every target token it re-encodes to, given the tokens before it were. A told
    stop has no clear meaning there: a cut whose last target token is part of a longer word is rejected, and
    the draft one drafter token longer may keep it."""
    c, v = load_costs(args)
    print("| bound | dataset | speedup | fraction of the oracle |")
    print("|---|---|---|---|")
    for path in args.traces:
        s = json.loads(Path(path).read_text())
        cm = FixedCosts(c, v)
        log = constant_log(s, cm, args)
        oracle = oracle_speedup(log, cm)
        found = [("oracle", oracle)]
        if not s.get("cross_vocab"):
            told = sum(st["accepted"] + 1 for st in log) / sum(
                c + 1 if st["accepted"] == 0 else cm.step_cost(st["accepted"]) + c * (st["drafted"] > st["accepted"])
                for st in log)
            found.append(("told after each drafted token", told))
        theta, best = _best_theta(s, kept_by_bin(s), cm, args)
        found.append((f"best fitted theta ({theta:.2f})", best))
        for name, sp in found:
            print(f"| {name} | {s['dataset']} | {sp:.2f}× | {sp / oracle:.0%} |")


def kept_by_bin(trace: dict) -> list[float]:
    """Per drafter-confidence bin, the share of a trace's drafted tokens that were kept (0 where none fell):
    each output position's token in a same-vocab trace; in a cross-vocab one, each drafter token of the draft
    from each position, up to its first that was not kept (a later one's fate was never in question)."""
    hits, seen = [0] * len(CONFIDENCE_EDGES), [0] * len(CONFIDENCE_EDGES)
    for r in trace["rows"]:
        if "slem" in r:
            verdicts = []
            for at in r["slem"]:
                for p, n, acc in zip(at["top"], at["n"], at["acc"]):
                    verdicts.append((p, acc >= n))
                    if acc < n:
                        break
        else:
            verdicts = zip(r["top"], r["match"])
        for p, kept in verdicts:
            b = confidence_bin(p)
            seen[b] += 1
            hits[b] += bool(kept)
    return [h / n if n else 0.0 for h, n in zip(hits, seen)]


def _best_theta(trace: dict, accept: list[float], cm: CostModel, args) -> tuple[float, float]:
    """(theta, speedup) of the ThresholdStop in THETAS that does best on the trace set (the first, on a tie)."""
    def speedup(theta: float) -> float:
        stop = ThresholdStop(accept, theta, args.k_max)  # its state resets at each step
        return policy_speedup([st for r in trace["rows"] for st in run_row(r, stop, cm, args.max_new_tokens)], cm)

    return max(((t, speedup(t)) for t in THETAS), key=lambda x: x[1])


class ThresholdStop:
    """Draft while the product of `accept` (per confidence bin) over the step's tokens is >= theta."""

    def __init__(self, accept: list[float], theta: float, k_max: int):
        self.accept, self.theta, self.k_max = accept, theta, k_max
        self._p_all = 1.0

    def propose_k(self) -> int:
        self._p_all = 1.0
        return self.k_max

    def should_continue(self, i: int, top: float) -> bool:
        self._p_all *= self.accept[confidence_bin(top)]
        return self._p_all >= self.theta

    def observe(self, k: int, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        pass


SIGNAL_EDGES = (0.5, 0.8, 0.95, 0.99)


def signals(args) -> None:
    """How well what is known before a step drafts predicts its first token's acceptance: the drafter's
    agreement at position t, by the target's top probability at t - 1 (the bonus token's, which the verify
    computed) and by the drafter's own at t - 1; and by the target's top probability at t, for scale (it is
    known only after the verify)."""
    signal_at = {  # name -> (trace field, offset from t)
        "target_top[t-1]": ("target_top", -1), "drafter top[t-1]": ("top", -1), "target_top[t] (hindsight)": ("target_top", 0),
    }
    labels = [f"< {SIGNAL_EDGES[0]}"] + [f"≥ {e}" for e in SIGNAL_EDGES]
    print("| trace | signal | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for path in args.traces:
        s = _same_vocab(path)
        for name, (field, offset) in signal_at.items():
            n, hit = [0] * len(labels), [0] * len(labels)
            for r in s["rows"]:
                for t in range(1, len(r["match"])):
                    b = sum(r[field][t + offset] >= e for e in SIGNAL_EDGES)
                    n[b] += 1
                    hit[b] += r["match"][t]
            cells = [f"{h / k:.2f} ({k})" if k else "–" for h, k in zip(hit, n)]
            print(f"| {s['dataset']} | {name} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trace", help="record teacher-forced drafter traces of the target's greedy outputs")
    t.add_argument("--target", default="qwen2.5-coder-1.5b")
    t.add_argument("--drafter", default="qwen2.5-coder-0.5b")
    t.add_argument("--int8", action="store_true", help="the drafter as drafter.quantize=int8 runs it")
    t.add_argument("--dataset", default="humaneval")
    t.add_argument("--n", type=int, default=10)
    t.add_argument("--max-prompt-tokens", type=int, default=256)
    t.add_argument("--max-new-tokens", type=int, default=64)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--cross-vocab", action="store_true",
                   help="the drafter has another tokenizer: trace SLEM drafts from each position (needs --targets-from)")
    t.add_argument("--k-max", type=int, default=16, help="drafter tokens per traced SLEM draft")
    t.add_argument("--targets-from", default=None,
                   help="an earlier trace of the same target and prompts: reuse its outputs (the drafter alone runs)")
    t.add_argument("--out", required=True)
    r = sub.add_parser("replay", help="policies over traces at a bench run's measured costs")
    r.add_argument("traces", nargs="+")
    r.add_argument("--costs", required=True, help="a bench result JSON with a costs part")
    r.add_argument("--drafter-cost", default="qwen2.5-coder-0.5b@int8", help="its key under costs.drafters")
    r.add_argument("--policies", default="constant:k=4;heuristic;confidence;cost",
                   help="';'-separated, each 'name' or 'name:key=value,...'")
    r.add_argument("--k-max", type=int, default=16)
    r.add_argument("--max-new-tokens", type=int, default=64)
    b = sub.add_parser("bounds", help="the oracle, a stop told each token's verdict (same vocab), and the best fitted threshold")
    b.add_argument("traces", nargs="+")
    b.add_argument("--costs", required=True, help="a bench result JSON with a costs part")
    b.add_argument("--drafter-cost", default="qwen2.5-coder-0.5b@int8", help="its key under costs.drafters")
    b.add_argument("--k-max", type=int, default=16)
    b.add_argument("--max-new-tokens", type=int, default=64)
    g = sub.add_parser("signals", help="the first drafted token's acceptance by what is known before drafting")
    g.add_argument("traces", nargs="+")
    c = sub.add_parser("check", help="decode a trace's rows live at a constant k: does the trace step as the engine?")
    c.add_argument("trace")
    c.add_argument("--pair", required=True, help="the drafter the trace was made with, as bench --pairs names it")
    c.add_argument("--k", type=int, default=16)
    c.add_argument("--max-prompt-tokens", type=int, default=256)
    c.add_argument("--max-new-tokens", type=int, default=64)
    c.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    {"trace": trace, "replay": replay, "bounds": bounds, "signals": signals, "check": check}[args.cmd](args)


if __name__ == "__main__":
    main()
