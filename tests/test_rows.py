"""Row validation: every bad record becomes an error row with a documented type; nothing raises."""
from __future__ import annotations

import pytest

from speccore.rows import ERROR_TYPES, Row, dedupe, make_row


@pytest.mark.parametrize("raw,error_type,message", [
    ({"prompt": ""}, "invalid_prompt", "empty or whitespace-only"),
    ({"prompt": "  \n\t"}, "invalid_prompt", "empty or whitespace-only"),
    ({"prompt": None}, "invalid_prompt", "prompt is None"),
    ({"prompt": 42}, "invalid_prompt", "must be a string, got int"),
    ({"prompt": b"\xff\xfeabc"}, "invalid_utf8", "not valid UTF-8"),
    ({"prompt": "a\ud800b"}, "invalid_utf8", "lone surrogate at character 1"),
    ({"prompt": "a\x00b"}, "invalid_prompt", "NUL byte at character 1"),
    ({"text": "hi"}, "missing_prompt", "neither a 'prompt' nor a 'messages'"),
    ({"messages": "hi"}, "invalid_messages", "non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "invalid_messages", "messages[0].role is 'robot'"),
    ({"messages": [{"role": "user"}]}, "invalid_messages", "'role' and 'content'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "invalid_messages", "last message is the assistant's"),
    ({"prompt": "x", "temperature": "hot"}, "invalid_param", "temperature must be a finite number, got 'hot'"),
    ({"prompt": "x", "temperature": -1}, "invalid_param", "temperature must be >= 0"),
    ({"prompt": "x", "top_p": 0}, "invalid_param", "top_p must be in (0, 1]"),
    ({"prompt": "x", "top_p": 1.5}, "invalid_param", "top_p must be in (0, 1]"),
    ({"prompt": "x", "max_new_tokens": 0}, "invalid_param", "max_new_tokens must be >= 1"),
    ({"prompt": "x", "max_new_tokens": -3}, "invalid_param", "max_new_tokens must be >= 1"),
    ({"prompt": "x", "max_new_tokens": 2.5}, "invalid_param", "max_new_tokens must be an integer"),
    ({"prompt": "x", "stop": 5}, "invalid_param", "stop must be a list of non-empty strings"),
    ({"prompt": "x", "stop": ["ok", ""]}, "invalid_param", "stop must be a list of non-empty strings"),
])
def test_bad_records_become_error_rows(raw, error_type, message):
    row = make_row(raw, "r1")
    assert row.row_id == "r1" and not row.ok
    assert row.error_type == error_type and row.error_type in ERROR_TYPES
    assert message in row.error_message


def test_good_records_normalise():
    r = make_row({"prompt": "hi", "stop": "###", "max_new_tokens": 8.0, "temperature": 0}, "a")
    assert r.ok and r.prompt == "hi" and r.stop == ("###",) and r.max_new_tokens == 8 and r.temperature == 0.0
    m = make_row({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}, "b")
    assert m.ok and m.messages == (("system", "s"), ("user", "u")) and m.prompt is None
    assert make_row({"prompt": b"caf\xc3\xa9"}, "c").prompt == "café"


def test_duplicate_ids_keep_every_row():
    rows = [Row("a", prompt="1"), Row("b", prompt="2"), Row("a", prompt="3"), Row("a", prompt="4")]
    out = list(dedupe(rows))
    assert [r.row_id for r in out] == ["a", "b", "a#dup1", "a#dup2"]
    assert [r.error_type for r in out] == [None, None, "duplicate_row_id", "duplicate_row_id"]
    assert "row_id 'a' already appeared" in out[2].error_message
