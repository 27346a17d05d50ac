"""The config schema: Hydra composition into one frozen RunConfig, with clear errors at start."""
from __future__ import annotations

import dataclasses

import pytest

from speccore.config import ConfigError, compose, config_hash, from_dict


def test_default_composition_is_the_speculative_default():
    cfg = compose([], config_dir="conf")
    assert cfg.target.ref == "qwen2.5-coder-1.5b-instruct"
    assert (cfg.drafter.kind, cfg.drafter.ref) == ("model", "smollm2-135m-instruct")
    assert cfg.dataset.kind == "humaneval" and cfg.dataset.limit == 4
    assert cfg.sampling.temperature == 0.0 and cfg.hardware.dtype == "float32"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.seed = 3


@pytest.mark.parametrize("override,message", [
    ("sampling.temperature=hot", "sampling.temperature: expected a number, got 'hot'"),
    ("+sampling.foo=1", "sampling: unknown key(s) ['foo']"),
    ("speculation.lookahead=magic", "speculation.lookahead must be one of"),
    ("sampling.top_p=0", "sampling.top_p must be in (0, 1]"),
    ("run.run_id=../../etc", "may only hold letters, digits"),
    ("runner.batch_size=0", "batch_size/shard_size must be >= 1"),
])
def test_bad_overrides_fail_at_start(override, message):
    with pytest.raises(ConfigError) as e:
        compose([override], config_dir="conf")
    assert message in str(e.value)


def test_overrides_and_groups():
    cfg = compose(["drafter=prompt-lookup", "dataset=sharegpt", "dataset.limit=2", "sampling=sample",
                   "sampling.stop=[END]", "runner.batch_size=8"], config_dir="conf")
    assert cfg.drafter.kind == "ngram" and cfg.dataset.kind == "sharegpt" and cfg.dataset.limit == 2
    assert cfg.sampling.temperature == 1.0 and cfg.sampling.stop == ("END",) and cfg.runner.batch_size == 8


def test_config_hash_tracks_content_not_placement():
    base = compose([], config_dir="conf")
    assert config_hash(base) == config_hash(compose(["run.output_dir=/tmp/x", "runner.max_workers=3",
                                                     "run.run_id=abc"], config_dir="conf"))
    assert config_hash(base) != config_hash(compose(["sampling.max_new_tokens=7"], config_dir="conf"))
    assert from_dict(base.to_dict()) == base
