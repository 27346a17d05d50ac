"""The run manifest: what ran, with what, where; enough to reproduce or audit a run."""
from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .config import RunConfig, config_hash

PACKAGES = ("speccore", "torch", "transformers", "tokenizers", "datasets", "pyarrow", "duckdb", "hydra-core", "prefect")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_sha(cwd: str | Path | None = None) -> str | None:
    """The commit of the code that runs: the checkout holding this package (not the caller's cwd)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def model_files(path: str | None) -> dict[str, str]:
    """{file: sha256} from a pulled model's marker; empty for hub ids or unmarked directories."""
    if not path:
        return {}
    marker = Path(path) / "speccore.json"
    if not marker.exists():
        return {}
    files = json.loads(marker.read_text()).get("files", {})
    return {name: (info.get("sha256") if isinstance(info, dict) else info) for name, info in files.items()}


def model_identity(ref: str):
    """(path, revision) of a model reference without loading it, as load_model would report them."""
    from types import SimpleNamespace

    from .models import resolve, revision

    try:
        where = resolve(ref, pull_missing=False)
        return SimpleNamespace(path=where if Path(where).is_dir() else None, revision=revision(where))
    except Exception:  # noqa: BLE001 - an identity lookup must never fail a run
        return SimpleNamespace(path=None, revision=None)


def config_yaml(cfg: RunConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict()))


def identities(cfg: RunConfig):
    """(target, drafter) identities (path, revision) of the config's models; drafter None without a model."""
    target = model_identity(cfg.target.ref)
    drafter = model_identity(cfg.drafter.ref) if cfg.drafter.kind == "model" else None
    return target, drafter


def provenance_metadata(cfg: RunConfig) -> dict[str, str]:
    """What each Parquet file carries in its key-value metadata: the manifest's provenance fields, so
    that a shard copied away from its run still says what made it."""
    target, drafter = identities(cfg)
    rec = build(cfg, "", started_at=datetime.now(timezone.utc), n_shards=0, n_rows=0, target=target, drafter=drafter)
    keys = ("config_yaml", "config_hash", "versions", "git_sha", "target", "target_revision", "drafter",
            "drafter_revision", "model_files", "device")
    return {f"speccore.{k}": "" if rec[k] is None else str(rec[k]) for k in keys}


def build(cfg: RunConfig, run_id: str, *, started_at: datetime, n_shards: int, n_rows: int,
          target=None, drafter=None, source_report: dict | None = None) -> dict:
    return {
        "run_id": run_id,
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc),
        "config_yaml": config_yaml(cfg),
        "config_hash": config_hash(cfg),
        "versions": json.dumps(versions(), sort_keys=True),
        "git_sha": git_sha(),
        "target": cfg.target.name,
        "target_revision": getattr(target, "revision", None),
        "drafter": cfg.drafter.name,
        "drafter_revision": getattr(drafter, "revision", None),
        "model_files": json.dumps({cfg.target.name: model_files(getattr(target, "path", None)),
                                   cfg.drafter.name: model_files(getattr(drafter, "path", None))}),
        "dataset": json.dumps(cfg.to_dict()["dataset"], sort_keys=True),
        "source_report": json.dumps(source_report or {}, default=str),
        "device": cfg.hardware.kind,
        "price_per_hour": cfg.hardware.price_per_hour,
        "n_shards": n_shards,
        "n_rows": n_rows,
    }
