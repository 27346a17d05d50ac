"""Parquet output: explicit schemas, hive partitions by run, atomic shard commits.

Layout under the output dir: `<table>/run_id=<id>/shard-<NNNNN>.parquet` for generations and steps,
`runs/run_id=<id>/manifest.parquet` for the run. A shard is committed once its generations file
exists; steps are written first, so a committed shard always has its steps. Each file is written to a
temporary name in the same directory, fsynced and renamed, so no reader ever sees half a file.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .config import check_run_id
from .durable import fsync_dir, hold

SCHEMA_VERSION = 1

GENERATIONS = pa.schema([
    ("schema_version", pa.int16()),
    ("run_id", pa.string()),
    ("shard", pa.int32()),
    ("row_id", pa.string()),
    ("status", pa.string()),
    ("error_type", pa.string()),
    ("error_message", pa.string()),
    ("output_text", pa.string()),
    ("output_ids", pa.list_(pa.int32())),
    ("n_prompt_tokens", pa.int32()),
    ("n_output_tokens", pa.int32()),
    ("finish_reason", pa.string()),
    ("target", pa.string()),
    ("drafter", pa.string()),
    ("algorithm", pa.string()),
    ("lookahead_policy", pa.string()),
    ("device", pa.string()),
    ("wall_s", pa.float64()),
    ("draft_s", pa.float64()),
    ("verify_s", pa.float64()),
    ("steps", pa.int32()),
    ("drafted", pa.int32()),
    ("accepted", pa.int32()),
    ("seed", pa.int64()),
    ("fallback", pa.string()),
    ("batch", pa.int32()),
])

STEPS = pa.schema([
    ("schema_version", pa.int16()),
    ("run_id", pa.string()),
    ("shard", pa.int32()),
    ("row_id", pa.string()),
    ("step", pa.int32()),
    ("k", pa.int32()),
    ("drafted", pa.int32()),
    ("drafted_drafter", pa.int32()),
    ("accepted", pa.int32()),
    ("stop_reason", pa.string()),
    ("draft_ms", pa.float64()),
    ("verify_ms", pa.float64()),
    ("batch_size", pa.int32()),
    ("decision", pa.string()),  # JSON: the lookahead policy's choice and its inputs
])

RUNS = pa.schema([
    ("schema_version", pa.int16()),
    ("run_id", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("config_yaml", pa.string()),
    ("config_hash", pa.string()),
    ("versions", pa.string()),  # JSON {package: version}
    ("git_sha", pa.string()),
    ("target", pa.string()),
    ("target_revision", pa.string()),
    ("drafter", pa.string()),
    ("drafter_revision", pa.string()),
    ("model_files", pa.string()),  # JSON {model: {file: sha256}}
    ("dataset", pa.string()),
    ("source_report", pa.string()),  # JSON facts about the source (e.g. a truncated file)
    ("device", pa.string()),
    ("price_per_hour", pa.float64()),
    ("n_shards", pa.int32()),
    ("n_rows", pa.int64()),
])


def run_dir(out: str | Path, table: str, run_id: str) -> Path:
    """Every output path is built here: a run id that could climb out of the output dir is refused."""
    return Path(out) / table / f"run_id={check_run_id(run_id)}"


def shard_path(out: str | Path, table: str, run_id: str, shard: int) -> Path:
    return run_dir(out, table, run_id) / f"shard-{shard:05d}.parquet"


def write_atomic(table: pa.Table, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write `table` to `path` so that the path either does not exist or holds the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in (metadata or {}).items()}}
    table = table.replace_schema_metadata(meta)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:  # disk full (ENOSPC), file too large (EFBIG), I/O error: name the file not committed
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        if tmp.exists():
            tmp.unlink()


def _table(records: list[dict], schema: pa.Schema) -> pa.Table:
    cols = {name: [r.get(name) for r in records] for name in schema.names}
    return pa.Table.from_pydict(cols, schema=schema)


def write_shard(out, run_id: str, shard: int, results, steps, common: dict, metadata: dict[str, str]) -> Path:
    """Commit one shard: steps first, then generations (whose presence marks the shard committed)."""
    base = {"schema_version": SCHEMA_VERSION, "run_id": run_id, "shard": shard}
    step_recs = [{**base, **asdict(s)} for s in steps]
    write_atomic(_table(step_recs, STEPS), shard_path(out, "steps", run_id, shard), metadata)
    hold(f"shard-{shard}:steps-written")
    gen_recs = [{**base, **common, **asdict(r)} for r in results]
    path = shard_path(out, "generations", run_id, shard)
    write_atomic(_table(gen_recs, GENERATIONS), path, metadata)
    return path


def committed_shards(out, run_id: str) -> set[int]:
    d = run_dir(out, "generations", run_id)
    if not d.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in d.glob("shard-*.parquet")}


def write_manifest(out, record: dict) -> Path:
    rec = {"schema_version": SCHEMA_VERSION, **record}
    path = run_dir(out, "runs", record["run_id"]) / "manifest.parquet"
    write_atomic(_table([rec], RUNS), path, {"speccore.schema_version": str(SCHEMA_VERSION)})
    js = path.parent / "manifest.json"
    tmp = js.with_name(f".manifest.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(rec, default=str, indent=2))
    os.replace(tmp, js)
    return path


def read_manifest(out, run_id: str) -> dict | None:
    path = run_dir(out, "runs", run_id) / "manifest.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())
