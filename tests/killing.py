"""Kill a real process with SIGKILL at a known point of its work, for crash tests.

The command runs with SPECCORE_TEST_HOLD=<point> (see speccore.durable.hold): when a process of it
reaches that point it writes its pid to an announcement file and waits there. `run_until_held`
starts the command in its own process group, waits (bounded) for the announcement, optionally lets
the caller look at the world while the process is frozen mid-work (`while_held`, e.g. read the
store as a concurrent reader would), then SIGKILLs the announced process and the rest of its group.
No mock: the kernel delivers a real SIGKILL, so no finally block, atexit or flush runs.

Points in the pipeline: "shard-<i>:generated" (rows generated, nothing of the shard written) and
"shard-<i>:steps-written" (the steps file committed, the generations file not yet).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Killed:
    held_pid: int  # the process that reached the point (and got the SIGKILL)
    returncode: int  # of the started command (-9 when the held process was the command itself)
    output: str  # its stdout and stderr, for failure messages


def run_until_held(cmd: Sequence[str], point: str, *, env: dict[str, str] | None = None, cwd: str | Path = ROOT,
                   timeout: float = 240, while_held: Callable[[int], None] | None = None) -> Killed:
    """Run `cmd` until some process of it holds at `point`, then SIGKILL it; always kills the group."""
    with tempfile.TemporaryDirectory(prefix="speccore-kill-") as tmp:
        announce, log = Path(tmp) / "held", Path(tmp) / "output.log"
        full_env = {**os.environ, **(env or {}), "SPECCORE_TEST_HOLD": point, "SPECCORE_TEST_HOLD_FILE": str(announce)}
        with open(log, "wb") as out:
            proc = subprocess.Popen(list(cmd), cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not announce.exists():
                if proc.poll() is not None:
                    raise AssertionError(f"{cmd[:3]} exited with {proc.returncode} before reaching {point!r}:\n"
                                         f"{log.read_text(errors='replace')[-4000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{point!r} not reached in {timeout:.0f}s:\n{log.read_text(errors='replace')[-4000:]}")
                time.sleep(0.1)
            held = int(announce.read_text())
            if while_held is not None:
                while_held(held)
            os.kill(held, signal.SIGKILL)
            rc = proc.wait(timeout=30) if held == proc.pid else None
        finally:
            kill_group(proc)
        return Killed(held_pid=held, returncode=proc.returncode if rc is None else rc,
                      output=log.read_text(errors="replace"))


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL `proc`'s whole process group (it was started with start_new_session) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def flow_command(*overrides: str) -> list[str]:
    """The generate flow's command line (its Hydra entry point) with these overrides."""
    return [sys.executable, "-m", "flows.generate", *overrides]


def prefect_env() -> dict[str, str]:
    """Environment for a child process to use the current Prefect API (e.g. the test harness's server)."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value() or "", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
