"""Prefect task: generate one shard and commit it.

Resource class: one device (CPU cores or one GPU) and the RAM of target + drafter, held by the worker
process, which loads the models once and keeps them for every shard it runs.
Idempotent: a committed shard is skipped, and a shard commits atomically, so retries are safe.
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from speccore.config import from_dict
from speccore.shards import Shard
from speccore.worker import run_shard


@task(name="generate-shard", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE,
      task_run_name="shard-{shard.index}")
def generate_shard(config: dict, run_id: str, shard: Shard) -> dict:
    return run_shard(from_dict(config), run_id, shard)
