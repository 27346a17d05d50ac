"""Prefect task: write the run manifest and a summary artifact.

Resource class: light (reads the run's Parquet with DuckDB). Idempotent: it rewrites the same manifest
and publishes a fresh artifact.
"""
from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from speccore import analytics, run
from speccore.config import from_dict


@task(name="summarise", cache_policy=NO_CACHE)
def summarise(config: dict, plan: run.RunPlan) -> list[dict]:
    cfg = from_dict(config)
    run.finish(cfg, plan)
    rows = analytics.run_summary(cfg.run.output_dir, plan.run_id)
    create_table_artifact(key=f"run-{plan.run_id}".lower().replace("_", "-").replace(".", "-")[:100],
                          table=rows, description=f"speccore run {plan.run_id}")
    return rows
