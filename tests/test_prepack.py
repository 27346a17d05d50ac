"""oneDNN pre-packed linears: what gets packed, what it costs in memory, and that outputs stay exact.

fp32 copies of the tiny zoo models (packing is an fp32 CPU path; the fp64 zoo is left alone).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from speccore import prepack
from speccore.config import compose
from speccore.engine import Engine
from speccore.models import load_model
from speccore.rows import make_row
from speccore.speculate import make_proposer

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not prepack.available(), reason="this torch build has no oneDNN")]

PROMPTS = ["def add(a, b):", "def fibonacci(n):\n    ", "# compute the mean\ndef mean(values):\n    return"]
NEW = 32


def _linears(model):
    return [m for m in model.modules() if type(m) is nn.Linear]


def _packed(model):
    return [m for m in model.modules() if isinstance(m, prepack.PackedLinear)]


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_packs_every_untied_fp32_linear_and_drops_the_dense_weight(tiny_zoo):
    lm = load_model(str(tiny_zoo["target-llama-g"]), dtype="float32")  # untied head
    n_lin = len(_linears(lm.model))
    dense_weights = sum(m.weight.numel() * 4 for m in _linears(lm.model))
    before = _param_bytes(lm.model)
    assert prepack.prepack(lm.model) == n_lin
    assert _linears(lm.model) == [] and len(_packed(lm.model)) == n_lin
    assert all(m.dense is None for m in _packed(lm.model))
    assert _param_bytes(lm.model) == before - dense_weights  # the packed copy replaces the dense one


def test_tied_head_and_non_fp32_models_stay_as_they_are(tiny_zoo):
    tied = load_model(str(tiny_zoo["target-qwen-g"]), dtype="float32")  # lm_head shares the embedding
    head = tied.model.lm_head
    assert tied.model.lm_head.weight is tied.model.model.embed_tokens.weight
    n_lin = len(_linears(tied.model))
    assert prepack.prepack(tied.model) == n_lin - 1
    assert _linears(tied.model) == [head] and tied.model.lm_head is head  # all but the tied head were packed
    f64 = load_model(str(tiny_zoo["target-llama-g"]), dtype="float64")
    assert prepack.prepack(f64.model) == 0 and _packed(f64.model) == []


def test_logits_match_the_dense_path_and_dense_linears_switches_back(tiny_zoo):
    lm = load_model(str(tiny_zoo["target-llama-g"]), dtype="float32")
    ids = torch.tensor([lm.tokenizer("def fibonacci(n):\n    return")["input_ids"]])
    with torch.inference_mode():
        dense = lm.model(ids).logits
        prepack.prepack(lm.model, keep_dense=True)
        packed = lm.model(ids).logits
        with prepack.dense_linears(lm.model):
            again = lm.model(ids).logits
    assert torch.equal(again, dense)  # the dense weights run exactly as before packing
    assert torch.allclose(packed, dense, rtol=1e-4, atol=1e-4)
    assert torch.equal(packed.argmax(-1), dense.argmax(-1))
    bare = load_model(str(tiny_zoo["target-llama-g"]), dtype="float32")
    prepack.prepack(bare.model)
    with pytest.raises(ValueError, match="keep_dense=True"):
        with prepack.dense_linears(bare.model):
            pass


# Policies that draft whatever the wall clock says: the cost-aware policy hardly drafts where the tiny
# drafter costs as much as the tiny target (c ~ 1), and this test needs accepted drafts to mean anything.
@pytest.mark.parametrize("drafter,policy", [("drafter-llama-g", "heuristic"), ("drafter-llama-m", "confidence")])
def test_speculative_greedy_on_packed_models_equals_target_alone(tiny_zoo, drafter, policy):
    """Packed target and drafter: speculative output equals the packed target's own greedy output,
    batched, which in turn equals transformers' generate on the dense fp32 target."""
    ref = str(tiny_zoo["target-llama-g"])
    cfg = compose(["target=hf", f"target.ref={ref}", "drafter=hf", f"drafter.ref={tiny_zoo[drafter]}",
                   f"sampling.max_new_tokens={NEW}", f"speculation.lookahead={policy}"], config_dir="conf")
    target = load_model(ref, dtype="float32")
    rows = [make_row({"prompt": p}, f"r{i}") for i, p in enumerate(PROMPTS)]
    with torch.inference_mode():
        hf = {}
        for r in rows:
            x = torch.tensor([target.tokenizer(r.prompt)["input_ids"]])
            out = target.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=NEW,
                                        eos_token_id=list(target.eos_token_ids), pad_token_id=target.eos_token_ids[0])
            hf[r.row_id] = out[0, x.shape[1]:].tolist()
    assert prepack.prepack(target.model) > 0
    dr = load_model(str(tiny_zoo[drafter]), dtype="float32")
    assert prepack.prepack(dr.model) > 0
    own, _ = Engine(target, sampling=cfg.sampling, batch_size=3).generate(rows)
    proposer, factory, algo = make_proposer(cfg, target, dr)
    eng = Engine(target, proposer=proposer, policy_factory=factory, sampling=cfg.sampling, batch_size=3,
                 algorithm=algo)
    spec, steps = eng.generate(rows)
    assert [r.status for r in spec] == ["ok"] * 3 and sum(s.accepted for s in steps) > 0
    assert {r.row_id: r.output_ids for r in spec} == {r.row_id: r.output_ids for r in own} == hf


