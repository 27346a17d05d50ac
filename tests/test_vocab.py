"""Vocabulary relations, on tokenizers trained here (byte-level BPE, Metaspace BPE with byte
fallback) and on the packaged real ones when the model cache has them."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from speccore.vocab import (
    intersection_map, is_char_level, max_token_bytes, same_vocab, special_tokens, token_strings,
    tokenizer_style,
)

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for i in range(10):\n    print(i, i * i)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "    def push(self, item):\n        self.items.append(item)\n",
    "import os\nimport sys\nfrom pathlib import Path\n",
    "The quick brown fox jumps over the lazy dog.",
    "A speculative decoder drafts tokens with a small model and verifies them with a large one.",
    "The target model verifies the draft in a single forward pass.",
    "Tokens that the target accepts are kept; the first rejected token is replaced.",
    "Acceptance rate is the share of drafted tokens that the target kept.",
    "Héllo wörld, café, naïve, déjà vu.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159",
    "if x == y and not z:\n    return {'key': [1, 2, 3]}\n",
    "while True:\n    line = input()\n    if not line:\n        break\n",
    "Write a function that returns the sum of a list of numbers.",
    "Explain the difference between a list and a tuple in Python.",
    "She sells sea shells by the sea shore.",
    "It was the best of times, it was the worst of times.",
    "print('hello, world')\n",
] * 3

TEXTS = [
    "def add(a, b):\n    return a + b",
    "The draft is verified by the target.",
    "Unseen: € ✓ 日本語 🙂 and tabs\tand\r\nnewlines",
    "  two leading spaces, trailing  ",
]


def byte_level_bpe(vocab_size: int = 400, corpus=CORPUS) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def metaspace_bpe(vocab_size: int = 400, llama_style: bool = False) -> Tokenizer:
    """SentencePiece-like BPE: specials, then the 256 '<0xNN>' byte-fallback tokens, then merges."""
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size - 259,
                                                            show_progress=False))
    spec = json.loads(trained.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [t for t, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1])]
    vocab = {t: i for i, t in enumerate(pieces)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.add_special_tokens(specials)
    if llama_style:  # normalizer + Replace decoder, as Llama / Gemma tokenizer.json files have it
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                               normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    return tok


def wrap(tok: Tokenizer, **specials) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def clone(tok: Tokenizer) -> Tokenizer:
    return Tokenizer.from_str(tok.to_str())


@pytest.fixture(scope="module")
def bl():
    return wrap(byte_level_bpe(), eos_token="<|endoftext|>")


@pytest.fixture(scope="module", params=[False, True], ids=["metaspace", "llama_style"])
def ms(request):
    return wrap(metaspace_bpe(llama_style=request.param), unk_token="<unk>", bos_token="<s>",
                eos_token="</s>")


# ------------------------------------------------------------------ token_strings

def test_style_comes_from_the_pipeline(bl, ms):
    assert tokenizer_style(bl) == "byte_level"
    assert tokenizer_style(ms) == "metaspace"
    # a tokenizer whose tokens look byte-level but whose pipeline is not: spellings are literal
    wl = Tokenizer(models.WordLevel({"\u0120x": 0, "\u2581y": 1, "[UNK]": 2}, unk_token="[UNK]"))
    assert tokenizer_style(wl) == "plain"
    assert token_strings(wl) == ["\u0120x".encode(), "\u2581y".encode(), b"[UNK]"]


def test_byte_level_strings(bl):
    s = token_strings(bl)
    assert len(s) == len(bl)
    assert s[bl.convert_tokens_to_ids("<|endoftext|>")] is None
    assert s[bl.convert_tokens_to_ids("\u0120")] == b" "
    assert s[bl.convert_tokens_to_ids("\u010a")] == b"\n"
    assert s[bl.convert_tokens_to_ids("\u00e2")] == b"\xe2"  # a lone byte: not valid UTF-8
    for i, b in enumerate(s):  # each token's bytes are what the tokenizer itself decodes it to
        if b is not None:
            assert bl.decode([i]) == b.decode("utf-8", errors="replace")


def test_metaspace_strings(ms):
    s = token_strings(ms)
    for name in ("<unk>", "<s>", "</s>"):
        assert s[ms.convert_tokens_to_ids(name)] is None
    assert s[ms.convert_tokens_to_ids("<0x0A>")] == b"\n"
    assert s[ms.convert_tokens_to_ids("<0xE2>")] == b"\xe2"
    assert s[ms.convert_tokens_to_ids("\u2581the")] == b" the"
    assert s[ms.convert_tokens_to_ids("\u2581")] == b" "


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_concatenate_to_the_text(bl, ms, text):
    ids = bl(text, add_special_tokens=False)["input_ids"]
    strings = token_strings(bl)
    assert b"".join(strings[i] for i in ids) == text.encode()
    ids = ms(text, add_special_tokens=False)["input_ids"]
    assert any(ms.convert_ids_to_tokens(i).startswith("<0x") for i in ids) or text.isascii()
    strings = token_strings(ms)
    joined = b"".join(strings[i] for i in ids)
    # one space marker prepended (Metaspace skips it where the text starts with a space)
    assert joined in (b" " + text.encode(), text.encode())


def test_padding_rows_and_raw_backend(bl):
    padded = token_strings(bl, vocab_size=len(bl) + 11)
    assert len(padded) == len(bl) + 11 and padded[len(bl):] == [None] * 11
    assert token_strings(bl.backend_tokenizer) == token_strings(bl)


def test_added_tokens():
    tok = byte_level_bpe()
    tok.add_special_tokens(["<|im_start|>"])
    tok.add_tokens(["<tool_call>"])  # user-defined, not special: text the model emits
    t = wrap(tok)
    s = token_strings(t)
    assert s[t.convert_tokens_to_ids("<|im_start|>")] is None
    assert s[t.convert_tokens_to_ids("<tool_call>")] == b"<tool_call>"
    assert set(special_tokens(t).values()) == {"<|endoftext|>", "<|im_start|>"}


# ------------------------------------------------------------------ same_vocab

def test_same_vocab(bl, ms):
    assert same_vocab(bl, bl)
    assert same_vocab(bl, bl.backend_tokenizer)
    assert same_vocab(bl, wrap(clone(bl.backend_tokenizer)))
    assert not same_vocab(bl, ms)
    # trained on other text: same size, different ids
    other = byte_level_bpe(corpus=list(reversed(CORPUS))[:20] + ["zzz yyy xxx"] * 5)
    assert len(other.get_vocab()) == len(bl) and not same_vocab(bl, other)


def test_same_vocab_traps(bl):
    base = bl.backend_tokenizer
    # one more special token, or one more regular token: an id the other side cannot read
    extra = clone(base)
    extra.add_special_tokens(["<|im_start|>"])
    assert not same_vocab(base, extra)
    extra = clone(base)
    extra.add_tokens(["<tool_call>"])
    assert not same_vocab(base, extra)
    # padding rows are no trap: llama.cpp's '[PAD<id>]' fillers (as a GGUF-converted Qwen
    # tokenizer has them, 151936 ids against upstream's 151665) are no tokens
    spec = json.loads(base.to_str())
    vocab = spec["model"]["vocab"]
    n = len(vocab)
    vocab.update({f"[PAD{i}]": i for i in range(n, n + 10)})
    padded = Tokenizer.from_str(json.dumps(spec))
    assert len(padded.get_vocab()) == n + 10
    assert token_strings(padded)[n:] == [None] * 10
    assert same_vocab(base, padded) and same_vocab(padded, base)
    # the special at the same id spelled otherwise
    spec = json.loads(base.to_str())
    spec["added_tokens"][0]["content"] = "</s>"
    vocab = spec["model"]["vocab"]
    vocab["</s>"] = vocab.pop("<|endoftext|>")
    assert not same_vocab(base, Tokenizer.from_str(json.dumps(spec)))
    # the same strings, two ids swapped
    spec = json.loads(base.to_str())
    vocab = spec["model"]["vocab"]
    a, b = "\u0120the", "\u0120target"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    swapped = Tokenizer.from_str(json.dumps(spec))
    assert sorted(swapped.get_vocab()) == sorted(base.get_vocab())
    assert not same_vocab(base, swapped)


# ------------------------------------------------------------------ intersection_map

def test_intersection_map(bl, ms):
    m = intersection_map(ms, bl)  # drafter: Metaspace, target: byte-level
    sd, st = token_strings(ms), token_strings(bl)
    assert m.n_overlap == len(m.drafter_ids) == len(m.target_ids) > 256
    assert torch.all(m.drafter_ids[1:] > m.drafter_ids[:-1])  # sorted, one-to-one
    assert len(set(m.target_ids.tolist())) == m.n_overlap
    for d, t in zip(m.drafter_ids.tolist(), m.target_ids.tolist()):
        assert sd[d] is not None and sd[d] == st[t]
    # every shared text is in the map (the byte-level side spells each text once)
    assert {sd[d] for d in m.drafter_ids.tolist()} == {b for b in sd if b is not None} & set(st)
    # lookup tables agree with the pairs, -1 elsewhere
    assert m.drafter_to_target.shape == (len(ms),) and m.target_to_drafter.shape == (len(bl),)
    assert torch.equal(m.drafter_to_target[m.drafter_ids], m.target_ids)
    assert int((m.drafter_to_target >= 0).sum()) == m.n_overlap
    assert torch.equal(m.target_to_drafter[m.target_ids], m.drafter_ids)
    # specials never map
    for i in special_tokens(ms):
        assert m.drafter_to_target[i] == -1
    # '<0x61>' and 'a' spell b"a": the regular token is the one mapped
    a_d, a_t = ms.convert_tokens_to_ids("a"), bl.convert_tokens_to_ids("a")
    assert m.drafter_to_target[a_d] == a_t
    assert m.drafter_to_target[ms.convert_tokens_to_ids("<0x61>")] == -1
    # a byte with no regular token maps to the byte-level token for that byte
    assert m.drafter_to_target[ms.convert_tokens_to_ids("<0xE2>")] == bl.convert_tokens_to_ids("\u00e2")
    assert m.drafter_to_target[ms.convert_tokens_to_ids("\u2581the")] == bl.convert_tokens_to_ids("\u0120the")


def test_intersection_map_self_and_padding(bl):
    m = intersection_map(bl, bl, drafter_vocab_size=len(bl) + 5, target_vocab_size=len(bl) + 9)
    regular = [i for i, s in enumerate(token_strings(bl)) if s is not None]
    assert m.drafter_ids.tolist() == regular == m.target_ids.tolist()
    assert m.drafter_to_target.shape == (len(bl) + 5,) and m.target_to_drafter.shape == (len(bl) + 9,)
    assert torch.all(m.drafter_to_target[len(bl):] == -1)


def test_tli_restriction(bl, ms):
    """How TLI uses the map: restrict q to the intersection, renormalise, move to target ids."""
    m = intersection_map(ms, bl)
    q = torch.softmax(torch.randn(len(ms), generator=torch.Generator().manual_seed(0),
                                  dtype=torch.float64), -1)  # [V_d]
    q_in = q[m.drafter_ids]  # [n]
    q_t = torch.zeros(len(bl), dtype=torch.float64).index_put_((m.target_ids,), q_in / q_in.sum())
    assert q_t.sum().item() == pytest.approx(1.0)
    assert set(torch.nonzero(q_t).flatten().tolist()) <= set(m.target_ids.tolist())


# ------------------------------------------------------------------ char level

def test_char_level():
    chars = byte_level_bpe(vocab_size=257)  # the 256 bytes and one special: no merges
    assert is_char_level(chars) and max_token_bytes(chars) == 1
    merged = byte_level_bpe()
    assert not is_char_level(merged) and max_token_bytes(merged) > 1
    ms_chars = metaspace_bpe(vocab_size=259 + 60)  # only the alphabet, incl. 'é' (2 bytes)
    assert is_char_level(ms_chars) and max_token_bytes(ms_chars) == 2
    assert not is_char_level(metaspace_bpe())


# ------------------------------------------------------------------ real tokenizers

# The user's real model cache, read at import: the session fixture later points SPECCORE_CACHE at a
# temporary dir. These tests use what `make run` (or `speccore models pull`) converted, else skip.
REAL_CACHE = Path(os.environ.get("SPECCORE_CACHE", Path.home() / ".cache" / "speccore"))


def model_dir(name: str) -> Path:
    return REAL_CACHE / "models" / f"{name}-float32"


def real(name: str):
    path = model_dir(name)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        pytest.skip(f"{path} not converted")
    from transformers import AutoConfig, AutoTokenizer
    return AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path)


QWEN, QWEN_SMALL = "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"
SMOL, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"


@pytest.mark.slow
def test_real_same_vocab_qwen_pair():
    (big, big_cfg), (small, small_cfg) = real(QWEN), real(QWEN_SMALL)
    assert same_vocab(big, small)
    s = token_strings(big, vocab_size=big_cfg.vocab_size)
    n_used = 1 + max(i for i, b in enumerate(s) if b is not None)
    assert len(s) == big_cfg.vocab_size == 151936
    assert n_used <= 151665 < big_cfg.vocab_size  # padded embedding rows: no tokens
    assert not any(s[151665:])


@pytest.mark.slow
@pytest.mark.parametrize("drafter", [SMOL, GEMMA])
def test_real_cross_vocab(drafter, capsys):
    (target, t_cfg), (draft, d_cfg) = real(QWEN), real(drafter)
    assert not same_vocab(draft, target)
    for tok in (target, draft):
        strings = token_strings(tok)
        for text in TEXTS:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            joined = b"".join(strings[i] for i in ids)
            assert joined.lstrip(b" ") == text.encode().lstrip(b" ")
    m = intersection_map(draft, target, d_cfg.vocab_size, t_cfg.vocab_size)
    cov_d, cov_t = m.coverage()
    with capsys.disabled():
        print(f"\n[{QWEN} x {drafter}] overlap {m.n_overlap} (drafter {len(draft)} ids, "
              f"{cov_d:.1%}; target {len(target)} ids, {cov_t:.1%}); styles "
              f"{tokenizer_style(target)} / {tokenizer_style(draft)}; max token bytes "
              f"{max_token_bytes(draft)}")
    assert m.n_overlap > 1000
    assert m.drafter_to_target.shape == (d_cfg.vocab_size,)
