"""Vocabulary relations between a drafter's and a target's tokenizer (cross-vocab speculation).

Every token is reduced to its surface text as bytes, so that vocabularies of different styles
compare: byte-level BPE spells bytes in a printable alphabet ('Ġ' = b' '), SentencePiece/Metaspace
spells a space as '▁' and unknown characters as byte-fallback tokens '<0xNN>'. The style is read
from the tokenizer's own pipeline (tokenizer.json: pre_tokenizer, normalizer, decoder, model), not
guessed from spellings. Bytes, not str, because a byte-level token may be part of a UTF-8 sequence.

- `same_vocab`: may the drafter's ids be fed to the target as they are (standard SD)?
- `intersection_map`: the tokens both spell the same, for TLI (restrict, renormalise, map ids).
- `max_token_bytes`, `is_char_level`: SLRS is only practical for char- or byte-level drafters.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

import torch

__all__ = [
    "VocabMap", "tokenizer_style", "token_strings", "special_tokens", "same_vocab",
    "intersection_map", "max_token_bytes", "is_char_level",
]

BYTE_LEVEL, METASPACE, PLAIN = "byte_level", "metaspace", "plain"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_alphabet() -> tuple[frozenset[str], dict[int, int]]:
    """GPT-2's printable spelling of the 256 bytes: (its chars, a str.translate table char -> byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return frozenset(map(chr, cs)), dict(zip(cs, bs))


def _backend(tokenizer: Any):
    """The `tokenizers.Tokenizer` behind a transformers tokenizer (or the object itself)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "to_str"):
        raise TypeError(f"{type(tokenizer).__name__} has no `tokenizers` backend (a fast tokenizer "
                        "is needed to read its pipeline)")
    return backend


def _nodes(node: Any) -> Iterator[dict]:
    """Every component dict in a (possibly nested Sequence) pipeline node."""
    if isinstance(node, dict):
        if "type" in node:
            yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value)


@dataclass(frozen=True)
class _Pipeline:
    style: str  # BYTE_LEVEL, METASPACE or PLAIN
    replacement: str  # the space marker of METASPACE ('▁')
    byte_fallback: bool


def _pipeline(tokenizer: Any) -> _Pipeline:
    backend = _backend(tokenizer)
    parts = []  # the components' own JSON (tokenizer.json without the vocabulary)
    for key in ("normalizer", "pre_tokenizer", "decoder"):
        component = getattr(backend, key)
        if component is not None:
            parts.extend(_nodes(json.loads(component.__getstate__())))
    types = {n["type"] for n in parts}
    flag = getattr(backend.model, "byte_fallback", None)  # BPE exposes it; Unigram only in JSON
    if flag is None:
        flag = json.loads(backend.model.__getstate__()).get("byte_fallback", False)
    byte_fallback = bool(flag) or "ByteFallback" in types
    if "ByteLevel" in types:
        return _Pipeline(BYTE_LEVEL, "", byte_fallback)
    for n in parts:
        if n["type"] == "Metaspace":
            return _Pipeline(METASPACE, n.get("replacement", "\u2581"), byte_fallback)
    # Llama/Gemma style: normalizer Replace(' ' -> '▁'), decoder Replace('▁' -> ' ')
    for n in parts:
        if n["type"] == "Replace" and n.get("content") == " ":
            marker = (n.get("pattern") or {}).get("String")
            if marker:
                return _Pipeline(METASPACE, marker, byte_fallback)
    return _Pipeline(PLAIN, "", byte_fallback)


def tokenizer_style(tokenizer: Any) -> str:
    """'byte_level', 'metaspace' or 'plain', from the tokenizer's pipeline."""
    return _pipeline(tokenizer).style


def special_tokens(tokenizer: Any) -> dict[int, str]:
    """id -> content of the special tokens (control tokens like BOS, EOS, <|im_start|>)."""
    backend = _backend(tokenizer)
    out = {i: t.content for i, t in backend.get_added_tokens_decoder().items() if t.special}
    for i in getattr(tokenizer, "all_special_ids", []) or []:
        if i is not None and i not in out:
            out[int(i)] = backend.id_to_token(int(i))
    return out


def token_strings(tokenizer: Any, vocab_size: int | None = None) -> list[bytes | None]:
    r"""Each id's surface text as bytes; None for special tokens and ids the tokenizer lacks.

    Bytes, for all styles: a byte-level token may be an incomplete UTF-8 sequence, and '<0xNN>'
    byte-fallback tokens are single bytes. Space markers become b' '. Non-special added tokens
    (user-defined ones: Gemma's '\n', '\n\n', '<table>', Qwen's '<tool_call>') are text the model
    emits, so they keep their text. Padding rows are None: ids past the tokenizer, up to
    `vocab_size` (Qwen: config 151936 > len(tokenizer) 151665), and the '[PAD<id>]' tokens that
    llama.cpp writes for those rows, which a GGUF-converted tokenizer then carries.
    """
    backend, pipe = _backend(tokenizer), _pipeline(tokenizer)
    vocab = backend.get_vocab(with_added_tokens=True)
    n = max(max(vocab.values(), default=-1) + 1, vocab_size or 0)
    specials = special_tokens(tokenizer)
    added = backend.get_added_tokens_decoder()
    alphabet = _byte_alphabet()
    out: list[bytes | None] = [None] * n
    for token, i in vocab.items():
        if i in specials or (token.startswith("[PAD") and token == f"[PAD{i}]"):
            continue
        if i in added and backend.model.token_to_id(token) != i:  # added, outside the model vocab:
            out[i] = token.encode("utf-8")  # matched whole in raw text, so its text is literal
            continue
        out[i] = _surface(token, pipe, alphabet)
    return out


