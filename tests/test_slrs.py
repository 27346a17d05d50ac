"""SLRS (string-level rejection sampling) with a char-level drafter.

- toy level (no model): ψ computed on the trie equals the exact distribution of the longest-match string
  process, with prefix tokens "a" < "ab" < "abc"; one SLRS step (propose from ψ, verify_row) emits tokens
  distributed as p, the TV distance shrinking as samples grow; the naive ψ(t) = P(string starts with t)
  is visibly biased (so the test has power);
- real tiny models: tree attention gives the same drafter distributions as plain forwards; ψ from the
  char drafter is lossless against the byte-level BPE target; greedy equals target-alone greedy at batch
  sizes 1 and 3; sampled drafts are accepted (not vacuous) and do not depend on the batch; BPE drafters
  are refused with the reason.
"""
from __future__ import annotations

import hashlib

import pytest
import torch

from speccore import sampling as smp
from speccore.config import ConfigError, compose
from speccore.decoder import CachedLM
from speccore.draft_model import feed_for
from speccore.engine import Engine
from speccore.models import load_model
from speccore.rows import make_row
from speccore.slrs import OutcomeTable, SlrsProposer, TokenTrie, TreeBuilder, slot_probs
from speccore.speculate import make_proposer
from speccore.verify import Draft, verify_row
from tests.tiny import target_greedy


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------- toy vocabulary

TOY_TARGET = ["<eos>", "a", "ab", "abc", "b", "bc", "c", "x", "xa", "z"]  # "z": the drafter cannot write it
EOS = 0
CHARS = ["a", "b", "c", "x"]
SLOTS = [c.encode() for c in CHARS] + [None]  # + the drafter's EOS


def toy_trie() -> TokenTrie:
    return TokenTrie({s.encode(): i for i, s in enumerate(TOY_TARGET) if i != EOS})


def toy_drafter(context: str) -> torch.Tensor:
    """A fixed, context-dependent distribution over the slots (any positive function of the context) that
    likes to spell "abc", so that the prefix tokens "a", "ab", "abc" all matter."""
    h = hashlib.sha256(context.encode()).digest()
    w = torch.tensor([1.0 + h[i] / 32 for i in range(len(SLOTS))], dtype=torch.float64)
    w[-1] *= 0.3  # EOS is rarer
    tail = "ab" if context.endswith("ab") else "a" if context.endswith("a") else ""
    w[CHARS.index({"a": "b", "ab": "c"}.get(tail, "a"))] *= 6
    return w / w.sum()


def toy_builder(context: str, max_nodes=10_000, min_mass=0.0, greedy=False) -> TreeBuilder:
    table = OutcomeTable(toy_trie(), SLOTS, EOS)
    tb = TreeBuilder(table, toy_drafter(context), greedy, max_nodes, min_mass)
    while req := tb.requests():
        for i in req:
            chars, a = [], i
            while a > 0:
                chars.append(CHARS[tb.entries[a].slot])
                a = tb.entries[a].parent
            tb.fill(i, toy_drafter(context + "".join(reversed(chars))))
    return tb


def longest_match_reference(context: str) -> torch.Tensor:
    """The exact proposal distribution, written directly on strings: the drafter writes characters until
    EOS or until no token starts with its string; the proposal is the longest token that is a prefix."""
    tokens = {s: i for i, s in enumerate(TOY_TARGET) if i != EOS}
    out = torch.zeros(len(TOY_TARGET), dtype=torch.float64)

    def longest(s):
        best = None
        for n in range(1, len(s) + 1):
            best = tokens.get(s[:n], best)
        return best

    def rec(s, mass):
        q = toy_drafter(context + s)
        for j, c in enumerate(CHARS + [None]):
            if c is None:
                out[longest(s) if s else EOS] += mass * q[j]
            elif any(t.startswith(s + c) for t in tokens):
                rec(s + c, mass * q[j])
            else:
                out[longest(s + c) if longest(s + c) is not None else longest(s)] += mass * q[j]

    rec("", 1.0)
    return out


