"""The progress bar: rows, tokens/s and acceptance from the shard results the worker returns."""
from __future__ import annotations

import io
import re

from speccore.progress import Progress


def test_progress_counts_rows_and_acceptance():
    buf = io.StringIO()
    with Progress(10, done_rows=2, desc="run r", file=buf, disable=False) as bar:
        bar.update({"rows": 4, "tokens": 40, "steps": 10, "drafted": 20, "accepted": 10})
        bar.update({"rows": 3, "tokens": 20, "steps": 10, "drafted": 20, "accepted": 5})
        bar.update({"shard": 7, "skipped": True, "rows": 1})  # a shard committed by another attempt
        assert bar.postfix().endswith("tok/s, acceptance 0.38, mean acceptance length 1.75")
    text = buf.getvalue()
    assert "run r" in text and "10/10" in text
    assert re.search(r"[\d.]+ tok/s, acceptance 0\.38, mean acceptance length 1\.75", text)


def test_progress_without_a_drafter_shows_throughput_only():
    with Progress(3, file=io.StringIO(), disable=False) as bar:
        bar.update({"rows": 3, "tokens": 9, "steps": 9, "drafted": 0, "accepted": 0})
        assert "acceptance" not in bar.postfix() and bar.postfix().endswith(" tok/s")


def test_library_does_not_import_prefect():
    import subprocess
    import sys

    code = ("import sys, speccore.progress, speccore.worker, speccore.run, speccore.manifest, speccore.store; "
            "print(any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip() == "False"
