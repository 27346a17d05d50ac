"""Tiny real models and tokenizers for tests: no download, built in seconds.

`build_zoo(root)` writes Hugging Face model directories (safetensors, float64) that load with
`AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`. Three
tokenizers are trained locally on `CORPUS`, so that the vocabularies really differ:

- bpe_g: byte-level BPE, 'Ġ' space marker, exactly Qwen2's pipeline (NFC, its split regex), no BOS,
  ChatML template.
- bpe_m: Metaspace BPE, '▁' space marker (SentencePiece / Llama style), byte fallback, BOS added by
  the post-processor, a Zephyr-like template.
- char: one token per character, byte fallback for anything else (for byte/char-level drafters).

The models are briefly trained on the same corpus (a few hundred Adam steps in float32, then cast to
float64). Random weights would give acceptance ~0 for any cross-vocab pair, so the boundary and
multi-token-accept paths of SLEM/TLI would never run; a little training makes target and drafter
agree often but not always, and makes the next-token distributions peaked rather than uniform.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = '''\
The quick brown fox jumps over the lazy dog.
A small model proposes tokens, and a larger model checks them.
When the draft is right, the target keeps it and moves on.
When the draft is wrong, the target writes its own token instead.
Speculative decoding trades a little extra work for fewer slow steps.
The cat sat on the mat, and the dog sat on the rug.
She sells sea shells by the sea shore, or so the story goes.
It was the best of times, it was the worst of times.
In the beginning there was a file, and the file was full of rows.
Every row has an id, a prompt, and a few optional settings.
The pipeline reads the rows, splits them into shards, and writes the results.
Each shard is written to a temporary file, flushed, and then renamed.
If a worker dies, the shard is simply run again from the start.
Nothing is lost, and nothing is written twice.
The weather today is mild, with a light breeze from the west.
Tomorrow there may be rain in the morning and sun in the afternoon.
We walked along the river until the path turned into the forest.
The old library had tall shelves, dusty books, and a quiet reading room.
He ordered a café au lait and a croissant at the little bakery.
Her naïve question turned out to be the most important one.
The résumé listed three jobs, two degrees, and one very long hobby.
Zoë and Chloë met at the coöperative market on Saturday.
Prices rose by 3.5% in March, then fell by 1.2% in April.
The meeting starts at 09:30 and ends at 11:45, room 204.
Call 555-0123 or write to info@example.com for details.
The answer is 42, but what was the question?
There are 365 days in a year, and 366 in a leap year.
Pi is roughly 3.14159, and e is roughly 2.71828.
The train left at 7:05 pm and arrived at 10:20 pm.
Add 2 cups of flour, 1 cup of sugar, and 3 eggs.
Mix well, then bake at 180 degrees for 25 minutes.
"Hello," she said. "How are you today?"
"Fine, thanks!" he replied, smiling.
Why do we sleep? Nobody knows for sure; scientists still argue.
Wait... is that really true? Yes -- mostly.
Lists can be long: apples, pears, plums, cherries, and figs.
The function returns a list of numbers, sorted from small to large.
A good test is small, fast, and checks one thing well.
Tokenizers split text into pieces that a model can count.
Some pieces are whole words, and some are just a few letters.
The space before a word is often part of the token.
Byte fallback means that any character can still be written.
Models predict the next token, one step at a time.
The probability of each token is given by a softmax over the logits.
Greedy decoding always picks the token with the highest probability.
Sampling picks a token at random, weighted by its probability.
A temperature below one makes the distribution sharper.
A temperature above one makes it flatter and more surprising.
Top-k keeps only the k most likely tokens; top-p keeps a nucleus.
The acceptance rate is the number accepted divided by the number drafted.
The mean acceptance length is one plus accepted divided by steps.
The target model is slow but careful; the drafter is fast but rough.
Together they write text faster than the target could alone.
The results land in Parquet files, one per shard, with a fixed schema.
DuckDB reads the files and answers questions in plain SQL.
How many tokens per second did we reach on the second day?
What did it cost, in dollars, for each thousand output tokens?
Which drafter had the best acceptance on code prompts?
The report shows a table, two plots, and a short summary.
Once upon a time, in a land far away, there lived a curious robot.
The robot liked to count things: stars, stones, and steps.
One day it counted one hundred and one birds on a wire.
"That is a lot of birds," said the farmer, scratching his head.
The robot nodded and went on counting, because that is what robots do.
Alice was beginning to get very tired of sitting by her sister.
The rabbit took a watch out of its pocket, looked at it, and hurried on.
Down, down, down. Would the fall never come to an end?
The garden was full of roses, tulips, and tall green grass.
Water boils at 100 degrees Celsius at sea level.
The Earth goes around the Sun once every year.
The Moon is about 384,400 km away from the Earth.
Light travels at nearly 300,000 km per second.
A triangle has three sides; a square has four.
Seven times eight is fifty-six, and nine times nine is eighty-one.
The children played in the park until the street lights came on.
He read the letter twice, folded it, and put it in his coat.
The city was quiet at night, except for the hum of the trains.
She opened the window and let the cold air into the room.
Good code is read more often than it is written.
Simple is better than complex, and complex is better than complicated.
Errors should never pass silently, unless explicitly silenced.
Special cases are not special enough to break the rules.
Café, naïve, façade, jalapeño, and crème brûlée are borrowed words.
Straße, Größe, and Übung are German words with special letters.
Ça va? Très bien, merci. ¿Qué tal? Muy bien, gracias.
The symbols ©, ®, ±, ×, ÷, and ° appear in many documents.
Quotes can be "straight", 'single', or “curly” and ‘curly’.
The price was €12.50, or about £10.80, or $13.40.
def add(a, b):
    """Return the sum of a and b."""
    return a + b

def mul(a, b):
    return a * b

def factorial(n):
    if n <= 1:
        return 1
    return n * factorial(n - 1)

def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

def is_prime(n):
    if n < 2:
        return False
    for i in range(2, int(n ** 0.5) + 1):
        if n % i == 0:
            return False
    return True

class Counter:
    """Count how often each item appears."""

    def __init__(self):
        self.counts = {}

    def add(self, item):
        self.counts[item] = self.counts.get(item, 0) + 1

    def most_common(self, k=3):
        items = sorted(self.counts.items(), key=lambda kv: -kv[1])
        return items[:k]

def read_lines(path):
    with open(path, "r", encoding="utf-8") as f:
        return [line.rstrip("\\n") for line in f]

def write_rows(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\\n")

def chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]

def mean(values):
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) / len(values)

def softmax(logits):
    m = max(logits)
    exps = [math.exp(x - m) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]

def argmax(values):
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best

import json
import math
import os
from pathlib import Path

numbers = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
squares = [x * x for x in numbers]
evens = [x for x in numbers if x % 2 == 0]
total = sum(squares)
print(f"total = {total}")
print("evens:", evens)

config = {"name": "tiny", "layers": 2, "hidden": 64, "heads": 4}
for key, value in config.items():
    print(key, "=", value)

if __name__ == "__main__":
    result = add(2, 3)
    assert result == 5, "add is broken"
    print("ok", result)

def accept_draft(draft, target):
    accepted = 0
    for d, t in zip(draft, target):
        if d != t:
            break
        accepted += 1
    return accepted

def merge_dicts(a, b):
    out = dict(a)
    out.update(b)
    return out

try:
    value = int("12a")
except ValueError as err:
    print("bad value:", err)
finally:
    print("done")

while True:
    line = input("> ")
    if line.strip() == "quit":
        break
    print(line.upper())

x = 10
y = 20
z = x + y * 2 - (x // 3) ** 2
s = "café naïve"
t = s.encode("utf-8")
u = t.decode("utf-8")
'''

# Where the exactness tests run the tiny models: SPECCORE_TEST_DEVICE=cuda runs them on a GPU (the
# reference stays transformers' own generate on the CPU), so the engine's device path is tested too.
DEVICE = os.environ.get("SPECCORE_TEST_DEVICE", "cpu")

ZOO_VERSION = 1  # bump when the recipe changes: build_zoo then rebuilds stale directories

# --------------------------------------------------------------------------------------- tokenizers

BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# No bos_token here: the bpe_m post-processor already adds <s> when add_special_tokens=True.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


@dataclass(frozen=True)
class TokSpec:
    """What PreTrainedTokenizerFast needs besides the backend tokenizer."""

    bos: str | None
    eos: str
    pad: str
    unk: str | None
    extra_specials: tuple[str, ...]
    chat_template: str


TOKENIZERS = {
    "bpe_g": TokSpec(None, "<|endoftext|>", "<|endoftext|>", None, ("<|im_start|>", "<|im_end|>"), CHATML_TEMPLATE),
    "bpe_m": TokSpec("<s>", "</s>", "<pad>", "<unk>", (), ZEPHYR_TEMPLATE),
    "char": TokSpec(None, "</s>", "</s>", None, (), PLAIN_TEMPLATE),
}


def corpus_documents() -> list[str]:
    """CORPUS split at blank lines: each document ends with EOS in the training stream."""
    return [d.strip("\n") + "\n" for d in CORPUS.split("\n\n") if d.strip()]


# Qwen2's split regex. transformers 5 loads any model_type=qwen2 directory with Qwen2Tokenizer,
# which rebuilds NFC + this regex + ByteLevel whatever tokenizer.json says; bpe_g matches it exactly
# so that the llama-g and qwen-g directories (one vocabulary) tokenize identically.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _train_bpe_g(vocab_size: int = 400) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()  # as Qwen: non-NFC text comes back in NFC form
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer)
    return tok


def _with_byte_tokens(tok: Tokenizer, specials: list[str]) -> Tokenizer:
    """Rebuild a trained BPE with ids: specials, <0x00>..<0xFF>, then the learned pieces.

    The byte tokens go into the model vocab (not added tokens) so that byte_fallback uses them and
    the text "<0x41>" is not matched as a special token.
    """
    data = json.loads(tok.to_str())
    vocab = {s: i for i, s in enumerate(specials + BYTE_TOKENS)}
    for piece, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    data["model"]["vocab"] = vocab
    data["model"]["byte_fallback"] = True
    data["added_tokens"] = [
        {"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for s in specials
    ]
    return Tokenizer.from_str(json.dumps(data))


def _train_bpe_m(vocab_size: int = 300) -> Tokenizer:
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE())
    # Prepend '▁' always (SentencePiece add_dummy_prefix); Metaspace then turns spaces into '▁' and
    # splits before each '▁'. The decoder strips the one prepended '▁', so leading spaces survive.
    tok.normalizer = normalizers.Prepend("▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer)
    tok = _with_byte_tokens(tok, specials)
    # Metaspace before Fuse: it strips '▁' from the first token only, so it must see tokens one by one.
    tok.decoder = decoders.Sequence([
        decoders.ByteFallback(),
        decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        decoders.Fuse(),
    ])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def _build_char() -> Tokenizer:
    specials = ["</s>"]
    chars = sorted(set(CORPUS))
    vocab = {s: i for i, s in enumerate(specials + BYTE_TOKENS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok.add_special_tokens(specials)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    return tok


@functools.cache
def _backend_json(name: str) -> str:
    builders = {"bpe_g": _train_bpe_g, "bpe_m": _train_bpe_m, "char": _build_char}
    return builders[name]().to_str()


def build_tokenizer(name: str):
    """A fresh PreTrainedTokenizerFast for "bpe_g", "bpe_m" or "char" (training is cached)."""
    from transformers import PreTrainedTokenizerFast

    spec = TOKENIZERS[name]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_backend_json(name)),
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        unk_token=spec.unk,
        additional_special_tokens=list(spec.extra_specials) or None,
        clean_up_tokenization_spaces=False,  # the default cleanup breaks decode(encode(x)) == x
        model_max_length=512,
    )
    tok.chat_template = spec.chat_template
    return tok


def space_normalised_vocab(tok) -> dict[str, int]:
    """token string -> id with the space marker unified to '▁' ('Ġ' -> '▁'); the naive TLI view."""
    return {s.replace("Ġ", "▁"): i for s, i in tok.get_vocab().items()}


# ------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry. `noise_of` copies another entry's weights and adds Gaussian noise instead of
    training: a same-vocab drafter that agrees with its target often but not always."""

    arch: str  # "llama" | "qwen2"
    tokenizer: str  # a key of TOKENIZERS
    seed: int
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    train_steps: int = 150
    batch: int = 16
    seq: int = 64
    lr: float = 2e-2  # peak of a one-cycle schedule
    noise_of: str | None = None
    noise: float = 0.0  # noise std relative to each tensor's std


