"""The engine: target-only and speculative greedy decoding equal transformers' greedy generate, token
for token, for every proposer and lookahead policy, at batch sizes 1, 3 and 8 with ragged prompts."""
from __future__ import annotations

import pytest

from speccore.config import compose
from speccore.engine import Engine
from speccore.models import load_model
from speccore.rows import make_row
from speccore.speculate import make_proposer
from tests.tiny import DEVICE, target_greedy

PROMPTS = [
    "def add(a, b):",
    "The cat",
    "import os\nimport sys\n\ndef main():\n    ",
    "x",
    "café naïve résumé is",
    "for i in range(10):\n    print(i)\nfor i in range(",
    "class Counter:\n    def __init__(self):\n        self.n = 0\n\n    def add(self, k):\n        ",
    "# compute the mean\ndef mean(values):\n    return sum(values) / len(values)\n\n# compute the",
    "Hello world! Hello",
]
NEW = 40
CONF = "conf"


@pytest.fixture(scope="module")
def target(tiny_zoo):
    return load_model(str(tiny_zoo["target-llama-g"]), dtype="float64", device=DEVICE)


@pytest.fixture(scope="module")
def reference(tiny_zoo, target):
    """transformers' greedy generate, one prompt at a time (the ground truth)."""
    out = {}
    for i, p in enumerate(PROMPTS):
        ids = target.tokenizer(p)["input_ids"]
        out[f"r{i}"] = target_greedy(tiny_zoo["target-llama-g"], ids, NEW)[len(ids):]
    return out


def rows():
    return [make_row({"prompt": p}, f"r{i}") for i, p in enumerate(PROMPTS)]


def engine_for(target, tiny_zoo, drafter: str | None, policy: str, batch_size: int, extra=()):
    ov = ["target=hf", f"target.ref={tiny_zoo['target-llama-g']}", f"sampling.max_new_tokens={NEW}",
          f"speculation.lookahead={policy}", *extra]
    if drafter == "ngram":
        ov.append("drafter=prompt-lookup")
    elif drafter:
        ov += ["drafter=hf", f"drafter.ref={tiny_zoo[drafter]}"]
    cfg = compose(ov, config_dir=CONF)
    if drafter is None:
        return Engine(target, sampling=cfg.sampling, batch_size=batch_size), cfg
    dr = load_model(str(tiny_zoo[drafter]), dtype="float64", device=DEVICE) if drafter != "ngram" else None
    proposer, factory, algo = make_proposer(cfg, target, dr)
    return Engine(target, proposer=proposer, policy_factory=factory, sampling=cfg.sampling,
                  batch_size=batch_size, algorithm=algo), cfg


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_target_only_greedy_equals_transformers(target, tiny_zoo, reference, batch_size):
    eng, _ = engine_for(target, tiny_zoo, None, "heuristic", batch_size)
    results, steps = eng.generate(rows())
    assert [r.status for r in results] == ["ok"] * len(PROMPTS)
    assert {r.row_id: r.output_ids for r in results} == reference
    assert all(s.k == 0 and s.accepted == 0 for s in steps)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("policy", ["constant", "heuristic", "confidence", "cost"])
@pytest.mark.parametrize("drafter,algorithm,extra", [
    ("drafter-llama-g", "standard", ()),  # same vocab (a noisy copy of the target)
    ("drafter-llama-m", "slem", ()),  # cross vocab, Metaspace BPE with byte fallback
    ("drafter-llama-m", "tli", ("speculation.algorithm=tli",)),  # cross vocab, shared tokens only
    ("drafter-llama-char", "slrs", ("speculation.algorithm=slrs",)),  # char-level drafter
    ("ngram", "ngram", ()),  # prompt lookup
])
def test_speculative_greedy_is_exact(target, tiny_zoo, reference, drafter, algorithm, extra, policy, batch_size):
    eng, _ = engine_for(target, tiny_zoo, drafter, policy, batch_size, extra)
    assert eng.algorithm == algorithm
    results, steps = eng.generate(rows())
    assert [r.status for r in results] == ["ok"] * len(PROMPTS), [r.error_message for r in results]
    assert {r.row_id: r.output_ids for r in results} == reference
    # the statistics add up: per-row totals equal the sum of the row's steps
    for r in results:
        mine = [s for s in steps if s.row_id == r.row_id]
        assert r.steps == len(mine) and r.accepted == sum(s.accepted for s in mine)
        assert r.drafted == sum(s.drafted for s in mine) and all(s.accepted <= s.drafted for s in mine)


