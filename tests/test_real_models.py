"""Integration tests on real packaged models (fp32), pulled into the user's model cache on first use.

They use the real cache (not the per-session test cache) so that CI runs on one machine convert each
model once. Kept small: the 0.5B Qwen as target, three HumanEval prompts, a few dozen new tokens.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from speccore import models
from speccore.config import compose
from speccore.engine import Engine
from speccore.prompts import encode_row
from speccore.sources import SourceSpec, iter_rows
from speccore.speculate import make_proposer

pytestmark = pytest.mark.slow
REAL_CACHE = models.cache_dir()  # read at import, before the session fixture points it at a tmp dir
TARGET = "qwen2.5-coder-0.5b-instruct"
NEW = 48


@pytest.fixture(scope="module")
def target():
    return models.load_model(TARGET, cache=REAL_CACHE)


@pytest.fixture(scope="module")
def humaneval3():
    return list(itertools.islice(iter_rows(SourceSpec(kind="humaneval")), 3))


@pytest.fixture(scope="module")
def hf_reference(target, humaneval3):
    """transformers' own greedy generate, one prompt at a time."""
    out = {}
    for row in humaneval3:
        ids = torch.tensor([encode_row(target.tokenizer, row)])
        with torch.inference_mode():
            gen = target.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=NEW, eos_token_id=list(target.eos_token_ids))
        out[row.row_id] = gen[0, ids.shape[1]:].tolist()
    return out


def test_qwen_eos_includes_endoftext(target):
    tok = target.tokenizer
    assert tok.convert_tokens_to_ids("<|endoftext|>") in target.eos_token_ids
    assert tok.convert_tokens_to_ids("<|im_end|>") in target.eos_token_ids


def test_target_only_equals_transformers_generate(target, humaneval3, hf_reference):
    cfg = compose(["drafter=none", f"sampling.max_new_tokens={NEW}"], config_dir="conf")
    results, _ = Engine(target, sampling=cfg.sampling, batch_size=3).generate(humaneval3)
    assert [r.row_id for r in results] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert {r.row_id: r.output_ids for r in results} == hf_reference
    assert all(r.output_text.strip() for r in results)


@pytest.mark.parametrize("drafter,algorithm", [
    ("smollm2-135m-instruct", "slem"),  # byte-level BPE, another vocabulary
    ("gemma-3-270m", "slem"),  # metaspace vocabulary of 262k tokens
])
def test_cross_vocab_speculation_equals_target_alone(target, humaneval3, hf_reference, drafter, algorithm):
    dr = models.load_model(drafter, cache=REAL_CACHE)
    cfg = compose([f"sampling.max_new_tokens={NEW}", "speculation.lookahead=heuristic"], config_dir="conf")
    proposer, factory, algo = make_proposer(cfg, target, dr)
    assert algo == algorithm
    eng = Engine(target, proposer=proposer, policy_factory=factory, sampling=cfg.sampling, batch_size=2,
                 algorithm=algo)
    results, steps = eng.generate(humaneval3)
    assert {r.row_id: r.output_ids for r in results} == hf_reference
    accepted = sum(r.accepted for r in results)
    assert accepted > 0.3 * sum(r.drafted for r in results), "the drafter should often be right on code"
    assert all(r.fallback is None for r in results)
