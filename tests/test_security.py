"""Security measures (SECURITY.md), each tested for real where it can be:

- weights load from safetensors only: a pickle checkpoint is refused, and never unpickled;
- remote code stays off unless the config turns it on, and the flag reaches the loader;
- run ids, model references and paths cannot climb out of where they are resolved;
- a `_target_` in the config is refused: nothing builds objects named by config;
- the servers the project starts listen on loopback only.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from speccore import models, store, worker
from speccore.config import ConfigError, check_run_id, compose, from_dict

ROOT = Path(__file__).resolve().parent.parent


class Payload:
    """Unpickling this creates `marker`: proof that a checkpoint was unpickled (code ran)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def model_copy(tiny_zoo, tmp_path) -> Path:
    """A loadable copy of the tiny target to tamper with."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_zoo["target-llama-g"], dst)
    (dst / models.MARKER).unlink(missing_ok=True)
    return dst


# ---------------------------------------------------------------- safetensors only, no remote code


def test_pickle_checkpoint_is_refused_and_never_unpickled(model_copy, tmp_path):
    marker = tmp_path / "pwned"
    (model_copy / "model.safetensors").unlink()
    with open(model_copy / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": Payload(marker)}, f)
    with pytest.raises(OSError, match="safetensors"):
        models.load_model(str(model_copy))
    assert not marker.exists()


def _remote_code(model_dir: Path, marker: Path, model_type: str) -> None:
    """Give a model dir an auto_map to a local module whose import creates `marker`."""
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.update(model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig",
                                                 "AutoModelForCausalLM": "evil.EvilModel"})
    (model_dir / "config.json").write_text(json.dumps(cfg))
    (model_dir / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")


def test_remote_code_of_an_unknown_architecture_is_refused(model_copy, tmp_path):
    marker = tmp_path / "pwned"
    _remote_code(model_copy, marker, "evil-arch")
    with pytest.raises(ValueError, match="trust_remote_code"):
        models.load_model(str(model_copy))
    assert not marker.exists()


def test_remote_code_beside_a_known_architecture_is_ignored(model_copy, tmp_path):
    """An auto_map next to a built-in model_type: the built-in class loads, the module is never imported."""
    marker = tmp_path / "pwned"
    _remote_code(model_copy, marker, "llama")
    lm = models.load_model(str(model_copy), dtype="float64")
    assert type(lm.model).__module__.startswith("transformers.") and not marker.exists()


def test_trust_remote_code_is_off_by_default_and_the_config_flag_reaches_the_loader(monkeypatch):
    for group in ("target", "drafter"):
        for f in sorted((ROOT / "conf" / group).glob("*.yaml")):
            assert "trust_remote_code: true" not in f.read_text(), f
    calls = []
    monkeypatch.setattr(models, "load_model", lambda ref, **kw: calls.append((ref, kw["trust_remote_code"])))
    monkeypatch.setattr(worker, "_MODELS", {})
    cfg = compose([], config_dir=ROOT / "conf")
    assert (cfg.target.trust_remote_code, cfg.drafter.trust_remote_code) == (False, False)
    worker.get_model(cfg.target.ref, "float32", "cpu", cfg.target.trust_remote_code)
    on = compose(["target.trust_remote_code=true"], config_dir=ROOT / "conf")
    worker.get_model(on.target.ref, "float32", "cpu", on.target.trust_remote_code)
    assert calls == [(cfg.target.ref, False), (on.target.ref, True)]


# ---------------------------------------------------------------- paths and run ids


@pytest.mark.parametrize("rid", ["../../etc", "..", ".", "/etc/passwd", "a/b", "a\\b", "", "run id", "r\x00",
                                 "ｒｕｎ", "x" * 129, "run_id=x/..", "~root"])
def test_bad_run_ids_are_refused_in_config_and_in_the_store(rid, tmp_path):
    with pytest.raises(ConfigError, match="may only hold letters"):
        check_run_id(rid)
    with pytest.raises(ConfigError):
        store.shard_path(tmp_path, "generations", rid, 0)  # library callers (notebooks, tasks) too
    base = compose([], config_dir=ROOT / "conf").to_dict()
    with pytest.raises(ConfigError, match="run.run_id"):
        from_dict({**base, "run": {**base["run"], "run_id": rid}})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rid", ["20261122-073118-07383a8a", "r1", "my.run_2-b", "x" * 128])
def test_good_run_ids_pass(rid, tmp_path):
    assert check_run_id(rid) == rid
    assert store.shard_path(tmp_path, "steps", rid, 3).parent == tmp_path / "steps" / f"run_id={rid}"


@pytest.mark.parametrize("override,where", [
    ("dataset.path=../../etc/passwd", "dataset.path"),
    ("dataset.path=data/../../x.jsonl", "dataset.path"),
    ("target.ref=../models/evil", "target.ref"),
    ("target.ref=org/..", "target.ref"),
    ("drafter.ref=..\\\\evil", "drafter.ref"),
    ("run.output_dir=../elsewhere", "run.output_dir"),
])
def test_dot_dot_segments_are_refused_at_start(override, where):
    kind = ["dataset=file"] if override.startswith("dataset") else ["drafter=hf"] if "drafter" in override else []
    with pytest.raises(ConfigError, match=rf"{where}: .* has a '\.\.' segment; pass an absolute path"):
        compose([*kind, override], config_dir=ROOT / "conf")


def test_plain_and_absolute_paths_pass(tmp_path):
    cfg = compose(["dataset=file", f"dataset.path={tmp_path}/p..q.jsonl", "run.output_dir=out/data",
                   "target=hf", "target.ref=org/model..v2"], config_dir=ROOT / "conf")
    assert cfg.dataset.path.endswith("p..q.jsonl") and cfg.target.ref == "org/model..v2"
    base = cfg.to_dict()
    with pytest.raises(ConfigError, match="NUL"):
        from_dict({**base, "dataset": {**base["dataset"], "path": "a\x00b"}})


# ---------------------------------------------------------------- no instantiation from config


@pytest.mark.parametrize("override,where", [
    ("+_target_=os.system", "config"),
    ("+target._target_=subprocess.Popen", "target"),
    ("+runner._target_=builtins.eval", "runner"),
])
def test_target_keys_are_refused(override, where):
    with pytest.raises(ConfigError, match=rf"^{where}: '_target_' is not allowed; speccore never instantiates"):
        compose([override], config_dir=ROOT / "conf")


def test_target_key_in_deployment_parameters_is_refused():
    """A Prefect deployment passes the config as plain data to from_dict: the same refusal."""
    base = compose([], config_dir=ROOT / "conf").to_dict()
    with pytest.raises(ConfigError, match="dataset: '_target_' is not allowed"):
        from_dict({**base, "dataset": {**base["dataset"], "_target_": "os.system"}})


def test_nothing_instantiates_from_config():
    sources = [p for d in ("speccore", "flows", "tasks") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 10
    for p in sources:
        text = p.read_text()
        assert "instantiate(" not in text and "hydra.utils" not in text, p


# ---------------------------------------------------------------- servers listen on loopback


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of process `pid` and its children. Per process,
    not per machine: other test sessions on the same host may open sockets at the same time."""
    import psutil

    me = psutil.Process(pid)
    out = set()
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        out |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return out