def test_speculation_really_drafts_and_accepts(target, tiny_zoo):
    """Guard against a proposer that silently drafts nothing (which would also be 'exact')."""
    for drafter in ("drafter-llama-g", "drafter-llama-m", "ngram"):
        eng, _ = engine_for(target, tiny_zoo, drafter, "constant", 4)
        results, _ = eng.generate(rows())
        drafted = sum(r.drafted for r in results)
        accepted = sum(r.accepted for r in results)
        assert drafted > 50 and 0 < accepted < drafted, (drafter, drafted, accepted)


def test_tli_greedy_is_exact(target, tiny_zoo, reference):
    eng, _ = engine_for(target, tiny_zoo, "drafter-llama-m", "constant", 3, ["speculation.algorithm=tli"])
    assert eng.algorithm == "tli"
    results, _ = eng.generate(rows())
    assert {r.row_id: r.output_ids for r in results} == reference
    assert sum(r.accepted for r in results) > 0


def test_stop_strings_eos_and_length(target, tiny_zoo, reference):
    ref = target.tokenizer.decode(reference["r0"], skip_special_tokens=True)
    stop = ref[5:8]
    assert stop and stop in ref
    eng, _ = engine_for(target, tiny_zoo, "drafter-llama-g", "constant", 2)
    rs = [make_row({"prompt": PROMPTS[0], "stop": [stop]}, "s"),
          make_row({"prompt": PROMPTS[0], "max_new_tokens": 3}, "m")]
    results, _ = eng.generate(rs)
    assert results[0].finish_reason == "stop" and results[0].output_text == ref[: ref.index(stop)]
    assert results[1].finish_reason == "length" and results[1].output_ids == reference["r0"][:3]


def test_bad_rows_error_and_others_land(target, tiny_zoo, reference):
    eng, _ = engine_for(target, tiny_zoo, "drafter-llama-g", "heuristic", 3)
    rs = [make_row({"prompt": ""}, "empty"), make_row({"prompt": 7}, "int"),
          make_row({"prompt": b"\xff\xfe"}, "utf8"), make_row({"prompt": PROMPTS[0]}, "r0"),
          make_row({"prompt": "word " * 600}, "long")]
    results, _ = eng.generate(rs)
    by = {r.row_id: r for r in results}
    assert [r.row_id for r in results] == ["empty", "int", "utf8", "r0", "long"]
    assert (by["empty"].status, by["empty"].error_type) == ("error", "invalid_prompt")
    assert (by["int"].status, by["int"].error_type) == ("error", "invalid_prompt")
    assert (by["utf8"].status, by["utf8"].error_type) == ("error", "invalid_utf8")
    assert (by["long"].status, by["long"].error_type) == ("error", "prompt_too_long")
    assert "exceed the target's context of 512" in by["long"].error_message
    assert by["r0"].status == "ok" and by["r0"].output_ids == reference["r0"]


def test_special_tokens_in_prompt_stay_text(target):
    tok = target.tokenizer
    text = "a <|endoftext|> b"
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    from speccore.prompts import encode_row

    assert eos not in encode_row(tok, make_row({"prompt": text}, "x"))
    assert eos in encode_row(tok, make_row({"prompt": text}, "x"), allow_special=True)
    chat = make_row({"messages": [{"role": "user", "content": "hi <|im_end|> there"}]}, "c")
    ids = encode_row(tok, chat)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # the template's own turn markers are control tokens; the user's copy of one is not
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi  there"}], tokenize=False,
                                       add_generation_prompt=True)
    assert ids.count(im_end) == rendered.count("<|im_end|>")


