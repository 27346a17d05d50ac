"""DuckDB over the run outputs: views `generations`, `steps`, `runs` and `batches`, plus named queries.

The views read every committed Parquet file under the output dir (hidden temporary files never match
the glob), union columns by name across schema versions, and take run_id from the files themselves.

Two rules live here, once, for every query:
- `batches`: one row per batch of a shard (status ok rows only). Rows of one batch run together, so
  their wall times overlap: a batch costs its longest row (and that row also carries the batch's whole
  draft and verify time, as it was active at every step). A run's device time is the sum of its batches.
- prompt-length buckets (`prompt_bucket(n)` and its sort key `prompt_bucket_lo(n)`): PROMPT_BUCKETS.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Iterable

import duckdb

TABLES = {"generations": "shard-*.parquet", "steps": "shard-*.parquet", "runs": "manifest.parquet"}

# Prompt-length buckets, in target tokens: [0, 128), [128, 512), [512, 2048), [2048, inf).
# Short chat turns / code stubs, typical prompts, long documents, very long contexts.
PROMPT_BUCKETS = (128, 512, 2048)

BATCHES_VIEW = """
CREATE VIEW batches AS
SELECT run_id, shard, batch, any_value(device) AS device,
       max(wall_s) AS wall_s, max(draft_s) AS draft_s, max(verify_s) AS verify_s,
       sum(n_output_tokens) AS output_tokens, count(*) AS rows
FROM generations WHERE status = 'ok'
GROUP BY run_id, shard, batch
"""


def _bucket_macros() -> list[str]:
    edges = PROMPT_BUCKETS
    labels = [f"<{edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]
    whens = " ".join(f"WHEN n < {e} THEN '{lab}'" for e, lab in zip(edges, labels))
    lows = " ".join(f"WHEN n < {e} THEN {lo}" for e, lo in zip(edges, (0,) + edges))
    return [f"CREATE MACRO prompt_bucket(n) AS CASE {whens} ELSE '{labels[-1]}' END",
            f"CREATE MACRO prompt_bucket_lo(n) AS CASE {lows} ELSE {edges[-1]} END",
            # a run's dataset (manifest JSON) as kind[:name or file name], e.g. humaneval, file:x.jsonl
            "CREATE MACRO dataset_label(d) AS json_extract_string(d, '$.kind') || coalesce(':' || "
            "json_extract_string(d, '$.name'), ':' || regexp_extract(json_extract_string(d, '$.path'), "
            "'[^/]+$'), '')"]


def run_files(data_dir: str | Path, table: str, run_ids: Iterable[str] | None = None) -> list[Path]:
    """The table's files. For `steps`, only those of committed shards: a shard commits when its
    generations file exists, and a writer killed between the two files leaves a steps file alone."""
    root = Path(data_dir) / table
    if run_ids is None:
        files = sorted(root.glob(f"run_id=*/{TABLES[table]}"))
    else:
        files = [p for r in run_ids for p in sorted((root / f"run_id={r}").glob(TABLES[table]))]
    if table == "steps":
        gen = Path(data_dir) / "generations"
        files = [p for p in files if (gen / p.parent.name / p.name).exists()]
    return files


def list_runs(data_dir: str | Path) -> list[str]:
    """Runs with committed rows under data_dir, oldest id first."""
    return sorted({p.parent.name.split("=", 1)[1] for p in run_files(data_dir, "generations")})


def connect(data_dir: str | Path = "data", run_ids: Iterable[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per table (only `run_ids`' files when given); a table with
    no files yet is an empty view."""
    ids = None if run_ids is None else list(run_ids)
    con = duckdb.connect()
    for table in TABLES:
        files = run_files(data_dir, table, ids)
        if files:
            listed = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listed}], "
                        "hive_partitioning = false, union_by_name = true)")
        else:
            from . import store

            schema = {"generations": store.GENERATIONS, "steps": store.STEPS, "runs": store.RUNS}[table]
            con.register(table, schema.empty_table())
    con.execute(BATCHES_VIEW)
    for macro in _bucket_macros():
        con.execute(macro)
    return con


def named_queries() -> dict[str, str]:
    """The shipped SQL files (speccore/queries/*.sql), by file stem."""
    root = resources.files("speccore") / "queries"
    return {p.name[:-4]: p.read_text() for p in root.iterdir() if p.name.endswith(".sql")}


def sql_text(sql_or_name: str) -> str:
    return named_queries().get(sql_or_name, sql_or_name)


def query(sql_or_name: str, data_dir: str | Path = "data", params: dict | None = None,
          run_ids: Iterable[str] | None = None):
    """Run ad-hoc SQL or a named query (over `run_ids` only, when given); returns a pyarrow Table."""
    con = connect(data_dir, run_ids)
    try:
        return con.sql(sql_text(sql_or_name), params=params or None).to_arrow_table()
    finally:
        con.close()


def records(con: duckdb.DuckDBPyConnection, sql_or_name: str, params: dict | None = None) -> list[dict]:
    """A query's rows as plain Python dicts (ints and floats, not DuckDB's HUGEINT/DECIMAL)."""
    t = con.sql(sql_text(sql_or_name), params=params or None).to_arrow_table()
    return [{k: _plain(v) for k, v in r.items()} for r in t.to_pylist()]


def run_summary(data_dir: str | Path, run_id: str) -> list[dict]:
    """One row per (target, drafter, algorithm, policy) of a run: rows, errors, tokens, tok/s, acceptance."""
    con = connect(data_dir, [run_id])
    try:
        return records(con, "run_summary", {"run_id": run_id})
    finally:
        con.close()


def _plain(v):
    """DuckDB sums are HUGEINT/DECIMAL; JSON consumers (Prefect artifacts) want int/float."""
    from decimal import Decimal

    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v