ZOO = {
    "target-llama-g": ModelSpec("llama", "bpe_g", seed=1),
    "target-qwen-g": ModelSpec("qwen2", "bpe_g", seed=2),
    "drafter-llama-g": ModelSpec("llama", "bpe_g", seed=3, noise_of="target-llama-g", noise=0.1),
    # lr 3e-2: at 2e-2 this drafter repeats one token for 32 steps on some prompts.
    "drafter-llama-m": ModelSpec("llama", "bpe_m", seed=4, hidden=48, intermediate=96, lr=3e-2),
    # llama, not qwen2: AutoTokenizer would swap a qwen2 directory's tokenizer for Qwen2Tokenizer.
    # (A longer-trained char drafter is more peaked but accepts less under SLRS greedy: keep this.)
    "drafter-llama-char": ModelSpec("llama", "char", seed=5, hidden=48, intermediate=96, batch=8, seq=128),
}


def _config(spec: ModelSpec, tok):
    from transformers import LlamaConfig, Qwen2Config

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    shape = dict(
        vocab_size=len(tok),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=512,
        initializer_range=0.2,  # wide init: logits far from uniform from the first step
        dtype="float64",
    )
    if spec.arch == "llama":
        return LlamaConfig(**shape, **ids, tie_word_embeddings=False)
    if spec.arch == "qwen2":
        return Qwen2Config(**shape, **ids, tie_word_embeddings=True)
    raise ValueError(f"unknown arch {spec.arch!r}")


