"""bench/profile.py: py-spy's collapsed stacks sorted by who runs and what, and a sampled run on the tiny zoo."""
from __future__ import annotations

import pytest

from bench.profile import DRAFTING, OTHER, TARGET, main, read_raw, spy_path

LOAD = "_run_module_as_main (<frozen runpy>:198);main (bench/profile.py:190);load_model (speccore/models.py:80)"
STEP = ("_run_module_as_main (<frozen runpy>:198);run (bench/profile.py:170);Engine.generate (speccore/engine.py:197);"
        "Engine._run_batch (speccore/engine.py:276)")
FWD = "CachedLM.forward (speccore/decoder.py:63);Module._call_impl (torch/nn/modules/module.py:1789)"
DRAFT = "DraftModelProposer.propose (speccore/draft_model.py:127);draft_loop (speccore/draft_model.py:60)"
SLEM = "SlemProposer.propose (/usr/lib/python3.11/site-packages/speccore/crossvocab.py:175)"
RAW = {  # stack below STEP (None: a loading stack) -> samples
    None: 50,
    f"{FWD};Qwen2MLP.forward (transformers/models/qwen2/modeling_qwen2.py:60);PackedLinear.forward "
    f"(speccore/prepack.py:113);PackedLinear._run (speccore/prepack.py:116)": 30,
    f"{FWD};Qwen2Attention.forward (transformers/models/qwen2/modeling_qwen2.py:200);sdpa_attention_forward "
    f"(transformers/integrations/sdpa_attention.py:90)": 5,
    f"{FWD};Qwen2RMSNorm.forward (transformers/models/qwen2/modeling_qwen2.py:250)": 5,
    f"{DRAFT};{FWD};Int8Linear._run (speccore/prepack.py:158)": 20,
    f"{DRAFT};DraftModelProposer.propose.<locals>.pick (speccore/draft_model.py:123);pick_from "
    f"(speccore/draft_model.py:96)": 4,
    f"{DRAFT};RowState.should_continue (speccore/engine.py:103);CostAware.should_continue "
    f"(/work/main/speccore/lookahead.py:740)": 2,  # an editable install run from elsewhere: absolute paths
    "RowState.propose_k (speccore/engine.py:100);CostAware.propose_k (speccore/lookahead.py:660)": 3,
    f"{SLEM};CrossVocabProposer._sync_view (speccore/crossvocab.py:160);TextCodec.encode "
    f"(speccore/crossvocab.py:89)": 6,
    f"{SLEM};SlemProposer.pick (speccore/crossvocab.py:200)": 1,
    f"{SLEM}": 1,
    "verify_row (speccore/verify.py:40)": 2,
    "Engine._argmax (speccore/engine.py:347)": 1,
    "CachedLM.keep (speccore/decoder.py:85)": 1,
    "Engine._emit (speccore/engine.py:380)": 2,
}


def _raw_file(tmp_path):
    lines = [f"{LOAD if below is None else STEP + ';' + below} {n}" for below, n in RAW.items()]
    path = tmp_path / "raw.txt"
    path.write_text("\n".join(lines) + "\n\n")
    return path


def test_samples_are_sorted_by_who_runs_and_what(tmp_path):
    assert read_raw(_raw_file(tmp_path)) == {
        (TARGET, "forward: linear layers"): 30,
        (TARGET, "forward: attention"): 5,
        (TARGET, "forward: the rest (norms, rotary, KV cache, modules' Python)"): 5,
        (DRAFTING, "forward: linear layers"): 20,
        (DRAFTING, "drafter pick (softmax, argmax)"): 5,
        (DRAFTING, "lookahead policy"): 2,
        (TARGET, "lookahead policy"): 3,  # propose_k is the policy's, not the proposer's
        (DRAFTING, "cross-vocab text (decode, re-encode, id maps)"): 6,
        (DRAFTING, OTHER): 1,  # the proposer's own lines
        (TARGET, "verification (argmax, acceptance)"): 3,
        (TARGET, "cache bookkeeping (keep, sync, rollback)"): 1,
        (TARGET, OTHER): 2,
    }


def test_summary_prints_each_share_of_the_decodings_samples(tmp_path, capsys):
    main(["summary", str(_raw_file(tmp_path)), "--rate", "10"])
    out = capsys.readouterr().out
    assert f"| **{TARGET}** | all | 49 | **59.0%** |" in out  # 83 samples inside Engine._run_batch, not the 50 loading
    assert f"| **{DRAFTING}** | all | 34 | **41.0%** |" in out
    assert f"| {TARGET} | forward: linear layers | 30 | 36.1% |" in out
    assert f"| {DRAFTING} | cross-vocab text (decode, re-encode, id maps) | 6 | 7.2% |" in out
    assert "83 samples in Engine._run_batch (about 8 s at 10 Hz)" in out


def test_a_profile_without_decoding_says_so(tmp_path, capsys):
    raw = tmp_path / "raw.txt"
    raw.write_text(f"{LOAD} 7\n")
    main(["summary", str(raw)])
    assert capsys.readouterr().out.strip() == "no samples inside Engine._run_batch"


@pytest.mark.skipif(spy_path() is None, reason="py-spy is not installed")
def test_run_samples_the_counted_decoding_of_one_configuration(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "tiny.txt"
    main(["run", "--target", str(tiny_zoo["target-llama-g"]), "--pair", str(tiny_zoo["drafter-llama-g"]),
          "--policy", "constant", "--n", "1", "--max-new-tokens", "24", "--dtype", "float64", "--threads", "1",
          "--rate", "1000", "--out", str(out)])
    text = capsys.readouterr().out
    counts = read_raw(out)
    assert "1 prompts, " in text and "| **drafting** | all |" in text
    # what a tiny model's ~0.1 s of decoding is sampled at varies; that it was sampled, and only there, does not
    assert sum(counts.values()) > 0 and {who for who, _ in counts} <= {TARGET, DRAFTING}
