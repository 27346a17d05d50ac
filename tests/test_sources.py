"""Prompt sources: every record becomes exactly one Row, bad ones as error rows, ids stable."""
from __future__ import annotations

import json
import shutil
import time
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from speccore import sources
from speccore.sources import SourceError, SourceReport, SourceSpec, SourceTruncatedWarning, fingerprint, iter_rows


def ids(rows):
    return [r.row_id for r in rows]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# ---------------------------------------------------------------- packaged HumanEval


def test_humaneval_all_rows_with_task_ids():
    rows = list(iter_rows(SourceSpec("humaneval")))
    assert len(rows) == 164
    assert rows[0].row_id == "HumanEval/0" and rows[-1].row_id == "HumanEval/163"
    assert all(r.ok and r.prompt and r.messages is None for r in rows)
    assert rows[0].prompt.startswith("from typing import List")  # the raw completion prompt, no template


def test_limit_is_lazy_and_takes_the_first_rows():
    report = SourceReport()
    rows = list(iter_rows(SourceSpec("humaneval", limit=5), report))
    assert ids(rows) == [f"HumanEval/{i}" for i in range(5)]
    assert report.n_records == 5 and report.n_rows == 5 and not report.complete


def test_sample_is_seeded_stable_and_in_source_order():
    order = {rid: i for i, rid in enumerate(ids(iter_rows(SourceSpec("humaneval"))))}
    a = ids(iter_rows(SourceSpec("humaneval", sample=20, seed=0)))
    assert len(a) == len(set(a)) == 20
    assert a == ids(iter_rows(SourceSpec("humaneval", sample=20, seed=0)))
    assert a != ids(iter_rows(SourceSpec("humaneval", sample=20, seed=1)))
    assert [order[r] for r in a] == sorted(order[r] for r in a)
    assert ids(iter_rows(SourceSpec("humaneval", sample=20, seed=0, limit=3))) == a[:3]
    assert len(list(iter_rows(SourceSpec("humaneval", sample=1000)))) == 164
    assert list(iter_rows(SourceSpec("humaneval", sample=0))) == []


# ---------------------------------------------------------------- JSONL


def test_field_mapping(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"qid": 7, "question": "What is 2+2?", "max_tokens": 16, "prompt": "not this one"},
        {"qid": "b", "text": "no question column"},
    ])
    spec = SourceSpec("jsonl", path, fields={"prompt": "question", "row_id": "qid", "max_new_tokens": "max_tokens"})
    ok, missing = list(iter_rows(spec))
    assert (ok.row_id, ok.prompt, ok.max_new_tokens) == ("7", "What is 2+2?", 16)
    assert (missing.row_id, missing.error_type) == ("b", "missing_prompt")
    assert "'question'" in missing.error_message and "['qid', 'text']" in missing.error_message


def test_jsonl_bad_lines_become_error_rows(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps({"row_id": "a", "prompt": "first"}).encode(),
        b'{"row_id": "b", "prompt": "broken',  # line 2: not JSON
        b"",  # blank lines are skipped and are not records
        b'{"row_id": "c", "prompt": "caf\xe9"}',  # line 4: latin-1 byte, not UTF-8
        json.dumps({"row_id": "a", "prompt": "again"}).encode(),  # duplicate id
        b"[1, 2]",  # line 6: JSON, but not an object
        json.dumps({"prompt": "no id", "temperature": -1}).encode(),  # line 7: bad parameter, derived id
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
    ]) + b"\n")
    report = SourceReport()
    rows = list(iter_rows(SourceSpec("file", str(path)), report))
    assert [(r.row_id, r.error_type) for r in rows] == [
        ("a", None), ("00000001", "invalid_prompt"), ("c", "invalid_utf8"), ("a#dup1", "duplicate_row_id"),
        ("00000004", "invalid_prompt"), ("00000005", "invalid_param"), ("00000006", None)]
    assert "line 2" in rows[1].error_message and "line 4" in rows[2].error_message
    assert "line 6" in rows[4].error_message
    assert rows[6].messages == (("user", "hi"),)
    assert report.n_records == 7 and report.complete
    assert report.errors == {"invalid_prompt": 2, "invalid_utf8": 1, "duplicate_row_id": 1, "invalid_param": 1}


def test_id_prefix_applies_to_every_row_id(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"row_id": "x", "prompt": "a"}, {"prompt": "b"}])
    assert ids(iter_rows(SourceSpec("jsonl", path, id_prefix="set1/"))) == ["set1/x", "set1/00000001"]


