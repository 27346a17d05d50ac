"""Turn a Row into target token ids without letting prompt text become control tokens.

A prompt that contains '<|im_end|>' as text must stay text: a user could otherwise close the turn and
forge a new one. Raw prompts are encoded with special-token splitting; chat rows are rendered with
sentinels in place of each message, so the template's own markup stays special while every message
body is encoded as plain text.
"""
from __future__ import annotations

import re

_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


def _encode(tokenizer, text: str, *, add_special_tokens: bool, allow_special: bool) -> list[int]:
    return list(
        tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=not allow_special)["input_ids"]
    )


def encode_row(tokenizer, row, allow_special: bool = False) -> list[int]:
    """Prompt ids for a valid Row: raw prompt as is (plus the tokenizer's BOS), or the chat template."""
    if row.messages is None:
        return _encode(tokenizer, row.prompt, add_special_tokens=True, allow_special=allow_special)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this row has messages but the target tokenizer has no chat template")
    placeholders = [{"role": role, "content": _SENTINEL.format(i)} for i, (role, _) in enumerate(row.messages)]
    rendered = tokenizer.apply_chat_template(placeholders, tokenize=False, add_generation_prompt=True)
    ids: list[int] = []
    pos = 0
    for m in _SENTINEL_RE.finditer(rendered):
        if m.start() > pos:  # template markup: its special tokens are real control tokens
            ids += _encode(tokenizer, rendered[pos : m.start()], add_special_tokens=False, allow_special=True)
        content = row.messages[int(m.group(1))][1]
        ids += _encode(tokenizer, content, add_special_tokens=False, allow_special=allow_special)
        pos = m.end()
    if pos < len(rendered):
        ids += _encode(tokenizer, rendered[pos:], add_special_tokens=False, allow_special=True)
    return ids
