"""The input row: one prompt to generate for, normalised from any source.

A malformed input record never raises here: it becomes a Row that carries `error_type` and
`error_message`, so the engine writes it out as status=error and no row is ever lost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

# The documented error types (README "Row errors"). Keep this list and the README in step.
ERROR_TYPES = (
    "missing_prompt",  # no prompt and no messages field in the record
    "invalid_prompt",  # prompt is None, not a string, empty or whitespace-only
    "invalid_utf8",  # bytes that do not decode as UTF-8, or lone surrogates
    "invalid_messages",  # messages not a list of {role, content} with known roles
    "invalid_param",  # a per-row parameter of the wrong type or out of range
    "duplicate_row_id",  # a second record with a row_id already seen in this source
    "prompt_too_long",  # prompt tokens + max_new_tokens exceed the target's context
    "generation_error",  # an exception inside this row's generation
)

ROLES = ("system", "user", "assistant")
MIN_TEMPERATURE = 1e-5  # below this (but above 0), logits / T overflow float64 and sampling turns to NaN
MAX_SEED = 2**63 - 1  # a row's seed seeds torch.Generator and lands in the int64 `seed` column
PARAM_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")


@dataclass(frozen=True)
class Row:
    """One prompt. Exactly one of `prompt` / `messages` is set on a valid row."""

    row_id: str
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # ((role, content), ...)
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    error_type: str | None = None
    error_message: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.error_type is None

    def with_error(self, error_type: str, message: str) -> "Row":
        assert error_type in ERROR_TYPES, error_type
        return Row(row_id=self.row_id, error_type=error_type, error_message=message, meta=self.meta)


class RowError(ValueError):
    """A per-row input problem; `error_type` is one of ERROR_TYPES."""

    def __init__(self, error_type: str, message: str):
        assert error_type in ERROR_TYPES, error_type
        super().__init__(message)
        self.error_type = error_type


def _text(value: Any, what: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RowError("invalid_utf8", f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(value, str):
        raise RowError("invalid_prompt", f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RowError("invalid_utf8", f"{what} holds a lone surrogate at character {e.start}") from None
    if "\x00" in value:
        raise RowError("invalid_prompt", f"{what} contains a NUL byte at character {value.index(chr(0))}")
    if not value.strip():
        raise RowError("invalid_prompt", f"{what} is empty or whitespace-only")
    return value


def _messages(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise RowError("invalid_messages", "messages must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise RowError("invalid_messages", f"messages[{i}] must be a mapping with 'role' and 'content'")
        role = m["role"]
        if role not in ROLES:
            raise RowError("invalid_messages", f"messages[{i}].role is {role!r}; expected one of {ROLES}")
        try:
            content = _text(m["content"], f"messages[{i}].content")
        except RowError as e:
            kind = e.error_type if e.error_type == "invalid_utf8" else "invalid_messages"
            raise RowError(kind, str(e)) from None
        out.append((role, content))
    if out[-1][0] == "assistant":
        raise RowError("invalid_messages", "the last message is the assistant's; nothing is left to generate")
    return tuple(out)


def _int(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RowError("invalid_param", f"{name} must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise RowError("invalid_param", f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise RowError("invalid_param", f"{name} must be <= {hi}, got {value}")
    return value


def _float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RowError("invalid_param", f"{name} must be a finite number, got {value!r}")
    return float(value)


def _params(raw: Mapping[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = {}
    p["max_new_tokens"] = _int(raw.get("max_new_tokens"), "max_new_tokens", lo=1)
    t = _float(raw.get("temperature"), "temperature")
    if t is not None and t < 0:
        raise RowError("invalid_param", f"temperature must be >= 0, got {t}")
    if t is not None and 0 < t < MIN_TEMPERATURE:
        raise RowError("invalid_param", f"temperature must be 0 (greedy) or >= {MIN_TEMPERATURE}, got {t}")
    p["temperature"] = t
    top_p = _float(raw.get("top_p"), "top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise RowError("invalid_param", f"top_p must be in (0, 1], got {top_p}")
    p["top_p"] = top_p
    p["top_k"] = _int(raw.get("top_k"), "top_k", lo=0)
    p["seed"] = _int(raw.get("seed"), "seed", lo=0, hi=MAX_SEED)
    stop = raw.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise RowError("invalid_param", f"stop must be a list of non-empty strings, got {stop!r}")
        stop = tuple(stop)
    p["stop"] = stop
    return p


def make_row(raw: Mapping[str, Any], row_id: str) -> Row:
    """Normalise one raw record (already field-mapped) into a Row; bad input becomes an error Row."""
    try:
        has_prompt, has_messages = "prompt" in raw, "messages" in raw and raw["messages"] is not None
        if not has_prompt and not has_messages:
            raise RowError("missing_prompt", "the record has neither a 'prompt' nor a 'messages' field")
        params = _params(raw)
        if has_messages:
            return Row(row_id=row_id, messages=_messages(raw["messages"]), **params)
        if raw["prompt"] is None:
            raise RowError("invalid_prompt", "prompt is None")
        return Row(row_id=row_id, prompt=_text(raw["prompt"], "prompt"), **params)
    except RowError as e:
        return Row(row_id=row_id, error_type=e.error_type, error_message=str(e))


def dedupe(rows):
    """Yield rows, turning a repeated row_id into an error row with a unique id (no row is lost).

    The repeat keeps its place and gets the id '<row_id>#dup<N>' so that every input record still
    appears exactly once in the output, and the error names the original id. Every id handed out is
    remembered, so a later source id that equals one (a real 'a#dup1' after two 'a') is a repeat too:
    output ids stay unique whatever the source holds.
    """
    seen: dict[str, int] = {}
    for row in rows:
        n = seen.get(row.row_id, 0)
        seen[row.row_id] = n + 1
        if n == 0:
            yield row
            continue
        rid = f"{row.row_id}#dup{n}"
        while rid in seen:
            n += 1
            rid = f"{row.row_id}#dup{n}"
        seen[rid] = 1
        dup = Row(row_id=rid, meta=row.meta)
        yield dup.with_error("duplicate_row_id", f"row_id {row.row_id!r} already appeared earlier in the source")