def _int8(model):
    return [m for m in model.modules() if isinstance(m, prepack.Int8Linear)]


int8_only = pytest.mark.skipif(not prepack.int8_available(), reason="this torch build has no fbgemm int8 linear")


@int8_only
def test_int8_packs_all_but_the_down_projections_and_the_tied_head_too(tiny_zoo):
    tied = load_model(str(tiny_zoo["target-qwen-g"]), dtype="float32")  # lm_head shares the embedding
    emb = tied.model.model.embed_tokens.weight
    names = {n.rsplit(".", 1)[-1] for n, m in tied.model.named_modules() if type(m) is nn.Linear}
    assert "down_proj" in names and "lm_head" in names
    n_lin, n_down = len(_linears(tied.model)), sum(1 for n, m in tied.model.named_modules() if n.endswith("down_proj"))
    assert prepack.prepack(tied.model, int8=True) == n_lin  # the tied head included
    assert _linears(tied.model) == []
    assert isinstance(tied.model.lm_head, prepack.Int8Linear)
    assert tied.model.model.embed_tokens.weight is emb  # the embedding still reads the dense weight
    fp32 = [n for n, m in tied.model.named_modules() if type(m) is prepack.PackedLinear]
    assert len(fp32) == n_down and all(n.endswith("down_proj") for n in fp32)
    assert len(_int8(tied.model)) == n_lin - n_down
    assert tied.model.get_output_embeddings().weight.shape == emb.shape  # what the engine reads: the width


