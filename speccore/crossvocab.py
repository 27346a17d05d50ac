"""Cross-vocabulary drafting: SLEM (text round-trip) and TLI (vocabulary intersection).

Both keep the drafter's own view of each row: its encoding of the prompt, then its tokens for the
target's output text, extended by bytes as the target emits. Only new text is encoded, with a
continuation encoder (no BOS, no prefix space), and text that ends inside a UTF-8 character waits
for its remaining bytes. Verification never looks at the drafter's tokens: SLEM re-encodes the draft
text into target ids and verifies by exact match; TLI drafts only tokens whose bytes exist in both
vocabularies, so each maps to one target id and standard rejection sampling applies.
"""
from __future__ import annotations

import itertools
import json
import weakref
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from .decoder import CachedLM
from .draft_model import catch_up_cells, draft_loop, feed_for, pick_from
from .prompts import encode_row
from .verify import Draft



def continuation_encoder(tokenizer) -> Tokenizer:
    """A copy of the tokenizer that encodes text in the middle of a sequence: no BOS/EOS, no prefix space."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["post_processor"] = None

    def strip_prepend(node):
        if isinstance(node, dict):
            if node.get("type") == "Metaspace":
                node["prepend_scheme"] = "never"
                node["add_prefix_space"] = False
            if node.get("type") == "ByteLevel":
                node["add_prefix_space"] = False
            for key in ("normalizers", "pretokenizers"):
                if isinstance(node.get(key), list):
                    node[key] = [strip_prepend(n) for n in node[key] if n.get("type") != "Prepend"]
            return node
        return node

    if spec.get("normalizer") and spec["normalizer"].get("type") == "Prepend":
        spec["normalizer"] = None
    spec["normalizer"] = strip_prepend(spec.get("normalizer"))
    spec["pre_tokenizer"] = strip_prepend(spec.get("pre_tokenizer"))
    return Tokenizer.from_str(json.dumps(spec))


def complete_utf8(data: bytes) -> int:
    """Length of the longest prefix of data that ends on a UTF-8 character boundary."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        c = data[n - back]
        if c & 0xC0 != 0x80:  # a lead byte (or ASCII): is its character complete?
            need = 1 if c < 0x80 else 2 if c >> 5 == 0b110 else 3 if c >> 4 == 0b1110 else 4
            return n if back >= need else n - back
    return n


_CODECS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def text_codec(tokenizer) -> "TextCodec":
    """One codec per tokenizer per process: building one re-parses the tokenizer (Gemma-3: ~4.7 s, ~0.3 GB)."""
    codec = _CODECS.get(tokenizer)
    if codec is None:
        codec = _CODECS[tokenizer] = TextCodec(tokenizer)
    return codec


class TextCodec:
    """Token ids <-> bytes for one tokenizer, and encoding of mid-sequence text."""

    def __init__(self, tokenizer):
        from .vocab import token_strings

        self.tokenizer = tokenizer
        self.bytes = token_strings(tokenizer)  # [V] bytes, or None for specials and padding rows
        self.encoder = continuation_encoder(tokenizer)

    def to_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.bytes[i] or b"" for i in ids if i < len(self.bytes))

    def encode(self, data: bytes) -> list[int]:
        # A model may emit bytes that are not UTF-8 (a stray continuation byte): the drafter's view is
        # only a guide, so such bytes become U+FFFD rather than an error.
        return self.encoder.encode(data.decode("utf-8", "replace"), add_special_tokens=False).ids

    def round_trips(self, text: str) -> bool:
        return self.to_bytes(self.encode(text.encode())) == text.encode()


# The drafter's view of a row's output is re-encoded over at least this many trailing bytes at each sync, so that
# the text reads as the drafter's tokenizer would encode it whole, not as the pieces it arrived in. Encoded piece by
# piece (a target token or a step's accepted tokens at a time), text splits where the drafter's tokenizer would
# merge: one target token at a time, smollm2's view of 8 HumanEval outputs took 470 tokens where encoding each
# whole takes 438, and it differed from the whole encoding at 305 of 408 steps (BENCHMARKS.md). A pre-token
# (a word, a run of spaces) is far shorter than this, so a piece's split is always inside the window.
REENCODE_BYTES = 64