def _training_stream(tok) -> torch.Tensor:
    """The corpus as one id stream, each document followed by EOS (so the models learn to stop)."""
    ids: list[int] = []
    for doc in corpus_documents():
        ids += tok.backend_tokenizer.encode(doc, add_special_tokens=False).ids + [tok.eos_token_id]
    return torch.tensor(ids)


def _init(name: str):
    """Seeded random init in float32 (training is 2x faster than in float64)."""
    from transformers import AutoModelForCausalLM

    spec = ZOO[name]
    tok = build_tokenizer(spec.tokenizer)
    torch.manual_seed(spec.seed)
    return AutoModelForCausalLM.from_config(_config(spec, tok), dtype=torch.float32), tok


def _train(model, tok, spec: ModelSpec) -> None:
    """~150 AdamW steps on random windows: peaked distributions, far from memorised (loss ~2.7).

    Uses no global RNG, so two models can train at once in threads and stay deterministic."""
    stream = _training_stream(tok)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    # One-cycle: a high peak lr gets furthest in few steps; the anneal keeps the end stable.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.train_steps, pct_start=0.1)
    model.train()
    for _ in range(spec.train_steps):
        starts = torch.randint(0, len(stream) - spec.seq - 1, (spec.batch,), generator=gen)
        x = torch.stack([stream[s : s + spec.seq] for s in starts.tolist()])  # [B, T]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()


