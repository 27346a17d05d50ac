"""A run: its id, its shard plan, and the rule that a run id always means one configuration."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .config import RunConfig, config_hash
from .shards import Shard, plan
from . import store


class RunConflict(RuntimeError):
    pass


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    shards: tuple[Shard, ...]
    committed: frozenset[int]
    n_rows: int
    started_at: datetime
    source_report: dict = field(default_factory=dict)

    @property
    def todo(self) -> tuple[Shard, ...]:
        return tuple(s for s in self.shards if s.index not in self.committed)


def new_run_id(cfg: RunConfig, now: datetime) -> str:
    return f"{now:%Y%m%d-%H%M%S}-{config_hash(cfg)[:8]}"


def prepare(cfg: RunConfig) -> RunPlan:
    """Plan a run: count the source's rows, cut shards, and find what a previous attempt committed.

    Re-running a run id with a changed configuration is refused (its rows would mix two configs),
    unless run.new_run=true, which starts a fresh run id instead.
    """
    from .device import resolve_device
    from .sources import SourceReport, fingerprint, iter_rows
    from .worker import source_spec

    if not cfg.runner.address:  # workers run on this machine: a missing device stack fails now, not per shard
        resolve_device(cfg.hardware.kind)

    now = datetime.now(timezone.utc)
    out = Path(cfg.run.output_dir)
    run_id = cfg.run.run_id or new_run_id(cfg, now)
    previous = store.read_manifest(out, run_id)
    if previous is not None and previous.get("config_hash") != config_hash(cfg):
        if not cfg.run.new_run:
            raise RunConflict(
                f"run {run_id!r} already exists with another configuration (hash {previous.get('config_hash', '?')[:12]} "
                f"vs {config_hash(cfg)[:12]}); pass run.new_run=true for a new run, or another run.run_id")
        run_id = new_run_id(cfg, now)
    spec = source_spec(cfg)
    report = SourceReport()
    n_rows = sum(1 for _ in iter_rows(spec, report=report))
    shards = tuple(plan(n_rows, cfg.runner.shard_size))
    src = {"fingerprint": fingerprint(spec), **report.to_dict()}
    started = previous.get("started_at") if previous and previous.get("config_hash") == config_hash(cfg) else None
    started_at = datetime.fromisoformat(started) if isinstance(started, str) else now
    plan_ = RunPlan(run_id=run_id, shards=shards, committed=frozenset(store.committed_shards(out, run_id)),
                    n_rows=n_rows, started_at=started_at, source_report=src)
    return plan_


def finish(cfg: RunConfig, p: RunPlan) -> Path:
    from .manifest import build, identities

    target, drafter = identities(cfg)
    record = build(cfg, p.run_id, started_at=p.started_at, n_shards=len(p.shards), n_rows=p.n_rows,
                   target=target, drafter=drafter, source_report=p.source_report)
    return store.write_manifest(cfg.run.output_dir, record)


def write_pending_manifest(cfg: RunConfig, p: RunPlan) -> Path:
    """Record the config hash before any shard runs, so a resume with another config is caught."""
    return finish(cfg, p)