@dataclass
class _View:
    """A row as the drafter sees it."""

    prompt: list[int]
    out: list[int] = field(default_factory=list)  # drafter ids for the target's output bytes [:covered]
    # for each id in `out`, the output byte offset where it ends, where that is known: an encoded piece whose
    # ids spell its bytes exactly has them all; one that does not (normalised, or not UTF-8) only its last
    ends: list[int | None] = field(default_factory=list)
    covered: int = 0  # output bytes represented by `out`
    n_target: int = 0  # target output tokens already turned into bytes
    text: bytes = b""  # the target's output so far, as bytes

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.out


class CrossVocabProposer:
    """Shared machinery of SLEM and TLI; subclasses choose the drafter token and build the Draft."""

    name = "crossvocab"
    reports_confidence = True  # its draft loop asks policy.should_continue with the drafter's top probability

    def __init__(self, drafter, target_tokenizer, allow_special_tokens: bool = False):
        self.drafter = drafter
        self.allow_special = allow_special_tokens
        self.t = text_codec(target_tokenizer)
        self.d = text_codec(drafter.tokenizer)
        self.stop_ids = frozenset(drafter.eos_token_ids)
        self.lm: CachedLM | None = None
        self.views: list[_View] = []
        self.catch_up_s: float | None = 0.0  # of the last propose (see draft_model.draft_loop)
        self.catch_up_cells = 0  # and the cells it caught up over

    def _drafter_prompt(self, st) -> list[int]:
        tok = self.drafter.tokenizer
        if st.row.messages is not None and getattr(tok, "chat_template", None):
            return encode_row(tok, st.row, self.allow_special)
        text = self.t.tokenizer.decode(st.prompt_ids, skip_special_tokens=st.row.messages is None)
        return list(tok(text, add_special_tokens=True, split_special_tokens=not self.allow_special)["input_ids"])

    def start(self, states) -> None:
        self.lm = CachedLM(self.drafter.model, len(states))
        self.views = [_View(prompt=self._drafter_prompt(st)) for st in states]

    def _sync_view(self, v: _View, out_ids: list[int]) -> None:
        if len(out_ids) > v.n_target:
            v.text += self.t.to_bytes(out_ids[v.n_target :])
            v.n_target = len(out_ids)
        end = complete_utf8(v.text)
        if end > v.covered:
            # re-encode from the last known token end at least REENCODE_BYTES before covered, on a character's start
            # (a byte-level token may end inside one)
            keep = len(v.out)
            while keep and ((at := v.ends[keep - 1]) is None or at > v.covered - REENCODE_BYTES
                            or v.text[at] & 0xC0 == 0x80):
                keep -= 1
            start = v.ends[keep - 1] if keep else 0
            ids = self.d.encode(v.text[start:end])
            if self.d.to_bytes(ids) == v.text[start:end]:
                ends = list(itertools.accumulate((len(self.d.bytes[i] or b"") for i in ids), initial=start))[1:]
            else:
                ends = [None] * (len(ids) - 1) + [end] if ids else []
            v.out[keep:], v.ends[keep:] = ids, ends
            v.covered = end

    def propose(self, states, ks: list[int]) -> list[Draft]:
        feeds = []
        for b, (st, k) in enumerate(zip(states, ks)):
            if not k:
                feeds.append([])
                continue
            self._sync_view(self.views[b], st.out_ids)
            feeds.append(feed_for(self.lm, b, self.views[b].ids))
        self.catch_up_cells = catch_up_cells(feeds)
        toks, qs, reasons, self.catch_up_s = draft_loop(
            self.lm, feeds, ks, states, lambda b, lg: self.pick(states[b], lg), self.stop_ids)
        return [self.to_draft(states[b], self.views[b], toks[b], qs[b], reasons[b], ks[b]) for b in range(len(states))]

    def observe(self, states, accepted: list[int]) -> None:
        pass  # views sync lazily at the next propose (rows that draft nothing pay nothing)

    def select(self, rows: list[int]) -> None:
        self.lm.select(rows)
        self.views = [self.views[r] for r in rows]