def _noisy_copy(base, spec: ModelSpec):
    model = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (spec.noise * p.std()))
    return model


def _finish(model, tok):
    """float64 + generation config: what every zoo directory holds."""
    from transformers import GenerationConfig

    model = model.to(torch.float64).eval()
    model.config.dtype = torch.float64
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        do_sample=False,
    )
    return model


def _spec_hash(name: str) -> str:
    spec = ZOO[name]
    parts = {"v": ZOO_VERSION, "spec": asdict(spec), "tok": _backend_json(spec.tokenizer)}
    if spec.noise_of:
        parts["base"] = _spec_hash(spec.noise_of)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


MARKER = "tiny_zoo.json"


def _is_complete(path: Path, name: str) -> bool:
    try:
        return json.loads((path / MARKER).read_text())["hash"] == _spec_hash(name)
    except (OSError, ValueError, KeyError):
        return False


def build_models(names: list[str], root: Path | None = None, workers: int = 2) -> dict[str, tuple]:
    """Build zoo entries in memory: name -> (float64 model in eval mode, tokenizer, CPU seconds).

    A noisy copy takes its base from this call or else from `root / base`. Init is sequential
    (global RNG); training runs in `workers` threads with one intra-op thread each: the tensors
    are tiny, and a multi-threaded op on a shared CPU stalls whenever a sibling thread is
    descheduled (measured 5x slower under load)."""
    from transformers import AutoModelForCausalLM

    with _quiet_single_thread():
        inits = {n: _init(n) for n in names if not ZOO[n].noise_of}

        def train(name):
            t0 = time.thread_time()  # CPU time of this one-thread build: its wall time when idle
            model, tok = inits[name]
            _train(model, tok, ZOO[name])
            return name, (_finish(model, tok), tok, time.thread_time() - t0)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            out = dict(pool.map(train, list(inits)))
        for n in names:
            if ZOO[n].noise_of:
                t0, base = time.thread_time(), ZOO[n].noise_of
                tok = build_tokenizer(ZOO[n].tokenizer)
                if base in out:
                    base_model = out[base][0]
                else:
                    assert root is not None and _is_complete(root / base, base), f"{n} needs {base}"
                    base_model = AutoModelForCausalLM.from_pretrained(root / base, dtype=torch.float64)
                out[n] = (_finish(_noisy_copy(base_model, ZOO[n]), tok), tok, time.thread_time() - t0)
    return out


