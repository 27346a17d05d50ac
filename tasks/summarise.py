"""Prefect task: write the run manifest and the summary artifacts (a table and the report's summary).

Resource class: light (reads the run's Parquet with DuckDB). Idempotent: it rewrites the same manifest
and publishes fresh artifacts.
"""
from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from speccore import analytics, report, run
from speccore.config import from_dict


@task(name="summarise", cache_policy=NO_CACHE)
def summarise(config: dict, plan: run.RunPlan) -> list[dict]:
    cfg = from_dict(config)
    run.finish(cfg, plan)
    rows = analytics.run_summary(cfg.run.output_dir, plan.run_id)
    key = f"run-{plan.run_id}".lower().replace("_", "-").replace(".", "-")[:90]
    create_table_artifact(key=key, table=rows, description=f"speccore run {plan.run_id}")
    if rows:  # a run with no committed rows has nothing to report
        md = report.summary_markdown(report.collect(cfg.run.output_dir, [plan.run_id]))
        create_markdown_artifact(key=f"{key}-report", markdown=md, description=f"speccore report {plan.run_id}")
    return rows