def naive_psi(context: str) -> torch.Tensor:
    """ψ(t) = P(the drafter's string starts with t), renormalised: wrong when tokens are prefixes."""
    out = torch.zeros(len(TOY_TARGET), dtype=torch.float64)
    for i, t in enumerate(TOY_TARGET):
        if i == EOS:
            out[i] = toy_drafter(context)[-1]
            continue
        mass, s = 1.0, ""
        for c in t:
            mass *= float(toy_drafter(context + s)[CHARS.index(c)]) if c in CHARS else 0.0
            s += c
        out[i] = mass
    return out / out.sum()


def emitted(p: torch.Tensor, propose_q: torch.Tensor, verify_q: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Frequencies of the token one SLRS step emits: d ~ propose_q, verify_row with verify_q against p."""
    params = smp.SamplingParams(temperature=1.0)
    logits = torch.log(p).repeat(2, 1)  # [2, V]: position 0 verifies d, position 1 is the bonus
    gen = smp.make_generator(seed)
    counts = torch.zeros_like(p)
    accepted = 0
    for _ in range(n):
        d = smp.sample(propose_q, gen)
        a, new = verify_row(logits, Draft(ids=[d], q=verify_q[None]), params, gen)
        counts[new[0]] += 1
        accepted += a
    assert accepted > 0
    return counts / n


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


TOY_P = torch.tensor([0.05, 0.10, 0.25, 0.05, 0.15, 0.05, 0.10, 0.10, 0.05, 0.10], dtype=torch.float64)


@pytest.mark.parametrize("context", ["", "ab", "xyz"])
def test_psi_is_the_longest_match_distribution(context):
    psi = toy_builder(context).psi(len(TOY_TARGET))
    ref = longest_match_reference(context)
    assert torch.allclose(psi, ref, atol=1e-12, rtol=0), (psi, ref)
    assert abs(float(psi.sum()) - 1) < 1e-12
    # prefix tokens: ψ(t) = π(t) - Σ π(minimal extensions), e.g. ψ("ab") = π("ab") - π("abc")
    assert psi[TOY_TARGET.index("z")] == 0 and psi[TOY_TARGET.index("ab")] > 0


def step_distribution(p: torch.Tensor, psi: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The exact distribution of the emitted token when d ~ psi is verified by rejection sampling with q."""
    keep = psi * torch.where(q > 0, (p / q.clamp_min(1e-300)).clamp(max=1.0), torch.zeros_like(p))
    residual = (p - q).clamp_min(0)
    return keep + (1 - keep.sum()) * residual / residual.sum()


def test_one_step_is_lossless_and_tv_shrinks():
    psi = toy_builder("ctx").psi(len(TOY_TARGET))
    assert 0.3 < float(torch.minimum(psi, TOY_P).sum()) < 0.95  # the acceptance rate: neither 0 nor trivial
    assert tv(step_distribution(TOY_P, psi, psi), TOY_P) < 1e-12
    tvs = [tv(emitted(TOY_P, psi, psi, n, seed=7), TOY_P) for n in (200, 2000, 8000)]
    assert tvs[2] < tvs[1] < tvs[0] and tvs[2] < 0.02, tvs
    # the naive ψ (probability of writing str(t), renormalised) as q is biased, and the same test sees it
    naive = naive_psi("ctx")
    assert tv(step_distribution(TOY_P, psi, naive), TOY_P) > 0.08
    bad = tv(emitted(TOY_P, psi, naive, 3000, seed=7), TOY_P)
    assert bad > 0.06 and bad > 3 * tvs[2], (bad, tvs)


@pytest.mark.parametrize("max_nodes,min_mass", [(1, 0.0), (3, 0.0), (10_000, 0.2)])
def test_pruned_expansion_stays_a_distribution_and_lossless(max_nodes, min_mass):
    tb = toy_builder("ctx", max_nodes=max_nodes, min_mass=min_mass)
    assert tb.n_nodes <= max_nodes
    psi = tb.psi(len(TOY_TARGET))
    assert abs(float(psi.sum()) - 1) < 1e-12 and bool((psi >= 0).all())
    assert tv(step_distribution(TOY_P, psi, psi), TOY_P) < 1e-12
    assert tv(emitted(TOY_P, psi, psi, 2500, seed=3), TOY_P) < 0.045  # ~2x the sampling noise


def test_greedy_walk_follows_the_argmax():
    tb = toy_builder("", greedy=True)
    walk, ctx = "", ""
    while True:  # follow the argmax through the strings by hand
        c = int(toy_drafter(ctx).argmax())
        if c == len(CHARS) or not any(t.startswith(ctx + CHARS[c]) for t in TOY_TARGET[1:]):
            break
        ctx += CHARS[c]
        walk = ctx if ctx in TOY_TARGET else walk
    expect = TOY_TARGET.index(walk) if walk else EOS
    assert tb.greedy_proposal() == expect


# ------------------------------------------------------------------------------------ real models

CONF = "conf"
PROMPTS = ["def add(a, b):", "The cat", "import os\nimport sys\n\ndef main():\n    ", "café naïve résumé is"]
NEW = 16


@pytest.fixture(scope="module")
def target(tiny_zoo):
    return load_model(str(tiny_zoo["target-llama-g"]), dtype="float64")


@pytest.fixture(scope="module")
def drafter(tiny_zoo):
    from speccore.vocab import is_char_level

    d = load_model(str(tiny_zoo["drafter-llama-char"]), dtype="float64")
    assert is_char_level(d.tokenizer)
    return d


def slrs_engine(target, drafter, tiny_zoo, batch_size, temperature=0.0, extra=()):
    cfg = compose(["target=hf", f"target.ref={tiny_zoo['target-llama-g']}", "drafter=hf",
                   f"drafter.ref={tiny_zoo['drafter-llama-char']}", "speculation.algorithm=slrs",
                   "speculation.lookahead=constant", f"sampling.max_new_tokens={NEW}",
                   f"sampling.temperature={temperature}", *extra], config_dir=CONF)
    proposer, factory, algo = make_proposer(cfg, target, drafter)
    assert algo == "slrs" and isinstance(proposer, SlrsProposer)
    return Engine(target, proposer=proposer, policy_factory=factory, sampling=cfg.sampling,
                  batch_size=batch_size, algorithm=algo)


def rows():
    return [make_row({"prompt": p}, f"r{i}") for i, p in enumerate(PROMPTS)]


def test_tree_attention_equals_plain_forwards(target, drafter):
    """Every expanded trie node's drafter distribution equals a plain forward over context + its characters
    (with holes in the ragged cache, at batch size 2)."""
    prop = SlrsProposer(drafter, target.tokenizer, 400, 0, max_nodes=24, min_mass=1e-3)
    tok = drafter.tokenizer
    ids = [tok(c, add_special_tokens=False)["input_ids"] for c in ("def add(a, b):\n    return", "The cat sat")]
    prop.lm = lm = CachedLM(drafter.model, 2)
    with torch.inference_mode():
        lm.forward(ids)
        lm.forward([[5, 6], [7]])
        lm.keep([0, 0])  # rolled back: holes in the cache
        feeds = [feed_for(lm, b, ids[b]) for b in range(2)]
        logits = lm.forward(feeds)
        tbs = [TreeBuilder(prop.table, slot_probs(logits[b, len(feeds[b]) - 1], prop.slot_ids, 1.0), False,
                           24, 1e-3) for b in range(2)]
        prop._expand(tbs)
        assert lm.mask.shape[1] == lm.cache.layers[0].keys.shape[2]  # the tree's columns are gone again
        for b, tb in enumerate(tbs):
            assert tb.n_nodes > 5
            for i, e in enumerate(tb.entries[1:], 1):
                chars, a = [], i
                while a > 0:
                    chars.append(int(prop.slot_ids[tb.entries[a].slot]))
                    a = tb.entries[a].parent
                ref = drafter.model(input_ids=torch.tensor([ids[b] + chars[::-1]])).logits[0, -1]
                assert torch.allclose(slot_probs(ref, prop.slot_ids, 1.0), e.probs, atol=1e-10)


def test_real_psi_is_lossless(target, drafter):
    """ψ of the char drafter at a real context, verified against the BPE target's top-k p."""
    prop = SlrsProposer(drafter, target.tokenizer, 400, 0)
    text = "def mean(values):\n    return sum(values) /"
    with torch.inference_mode():
        tl = target.model(input_ids=torch.tensor([target.tokenizer(text)["input_ids"]])).logits[0, -1]
        prop.lm = lm = CachedLM(drafter.model, 1)
        dl = lm.forward([drafter.tokenizer(text, add_special_tokens=False)["input_ids"]])[0, -1]
        tb = TreeBuilder(prop.table, slot_probs(dl, prop.slot_ids, 1.0), False, 256, 1e-4)
        prop._expand([tb])
    psi = tb.psi(400)
    params = smp.SamplingParams(temperature=1.0, top_k=12)
    p = smp.probs(tl, params)
    assert abs(float(psi.sum()) - 1) < 1e-9 and float(torch.minimum(p, psi).sum()) > 0.05  # acceptance > 0
    assert tv(step_distribution(p, psi, psi), p) < 1e-12
    n = 6000
    got = emitted(p, psi, psi, n, seed=11)
    base = torch.zeros_like(p)  # the same number of plain target samples, for scale
    gen = smp.make_generator(11)
    for _ in range(n):
        base[smp.sample(p, gen)] += 1
    assert tv(got, p) < max(0.025, 2 * tv(base / n, p)), (tv(got, p), tv(base / n, p))


@pytest.fixture(scope="module")
def reference(tiny_zoo, target):
    out = {}
    for i, p in enumerate(PROMPTS):
        ids = target.tokenizer(p)["input_ids"]
        out[f"r{i}"] = target_greedy(tiny_zoo["target-llama-g"], ids, NEW)[len(ids):]
    return out


@pytest.mark.parametrize("batch_size", [1, 3])
def test_slrs_greedy_is_exact(target, drafter, tiny_zoo, reference, batch_size):
    eng = slrs_engine(target, drafter, tiny_zoo, batch_size)
    results, steps = eng.generate(rows())
    assert [r.status for r in results] == ["ok"] * len(PROMPTS), [r.error_message for r in results]
    assert all(r.fallback is None for r in results)
    assert {r.row_id: r.output_ids for r in results} == reference
    assert sum(r.drafted for r in results) > 20 and sum(r.accepted for r in results) > 0


def test_slrs_sampling_accepts_and_does_not_depend_on_the_batch(target, drafter, tiny_zoo):
    outs = []
    for bs in (1, 3):
        eng = slrs_engine(target, drafter, tiny_zoo, bs, temperature=1.0, extra=["sampling.max_new_tokens=10"])
        results, steps = eng.generate(rows()[:3])
        assert all(r.status == "ok" and r.fallback is None for r in results)
        drafted, accepted = sum(r.drafted for r in results), sum(r.accepted for r in results)
        assert drafted > 10 and 0 < accepted < drafted, (drafted, accepted)
        outs.append({r.row_id: r.output_ids for r in results})
    assert outs[0] == outs[1]


def test_slrs_refused_for_a_bpe_drafter(target, tiny_zoo):
    cfg = compose(["target=hf", f"target.ref={tiny_zoo['target-llama-g']}", "drafter=hf",
                   f"drafter.ref={tiny_zoo['drafter-llama-m']}", "speculation.algorithm=slrs"], config_dir=CONF)
    dr = load_model(str(tiny_zoo["drafter-llama-m"]), dtype="float64")
    with pytest.raises(ConfigError, match="only practical for byte- or char-level drafters") as e:
        make_proposer(cfg, target, dr)
    assert "bytes" in str(e.value)