@contextlib.contextmanager
def _quiet_single_thread():
    """One intra-op thread and no progress bars, restored afterwards."""
    from transformers.utils import logging as hf_logging

    bars, threads = hf_logging.is_progress_bar_enabled(), torch.get_num_threads()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()


def build_zoo(root: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Build the named tiny models under `root` (all of ZOO by default); return name -> directory.

    Idempotent: a directory whose marker matches the current recipe is reused. Each directory is
    written to a temporary sibling and renamed into place, so a crash never leaves a half model.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    wanted = list(ZOO) if names is None else list(names)
    todo: list[str] = []
    for name in wanted:
        base = ZOO[name].noise_of
        for n in (base, name):  # a stale base first: its noisy copy is made from it
            if n and n not in todo and not _is_complete(root / n, n):
                todo.append(n)
    built = build_models(todo, root)
    with _quiet_single_thread():  # save_pretrained shows progress bars too
        for name, (model, tok, seconds) in built.items():
            _save(root, name, model, tok, seconds)
    return {n: root / n for n in wanted}


def _save(root: Path, name: str, model, tok, seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    tmp.chmod(0o755)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    info = {"hash": _spec_hash(name), "spec": asdict(ZOO[name]), "vocab_size": len(tok),
            "build_cpu_s": round(seconds, 3)}
    (tmp / MARKER).write_text(json.dumps(info, indent=1))
    if (root / name).exists():
        shutil.rmtree(root / name)
    os.replace(tmp, root / name)


# --------------------------------------------------------------------------------------- references


@functools.lru_cache(maxsize=8)
def load_tiny(model_dir: str | Path):
    """(model, tokenizer) from a zoo directory, cached per process. Treat both as read-only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def target_greedy(model_dir: str | Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy `generate` output (prompt + new ids, stops at EOS): the reference
    that speculative output must equal exactly."""
    model, _ = load_tiny(str(model_dir))
    x = torch.tensor([list(prompt_ids)])  # [1, T]
    with torch.no_grad():
        out = model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
            max_new_tokens=max_new_tokens,
        )
    return out[0].tolist()
