"""The drafter's view of a row in a cross-vocab pair (speccore/crossvocab.py)."""
from __future__ import annotations

import pytest

from speccore.crossvocab import REENCODE_BYTES, CrossVocabProposer, _View, text_codec
from tests.tiny import CORPUS, build_tokenizer

TEXT = CORPUS[:1500]


def proposer(target: str, drafter: str) -> CrossVocabProposer:
    """A proposer with only its codecs: the view's sync needs no model."""
    p = CrossVocabProposer.__new__(CrossVocabProposer)
    p.t, p.d = text_codec(build_tokenizer(target)), text_codec(build_tokenizer(drafter))
    return p


@pytest.mark.parametrize("target, drafter", [("bpe_g", "bpe_m"), ("bpe_m", "bpe_g"), ("bpe_g", "char")])
@pytest.mark.parametrize("piece", [1, 3])
def test_the_drafters_view_reads_the_output_as_its_tokenizer_encodes_it_whole(target, drafter, piece):
    """Target tokens arrive a few at a time (a step's accepted tokens); the drafter's view of them is at every
    step what its tokenizer makes of the whole output, not of the pieces."""
    p = proposer(target, drafter)
    y = p.t.encode(TEXT.encode())
    v, pieces, whole_differs = _View(prompt=[]), [], 0
    for t in range(piece, len(y) + piece, piece):
        p._sync_view(v, y[:t])
        pieces += p.d.encode(v.text[len(p.d.to_bytes(pieces)) : v.covered]) if v.covered else []
        whole = p.d.encode(v.text[: v.covered])
        assert v.out == whole
        assert v.ends[-1] == v.covered and v.ends == sorted(v.ends)
        whole_differs += pieces != whole
    assert v.covered == len(TEXT.encode())
    if drafter != "char":  # encoded piece by piece, the view would split where the tokenizer merges
        assert whole_differs > 0


def test_text_the_drafter_cannot_spell_exactly_is_kept_and_the_view_goes_on_after_it():
    """Bytes that are not UTF-8 reach the drafter as U+FFFD, so its ids do not spell the piece: only the piece's
    end is known, the view never re-encodes back across it, and the text after it still reads whole."""
    p = proposer("bpe_m", "bpe_g")
    head, tail = p.t.encode(b"def add(a, b):\n    return a + b\n"), p.t.encode(b" x = add(1, 2) * 3 + mul(4, 5)\n" * 3)
    bad = [i for i, b in enumerate(p.t.bytes) if b == b"\xff"]
    assert bad, "bpe_m has byte-fallback tokens"
    v = _View(prompt=[])
    p._sync_view(v, head + bad + tail[:1])  # a lone 0xFF, and a token after it
    assert p.d.to_bytes(v.out) != v.text[: v.covered]  # it reads U+FFFD
    assert v.ends[-1] == v.covered and set(v.ends[:-1]) == {None}
    bad_end, before = v.covered, list(v.out)
    for t in range(2, len(tail) + 1):
        p._sync_view(v, head + bad + tail[:t])
        assert v.out[: len(before)] == before  # never re-encoded back across the piece
        assert v.out[len(before) :] == p.d.encode(v.text[bad_end : v.covered])
    assert v.covered == len(v.text) > bad_end + REENCODE_BYTES


def test_a_view_restarts_its_encoding_only_on_a_characters_first_byte():
    """A byte-level drafter spells a character of two bytes with two tokens, so a token may end inside it; the
    view must not re-encode from there (the character's second byte alone is not UTF-8)."""
    p = proposer("bpe_m", "bpe_g")
    y = p.t.encode(("x = 1\n" * 12 + "naïve = 2\n" + "y = 3\n" * 12).encode())
    v = _View(prompt=[])
    for t in range(1, len(y) + 1):
        p._sync_view(v, y[:t])
        assert v.out == p.d.encode(v.text[: v.covered])
