"""Local, Dask (2 worker processes) and Ray (2 worker processes) runs of one config give the same rows."""
from __future__ import annotations

import pytest

from tests.test_flow import config, rows_of

pytest.importorskip("prefect_dask")
pytest.importorskip("prefect_ray")


def strip(rows: dict) -> dict:
    return {k: {f: v for f, v in r.items() if f != "run_id"} for k, r in rows.items()}


def test_local_dask_and_ray_give_identical_rows(prefect, tiny_zoo, prompts, tmp_path, monkeypatch):  # noqa: F811
    from prefect.settings import PREFECT_API_URL

    from flows.generate import run_config, task_runner

    # worker processes report task states to the same API as this process
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    out = tmp_path / "data"
    runs = {}
    for kind in ("local", "dask", "ray"):
        cfg = config(tiny_zoo, prompts, out, f"runner={kind}", "runner.max_workers=2", f"run.run_id={kind}",
                     "runner.shard_size=3", "runner.batch_size=2", "hardware.threads=1")
        runner = task_runner(cfg)
        assert type(runner).__name__ == {"local": "ThreadPoolTaskRunner", "dask": "DaskTaskRunner",
                                         "ray": "RayTaskRunner"}[kind]
        result = run_config(cfg)
        assert (result["shards"], result["generated"]) == (4, 4), kind
        runs[kind] = strip(rows_of(out, kind))
    assert len(runs["local"]) == 10
    assert runs["dask"] == runs["local"]
    assert runs["ray"] == runs["local"]
