"""DuckDB over the run outputs: views `generations`, `steps` and `runs`, plus named queries.

The views read every committed Parquet file under the output dir (hidden temporary files never match
the glob), union columns by name across schema versions, and take run_id from the hive partition.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import duckdb

TABLES = {"generations": "shard-*.parquet", "steps": "shard-*.parquet", "runs": "manifest.parquet"}


def connect(data_dir: str | Path = "data") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per table; a table with no files yet is an empty view."""
    con = duckdb.connect()
    for table, pattern in TABLES.items():
        files = sorted(Path(data_dir).glob(f"{table}/run_id=*/{pattern}"))
        if files:
            glob = str(Path(data_dir) / table / "run_id=*" / pattern).replace("'", "''")
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{glob}', "
                        "hive_partitioning = false, union_by_name = true)")
        else:
            from . import store

            schema = {"generations": store.GENERATIONS, "steps": store.STEPS, "runs": store.RUNS}[table]
            con.register(table, schema.empty_table())
    return con


def named_queries() -> dict[str, str]:
    """The shipped SQL files (speccore/queries/*.sql), by file stem."""
    root = resources.files("speccore") / "queries"
    return {p.name[:-4]: p.read_text() for p in root.iterdir() if p.name.endswith(".sql")}


def query(sql_or_name: str, data_dir: str | Path = "data", params: dict | None = None):
    """Run ad-hoc SQL or a named query; returns a pyarrow Table."""
    sql = named_queries().get(sql_or_name, sql_or_name)
    con = connect(data_dir)
    try:
        return con.sql(sql, params=params or None).to_arrow_table()
    finally:
        con.close()


def run_summary(data_dir: str | Path, run_id: str) -> list[dict]:
    """One row per (target, drafter, algorithm, policy) of a run: rows, errors, tokens, tok/s, acceptance."""
    t = query("run_summary", data_dir, {"run_id": run_id})
    return [{k: _plain(v) for k, v in r.items()} for r in t.to_pylist()]


def _plain(v):
    """DuckDB sums are HUGEINT/DECIMAL; JSON consumers (Prefect artifacts) want int/float."""
    from decimal import Decimal

    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v