def _surface(token: str, pipe: _Pipeline, alphabet: tuple[frozenset[str], dict[int, int]]) -> bytes:
    if pipe.style == BYTE_LEVEL:
        chars, table = alphabet
        if chars.issuperset(token):
            return token.translate(table).encode("latin-1")
        return token.encode("utf-8")  # not spelled in the byte alphabet: literal
    if pipe.byte_fallback:
        m = _BYTE_FALLBACK.fullmatch(token)
        if m:
            return bytes([int(m.group(1), 16)])
    if pipe.style == METASPACE:
        token = token.replace(pipe.replacement, " ")
    return token.encode("utf-8")


def _is_fallback(token: str, pipe: _Pipeline) -> bool:
    return pipe.byte_fallback and _BYTE_FALLBACK.fullmatch(token) is not None


def same_vocab(tok_a: Any, tok_b: Any) -> bool:
    """True when every id either uses means the same text in both, and the specials agree.

    This is what lets a drafter's ids go to the target unchanged. The models' vocab_size is not
    the test: Qwen pads its embedding past the tokenizer, and two sizes can match while the ids
    mean different strings. Padding rows (None in `token_strings`) may differ in number; a real
    token on one side only makes it False, since the other side could not read that id.
    """
    if special_tokens(tok_a) != special_tokens(tok_b):
        return False
    a, b = token_strings(tok_a), token_strings(tok_b)
    n = max(len(a), len(b))
    return a + [None] * (n - len(a)) == b + [None] * (n - len(b))


@dataclass(frozen=True)
class VocabMap:
    """Tokens whose text both vocabularies spell the same (specials excluded), one-to-one.

    drafter_ids[i] and target_ids[i] spell the same bytes, sorted by drafter id. Where a
    vocabulary spells one text twice (a byte-fallback '<0x0A>' and a plain '\\n'), the id its
    tokenizer produces is kept: the regular token over the byte-fallback one, then the lower id.
    """

    drafter_ids: torch.Tensor  # [n] int64
    target_ids: torch.Tensor  # [n] int64
    drafter_to_target: torch.Tensor  # [V_d] int64, -1 where the drafter token has no match
    target_to_drafter: torch.Tensor  # [V_t] int64, -1 where the target token has no match
    n_overlap: int

    def coverage(self) -> tuple[float, float]:
        """Share of the drafter's and of the target's (tokenizer) ids in the intersection."""
        nd = int((self.drafter_to_target >= 0).sum()) / max(1, self.drafter_to_target.numel())
        nt = int((self.target_to_drafter >= 0).sum()) / max(1, self.target_to_drafter.numel())
        return nd, nt


def _canonical(tokenizer: Any, strings: list[bytes | None]) -> dict[bytes, int]:
    """text -> the one id chosen for it (regular over byte-fallback, then lowest id)."""
    pipe, backend = _pipeline(tokenizer), _backend(tokenizer)
    best: dict[bytes, tuple[bool, int]] = {}
    for i, s in enumerate(strings):
        if not s:
            continue
        rank = (len(s) == 1 and _is_fallback(backend.id_to_token(i), pipe), i)
        if s not in best or rank < best[s]:
            best[s] = rank
    return {s: i for s, (_, i) in best.items()}


def intersection_map(drafter_tok: Any, target_tok: Any, drafter_vocab_size: int | None = None,
                     target_vocab_size: int | None = None) -> VocabMap:
    """The TLI map: drafter ids <-> target ids of tokens with the same text.

    The *_vocab_size arguments size the lookup tables to the models' logits (padded embedding
    rows map to -1); by default the tokenizers' sizes.
    """
    sd = token_strings(drafter_tok, drafter_vocab_size)
    st = token_strings(target_tok, target_vocab_size)
    d, t = _canonical(drafter_tok, sd), _canonical(target_tok, st)
    pairs = sorted((d[s], t[s]) for s in d.keys() & t.keys())
    drafter_ids = torch.tensor([p[0] for p in pairs], dtype=torch.long)  # [n]
    target_ids = torch.tensor([p[1] for p in pairs], dtype=torch.long)  # [n]
    drafter_to_target = torch.full((len(sd),), -1, dtype=torch.long)  # [V_d]
    drafter_to_target[drafter_ids] = target_ids
    target_to_drafter = torch.full((len(st),), -1, dtype=torch.long)  # [V_t]
    target_to_drafter[target_ids] = drafter_ids
    return VocabMap(drafter_ids, target_ids, drafter_to_target, target_to_drafter, len(pairs))


def max_token_bytes(tokenizer: Any) -> int:
    """Length in bytes of the longest non-special token."""
    return max((len(s) for s in token_strings(tokenizer) if s is not None), default=0)


def is_char_level(tokenizer: Any) -> bool:
    """Every non-special token is one byte or one character (SLRS is practical only then)."""
    for s in token_strings(tokenizer):
        if s is None or len(s) <= 1:
            continue
        try:
            if len(s.decode("utf-8")) != 1:
                return False
        except UnicodeDecodeError:
            return False
    return True