LOOPBACK = {"127.0.0.1", "::1"}


def test_prefect_server_listens_on_loopback_only(prefect):
    """The session's server is Prefect's SubprocessASGIServer, the class that also serves a run with no
    PREFECT_API_URL (the ephemeral server of `make run`)."""
    from urllib.parse import urlparse

    from prefect.settings import PREFECT_API_URL

    from prefect.server.api.server import SubprocessASGIServer

    url = urlparse(PREFECT_API_URL.value())
    assert url.hostname == "127.0.0.1"
    server = SubprocessASGIServer._instances[None].server_process
    addrs = listening(server.pid)
    assert (url.hostname, url.port) in addrs and {a for a, _ in addrs} <= LOOPBACK, addrs


def test_dask_runner_cluster_listens_on_loopback_only():
    """The local Dask cluster the dask runner starts, with the runner's own cluster settings: scheduler,
    nanny, worker and the scheduler's small HTTP server (health, metrics; dashboard_address=None leaves
    the Bokeh dashboard off but still starts it) all listen on loopback."""
    pytest.importorskip("prefect_dask")
    from distributed import LocalCluster

    from flows.generate import task_runner

    cfg = compose(["runner=dask", "runner.max_workers=1"], config_dir=ROOT / "conf")
    kwargs = dict(task_runner(cfg).cluster_kwargs)
    assert kwargs["dashboard_address"] is None
    before = listening(os.getpid())
    with LocalCluster(**kwargs) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        new = listening(os.getpid()) - before
        assert len(new) >= 3 and {a for a, _ in new} <= LOOPBACK, new  # scheduler, its HTTP server, nanny, worker


def test_ray_runner_starts_no_dashboard_and_binds_loopback():
    pytest.importorskip("prefect_ray")
    from flows.generate import task_runner

    init = task_runner(compose(["runner=ray"], config_dir=ROOT / "conf")).init_kwargs
    assert init["include_dashboard"] is False and init.get("_node_ip_address") == "127.0.0.1"
