"""Scheduled bulk jobs: the generate flow as a Prefect deployment on a cron schedule.

The deployment's one parameter is a list of Hydra overrides, composed inside the run exactly as on
the command line, so a scheduled job and `python -m flows.generate <overrides>` run the same config.

Serve it (this process polls the Prefect API and runs each scheduled or triggered run):
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy --name nightly \\
        --cron "0 2 * * *" -- dataset=sharegpt dataset.limit=1000 run.output_dir=/data/speccore
Trigger one now, with other overrides if you like:
    prefect deployment run speccore-job/nightly --params '{"overrides": ["dataset.limit=10"]}'
"""
from __future__ import annotations

import argparse

from prefect import flow

from flows.generate import CONF_DIR, run_config


@flow(name="speccore-job", log_prints=True)
def generate_job(overrides: list[str] | None = None) -> dict:
    """Compose conf/ with `overrides` (Hydra syntax) and run the generate flow on its task runner."""
    from speccore.config import compose

    result = run_config(compose(list(overrides or []), config_dir=CONF_DIR))
    print(f"run_id={result['run_id']}")
    return {"run_id": result["run_id"], "shards": result["shards"], "generated": result["generated"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    p.add_argument("--name", default="nightly", help="deployment name (speccore-job/<name>)")
    p.add_argument("--cron", default="0 2 * * *", help="cron schedule, in --timezone")
    p.add_argument("--timezone", default="UTC")
    p.add_argument("--paused", action="store_true", help="register the schedule paused (trigger runs by hand)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, the deployment's default parameters")
    a = p.parse_args(argv)
    from prefect.client.schemas.schedules import CronSchedule

    generate_job.serve(name=a.name, schedules=[CronSchedule(cron=a.cron, timezone=a.timezone)], paused=a.paused,
                       parameters={"overrides": a.overrides}, tags=["speccore"])


if __name__ == "__main__":
    main()