def test_exception_in_one_row_does_not_take_the_batch(target, tiny_zoo, reference, monkeypatch):
    eng, _ = engine_for(target, tiny_zoo, None, "heuristic", 4)
    real = eng._emit

    def boom(st, tok):
        if st.row.row_id == "r1":
            raise RuntimeError("injected failure")
        return real(st, tok)

    monkeypatch.setattr(eng, "_emit", boom)
    results, _ = eng.generate(rows()[:4])
    by = {r.row_id: r for r in results}
    assert by["r1"].status == "error" and by["r1"].error_type == "generation_error"
    assert "injected failure" in by["r1"].error_message
    for rid in ("r0", "r2", "r3"):
        assert by[rid].status == "ok" and by[rid].output_ids == reference[rid]


def test_cost_policy_under_sampling_does_not_follow_the_clock(target, tiny_zoo, monkeypatch):
    """Under sampling, k decides which uniforms a standard row draws: costs measured from a noisy
    clock must not leak into the samples (same seeds -> same output, whatever the timings)."""
    import itertools as it
    import random

    from speccore import engine as engine_mod

    outs = []
    for seed, scale in ((1, 1.0), (2, 50.0)):
        rng = random.Random(seed)
        clock = it.accumulate(rng.uniform(0.001, scale) for _ in it.count())
        monkeypatch.setattr(engine_mod.time, "perf_counter", lambda: next(clock))
        eng, _ = engine_for(target, tiny_zoo, "drafter-llama-g", "cost", 4, ["sampling=sample"])
        results, _ = eng.generate(rows())
        outs.append([r.output_ids for r in results])
    assert outs[0] == outs[1]


def test_draft_loop_tells_a_catch_up_from_the_cost_of_drafting():
    """The first forward of a draft may feed a whole prompt (a row's first draft, or the tokens of plain
    steps): draft_loop reports its time beyond a steady forward, or None when nothing steady was timed."""
    import time

    import torch

    from speccore.draft_model import draft_loop

    class Lm:  # 40 ms per forward, and 10 ms more per fed token beyond 2
        def forward(self, cur, last_only):
            time.sleep(0.04 + 0.01 * max(0, max(map(len, cur)) - 2))
            return torch.zeros(len(cur), 5)

    class St:
        class policy:
            should_continue = staticmethod(lambda i, top: True)

    def run(feeds, ks):
        return draft_loop(Lm(), feeds, ks, [St()] * len(feeds), lambda b, lg: (1, None, 1.0))

    toks, _, reasons, catch_up = run([[7] * 32, [7]], [3, 3])  # 30 tokens of catch-up, then 2 steady forwards
    assert toks == [[1, 1, 1]] * 2 and reasons == ["k", "k"]
    assert 0.2 < catch_up < 0.45
    assert run([[7, 7], [7]], [3, 1])[3] == 0.0  # a steady feed: nothing to take out
    assert run([[7] * 32], [1])[3] is None  # one forward, part catch-up, part draft: no steady time to compare


def test_cost_model_learns_c_without_the_drafters_catch_up_and_the_pairs_acceptance(target, tiny_zoo,
                                                                                   reference, monkeypatch):
    """A cost-aware row's first draft and every probe feed the drafter a catch-up (its prompt, or the plain
    steps' tokens). Learnt as a cost per drafted token, it made c look several times too dear, and new rows
    went plain on a drafter that pays. The engine also keeps the pair's acceptance for new rows' prior."""
    import time

    from speccore.decoder import CachedLM

    eng, _ = engine_for(target, tiny_zoo, "drafter-llama-g", "cost", 1)
    drafter = eng.proposer.drafter.model
    forward = CachedLM.forward

    def slow_catch_up(self, new_ids, last_only=False):
        if self.model is drafter and max(map(len, new_ids)) > 2:
            time.sleep(0.3)
        elif self.model is not drafter:  # a target dearer than its drafter, as real pairs are: drafting pays
            time.sleep(0.03)
        return forward(self, new_ids, last_only)

    monkeypatch.setattr(CachedLM, "forward", slow_catch_up)
    results, steps = eng.generate(rows())
    assert {r.row_id: r.output_ids for r in results} == reference
    cm = eng.policy_factory.cost_model
    assert sum(s.drafted for s in steps) > 0 and cm.c * cm.snapshot()["t1_s"] < 0.05  # seconds per drafted token
    assert cm.snapshot()["catch_up_cell_s"] > 0.3 / 40  # learnt on its own: what the next probe's catch-up costs
    s = n = 0.0
    for st in steps:
        if st.drafted:
            s, n = 0.99 * s + st.accepted, 0.99 * n + st.accepted + (st.accepted < st.drafted)
    assert cm.pair_alpha == pytest.approx((s + 4) / (n + 8))  # smoothed by 8 trials at 0.5


