"""What one worker does for one shard: load models once per process, generate, commit atomically.

This is plain library code: Prefect tasks call it, and so can a notebook. Only small frozen values
(the RunConfig, the run id, a Shard) cross the process boundary; models stay in the worker.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from pathlib import Path

from .config import RunConfig, config_hash
from .device import resolve_device
from .engine import Engine
from .shards import Shard
from . import store

log = logging.getLogger(__name__)

_MODELS: dict[tuple, object] = {}  # (ref, dtype, device, trust_remote_code) -> LoadedModel, per process


def get_model(ref: str, dtype: str, device: str, trust_remote_code: bool = False):
    from .models import load_model

    key = (ref, dtype, device, trust_remote_code)
    if key not in _MODELS:
        t = time.perf_counter()
        _MODELS[key] = load_model(ref, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        log.info("loaded %s (%s, %s) in %.1fs", ref, dtype, device, time.perf_counter() - t)
    return _MODELS[key]


def source_spec(cfg: RunConfig):
    from .sources import SourceSpec

    names = [f.name for f in dataclasses.fields(SourceSpec)]  # DatasetConfig holds these and prompt options
    return SourceSpec(**{n: getattr(cfg.dataset, n) for n in names})


def shard_rows(cfg: RunConfig, shard: Shard) -> list:
    from .sources import iter_rows

    return list(itertools.islice(iter_rows(source_spec(cfg)), shard.start, shard.stop))


_ENGINES: dict[tuple, Engine] = {}  # per process: building a cross-vocab proposer costs seconds


def build_engine(cfg: RunConfig) -> Engine:
    """The engine for this config (built once per process): target plus the proposer it asks for."""
    key = (config_hash(cfg), cfg.runner.batch_size)
    if key not in _ENGINES:
        _ENGINES[key] = _build_engine(cfg)
    return _ENGINES[key]


def _build_engine(cfg: RunConfig) -> Engine:
    device = resolve_device(cfg.hardware.kind, cfg.hardware.threads)
    target = get_model(cfg.target.ref, cfg.target_dtype(), device, cfg.target.trust_remote_code)
    proposer, policy_factory, algorithm = None, None, "none"
    if cfg.drafter.kind != "none" and cfg.speculation.algorithm != "none":
        from .speculate import make_proposer

        drafter = None
        if cfg.drafter.kind == "model":
            drafter = get_model(cfg.drafter.ref, cfg.drafter_dtype(), device, cfg.drafter.trust_remote_code)
        proposer, policy_factory, algorithm = make_proposer(cfg, target, drafter)
    return Engine(target, proposer=proposer, policy_factory=policy_factory, sampling=cfg.sampling,
                  batch_size=cfg.runner.batch_size, run_seed=cfg.run.seed,
                  allow_special_tokens=cfg.dataset.allow_special_tokens, algorithm=algorithm)


def run_shard(cfg: RunConfig, run_id: str, shard: Shard) -> dict:
    """Generate and commit one shard; idempotent (a committed shard is left as it is)."""
    out = Path(cfg.run.output_dir)
    path = store.shard_path(out, "generations", run_id, shard.index)
    if path.exists():
        return {"shard": shard.index, "skipped": True, "rows": shard.size}
    rows = shard_rows(cfg, shard)
    engine = build_engine(cfg)
    t = time.perf_counter()
    results, steps = engine.generate(rows)
    wall = time.perf_counter() - t
    common = {"target": cfg.target.name, "drafter": cfg.drafter.name, "device": cfg.hardware.kind}
    meta = {"speccore.schema_version": str(store.SCHEMA_VERSION), "speccore.run_id": run_id,
            "speccore.config_hash": config_hash(cfg)}
    store.write_shard(out, run_id, shard.index, results, steps, common, meta)
    n_tok = sum(r.n_output_tokens for r in results)
    ok = sum(r.status == "ok" for r in results)
    log.info("shard %d: %d rows (%d ok), %d tokens in %.1fs (%.2f tok/s)", shard.index, len(results), ok,
             n_tok, wall, n_tok / wall if wall else 0.0)
    return {"shard": shard.index, "skipped": False, "rows": len(results), "ok": ok, "tokens": n_tok, "wall_s": wall}
