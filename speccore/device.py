"""Device selection: one device per worker, with a clear error when its stack is missing."""
from __future__ import annotations

import os

import torch


def resolve_device(kind: str, threads: int | None = None) -> str:
    """Return the torch device string for `kind` (cpu | cuda | hpu), after checking it can be used."""
    if threads:
        torch.set_num_threads(threads)
    if kind == "cpu":
        return "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("hardware=cuda but torch sees no CUDA device (check CUDA_VISIBLE_DEVICES and the torch build)")
        return "cuda"
    if kind == "hpu":
        try:
            import habana_frameworks.torch.core  # noqa: F401
        except ImportError as e:
            raise RuntimeError(
                "hardware=hpu needs the Gaudi software stack: the package 'habana_frameworks' "
                f"(habana-torch-plugin) is not importable ({e}). Install Intel Gaudi's PyTorch or use hardware=cpu."
            ) from None
        return "hpu"
    raise ValueError(f"unknown hardware kind {kind!r}")


def worker_slot() -> int | None:
    """This process's index among the run's workers, where the runner numbers them: a Dask worker
    named by an integer (LocalCluster names them 0..n-1). None for the local runner (one process,
    one device) and for Ray, which pins a device itself when a task asks for one (num_gpus)."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # no distributed, or not inside a Dask worker
        return None
    return int(name) if isinstance(name, int) or str(name).isdigit() else None


def pin_worker_device(kind: str, worker_index: int) -> None:
    """Give each worker process one device by restricting what it can see (before torch touches it)."""
    if kind == "cuda" and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(worker_index)
    if kind == "hpu" and "HABANA_VISIBLE_MODULES" not in os.environ:
        os.environ["HABANA_VISIBLE_MODULES"] = str(worker_index)
