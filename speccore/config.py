"""One frozen, validated RunConfig built from the Hydra composition (conf/).

Hydra composes YAML and applies overrides; this module is the schema. Unknown keys and wrong types
fail at start with the dotted path of the bad key, never halfway through a job.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .rows import MIN_TEMPERATURE

ALGORITHMS = ("auto", "none", "standard", "slem", "tli", "slrs", "ngram")
LOOKAHEADS = ("constant", "heuristic", "confidence", "cost")
DEVICES = ("cpu", "cuda", "hpu")
RUNNERS = ("local", "dask", "ray")


class ConfigError(ValueError):
    pass


def check_run_id(rid: Any) -> str:
    """A run id names a directory under the output dir, so it may not hold a path: ASCII letters, digits,
    '-', '_' and '.', at most 128 characters, and not '.' or '..'."""
    ok = isinstance(rid, str) and 0 < len(rid) <= 128 and rid not in (".", "..") and all(
        c.isascii() and (c.isalnum() or c in "-_.") for c in rid)
    if not ok:
        raise ConfigError(f"run.run_id {rid!r} may only hold letters, digits, '-', '_' and '.' (no path)")
    return rid


def check_path(value: str | None, name: str) -> str | None:
    """A configured path or model reference: no NUL byte and no '..' segment (a relative path may not
    climb out of where it is resolved; an absolute path says plainly where it points)."""
    if value is None:
        return None
    if "\x00" in value:
        raise ConfigError(f"{name}: a NUL byte in {value!r}")
    if ".." in value.replace("\\", "/").split("/"):
        raise ConfigError(f"{name}: {value!r} has a '..' segment; pass an absolute path instead")
    return value


@dataclass(frozen=True)
class ModelConfig:
    name: str  # a short label for outputs
    ref: str  # catalog name, local HF directory or hub id
    dtype: str | None = None  # None: the hardware's dtype policy
    trust_remote_code: bool = False


@dataclass(frozen=True)
class DrafterConfig:
    name: str = "none"
    kind: str = "none"  # none | model | ngram
    ref: str | None = None
    dtype: str | None = None
    trust_remote_code: bool = False
    # int8: on the CPU with hardware.prepack, most of the drafter's linears run in int8 (speccore/prepack.py).
    # Lossy, but only for proposals: the target verifies every token, so outputs do not change.
    quantize: str = "none"  # none | int8
    ngram_max: int = 3  # prompt lookup: longest suffix n-gram to match
    ngram_min: int = 1


@dataclass(frozen=True)
class DatasetConfig:
    kind: str = "humaneval"
    path: str | None = None
    name: str | None = None
    split: str = "train"
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    fields: Mapping[str, str] = field(default_factory=dict)
    id_prefix: str | None = None
    allow_special_tokens: bool = False  # let prompt text turn into control tokens (off: encoded as text)


@dataclass(frozen=True)
class SpeculationConfig:
    algorithm: str = "auto"
    lookahead: str = "cost"
    k: int = 5  # constant k, and the heuristic's starting k
    k_max: int = 16
    confidence_threshold: float = 0.4


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunnerConfig:
    kind: str = "local"
    max_workers: int = 1
    address: str | None = None
    batch_size: int = 4
    shard_size: int = 8


@dataclass(frozen=True)
class HardwareConfig:
    kind: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    price_per_hour: float = 0.0  # USD per device-hour, for cost analytics
    prepack: bool = True  # CPU fp32: run linears with oneDNN pre-packed weights (speccore/prepack.py)


@dataclass(frozen=True)
class RunSection:
    run_id: str | None = None
    output_dir: str = "data"
    seed: int = 0
    new_run: bool = False


@dataclass(frozen=True)
class RunConfig:
    target: ModelConfig
    drafter: DrafterConfig = DrafterConfig()
    dataset: DatasetConfig = DatasetConfig()
    speculation: SpeculationConfig = SpeculationConfig()
    sampling: SamplingConfig = SamplingConfig()
    runner: RunnerConfig = RunnerConfig()
    hardware: HardwareConfig = HardwareConfig()
    run: RunSection = RunSection()

    def target_dtype(self) -> str:
        return self.target.dtype or self.hardware.dtype

    def drafter_dtype(self) -> str:
        return self.drafter.dtype or self.hardware.dtype

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _check(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_check(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict, collections.abc.Mapping) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _check(v, str, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {tp}")


def _build(cls, data: Any, path: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    if "_target_" in data:  # Hydra's instantiation hook: nothing in speccore builds objects from config
        raise ConfigError(f"{path or 'config'}: '_target_' is not allowed; speccore never instantiates "
                          f"classes named in its config (got {data['_target_']!r})")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{path or 'config'}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _check(data[f.name], hints[f.name], f"{path}.{f.name}" if path else f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path or 'config'}: missing required key {f.name!r}")
    return cls(**kwargs)


def _validate(cfg: RunConfig) -> RunConfig:
    def need(cond: bool, msg: str):
        if not cond:
            raise ConfigError(msg)

    need(cfg.speculation.algorithm in ALGORITHMS, f"speculation.algorithm must be one of {ALGORITHMS}")
    need(cfg.speculation.lookahead in LOOKAHEADS, f"speculation.lookahead must be one of {LOOKAHEADS}")
    need(1 <= cfg.speculation.k <= cfg.speculation.k_max, "need 1 <= speculation.k <= speculation.k_max")
    need(cfg.drafter.kind in ("none", "model", "ngram"), "drafter.kind must be none, model or ngram")
    need(cfg.drafter.kind != "model" or bool(cfg.drafter.ref), "drafter.kind=model needs drafter.ref")
    need(cfg.sampling.temperature >= 0, "sampling.temperature must be >= 0")
    need(not 0 < cfg.sampling.temperature < MIN_TEMPERATURE,
         f"sampling.temperature must be 0 (greedy) or >= {MIN_TEMPERATURE}")
    need(0 < cfg.sampling.top_p <= 1, "sampling.top_p must be in (0, 1]")
    need(cfg.sampling.top_k >= 0, "sampling.top_k must be >= 0")
    need(cfg.sampling.max_new_tokens >= 1, "sampling.max_new_tokens must be >= 1")
    need(cfg.runner.kind in RUNNERS, f"runner.kind must be one of {RUNNERS}")
    need(cfg.runner.batch_size >= 1 and cfg.runner.shard_size >= 1, "runner batch_size/shard_size must be >= 1")
    need(cfg.runner.max_workers >= 1, "runner.max_workers must be >= 1")
    need(cfg.hardware.kind in DEVICES, f"hardware.kind must be one of {DEVICES}")
    need(cfg.hardware.dtype in ("float32", "float64", "bfloat16", "float16"), "hardware.dtype is not a known dtype")
    need(cfg.drafter.quantize in ("none", "int8"), "drafter.quantize must be none or int8")
    need(cfg.hardware.price_per_hour >= 0, "hardware.price_per_hour must be >= 0")
    if cfg.run.run_id is not None:
        check_run_id(cfg.run.run_id)
    for name, value in (("target.ref", cfg.target.ref), ("drafter.ref", cfg.drafter.ref),
                        ("dataset.path", cfg.dataset.path), ("run.output_dir", cfg.run.output_dir)):
        check_path(value, name)
    return cfg


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from plain data (a resolved Hydra config, minus `hydra`)."""
    data = {k: v for k, v in data.items() if k != "hydra"}
    return _validate(_build(RunConfig, data, ""))


def config_hash(cfg: RunConfig) -> str:
    """Hash of everything that decides the rows' content (not the run id, output dir or runner)."""
    d = cfg.to_dict()
    d.pop("runner")
    d["run"] = {"seed": cfg.run.seed}
    d["hardware"] = {"kind": cfg.hardware.kind, "dtype": cfg.hardware.dtype}
    d["runner"] = {"shard_size": cfg.runner.shard_size}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def compose(overrides: list[str] | tuple[str, ...] = (), config_dir: str | Path | None = None) -> RunConfig:
    """Compose conf/ with Hydra overrides (as on the command line) into a validated RunConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    config_dir = Path(config_dir or Path.cwd() / "conf").resolve()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        dc = hydra_compose(config_name="config", overrides=list(overrides))
    return from_omegaconf(dc)


def from_omegaconf(dc) -> RunConfig:
    from omegaconf import OmegaConf

    return from_dict(OmegaConf.to_container(dc, resolve=True))