@int8_only
def test_int8_logits_are_close_and_dense_linears_switches_back(tiny_zoo):
    lm = load_model(str(tiny_zoo["drafter-llama-g"]), dtype="float32")
    ids = torch.tensor([lm.tokenizer("def fibonacci(n):\n    return fib(n - 1) + fib(n - 2)")["input_ids"]])
    with torch.inference_mode():
        dense = lm.model(ids).logits
        prepack.prepack(lm.model, keep_dense=True, int8=True)
        q = lm.model(ids).logits
        with prepack.dense_linears(lm.model):
            again = lm.model(ids).logits
    assert torch.equal(again, dense)
    assert not torch.equal(q, dense)  # int8 is lossy: really quantised
    rel = ((q - dense).norm() / dense.norm()).item()
    assert rel < 0.05, rel
    agree = (q.argmax(-1) == dense.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree


@int8_only
@pytest.mark.parametrize("drafter", ["drafter-llama-g", "drafter-llama-m", "target-qwen-g"])  # the last: a tied head
def test_int8_drafter_leaves_the_output_exact(tiny_zoo, drafter):
    """A quantised drafter only changes what is proposed: outputs equal the target's own greedy output,
    and the int8 drafter still gets drafts accepted. Built as the pipeline builds it (drafter.quantize)."""
    from speccore.worker import build_engine

    ref = str(tiny_zoo["target-llama-g"])
    cfg = compose(["target=hf", f"target.ref={ref}", "drafter=hf", f"drafter.ref={tiny_zoo[drafter]}",
                   "drafter.quantize=int8", f"sampling.max_new_tokens={NEW}", "speculation.lookahead=heuristic",
                   "runner.batch_size=3"], config_dir="conf")
    rows = [make_row({"prompt": p}, f"r{i}") for i, p in enumerate(PROMPTS)]
    eng = build_engine(cfg)
    assert _int8(eng.proposer.drafter.model)
    downs = [m for n, m in eng.proposer.drafter.model.named_modules() if n.endswith("down_proj")]
    assert downs and all(type(m) is prepack.OutlierInt8Linear for m in downs)  # calibrated as it loaded
    spec, steps = eng.generate(rows)
    target = load_model(ref, dtype="float32")
    prepack.prepack(target.model)
    own, _ = Engine(target, sampling=cfg.sampling, batch_size=3).generate(rows)
    assert [r.status for r in spec] == ["ok"] * 3 and sum(s.accepted for s in steps) > 0
    assert {r.row_id: r.output_ids for r in spec} == {r.row_id: r.output_ids for r in own}


@int8_only
@pytest.mark.parametrize("kind", ["plain", "outliers"])
def test_an_int8_rows_product_does_not_depend_on_the_rows_fed_with_it(kind):
    """fbgemm quantises a whole input with one scale: a loud row beside a row (a prompt's catch-up, another row of
    the batch) coarsened it. Each row is now quantised on its own range, as close to fp32 as fed alone (a row
    fed alone goes straight through fbgemm: the same grid up to where its zero falls)."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    q = prepack.Int8Linear(lin) if kind == "plain" else prepack.OutlierInt8Linear(lin, torch.tensor([5, 9]))
    x = torch.randn(4, 256) + 0.5
    x[1] *= 40.0  # a loud neighbour
    x[3] = 0.25  # a constant row: no range at all
    quiet = [0, 2]
    with torch.inference_mode():
        together = q(x)
        alone = torch.cat([q(x[i : i + 1]) for i in range(4)])
        exact = lin(x)
        one_scale = torch.ops.quantized.linear_dynamic(x, q.packed, True) + lin.bias  # fbgemm as it comes
    err = (together - exact)[quiet].abs().mean()
    assert err < 1.1 * (alone - exact)[quiet].abs().mean()
    if kind == "plain":  # the loud row's scale for every row: far coarser
        assert (one_scale - exact)[quiet].abs().mean() > 5 * err
        assert (together - alone)[quiet].abs().max() < (one_scale - alone)[quiet].abs().max() / 10
    assert torch.allclose(together[3], exact[3], atol=1e-2)


@int8_only
def test_outlier_channels_run_in_fp32_beside_the_int8_product():
    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    loud = torch.tensor([3, 77, 200])
    x = torch.randn(5, 256)
    x[:, loud] *= 300.0  # a few channels far louder than the rest, as a gated activation has
    with torch.inference_mode():
        exact = lin(x)
        plain = prepack.Int8Linear(lin)(x)
        split = prepack.OutlierInt8Linear(lin, loud)(x)
        only_loud = torch.zeros_like(x)
        only_loud[:, loud] = x[:, loud]
        # the loud channels alone: the int8 product sees zeros, so what comes out is their fp32 product
        assert torch.allclose(prepack.OutlierInt8Linear(lin, loud)(only_loud), lin(only_loud), atol=1e-4)
    err_plain = ((plain - exact).norm() / exact.norm()).item()
    err_split = ((split - exact).norm() / exact.norm()).item()
    assert err_split < err_plain / 10, (err_split, err_plain)
    assert err_split < 0.01, err_split


@int8_only
def _loud_drafter(tiny_zoo, loud):
    lm = load_model(str(tiny_zoo["drafter-llama-g"]), dtype="float32")
    with torch.no_grad():
        for layer in lm.model.model.layers:  # make these channels of the gated activation loud in every layer
            layer.mlp.up_proj.weight[loud] *= 40.0
    return lm


@int8_only
def test_calibration_finds_each_down_projections_loud_inputs_and_decomposes_them(tiny_zoo, monkeypatch):
    width = load_model(str(tiny_zoo["drafter-llama-g"]), dtype="float32").model.model.layers[0].mlp.down_proj.in_features
    loud = sorted(torch.randperm(width, generator=torch.Generator().manual_seed(1))[:prepack.OUTLIER_CHANNELS].tolist())
    lm = _loud_drafter(tiny_zoo, loud)
    layers = lm.model.model.layers
    ids = lm.tokenizer("def fibonacci(n):\n    return fib(n - 1) + fib(n - 2)")["input_ids"]
    found = prepack.input_outliers(lm.model, ids)
    assert [found[id(layer.mlp.down_proj)].tolist() for layer in layers] == [loud] * len(layers)
    x = torch.tensor([ids])
    with torch.inference_mode():
        dense = lm.model(x).logits
        prepack.prepack(lm.model, keep_dense=True, int8=True, calibration=ids)
        q = lm.model(x).logits
        with prepack.dense_linears(lm.model):
            assert torch.equal(lm.model(x).logits, dense)
    downs = [layer.mlp.down_proj for layer in layers]
    assert all(type(d) is prepack.OutlierInt8Linear and d.outliers.tolist() == loud for d in downs)
    # the same model with its down projections kept fp32 (no calibration), and int8 as they come
    kept = _loud_drafter(tiny_zoo, loud)
    prepack.prepack(kept.model, int8=True)
    assert all(type(layer.mlp.down_proj) is prepack.PackedLinear for layer in kept.model.model.layers)
    every = _loud_drafter(tiny_zoo, loud)
    monkeypatch.setattr(prepack, "INT8_KEEP_FP32", frozenset())
    prepack.prepack(every.model, int8=True)
    with torch.inference_mode():
        q_kept, q_every = kept.model(x).logits, every.model(x).logits
    rel, rel_kept, rel_every = (((y - dense).norm() / dense.norm()).item() for y in (q, q_kept, q_every))
    # 0.036, 0.036, 0.053 (0.062, 0.062, 0.119 while fbgemm quantised the whole sequence with one scale)
    assert rel < 1.1 * rel_kept and rel < 0.8 * rel_every, (rel, rel_kept, rel_every)


def test_drafter_quantize_is_validated():
    with pytest.raises(ValueError, match="drafter.quantize"):
        compose(["drafter.quantize=int4"], config_dir="conf")


def _resident_kib(path) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:  # a mapping's header line
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="/proc/self/smaps")
def test_packing_releases_the_file_pages_of_mmapped_weights(tmp_path):
    """Weights mmapped from a file (as safetensors loads them) do not stay resident beside their packed
    copies; anonymous memory is left exactly as it was."""
    path = tmp_path / "w.bin"
    torch.randn(1024, 1024).numpy().tofile(path)  # 4 MiB
    w = torch.from_file(str(path), shared=False, size=1024 * 1024).view(1024, 1024)
    lin = nn.Linear(1024, 1024, bias=False)
    lin.weight = nn.Parameter(w, requires_grad=False)
    model = nn.Sequential(lin)
    expected = model(torch.ones(1, 1024))
    assert _resident_kib(path) >= 4000  # read once: resident
    anon = nn.Linear(64, 64)
    before = anon.weight.detach().clone()
    assert prepack.prepack(model) == 1 and prepack.prepack(nn.Sequential(anon)) == 1
    assert _resident_kib(path) < 64  # dropped: only the packed copy holds the weights now
    assert torch.allclose(model(torch.ones(1, 1024)), expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(anon.weight, before)  # the old module's anonymous weight is untouched
