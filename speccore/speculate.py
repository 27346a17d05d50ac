"""Choosing the speculative algorithm for a (target, drafter) pair, and refusing pairs that cannot work.

auto: same vocabulary -> standard; otherwise SLEM for greedy and TLI for sampling. "Same vocabulary"
means the same token strings at the same ids (vocab.same_vocab), not an equal vocab_size: Qwen pads its
embedding matrix, so two Qwen sizes share a vocabulary while their vocab_size may differ.
Every refusal happens here, at configuration time, with the reason.
"""
from __future__ import annotations

from functools import partial

from .config import ConfigError, RunConfig
from .lookahead import CostModel, make_policy

# Texts a cross-vocab drafter must carry through its own tokens and back unchanged (SLEM/TLI).
ROUND_TRIP_PROBES = ["def f(x):\n    return x + 1\n", "Hello, world! It's 42.", "  indented\ttab", "café naïve"]
MIN_TLI_OVERLAP = 64


def policy_factory(cfg: RunConfig):
    s = cfg.speculation
    if s.lookahead == "constant":
        return partial(make_policy, "constant", k=s.k)
    if s.lookahead == "heuristic":
        return partial(make_policy, "heuristic", k0=s.k, k_max=s.k_max)
    if s.lookahead == "confidence":
        return partial(make_policy, "confidence", k_max=s.k_max, threshold=s.confidence_threshold)
    # One cost model per engine, fed once per batched step by the engine (rows of a step share its
    # timings, and the verify cost is set by the batch's longest draft, not by each row's own k).
    shared = CostModel()
    factory = partial(make_policy, "cost", k_max=s.k_max, cost_model=shared, learn_costs=False,
                      confidence_threshold=s.confidence_threshold)
    factory.cost_model = shared
    return factory


def choose_algorithm(cfg: RunConfig, target, drafter) -> str:
    from .vocab import is_char_level, max_token_bytes, same_vocab

    algo = cfg.speculation.algorithm
    if cfg.drafter.kind == "ngram":
        if algo not in ("auto", "ngram"):
            raise ConfigError(f"drafter={cfg.drafter.name} is prompt lookup; speculation.algorithm must be auto or ngram")
        return "ngram"
    if algo == "ngram":
        raise ConfigError("speculation.algorithm=ngram needs drafter=prompt-lookup")
    same = same_vocab(target.tokenizer, drafter.tokenizer)
    greedy = cfg.sampling.temperature == 0.0
    if algo == "auto":
        algo = "standard" if same else ("slem" if greedy else "tli")
    if algo == "standard" and not same:
        raise ConfigError(f"speculation.algorithm=standard needs a drafter with the target's vocabulary; "
                          f"{cfg.drafter.name} and {cfg.target.name} differ (use slem or tli)")
    if algo == "slrs":
        if not is_char_level(drafter.tokenizer):
            raise ConfigError(
                f"speculation.algorithm=slrs is only practical for byte- or char-level drafters (its cost grows "
                f"with token length); {cfg.drafter.name} has tokens of up to {max_token_bytes(drafter.tokenizer)} "
                f"bytes. Use slem (greedy) or tli (sampling).")
    return algo


def make_proposer(cfg: RunConfig, target, drafter):
    """(proposer, policy factory, algorithm name) for the configured pair; ConfigError if unsupported."""
    algo = choose_algorithm(cfg, target, drafter)
    factory = policy_factory(cfg)
    V = target.model.get_output_embeddings().weight.shape[0]
    if algo == "ngram":
        from .ngram import NgramProposer

        return NgramProposer(cfg.drafter.ngram_max, cfg.drafter.ngram_min), factory, algo
    if algo == "standard":
        from .draft_model import DraftModelProposer

        return DraftModelProposer(drafter, V), factory, algo
    from .crossvocab import SlemProposer, TliProposer, pair_round_trips

    why = pair_round_trips(target.tokenizer, drafter.tokenizer, ROUND_TRIP_PROBES)
    if why:
        raise ConfigError(f"drafter {cfg.drafter.name} cannot round-trip the target's text ({why}); "
                          f"cross-vocab speculation would propose wrong text")
    allow = cfg.dataset.allow_special_tokens
    if algo == "slem":
        return SlemProposer(drafter, target.tokenizer, allow), factory, algo
    if algo == "slrs":
        from .slrs import SlrsProposer

        eos = target.tokenizer.eos_token_id
        eos = eos if eos in target.eos_token_ids else min(target.eos_token_ids, default=-1)
        return SlrsProposer(drafter, target.tokenizer, V, eos, allow), factory, algo
    from .vocab import intersection_map

    vmap = intersection_map(drafter.tokenizer, target.tokenizer)
    if vmap.n_overlap < MIN_TLI_OVERLAP:
        raise ConfigError(f"TLI needs shared tokens; {cfg.drafter.name} and {cfg.target.name} share only "
                          f"{vmap.n_overlap} (use slem)")
    return TliProposer(drafter, target.tokenizer, vmap, V, allow), factory, algo
