"""Shared fixtures. Keep each one small; add new ones below."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def speccore_cache(tmp_path_factory) -> Path:
    """SPECCORE_CACHE points at a session tmp dir, so no test writes into the user's real cache."""
    path = tmp_path_factory.mktemp("speccore-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECCORE_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> dict[str, Path]:
    """name -> directory of the tiny float64 models (tests/tiny.py), built once per session.

    Set SPECCORE_TEST_ZOO to a directory to reuse one zoo across sessions (it rebuilds what is stale).
    """
    from tests.tiny import build_zoo

    root = os.environ.get("SPECCORE_TEST_ZOO")
    return build_zoo(Path(root) if root else tmp_path_factory.mktemp("tiny-zoo"))


@pytest.fixture(scope="session")
def prefect():
    """One temporary local Prefect server for the whole session (it takes ~12 s to start)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second OpenMP thread only adds wake-up latency (ms per op on busy cores).
    Modules opt in with pytestmark = pytest.mark.usefixtures("one_thread")."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    """A small JSONL of prompts for tiny-model runs, with one bad (empty) row in the middle."""
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    lines = [json.dumps({"id": f"p{i}", "prompt": p}) for i, p in enumerate([
        "def add(a, b):", "The cat", "import os\n", "x = 1\ny = 2\nz =", "for i in range(3):",
        "class A:\n    def f(self):", "hello hello hello", "# mean\ndef mean(v):", "print(",
    ])]
    lines.insert(4, json.dumps({"id": "bad", "prompt": ""}))  # a bad row mid-file
    path.write_text("\n".join(lines) + "\n")
    return path