def test_sharegpt_records_in_any_file_kind(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "s1", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                       {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Later"}]},
        {"id": "s2", "conversations": [{"from": "gpt", "value": "Only the model speaks"}]},
        {"id": "s3", "conversations": [{"from": "human", "value": "ok"}, {"from": "gpt", "value": None}]},
    ])
    a, b, c = iter_rows(SourceSpec("jsonl", path))
    assert (a.row_id, a.messages) == ("s1", (("system", "Be brief."), ("user", "Hi")))
    assert (b.row_id, b.error_type) == ("s2", "invalid_messages") and "no human turn" in b.error_message
    assert (c.row_id, c.error_type) == ("s3", "invalid_messages")


# ---------------------------------------------------------------- CSV


def test_csv_ragged_row_and_parsed_parameters(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('row_id,prompt,max_new_tokens\nr1,"hello, world",8\nr2,too,many,fields\n\n'
                    'r3,"two\nlines",\nr4,x,lots\n')
    rows = list(iter_rows(SourceSpec("csv", str(path))))
    assert [(r.row_id, r.error_type) for r in rows] == [
        ("r1", None), ("00000001", "invalid_prompt"), ("r3", None), ("r4", "invalid_param")]
    assert rows[0].prompt == "hello, world" and rows[0].max_new_tokens == 8
    assert "line 3" in rows[1].error_message and "4 fields" in rows[1].error_message
    assert rows[2].prompt == "two\nlines" and rows[2].max_new_tokens is None


def test_csv_cells_holding_json_and_stop_strings(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('messages,stop,temperature\n"[{""role"": ""user"", ""content"": ""hi""}]",###,0.5\n'
                    '"[{""role"": ""user""}]","[""a"", ""b""]",\n')
    good, bad = iter_rows(SourceSpec("csv", str(path)))
    assert (good.messages, good.stop, good.temperature) == ((("user", "hi"),), ("###",), 0.5)
    assert bad.error_type == "invalid_messages"


def test_csv_without_the_prompt_column(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,question\n1,a\n2,b\n")
    rows = list(iter_rows(SourceSpec("csv", str(path))))
    assert [(r.row_id, r.error_type) for r in rows] == [("00000000", "missing_prompt"), ("00000001", "missing_prompt")]
    assert "['id', 'question']" in rows[0].error_message
    mapped = list(iter_rows(SourceSpec("csv", str(path), fields={"prompt": "question", "row_id": "id"})))
    assert [(r.row_id, r.prompt) for r in mapped] == [("1", "a"), ("2", "b")]


# ---------------------------------------------------------------- Parquet


def test_parquet_round_trip(tmp_path):
    table = pa.table({
        "row_id": ["p0", "p1", "p2"],
        "prompt": ["one", None, "three"],
        "messages": [None, [{"role": "user", "content": "two"}], None],
        "temperature": [0.0, 0.7, None],
        "unused": [b"x", b"y", b"z"],
    })
    path = tmp_path / "p.parquet"
    pq.write_table(table, path, row_group_size=2)
    rows = list(iter_rows(SourceSpec("file", str(path))))
    assert [(r.row_id, r.prompt, r.messages, r.temperature) for r in rows] == [
        ("p0", "one", None, 0.0), ("p1", None, (("user", "two"),), 0.7), ("p2", "three", None, None)]


def test_truncated_parquet_is_a_source_error_before_any_row(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": [f"prompt {i}" for i in range(100)]}), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SourceError) as e:
        iter_rows(SourceSpec("parquet", str(path)))  # raised by the call itself, not by iteration
    assert e.value.path == str(path) and "Parquet" in e.value.reason


def test_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        iter_rows(SourceSpec("jsonl", str(tmp_path / "nope.jsonl")))


# ---------------------------------------------------------------- ShareGPT (JSON array)


def sharegpt_bytes():
    records = [
        {"id": "a_0", "conversations": [{"from": "human", "value": "Grüße, 世界"}, {"from": "gpt", "value": "ok"}]},
        {"id": "b_0", "conversations": [{"from": "gpt", "value": "…"}, {"from": "human", "value": "¿y tú?"}]},
        {"id": "c_0", "conversations": [{"from": "human", "value": "this one is cut"}]},
    ]
    data = json.dumps(records, indent=2, ensure_ascii=False).encode("utf-8")
    third = data.index(b'{\n    "id": "c_0"')
    return data[: third + 40], data.rindex(b"}", 0, third) + 1, third  # cut inside the 3rd record


@pytest.mark.parametrize("chunk", [sources.CHUNK, 5])  # 5 bytes: records and characters span chunks
def test_truncated_sharegpt_fixture(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(sources, "CHUNK", chunk)
    data, last_end, third = sharegpt_bytes()
    path = tmp_path / "cut.json"
    path.write_bytes(data)
    report = SourceReport()
    with pytest.warns(SourceTruncatedWarning) as caught:
        rows = list(iter_rows(SourceSpec("sharegpt", str(path)), report))
    assert [(r.row_id, r.messages) for r in rows] == [
        ("a_0", (("user", "Grüße, 世界"),)), ("b_0", (("assistant", "…"), ("user", "¿y tú?")))]
    assert (report.truncated_at, report.broken_record_at, report.file_size) == (last_end, third, len(data))
    msg = str(caught[0].message)
    assert f"2 complete records recovered, the last ending at byte {last_end}" in msg
    assert f"inside a record starting at byte {third} (file is {len(data)} bytes)" in msg
    assert report.warnings == [msg]


def test_json_array_missing_close_and_syntax_error(tmp_path):
    path = tmp_path / "open.json"
    path.write_text('[{"prompt": "a"}, {"prompt": "b"},\n')
    report = SourceReport()
    with pytest.warns(SourceTruncatedWarning, match="closing"):
        assert len(list(iter_rows(SourceSpec("file", str(path)), report))) == 2
    assert report.broken_record_at is None and report.truncated_at == path.read_text().rindex("},") + 1
    path.write_text('[{"prompt": "a"}, {"prompt": "b" "c"}, {"prompt": "d"}]')
    with pytest.raises(SourceError, match="at byte 18"):
        list(iter_rows(SourceSpec("file", str(path))))
    path.write_text('{"prompt": "a"}')
    with pytest.raises(SourceError, match="JSON array"):
        iter_rows(SourceSpec("file", str(path)))


def test_packaged_sharegpt_recovers_17671_records():
    report = SourceReport()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = sum(1 for _ in iter_rows(SourceSpec("sharegpt"), report))
    elapsed = time.perf_counter() - t0
    assert n == report.n_records == report.n_rows == 17671
    assert (report.truncated_at, report.broken_record_at, report.file_size) == (125506641, 125506645, 125509632)
    assert [w.category for w in caught] == [SourceTruncatedWarning]
    assert report.errors["duplicate_row_id"] > 0  # the file repeats some ids; each is kept, renamed
    assert elapsed < 30, elapsed


# ---------------------------------------------------------------- Hugging Face datasets


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"qid": ["q1", "q2"], "question": ["hi", " "]}).save_to_disk(str(tmp_path / "ds"))
    rows = list(iter_rows(SourceSpec("hf", str(tmp_path / "ds"), fields={"prompt": "question", "row_id": "qid"})))
    assert [(r.row_id, r.prompt, r.error_type) for r in rows] == [("q1", "hi", None), ("q2", None, "invalid_prompt")]
    dd = datasets.DatasetDict({"test": datasets.Dataset.from_dict({"prompt": ["a", "b", "c"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert ids(iter_rows(SourceSpec("hf", str(tmp_path / "dd"), split="test"))) == ["00000000", "00000001", "00000002"]
    with pytest.raises(SourceError, match="no split 'train'"):
        iter_rows(SourceSpec("hf", str(tmp_path / "dd")))


# ---------------------------------------------------------------- spec and fingerprint


def test_fingerprint_follows_content_and_spec_not_location(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "x"}, {"prompt": "y"}])
    (tmp_path / "moved").mkdir()
    b = shutil.copy(a, tmp_path / "moved" / "b.jsonl")
    assert fingerprint(SourceSpec("jsonl", a)) == fingerprint(SourceSpec("file", b))
    assert fingerprint(SourceSpec("jsonl", a)) != fingerprint(SourceSpec("jsonl", a, sample=1))
    assert fingerprint(SourceSpec("jsonl", a, sample=1, seed=1)) != fingerprint(SourceSpec("jsonl", a, sample=1))
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": "x"}, {"prompt": "z"}])
    assert fingerprint(SourceSpec("jsonl", a)) != fingerprint(SourceSpec("jsonl", b))
    assert len(fingerprint(SourceSpec("humaneval"))) == 16


def test_spec_validation():
    spec = SourceSpec("jsonl", "x.jsonl", fields={"prompt": "q"})
    assert hash(spec) == hash(SourceSpec("jsonl", "x.jsonl", fields={"prompt": "q"}))
    for bad in (dict(kind="tsv", path="x.tsv"), dict(kind="file", path="x.txt"), dict(kind="jsonl"),
                dict(kind="jsonl", path="x.jsonl", fields={"question": "q"}), dict(kind="csv", path="x.csv", limit=-1)):
        with pytest.raises(ValueError):
            SourceSpec(**bad)
