"""Sampled speculative decoding on the tiny fp64 models has the target-alone law, and a row's sample
depends on its seed only.

Law: one prompt, repeated as many rows (distinct row_ids, so distinct seeds), 4 new tokens with a
constant lookahead of k=2: the first token comes from the prefill, the next step drafts 2 tokens and
verifies them with the target, so the 2nd and 3rd tokens are accepted drafts, resampled rejections or
bonus tokens. Their empirical law is compared with the exact target-alone law, computed from the
target's probabilities: the 2nd token marginalised over the 1st (one batched forward over every 1st
token), and the (2nd, 3rd) pair marginalised over the 1st (a batched forward over every (1st, 2nd)
prefix of probability >= TAU; the pruned mass `eps` widens the bound). EOS ends a row: a missing
token is the extra outcome END.

Drafts: for standard and TLI, every drafted token must be drawn from the q row it reports (the
premise of rejection sampling), checked with a martingale z-score per token over all draft
positions; deterministic proposers report no q.

Seeds: with sampling, a row's output is the same at batch size 1 and 8, in another order and mixed
with other rows; another run seed changes it. Exact-match speculation (prompt lookup, SLEM) draws the
same uniforms as target-only decoding, so it reproduces target-only samples token for token.
"""
from __future__ import annotations

import functools

import pytest
import torch

from speccore import sampling as smp
from speccore.config import compose
from speccore.engine import Engine
from speccore.models import load_model
from speccore.prompts import encode_row
from speccore.rows import make_row
from speccore.speculate import make_proposer
from tests.test_verify import assert_shrinks, tv_curve
from tests.tiny import DEVICE

CONF = "conf"
PROMPT = "The cat sat on the mat, and the dog sat on the"  # repeats words: prompt lookup drafts too
NEW, K = 4, 2
NS = (200, 800, 3200)  # nested prefixes of one generation of NS[-1] rows
BATCH = 64
TAU = 1e-6  # (1st, 2nd) prefixes below this probability are pruned from the exact (2nd, 3rd) law
TOP = ("sampling.top_k=20", "sampling.top_p=0.9")

