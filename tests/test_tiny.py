"""The tiny zoo carries every exactness test: check it is real, float64, lossless and not degenerate.

Run with `-s` to see the reported numbers (vocabulary overlap, top-1 probabilities, agreement).
"""
from __future__ import annotations

import json
import unicodedata

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.tiny import (
    CORPUS,
    MARKER,
    TOKENIZERS,
    ZOO,
    build_tokenizer,
    build_zoo,
    load_tiny,
    space_normalised_vocab,
    target_greedy,
)

UNICODE = [
    "",
    " ",
    "  two leading spaces, two trailing  ",
    "\n\n\tTabs\tand\r\nCRLF\n",
    "naïve café, Größe, jalapeño",
    "中文分词测试：你好，世界！",
    "emoji 😀🚀 and a family 👨‍👩‍👧 with joiners",
    "مرحبا بالعالم",
    "e\u0301 combining accent, \u00a0no-break space, \u200bzero width",
    "\x00\x07 control bytes \x7f",
    "<0x41> looks like a byte token but is text",
    "    def f(x):\n        return x  # indented code\n",
    "Ġ is just a character here",
]
PROMPTS = [
    "The quick brown",
    "def fibonacci(n):\n",
    "Once upon a time",
    "The weather today",
    "numbers = [1, 2, 3",
    "Zebras 🦓 graze in 中国",
]


def _texts():
    return [CORPUS, *CORPUS.splitlines(keepends=True), *UNICODE]


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_tokenizer_round_trips(name):
    tok = build_tokenizer(name)
    for text in _texts():
        # bpe_g normalises to NFC, as Qwen's tokenizer does; the others give back any text.
        want = unicodedata.normalize("NFC", text) if name == "bpe_g" else text
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == want, (name, text[:40], tok.convert_ids_to_tokens(ids)[:20])
        ids = tok(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == want, (name, text[:40])


def test_bpe_g_normalises_to_nfc():
    g = build_tokenizer("bpe_g")
    assert g.decode(g.encode("cafe\u0301", add_special_tokens=False)) == "caf\u00e9"
    assert g.encode("cafe\u0301", add_special_tokens=False) == g.encode("caf\u00e9", add_special_tokens=False)


def test_tokenizer_special_tokens_and_templates():
    g, m, c = (build_tokenizer(n) for n in ("bpe_g", "bpe_m", "char"))
    assert (g.eos_token, g.pad_token, g.bos_token) == ("<|endoftext|>", "<|endoftext|>", None)
    assert (m.eos_token, m.pad_token, m.bos_token) == ("</s>", "<pad>", "<s>")
    assert (c.eos_token, c.bos_token) == ("</s>", None)
    assert g("hi")["input_ids"][0] != g.eos_token_id  # no BOS for bpe_g
    assert m("hi")["input_ids"][0] == m.bos_token_id  # the post-processor adds <s>
    assert c.convert_ids_to_tokens(c.encode("ab c", add_special_tokens=False)) == ["a", "b", " ", "c"]
    msgs = [{"role": "user", "content": "Hi"}]
    assert g.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert m.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|user|>\nHi</s>\n<|assistant|>\n"
    )
    assert g.convert_tokens_to_ids("<|im_end|>") not in (None, g.unk_token_id)


def test_bpe_m_known_sentencepiece_ambiguity():
    """A literal '▁' in text reads back as a space: true of real SentencePiece vocabularies too."""
    m = build_tokenizer("bpe_m")
    assert m.decode(m.encode("a▁b", add_special_tokens=False)) == "a b"


