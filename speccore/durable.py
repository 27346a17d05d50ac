"""Durable file replacement: write elsewhere, fsync, rename, fsync the directory."""
from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make a rename durable: a crash after it must not bring the old name back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hold(point: str) -> None:
    """Crash-test hook: with SPECCORE_TEST_HOLD=<point>, announce this process at `point` and wait.

    The test harness (tests/killing.py) waits for the announcement file (SPECCORE_TEST_HOLD_FILE,
    holding this pid) and SIGKILLs the process there, so a kill lands at a known point of a shard's
    life instead of at a random time. Unset (always, outside tests), it costs one dict lookup.
    """
    if os.environ.get("SPECCORE_TEST_HOLD") != point:
        return
    import time

    announce = Path(os.environ["SPECCORE_TEST_HOLD_FILE"])
    tmp = announce.with_name(f".{announce.name}.tmp-{os.getpid()}")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, announce)
    while True:  # until killed
        time.sleep(1)
