"""Devices: the dtype policy per hardware, one device pinned per worker, a missing stack fails at start."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from speccore import run
from speccore.config import compose
from speccore.device import pin_worker_device, resolve_device, worker_slot

ROOT = Path(__file__).resolve().parent.parent


def cfg(*extra):
    return compose(["drafter=smollm2-135m", *extra], config_dir=ROOT / "conf")


@pytest.mark.parametrize("hardware, dtype", [("cpu", "float32"), ("cuda", "bfloat16"), ("hpu", "bfloat16")])
def test_dtype_policy(hardware, dtype):
    c = cfg(f"hardware={hardware}")
    assert (c.hardware.kind, c.target_dtype(), c.drafter_dtype()) == (hardware, dtype, dtype)
    # a model's own dtype wins over the policy (fp16 on a GPU without bf16, fp64 for exactness tests)
    c = cfg(f"hardware={hardware}", "target.dtype=float16")
    assert (c.target_dtype(), c.drafter_dtype()) == ("float16", dtype)


@pytest.mark.parametrize("kind, var", [("cuda", "CUDA_VISIBLE_DEVICES"), ("hpu", "HABANA_VISIBLE_MODULES")])
def test_each_worker_pins_one_device(kind, var, monkeypatch):
    monkeypatch.delenv(var, raising=False)
    pin_worker_device(kind, 1)
    assert os.environ[var] == "1"
    pin_worker_device(kind, 0)  # a process keeps its first device: the variable is already set
    assert os.environ[var] == "1"
    monkeypatch.setenv(var, "3")  # a launcher that pinned the worker already is respected
    pin_worker_device(kind, 0)
    assert os.environ[var] == "3"


def test_cpu_pins_nothing_and_no_slot_outside_a_dask_worker(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("HABANA_VISIBLE_MODULES", raising=False)
    pin_worker_device("cpu", 1)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert "HABANA_VISIBLE_MODULES" not in os.environ
    assert worker_slot() is None


@pytest.mark.skipif(importlib.util.find_spec("habana_frameworks") is not None, reason="Gaudi stack present")
def test_hpu_without_its_stack_fails_at_start_naming_the_package(tmp_path):
    with pytest.raises(RuntimeError, match="habana_frameworks"):
        resolve_device("hpu")
    c = cfg("hardware=hpu", f"run.output_dir={tmp_path}", "run.run_id=h")
    with pytest.raises(RuntimeError, match=r"hardware=hpu needs the Gaudi software stack: the package 'habana_frameworks'"):
        run.prepare(c)
    assert not any(tmp_path.iterdir())  # nothing was planned or written


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_fails_at_start(tmp_path):
    with pytest.raises(RuntimeError, match="hardware=cuda but torch sees no CUDA device"):
        run.prepare(cfg("hardware=cuda", f"run.output_dir={tmp_path}"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_resolves_when_present():
    assert resolve_device("cuda") == "cuda"