def test_vocabularies_differ_but_overlap():
    g, m, c = (build_tokenizer(n) for n in ("bpe_g", "bpe_m", "char"))
    assert len({len(g), len(m), len(c)}) == 3
    vg, vm, vc = (space_normalised_vocab(t) for t in (g, m, c))
    common = set(vg) & set(vm)
    same_id = [s for s in common if vg[s] == vm[s]]
    merged = [s for s in common if len(s) > 1 and not s.startswith("<")]
    ids_g = g.encode("The cat sat on the mat.", add_special_tokens=False)
    ids_m = m.encode("The cat sat on the mat.", add_special_tokens=False)
    print(f"\n[vocab] bpe_g={len(g)} bpe_m={len(m)} char={len(c)}; bpe_g&bpe_m after Ġ->▁: {len(common)} "
          f"({len(merged)} multi-char), same id: {len(same_id)}; char&bpe_g: {len(set(vc) & set(vg))}, "
          f"char&bpe_m: {len(set(vc) & set(vm))}")
    assert ids_g != ids_m
    assert len(common) >= 150 and len(merged) >= 50  # TLI has something to work with
    assert len(same_id) < 0.1 * len(common)  # ids really differ: no accidental same-vocab pair
    assert len(common) < min(len(vg), len(vm))  # ... and strings really differ


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_loads(tiny_zoo, name):
    path = tiny_zoo[name]
    assert (path / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(path)  # no dtype given: the config says float64
    tok = AutoTokenizer.from_pretrained(path)
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[ZOO[name].arch]
    assert type(model).__name__ == arch
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model.config.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert tok.chat_template
    # AutoTokenizer may pick a model-specific class (Qwen2Tokenizer for qwen2) that rebuilds the
    # pipeline: it must still tokenize exactly as the tokenizer the model was trained with.
    built = build_tokenizer(ZOO[name].tokenizer)
    assert tok.get_vocab() == built.get_vocab()
    assert tok.all_special_tokens == built.all_special_tokens
    chat = [{"role": "user", "content": "Hi there"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == built.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert tok(text, add_special_tokens=False)["input_ids"] == built(text, add_special_tokens=False)["input_ids"]
    for text in _texts():
        assert tok(text)["input_ids"] == built(text)["input_ids"], text[:40]
        assert tok.decode(tok(text)["input_ids"]) == built.decode(built(text)["input_ids"])


def test_build_zoo_is_idempotent(tiny_zoo):
    root = next(iter(tiny_zoo.values())).parent
    before = {n: (p / MARKER).stat().st_mtime_ns for n, p in tiny_zoo.items()}
    assert build_zoo(root) == tiny_zoo
    assert {n: (p / MARKER).stat().st_mtime_ns for n, p in tiny_zoo.items()} == before
    assert build_zoo(root, ["drafter-llama-g"]) == {"drafter-llama-g": tiny_zoo["drafter-llama-g"]}


@pytest.mark.parametrize("name", ["target-llama-g", "target-qwen-g"])
def test_target_greedy_equals_argmax_loop(tiny_zoo, name):
    """The reference itself: generate() with its KV cache equals a cache-free argmax loop."""
    model, tok = load_tiny(str(tiny_zoo[name]))
    prompt = tok("def add(a, b):\n")["input_ids"]
    ref = target_greedy(tiny_zoo[name], prompt, 24)
    ids = list(prompt)
    with torch.no_grad():
        while len(ids) < len(ref):
            nxt = model(torch.tensor([ids])).logits[0, -1].argmax().item()
            ids.append(nxt)
            if nxt == tok.eos_token_id:
                break
    assert ids == ref


def _greedy_path(name, path):
    model, tok = load_tiny(str(path))
    top1, distinct, texts = [], [], []
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=32, output_scores=True, return_dict_in_generate=True)
        new = out.sequences[0, len(ids):].tolist()
        top1 += [s[0].softmax(-1).max().item() for s in out.scores]
        distinct.append(len(set(new)) / len(new))
        texts.append(tok.decode(new))
    return torch.tensor(top1), distinct, texts


@pytest.mark.parametrize("name", list(ZOO))
def test_greedy_is_peaked_and_not_degenerate(tiny_zoo, name):
    top1, distinct, texts = _greedy_path(name, tiny_zoo[name])
    print(f"\n[top1] {name}: mean {top1.mean():.2f} median {top1.median():.2f} "
          f"P(>0.3) {(top1 > 0.3).double().mean():.2f} P(>0.9) {(top1 > 0.9).double().mean():.2f}; "
          f"distinct-token ratio min {min(distinct):.2f} mean {sum(distinct) / len(distinct):.2f}; "
          f"e.g. {texts[0][:50]!r}")
    # Peaked, yet not one-hot. A char model spreads more mass (which character comes next is
    # less certain than which word), so it gets a lower bar.
    assert (0.2 if ZOO[name].tokenizer == "char" else 0.4) <= (top1 > 0.3).double().mean() <= 0.98
    assert (top1 > 0.9).double().mean() < 0.6
    # Never one token repeated; char-level text ("and the the") has few distinct tokens by nature.
    assert min(distinct) > 1 / 32 and sum(distinct) / len(distinct) > 0.15
    assert len(set(texts)) == len(texts)  # different prompts, different continuations


def test_noisy_drafter_agrees_often_not_always(tiny_zoo):
    """Same-vocab pair: greedy acceptance should be well away from both 0 and 1."""
    target, tok = load_tiny(str(tiny_zoo["target-llama-g"]))
    drafter, _ = load_tiny(str(tiny_zoo["drafter-llama-g"]))
    agree, overlap, n = 0, 0.0, 0
    for prompt in PROMPTS:
        ids = target_greedy(tiny_zoo["target-llama-g"], tok(prompt)["input_ids"], 32)
        with torch.no_grad():
            p = target(torch.tensor([ids])).logits[0]  # [T, V]
            q = drafter(torch.tensor([ids])).logits[0]  # [T, V]
        agree += (p.argmax(-1) == q.argmax(-1)).sum().item()
        overlap += torch.minimum(p.softmax(-1), q.softmax(-1)).sum().item()  # = E[min(1, p/q)] under q
        n += len(ids)
    print(f"\n[agree] target-llama-g vs drafter-llama-g: greedy {agree / n:.2f}, "
          f"sampling acceptance sum(min(p, q)) {overlap / n:.2f}")
    assert 0.3 < agree / n < 0.95
    assert 0.3 < overlap / n < 0.95


def test_speccore_cache_is_isolated(speccore_cache):
    import os

    assert os.environ["SPECCORE_CACHE"] == str(speccore_cache)
    assert speccore_cache.is_dir()


def test_marker_records_recipe(tiny_zoo):
    info = json.loads((tiny_zoo["target-qwen-g"] / MARKER).read_text())
    assert info["spec"]["arch"] == "qwen2" and info["vocab_size"] == len(build_tokenizer("bpe_g"))