class SlemProposer(CrossVocabProposer):
    """SLEM: the drafter drafts freely; its text is re-encoded into target ids; exact-match verification."""

    name = "slem"

    def pick(self, st, logits):
        tok = int(logits.argmax())
        if self.d.bytes[tok] is None and tok not in self.stop_ids:
            return None, None, 0.0  # a control token has no text to propose
        top = float(torch.softmax(logits.float(), -1).max())
        return tok, None, top

    def to_draft(self, st, v: _View, toks, qs, reason, k) -> Draft:
        if not toks:
            return Draft(ids=[], n_drafter_tokens=0, stop_reason=reason)
        pending = v.text[v.covered :]  # output bytes the drafter's view has not covered yet
        text = self.d.to_bytes(toks)
        if not text.startswith(pending):
            return Draft(ids=[], n_drafter_tokens=len(toks), stop_reason="misaligned")
        text = text[len(pending) :]
        text = text[: complete_utf8(text)]
        ids = self.t.encode(text)[:k] if text else []
        return Draft(ids=ids, n_drafter_tokens=len(toks), stop_reason=reason)


class TliProposer(CrossVocabProposer):
    """TLI: the drafter's distribution restricted to the shared vocabulary, mapped to target ids."""

    name = "tli"

    def __init__(self, drafter, target_tokenizer, vocab_map, target_vocab: int, allow_special_tokens=False):
        super().__init__(drafter, target_tokenizer, allow_special_tokens)
        self.map = vocab_map  # vocab.VocabMap
        self.V = target_vocab
        V_d = drafter.model.get_output_embeddings().weight.shape[0]
        self.allowed = torch.zeros(V_d, dtype=torch.bool)
        self.allowed[vocab_map.drafter_ids] = True

    def pick(self, st, logits):
        logits = logits.masked_fill(~self.allowed[: logits.shape[-1]].to(logits.device), float("-inf"))
        return pick_from(logits, st.params, st.gen, greedy_draft=False)

    def to_draft(self, st, v: _View, toks, qs, reason, k) -> Draft:
        ids = [int(self.map.drafter_to_target[t]) for t in toks]
        q = None
        if toks and qs[0] is not None:
            qd = torch.stack(qs)  # [k, V_d] drafter probabilities on the shared tokens
            q = torch.zeros(len(toks), self.V, dtype=qd.dtype, device=qd.device)
            q[:, self.map.target_ids] = qd[:, self.map.drafter_ids]  # [k, V_t]
        # The drafter view must stay aligned: TLI drafts are whole shared tokens, so the output bytes of an
        # accepted prefix are exactly the drafter tokens' bytes, and the next sync keeps them cached.
        if v.text[v.covered :]:  # the view lags (text ended inside a character): no draft this step
            return Draft(ids=[], n_drafter_tokens=len(toks), stop_reason="misaligned")
        return Draft(ids=ids, q=q, n_drafter_tokens=len(toks), stop_reason=reason)


def pair_round_trips(target_tok, drafter_tok, probes: list[str]) -> str | None:
    """None when the drafter can carry every probe text through its tokens and back; else why not."""
    d = text_codec(drafter_tok)
    for text in probes:
        if not d.round_trips(text):
            got = d.to_bytes(d.encode(text.encode())).decode("utf-8", "replace")
            return f"the drafter's tokenizer turns {text!r} into {got!r}"
    return None


__all__ = ["SlemProposer", "TliProposer", "TextCodec", "continuation_encoder", "complete_utf8", "pair_round_trips"]