def test_engine_measures_costs_at_each_steps_rows_per_forward(target, tiny_zoo, reference):
    eng, _ = engine_for(target, tiny_zoo, "drafter-llama-g", "cost", 4)
    results, steps = eng.generate(rows())
    assert {r.row_id: r.output_ids for r in results} == reference
    cm = eng.policy_factory.cost_model
    sizes = {s.batch_size for s in steps}  # 4, then fewer as rows finish
    assert sizes == set(cm.snapshot()["batch_sizes_measured"]) and max(sizes) == 4
    # the first batch meets each of its sizes first: that forward is plain, until the size's own step is timed
    first_batch = {r.row_id for r in results if r.batch == 0}
    first = {}
    for s in steps:
        if s.row_id in first_batch and s.batch_size > 1 and first.setdefault(s.batch_size, s.step) == s.step:
            assert s.drafted == 0, s
    assert len(first) > 1 and cm.snapshot()["prefill_cell_s"] > 0  # the prompt rate: it predicts unmeasured verifies


@pytest.mark.parametrize("drafter,extra", [("drafter-llama-g", ()), ("drafter-llama-m", ()),
                                           ("drafter-llama-char", ("speculation.algorithm=slrs",))])
def test_draft_loops_show_the_policy_every_drafted_tokens_confidence(target, tiny_zoo, reference, drafter, extra):
    """The cost stop's calibration pairs each drafted token's confidence with its verdict, so a draft loop
    reports the last token of a full draft too (it used to stop at k before asking)."""
    from speccore.lookahead import Constant

    seen: list[list[int]] = []

    class Spy(Constant):
        def propose_k(self):
            seen.append([])
            return super().propose_k()

        def should_continue(self, i, top):
            assert 0.0 <= top <= 1.0
            seen[-1].append(i)
            return True

    eng, _ = engine_for(target, tiny_zoo, drafter, "constant", 1, extra=("speculation.k=3", *extra))
    eng.policy_factory = lambda: Spy(3)
    results, steps = eng.generate(rows())
    assert {r.row_id: r.output_ids for r in results} == reference
    drafted = [s for s in seen if s]
    assert drafted and all(s == list(range(1, len(s) + 1)) for s in drafted)
    assert max(map(len, drafted)) == 3


@pytest.mark.parametrize("drafter,confident", [("drafter-llama-g", True), ("drafter-llama-m", True), ("ngram", False)])
def test_cost_aware_rows_use_the_drafters_confidence_from_their_first_step(target, tiny_zoo, reference,
                                                                           drafter, confident, monkeypatch):
    """A model drafter reports its confidence (the proposer says so up front), so a cost-aware row's very
    first draft already runs to k_max and stops at the first unsure token. Found out only at the first
    should_continue, every row's first draft went to k* with no stop (8 drafted, 0 accepted, on a real pair).
    Prompt lookup has no confidence: its drafts stop at the cost model's k."""
    import json
    import time

    from speccore.decoder import CachedLM

    eng, cfg = engine_for(target, tiny_zoo, drafter, "cost", 1)
    assert getattr(eng.proposer, "reports_confidence", False) is confident
    forward = CachedLM.forward

    def slow_target(self, new_ids, last_only=False):  # a target dearer than its drafter: drafting pays
        if self.model is target.model:
            time.sleep(0.02)
        return forward(self, new_ids, last_only)

    monkeypatch.setattr(CachedLM, "forward", slow_target)
    results, steps = eng.generate(rows())
    assert {r.row_id: r.output_ids for r in results} == reference
    firsts = {}
    for s in steps:
        d = json.loads(s.decision)
        if d.get("reason") in ("argmax", "argmax+confidence", "first_token", "probe"):
            firsts.setdefault(s.row_id, d)
    assert len(firsts) >= 3
    for d in firsts.values():
        if confident:
            assert d["k"] == cfg.speculation.k_max and d["threshold"] == cfg.speculation.confidence_threshold, d
        else:
            assert "threshold" not in d and d["k"] < cfg.speculation.k_max, d
