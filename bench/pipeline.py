"""The pipeline's own overhead: rows/s and peak memory against row count, with a tiny model.

The model is tiny (tests/tiny.py, float32) and generates few tokens, so what is measured is the
pipeline around the engine: reading and validating the source, shard planning, per-shard source
reads, batching, Parquet writes, the manifest. Each row count runs in a fresh process (peak RSS is
per process), through the library path the Prefect task calls (run.prepare -> worker.run_shard per
shard -> run.finish), with no Prefect server in the way. Also: planning over the packaged ShareGPT set.

    .venv/bin/python bench/pipeline.py --rows 1000 10000 200000 --zoo /tmp/zoo
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic_jsonl(path: Path, n: int) -> Path:
    """n short prompts, written line by line (the writer never holds them all)."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"r{i:07d}", "prompt": f"The cat sat on the mat, row {i}."}) + "\n")
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(rows: int, zoo: Path, new_tokens: int, drafter: bool, shard_size: int, batch_size: int) -> dict:
    """Run one pipeline over a synthetic JSONL of `rows` rows in this process; return its figures."""
    from speccore import run, store
    from speccore.config import compose
    from speccore.worker import run_shard

    with tempfile.TemporaryDirectory(prefix="speccore-bench-") as tmp:
        src = synthetic_jsonl(Path(tmp) / "rows.jsonl", rows)
        over = ["target=hf", f"target.ref={zoo / 'target-llama-g'}", "dataset=file", f"dataset.path={src}",
                "+dataset.fields.row_id=id", f"sampling.max_new_tokens={new_tokens}",
                f"runner.shard_size={shard_size}", f"runner.batch_size={batch_size}", "hardware.threads=1",
                f"run.output_dir={tmp}/data", "run.run_id=bench"]
        over += ["drafter=hf", f"drafter.ref={zoo / 'drafter-llama-g'}"] if drafter else ["drafter=none"]
        cfg = compose(over, config_dir=ROOT / "conf")
        rss0 = peak_rss_mb()
        t0 = time.perf_counter()
        plan = run.prepare(cfg)
        run.write_pending_manifest(cfg, plan)
        t_plan = time.perf_counter() - t0
        tokens = 0
        for shard in plan.todo:
            tokens += run_shard(cfg, plan.run_id, shard).get("tokens", 0)
        run.finish(cfg, plan)
        wall = time.perf_counter() - t0
        import duckdb

        glob = str(store.run_dir(f"{tmp}/data", "generations", "bench") / "*.parquet")
        n, distinct = duckdb.sql(f"SELECT count(*), count(DISTINCT row_id) FROM read_parquet('{glob}')").fetchall()[0]
        assert n == distinct == rows, (n, distinct, rows)
        return {"rows": rows, "shards": len(plan.shards), "new_tokens": new_tokens, "drafter": drafter,
                "plan_s": round(t_plan, 2), "wall_s": round(wall, 1), "rows_per_s": round(rows / wall, 1),
                "output_tokens": tokens, "peak_rss_mb": round(peak_rss_mb(), 0),
                "rss_before_mb": round(rss0, 0)}


def sharegpt_plan() -> dict:
    """Plan the packaged ShareGPT set (17,671 recoverable conversations): count, fingerprint, cut shards."""
    from speccore import run
    from speccore.config import compose

    with tempfile.TemporaryDirectory(prefix="speccore-bench-") as tmp:
        cfg = compose(["dataset=sharegpt", "dataset.limit=null", "drafter=none", f"run.output_dir={tmp}",
                       "runner.shard_size=256"], config_dir=ROOT / "conf")
        rss0 = peak_rss_mb()
        t0 = time.perf_counter()
        plan = run.prepare(cfg)
        return {"source": "sharegpt", "rows": plan.n_rows, "shards": len(plan.shards),
                "plan_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak_rss_mb(), 0),
                "rss_before_mb": round(rss0, 0), "complete": plan.source_report.get("complete"),
                "truncated_at": plan.source_report.get("truncated_at")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 200000])
    p.add_argument("--zoo", type=Path, default=Path(os.environ.get("SPECCORE_TEST_ZOO", "/tmp/zoo")))
    p.add_argument("--new-tokens", type=int, default=4, help="max_new_tokens below --big")
    p.add_argument("--big", type=int, default=100000, help="from this many rows: 1 new token, target only")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sharegpt", action="store_true", help="also plan the packaged ShareGPT set")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--drafter", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one is not None:
        tok = 1 if a.one >= a.big else a.new_tokens
        print(json.dumps(one(a.one, a.zoo, tok, a.drafter, a.shard_size, a.batch_size)))
        return
    if a.one is None and a.sharegpt:
        code = "import json, bench.pipeline as b; print(json.dumps(b.sharegpt_plan()))"
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        print(r.stdout.strip().splitlines()[-1], flush=True)
    from tests.tiny import build_zoo

    build_zoo(a.zoo)
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    for n in a.rows:
        for drafter in ([False, True] if n < a.big else [False]):
            cmd = [sys.executable, __file__, "--one", str(n), "--zoo", str(a.zoo), "--new-tokens", str(a.new_tokens),
                   "--big", str(a.big), "--shard-size", str(a.shard_size), "--batch-size", str(a.batch_size)]
            r = subprocess.run(cmd + (["--drafter"] if drafter else []), cwd=ROOT, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"rows={n}: failed\n{r.stderr[-3000:]}")
            print(r.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