CASES = {  # name -> (drafter, extra overrides)
    "standard": ("drafter-llama-g", ()),
    "tli": ("drafter-llama-m", ("speculation.algorithm=tli",)),
    "slem": ("drafter-llama-m", ("speculation.algorithm=slem",)),
    "ngram": ("ngram", ()),
    "standard_top_k_top_p": ("drafter-llama-g", TOP),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target(tiny_zoo):
    return load_model(str(tiny_zoo["target-llama-g"]), dtype="float64", device=DEVICE)


@pytest.fixture(scope="module")
def build(target, tiny_zoo):
    """build(drafter or None, extra overrides, batch_size=, run_seed=, new=) -> Engine (sampling, T=1)."""
    drafters = {}

    def make(drafter, extra=(), *, batch_size=BATCH, run_seed=0, new=NEW):
        ov = ["target=hf", f"target.ref={tiny_zoo['target-llama-g']}", "sampling=sample",
              f"sampling.max_new_tokens={new}", "speculation.lookahead=constant", f"speculation.k={K}", *extra]
        if drafter == "ngram":
            ov.append("drafter=prompt-lookup")
        elif drafter:
            ov += ["drafter=hf", f"drafter.ref={tiny_zoo[drafter]}"]
        cfg = compose(ov, config_dir=CONF)
        assert cfg.sampling.temperature == 1.0
        if drafter is None:
            return Engine(target, sampling=cfg.sampling, batch_size=batch_size, run_seed=run_seed)
        if drafter != "ngram" and drafter not in drafters:
            drafters[drafter] = load_model(str(tiny_zoo[drafter]), dtype="float64", device=DEVICE)
        proposer, factory, algo = make_proposer(cfg, target, drafters.get(drafter))
        return Engine(target, proposer=proposer, policy_factory=factory, sampling=cfg.sampling,
                      batch_size=batch_size, run_seed=run_seed, algorithm=algo)

    return make


# ------------------------------------------------------------------------------------ the exact law


def next_probs(model, prompt: list[int], conts: torch.Tensor, params, chunk: int = 2048) -> torch.Tensor:
    """Processed next-token probabilities after prompt + each continuation: conts [M, m] -> [M, V].

    The prompt's KV cache is computed once per chunk and repeated over the chunk's rows."""
    T, m = len(prompt), conts.shape[1]
    out = []
    with torch.no_grad():
        for c in range(0, len(conts), chunk):
            dev = model.device  # the law is computed where the model lives, and kept on the CPU
            x = conts[c : c + chunk].to(dev)
            B = len(x)
            cache = model(input_ids=torch.tensor([prompt], device=dev), use_cache=True).past_key_values
            cache.batch_repeat_interleave(B)
            logits = model(input_ids=x, past_key_values=cache,
                           position_ids=torch.arange(T, T + m, device=dev).expand(B, m),
                           attention_mask=torch.ones(B, T + m, dtype=torch.long, device=dev)).logits[:, -1]  # [B, V]
            out.append(smp.probs(logits, params).cpu())
    return torch.cat(out)


@functools.lru_cache(maxsize=4)
def _exact_law(model, prompt: tuple[int, ...], eos: tuple[int, ...], params):
    prompt = list(prompt)
    with torch.no_grad():
        p1 = smp.probs(model(input_ids=torch.tensor([prompt], device=model.device)).logits[0, -1], params).cpu()  # [V]
    V = p1.shape[0]
    END = V
    live1 = torch.ones(V, dtype=torch.bool)
    live1[list(eos)] = False
    p2 = torch.zeros(V, V, dtype=torch.float64)
    x1s = torch.nonzero(live1 & (p1 > 0)).flatten()
    p2[x1s] = next_probs(model, prompt, x1s[:, None], params)  # [V, V]: p(x2 | x1)
    # the 2nd token, marginalised over the 1st
    law2 = torch.zeros(V + 1, dtype=torch.float64)
    law2[:V] = p1 @ p2
    law2[END] = p1[~live1].sum()
    # the (2nd, 3rd) pair
    law23 = torch.zeros(V + 1, V + 1, dtype=torch.float64)
    law23[END, END] = p1[~live1].sum()
    joint = p1[:, None] * p2  # [V, V]: p(x1, x2), zero rows for x1 = EOS
    law23[list(eos), END] = joint[:, list(eos)].sum(0)
    joint[:, list(eos)] = 0
    keep = joint >= TAU
    eps = float(joint[~keep].sum())
    pairs = torch.nonzero(keep)  # [M, 2]
    p3 = next_probs(model, prompt, pairs, params)  # [M, V]
    law23[:V, :V].index_add_(0, pairs[:, 1], joint[keep][:, None] * p3)
    return law2, law23, eps


def exact_law(target, params):
    """(law of the 2nd token [V+1], law of the (2nd, 3rd) pair [V+1, V+1], pruned mass)."""
    prompt = encode_row(target.tokenizer, make_row({"prompt": PROMPT}, "x"))
    return _exact_law(target.model, tuple(prompt), tuple(target.eos_token_ids), params)


def assert_q_is_the_drafting_law(drafts, V: int) -> None:
    """Each draft token must be drawn from the q row it reports (rejection sampling is exact only
    then). Per token x, sum_i (1[d_i = x] - q_i(x)) over all drafted positions i is a martingale:
    mean 0, variance sum_i q_i(x) (1 - q_i(x)). A q that is not renormalised over the shared vocabulary
    (TLI), that skips top-k/top-p, or that belongs to another position shows up as |z| >> 6."""
    ids = torch.tensor([t for d in drafts for t in d.ids])  # [M]
    Q = torch.cat([d.q.to("cpu", torch.float64) for d in drafts])  # [M, V]
    assert Q.shape == (len(ids), V)
    torch.testing.assert_close(Q.sum(-1), torch.ones(len(ids), dtype=torch.float64))
    assert bool((Q[torch.arange(len(ids)), ids] > 0).all())
    counts = torch.bincount(ids, minlength=V).to(torch.float64)
    mean, var = Q.sum(0), (Q * (1 - Q)).sum(0)
    # tokens expected fewer than 20 times are pooled: a normal z is meaningless for rare counts
    rare = mean < 20
    counts = torch.cat([counts[~rare], counts[rare].sum()[None]])
    mean = torch.cat([mean[~rare], mean[rare].sum()[None]])
    var = torch.cat([var[~rare], var[rare].sum()[None]])
    z = (counts - mean) / var.clamp_min(1e-12).sqrt()
    assert int((~rare).sum()) >= 5  # enough frequent tokens for the check to mean something
    assert float(z.abs().max()) < 6, (float(z.abs().max()), int(z.abs().argmax()))


def codes_of(results, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(2nd token [N], (2nd, 3rd) pair as x2 * (V+1) + x3 [N]) with END = V after EOS."""
    x = torch.tensor([(r.output_ids + [V, V])[1:3] for r in results])  # [N, 2]
    return x[:, 0], x[:, 0] * (V + 1) + x[:, 1]


# ------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", list(CASES))
def test_sampled_speculation_has_the_target_law(case, target, build, monkeypatch):
    drafter, extra = CASES[case]
    eng = build(drafter, extra)
    assert eng.algorithm == case.split("_")[0]
    drafts = []
    propose = eng.proposer.propose

    def spy(states, ks):  # keep every draft with its q rows
        out = propose(states, ks)
        drafts.extend(out)
        return out

    monkeypatch.setattr(eng.proposer, "propose", spy)
    rows = [make_row({"prompt": PROMPT}, f"s{i}") for i in range(NS[-1])]
    results, steps = eng.generate(rows)
    assert [r.status for r in results] == ["ok"] * len(rows)
    assert all(len(r.output_ids) == NEW or r.finish_reason == "eos" for r in results)
    # the drafts were really verified: some accepted, some rejected, and 2-token drafts among them
    drafted, accepted = sum(r.drafted for r in results), sum(r.accepted for r in results)
    assert 0 < accepted < drafted, (drafted, accepted)
    assert any(s.drafted == 2 and s.accepted >= 1 for s in steps)
    drafts = [d for d in drafts if d.ids]
    if eng.algorithm in ("standard", "tli"):
        assert_q_is_the_drafting_law(drafts, eng.vocab)
    else:  # deterministic proposals: exact-match verification
        assert all(d.q is None for d in drafts)
    params = smp.SamplingParams(eng.sampling.temperature, eng.sampling.top_p, eng.sampling.top_k)
    law2, law23, eps = exact_law(target, params)
    assert eps < 0.01
    x2, x23 = codes_of(results, eng.vocab)
    tv2, tv23 = tv_curve(x2, law2, NS), tv_curve(x23, law23, NS)
    print(f"\n{case}: drafted {drafted} accepted {accepted} eps {eps:.2e}  TV(x2) {['%.4f' % t for t in tv2]}"
          f"  TV(x2,x3) {['%.4f' % t for t in tv23]}  at N={NS}")
    assert_shrinks(tv2, law2, NS, what=f"{case} x2")
    # pruned mass: up to eps/2 of error in the computed TV, up to eps in the mean-TV bound
    assert_shrinks(tv23, law23, NS, what=f"{case} x2x3", slack=1.5 * eps)


# prompts whose continuations are far from deterministic, so that two seeds give two samples
SEED_PROMPTS = [PROMPT, "for i in range(10):\n    print(i)\nfor i in range(", "Hello world! Hello",
                "the cat and the dog and the"]
SEED_NEW = 10


def seed_rows(prefix: str = "d"):
    """8 rows: each prompt twice under different row_ids (different seeds), one with its own seed."""
    rows = [make_row({"prompt": p}, f"{prefix}{i}") for i, p in enumerate(SEED_PROMPTS * 2)]
    return rows + [make_row({"prompt": PROMPT, "seed": 1234}, f"{prefix}own")]


def outputs(results, prefix: str = "d") -> dict[str, list[int]]:
    assert all(r.status == "ok" for r in results), [r.error_message for r in results]
    return {r.row_id: r.output_ids for r in results if r.row_id.startswith(prefix)}


@pytest.mark.parametrize("case", ["target", "standard", "tli", "slem", "ngram"])
def test_sampled_output_depends_only_on_row_and_seed(case, build):
    drafter, extra = (None, ()) if case == "target" else CASES[case]
    rows = seed_rows()
    others = [make_row({"prompt": p}, f"o{i}") for i, p in enumerate(
        ["x", "import os\nimport sys\n\ndef main():\n    ", "The quick brown fox jumps", "café"])]
    one = build(drafter, extra, batch_size=1, new=SEED_NEW).generate(rows)[0]
    eight = build(drafter, extra, batch_size=8, new=SEED_NEW).generate(rows)[0]
    mixed = build(drafter, extra, batch_size=3, new=SEED_NEW).generate(others[:2] + rows[::-1] + others[2:])[0]
    a = outputs(one)
    assert all(len(v) == SEED_NEW or v[-1] == 0 for v in a.values())
    assert outputs(eight) == a
    assert outputs(mixed) == a
    if case != "target":
        assert sum(r.drafted for r in one) > 0
    # the same prompt under another row_id is another sample; another run seed changes every row
    # but the one with its own seed
    assert sum(a[f"d{i}"] != a[f"d{i + 4}"] for i in range(4)) >= 3
    reseeded = outputs(build(drafter, extra, batch_size=8, run_seed=1, new=SEED_NEW).generate(rows)[0])
    assert reseeded["down"] == a["down"]
    assert sum(reseeded[k] != a[k] for k in a if k != "down") >= 7


def test_row_own_seed_fixes_the_sample_whatever_the_row_id(build):
    rows = [make_row({"prompt": PROMPT, "seed": 77}, rid) for rid in ("a", "b", "zzz")]
    res = build("drafter-llama-g", (), batch_size=2, new=SEED_NEW).generate(rows)[0]
    assert res[0].output_ids == res[1].output_ids == res[2].output_ids
    assert [r.seed for r in res] == [77, 77, 77]


@pytest.mark.parametrize("case", ["slem", "ngram"])
def test_exact_match_speculation_reproduces_target_only_samples(case, build):
    """Exact-match verification draws one uniform per emitted token, as target-only decoding does,
    so with the same seeds it must give the very same samples (not just the same law)."""
    rows = [make_row({"prompt": p}, f"e{i}") for i, p in enumerate(SEED_PROMPTS * 3)]
    base = outputs(build(None, (), batch_size=8, new=16).generate(rows)[0], "e")
    res = build(*CASES[case], batch_size=8, new=16).generate(rows)[0]
    assert outputs(res, "e") == base
    assert 0 < sum(r.accepted for r in res) < sum(r.drafted for r in res)
