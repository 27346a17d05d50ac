"""The scheduled deployment against a real Prefect server on loopback: serve, trigger, Parquet rows."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from speccore import analytics
from tests.killing import ROOT, kill_group
from tests.test_flow import overrides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p, log in procs:
            if p.poll() is not None:
                raise AssertionError(f"{name} exited ({p.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` on 127.0.0.1 with its own PREFECT_HOME; killed at the end."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    log = tmp_path / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=f, stderr=subprocess.STDOUT,
                                cwd=tmp_path, start_new_session=True)
    try:
        health = f"http://127.0.0.1:{port}/api/health"
        wait_for(lambda: urllib.request.urlopen(health, timeout=2).status == 200, 120, "the server",
                 [("prefect server", proc, log)])
        yield env
    finally:
        kill_group(proc)


def test_served_deployment_runs_on_schedule_and_on_demand(prefect_server, tiny_zoo, prompts, tmp_path):  # noqa: F811
    env, out = prefect_server, tmp_path / "data"
    job = overrides(tiny_zoo, prompts, out, "dataset.limit=3", "run.run_id=nightly")
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        serve = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--name", "test", "--cron", "0 3 * * *",
                                  "--", *job], env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        prefect = [sys.executable, "-m", "prefect"]

        def registered() -> bool:
            r = subprocess.run([*prefect, "deployment", "inspect", "speccore-job/test"], env=env, capture_output=True,
                               text=True, timeout=60)
            return r.returncode == 0 and "0 3 * * *" in r.stdout

        wait_for(registered, 120, "the deployment", [("flows.deploy", serve, log)])
        run = subprocess.run([*prefect, "deployment", "run", "speccore-job/test", "--watch",
                              "--watch-timeout", "300"], env=env, capture_output=True, text=True, timeout=330)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + log.read_text()[-3000:]
    finally:
        kill_group(serve)
    con = analytics.connect(out)
    assert con.execute("SELECT run_id, count(*), count(DISTINCT row_id) FROM generations GROUP BY run_id").fetchall() \
        == [("nightly", 3, 3)]
    config = json.loads(con.execute("SELECT dataset FROM runs").fetchone()[0])
    con.close()
    assert config["limit"] == 3  # the deployment's overrides were composed into the run's config
