"""What one worker does for one shard: load models once per process, generate, commit atomically.

This is plain library code: Prefect tasks call it, and so can a notebook. Only small frozen values
(the RunConfig, the run id, a Shard) cross the process boundary; models stay in the worker.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
from pathlib import Path

from .config import RunConfig, config_hash
from .device import pin_worker_device, resolve_device, worker_slot
from .durable import hold
from .engine import Engine
from .shards import Shard
from . import store

log = logging.getLogger(__name__)

_MODELS: dict[tuple, object] = {}  # (ref, dtype, device, trust_remote_code, prepack, int8) -> LoadedModel, per process
_MODELS_LOCK = threading.Lock()


def get_model(ref: str, dtype: str, device: str, trust_remote_code: bool = False, prepack: bool = False,
              int8: bool = False):
    from .models import load_model

    key = (ref, dtype, device, trust_remote_code, prepack, int8)
    with _MODELS_LOCK:  # two shard threads starting together load a model once, not twice
        if key not in _MODELS:
            t = time.perf_counter()
            _MODELS[key] = load_model(ref, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                      prepack=prepack, int8=int8)
            log.info("loaded %s (%s, %s) in %.1fs", ref, dtype, device, time.perf_counter() - t)
    return _MODELS[key]


def source_spec(cfg: RunConfig):
    from .sources import SourceSpec

    names = [f.name for f in dataclasses.fields(SourceSpec)]  # DatasetConfig holds these and prompt options
    return SourceSpec(**{n: getattr(cfg.dataset, n) for n in names})


_CURSORS: dict[tuple, tuple[int, object]] = {}  # (source spec, file stat) -> (next position, row iterator)
_CURSORS_LOCK = threading.Lock()


def shard_rows(cfg: RunConfig, shard: Shard) -> list:
    """Rows [start, stop) of the source, in source order.

    A worker mostly runs its shards in ascending order, so it keeps its place in the source between
    shards: one pass over the source per worker instead of one (growing) pass per shard. A shard
    before the cursor, or a source file that changed, starts a fresh pass from the top.
    """
    from .sources import iter_rows

    spec = source_spec(cfg)
    try:
        st = os.stat(spec.path) if spec.path else None
        key = (spec, st and (st.st_ino, st.st_size, st.st_mtime_ns))
    except OSError:
        key = (spec, None)
    with _CURSORS_LOCK:
        pos, it = _CURSORS.pop(key, (0, None))
        if it is None or pos > shard.start:
            pos, it = 0, iter_rows(spec)
        rows = list(itertools.islice(it, shard.start - pos, shard.stop - pos))
        if len(rows) == shard.size:  # an exhausted iterator is dropped
            _CURSORS[key] = (shard.stop, it)
    return rows


_ENGINES: dict[tuple, Engine] = {}  # per thread: building a cross-vocab proposer costs seconds


def build_engine(cfg: RunConfig) -> Engine:
    """The engine for this config, built once per worker thread: target plus the proposer it asks for.

    Per thread, not per process: an engine and its proposer keep per-batch state (KV caches, policy
    state), so two shards running at once in one process (runner=local, max_workers>1) must not share
    one. The weights are shared: get_model loads each model once per process.
    """
    key = (config_hash(cfg), cfg.runner.batch_size, threading.get_ident())
    if key not in _ENGINES:
        _ENGINES[key] = _build_engine(cfg)
    return _ENGINES[key]


def _build_engine(cfg: RunConfig) -> Engine:
    slot = worker_slot()
    if slot is not None:  # one device per worker process, fixed before torch initialises the device
        pin_worker_device(cfg.hardware.kind, slot)
    device = resolve_device(cfg.hardware.kind, cfg.hardware.threads)
    target = get_model(cfg.target.ref, cfg.target_dtype(), device, cfg.target.trust_remote_code,
                       cfg.hardware.prepack)
    proposer, policy_factory, algorithm = None, None, "none"
    if cfg.drafter.kind != "none" and cfg.speculation.algorithm != "none":
        from .speculate import make_proposer

        drafter = None
        if cfg.drafter.kind == "model":
            drafter = get_model(cfg.drafter.ref, cfg.drafter_dtype(), device, cfg.drafter.trust_remote_code,
                                cfg.hardware.prepack, cfg.drafter.quantize == "int8")
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
    hold(f"shard-{shard.index}:generated")
    common = {"target": cfg.target.name, "drafter": cfg.drafter.name, "device": cfg.hardware.kind}
    meta = {**provenance(cfg), "speccore.run_id": run_id, "speccore.shard": str(shard.index)}
    store.write_shard(out, run_id, shard.index, results, steps, common, meta)
    n_tok = sum(r.n_output_tokens for r in results)
    ok = sum(r.status == "ok" for r in results)
    log.info("shard %d: %d rows (%d ok), %d tokens in %.1fs (%.2f tok/s)", shard.index, len(results), ok,
             n_tok, wall, n_tok / wall if wall else 0.0)
    return {"shard": shard.index, "skipped": False, "rows": len(results), "ok": ok, "tokens": n_tok, "wall_s": wall,
            "steps": sum(r.steps for r in results), "drafted": sum(r.drafted for r in results),
            "accepted": sum(r.accepted for r in results)}


_PROVENANCE: dict[str, dict[str, str]] = {}  # config hash -> Parquet key-value metadata, per process


def provenance(cfg: RunConfig) -> dict[str, str]:
    """The manifest's provenance (config, git sha, versions, model files) as Parquet key-value metadata."""
    key = config_hash(cfg)
    if key not in _PROVENANCE:
        from .manifest import provenance_metadata

        _PROVENANCE[key] = {"speccore.schema_version": str(store.SCHEMA_VERSION), **provenance_metadata(cfg)}
    return _PROVENANCE[key]
