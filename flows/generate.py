"""The generate flow: config -> shard plan -> generate shards (skipping committed ones) -> summary.

Run it with Hydra overrides:  python -m flows.generate dataset.limit=4 sampling=greedy
Sweeps use Hydra multirun:    python -m flows.generate -m drafter=smollm2-135m,gemma-3-270m
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "speccore")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here; no telemetry anywhere

import hydra  # noqa: E402
from prefect import flow, get_run_logger, unmapped  # noqa: E402
from prefect.futures import as_completed  # noqa: E402

from speccore import run  # noqa: E402
from speccore.progress import Progress  # noqa: E402
from speccore.config import RunConfig, from_dict, from_omegaconf  # noqa: E402
from tasks.generate_shard import generate_shard  # noqa: E402
from tasks.summarise import summarise  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"


def task_runner(cfg: RunConfig):
    """The task runner named by runner=: local threads, Dask or Ray.

    Dask and Ray start a local cluster of runner.max_workers single-threaded worker processes bound
    to 127.0.0.1 with no dashboard, unless runner.address names an existing scheduler or cluster.
    Each worker process loads the models once and pins one device (speccore.device).
    """
    kind = cfg.runner.kind
    if kind == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=cfg.runner.max_workers)
    try:
        if kind == "dask":
            from prefect_dask import DaskTaskRunner

            if cfg.runner.address:
                return DaskTaskRunner(address=cfg.runner.address)
            return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.runner.max_workers, "threads_per_worker": 1,
                                                  "processes": True, "host": "127.0.0.1", "dashboard_address": None})
        from prefect_ray import RayTaskRunner

        if cfg.runner.address:
            return RayTaskRunner(address=cfg.runner.address)
        return RayTaskRunner(init_kwargs={
            "num_cpus": cfg.runner.max_workers, "include_dashboard": False, "_node_ip_address": "127.0.0.1",
            "runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}},
            "log_to_driver": True, "configure_logging": False})
    except ImportError as e:
        raise RuntimeError(f"runner={kind} needs its extra: pip install 'speccore[{kind}]' ({e})") from None


def remote_options(cfg: RunConfig):
    """Per-task resources: under Ray, a task on cuda asks for one GPU, and Ray pins it (CUDA_VISIBLE_DEVICES)."""
    if cfg.runner.kind == "ray" and cfg.hardware.kind in ("cuda", "hpu"):
        from prefect_ray.context import remote_options as ray_options

        return ray_options(**({"num_gpus": 1} if cfg.hardware.kind == "cuda" else {"resources": {"HPU": 1}}))
    return contextlib.nullcontext()


@flow(name="speccore-generate", log_prints=True)
def generate(config: dict) -> dict:
    cfg = from_dict(config)
    logger = get_run_logger()
    plan = run.prepare(cfg)
    run.write_pending_manifest(cfg, plan)
    logger.info("run %s: %d rows in %d shards, %d already committed", plan.run_id, plan.n_rows,
                len(plan.shards), len(plan.committed))
    with remote_options(cfg):
        futures = generate_shard.map(unmapped(cfg.to_dict()), unmapped(plan.run_id), list(plan.todo))
    done_rows = plan.n_rows - sum(s.size for s in plan.todo)
    with Progress(plan.n_rows, done_rows, desc=f"run {plan.run_id}") as bar:
        done = []
        for f in as_completed(futures):
            done.append(f.result())
            bar.update(done[-1])
    summary = summarise(cfg.to_dict(), plan)
    logger.info("run %s done: %d shards generated now, output in %s", plan.run_id, len(done), cfg.run.output_dir)
    return {"run_id": plan.run_id, "shards": len(plan.shards), "generated": len(done), "summary": summary}


def run_config(cfg: RunConfig) -> dict:
    """Run the flow for one config on the task runner its runner= group names."""
    return generate.with_options(task_runner=task_runner(cfg))(cfg.to_dict())


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(dc) -> None:
    import logging

    for noisy in ("httpx", "httpcore"):  # one line per API call to the local Prefect server
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run_config(from_omegaconf(dc))
    print(f"run_id={result['run_id']}")
    for row in result["summary"]:
        print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
