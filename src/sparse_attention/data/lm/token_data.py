"""Training and validation batches of the LM harness: text corpora and synthetic tasks.

``load_data(config.data, seq_len, seed=...)`` returns an :class:`LMData`. Its batches are pure
functions of their arguments: ``train_batch(step, ...)`` draws its windows from a generator
seeded by ``(seed, step)``, so a resumed run, or a dense and a sparse run with one seed, see
the same tokens in the same order; ``val_batches`` are fixed for a data set and ``seq_len``.

Sources (``DataConfig.source``):

* ``stdlib``: the docstrings of the Python standard library (:mod:`sparse_attention.data.corpus`),
  offline everywhere; the text depends on the Python version.
* a path: a text file, or a directory whose ``*.txt``, ``*.md``, ``*.py`` and ``*.rst`` files
  (recursively, hidden directories skipped, sorted by relative path) are joined by blank lines.
* ``hf:NAME`` or ``hf:NAME:CONFIG``: the ``train`` split of a Hugging Face dataset, first text
  column (needs ``datasets``, and network or its cache).
* ``mqar``, ``needle``: synthetic retrieval tasks (:mod:`sparse_attention.data.lm.tasks`); these names
  win over a local path of the same name (write ``./mqar`` for the path).

Text is tokenized (``bytes`` or a byte-level BPE trained on the training part of the text) into
one stream; the last ``val_fraction`` of the stream is the validation split. The tokenizer and the
stream are cached under ``cache_dir/tokenizers/<key>/``, where the key hashes the source's identity
(Python version, or file paths, sizes and mtimes, or dataset name), ``max_chars``, the tokenizer
settings and the ``tokenizers`` version; a second load reads no text and trains nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...utils.checks import check_int
from ...utils.results_io import atomic_write
from .. import corpus
from .config import DataConfig
from .tasks import TASKS, make_task
from .tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    tokenizers_version,
    train_bpe,
)

#: Target of positions that are not scored (``torch.nn.functional.cross_entropy``'s ignore_index).
IGNORE_INDEX = -100
#: File suffixes read from a directory source.
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")
#: Separator placed between two files (and two dataset rows).
FILE_SEPARATOR = "\n\n"
#: Bump when the cached files or the text read from a source change meaning.
CACHE_FORMAT = 1


def step_generator(*parts) -> torch.Generator:
    """A ``torch.Generator`` seeded by a stable hash of ``parts`` (e.g. ``(seed, "train", step)``).

    Python's ``hash`` is salted per process; blake2b gives every process and machine the same seed.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


class LMData:
    """Batches for one data set and sequence length (build it with :func:`load_data`).

    Attributes:
        tokenizer: ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ``vocab_size``.
        vocab_size: tokens the model must embed.
        seq_len: tokens per sequence ``N``.
        seed: seeds the order of training batches.
        description: one line for logs and result files (source, tokenizer, token counts).
        n_train_tokens, n_val_tokens: sizes of the two splits; ``None`` for generated tasks.
    """

    def __init__(self, *, tokenizer, seq_len: int, seed: int, description: str,
                 n_train_tokens: int | None = None, n_val_tokens: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.seq_len = seq_len
        self.seed = seed
        self.description = description
        self.n_train_tokens = n_train_tokens
        self.n_val_tokens = n_val_tokens

    def train_batch(self, step: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> tuple[Tensor, Tensor]:
        """The training batch of ``step`` for one rank.

        The global batch of step ``step`` has ``batch_size * world_size`` rows; rank ``r`` gets
        rows ``r::world_size``. So ``world_size`` ranks together see exactly the batch that one
        process with ``batch_size * world_size`` rows sees, and a step always gives the same rows.

        Returns:
            ``inputs [batch_size, N]`` int64 and ``targets [batch_size, N]`` int64: the inputs
            shifted left by one, ``-100`` where a position is not scored.
        """
        check_int("step", step, 0)
        check_int("batch_size", batch_size, 1)
        check_int("world_size", world_size, 1)
        check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size ({world_size}), got {rank}")
        gen = step_generator(self.seed, "train", int(step))
        return self._sample(gen, batch_size * world_size, slice(rank, None, world_size))

    def val_batches(self, n_batches: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        """``n_batches`` fixed validation batches ``(inputs [batch_size, N], targets [batch_size, N])``.

        They depend on the data set and ``N`` only (not on ``seed``), so runs with different
        seeds are scored on the same tokens; batch ``i`` is the same for any ``n_batches > i``
        (text: as long as the windows need not overlap).
        """
        check_int("n_batches", n_batches, 1)
        check_int("batch_size", batch_size, 1)
        return self._validation(n_batches, batch_size)

    def _sample(self, gen: torch.Generator, global_batch: int, rows: slice) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _validation(self, n_batches: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


def split_sizes(n_tokens: int, val_fraction: float) -> tuple[int, int]:
    """``(n_train, n_val)`` of a stream of ``n_tokens``: the last ``val_fraction`` (at least 1) is validation."""
    n_val = max(1, round(n_tokens * val_fraction))
    return n_tokens - n_val, n_val


class TextData(LMData):
    """A token stream: random training windows from the head, fixed validation windows from the tail.

    Attributes (besides :class:`LMData`'s): ``train_tokens [n_train]`` and ``val_tokens [n_val]``,
    int32 tensors.
    """

    def __init__(self, *, tokens: np.ndarray, val_fraction: float, **kwargs) -> None:
        n_train, n_val = split_sizes(len(tokens), val_fraction)
        stream = torch.from_numpy(tokens.astype(np.int32))  # int32: half of int64, indexable (uint16 is not)
        self.train_tokens, self.val_tokens = stream[:n_train], stream[n_train:]
        super().__init__(n_train_tokens=n_train, n_val_tokens=n_val, **kwargs)
        self._window = torch.arange(self.seq_len + 1)  # offsets of one window of N + 1 tokens
        _require_window("train", len(self.train_tokens), self.seq_len)
        _require_window("validation", n_val, self.seq_len)

    def _windows(self, stream: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        windows = stream[starts[:, None] + self._window].long()  # [B, N + 1]
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def _sample(self, gen: torch.Generator, global_batch: int, rows: slice) -> tuple[Tensor, Tensor]:
        # Every start leaves room for N + 1 tokens inside the train split: never a val token.
        starts = torch.randint(len(self.train_tokens) - self.seq_len, (global_batch,), generator=gen)
        return self._windows(self.train_tokens, starts[rows])

    def _validation(self, n_batches: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        n = self.seq_len
        needed = n_batches * batch_size
        # Stride N: consecutive windows share one token (last target = next first input), so
        # every scored validation token is scored once.
        if (len(self.val_tokens) - 1) // n >= needed:
            starts = torch.arange(needed) * n
        else:  # the split is too short for that many disjoint windows: spread overlapping ones
            starts = torch.linspace(0, len(self.val_tokens) - n - 1, needed).round().long()
        return [self._windows(self.val_tokens, starts[i * batch_size:(i + 1) * batch_size]) for i in range(n_batches)]


def _require_window(split: str, length: int, seq_len: int) -> None:
    if length < seq_len + 1:
        raise ValueError(f"the {split} split has {length} tokens, fewer than seq_len + 1 = {seq_len + 1}: use more"
                         f" text (data.max_chars, data.source), a larger data.val_fraction or a smaller seq_len")


class TaskData(LMData):
    """Sequences of a synthetic task, generated on the fly (nothing is stored)."""

    def __init__(self, task, **kwargs) -> None:
        self.task = task
        super().__init__(tokenizer=task.tokenizer, **kwargs)

    def _batch(self, gen: torch.Generator, rows: int, keep: slice) -> tuple[Tensor, Tensor]:
        tokens, scored = self.task.sample(gen, rows)
        tokens, scored = tokens[keep], scored[keep]
        targets = tokens[:, 1:].masked_fill(~scored, IGNORE_INDEX)
        return tokens[:, :-1].contiguous(), targets.contiguous()

    def _sample(self, gen: torch.Generator, global_batch: int, rows: slice) -> tuple[Tensor, Tensor]:
        return self._batch(gen, global_batch, rows)

    def _validation(self, n_batches: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        # Own seed per batch, independent of the training seed: every run is scored on the same set.
        return [self._batch(step_generator("val", i), batch_size, slice(None)) for i in range(n_batches)]


# ---------------------------------------------------------------- text sources


def _parse_hf(source: str) -> tuple[str, str | None]:
    parts = source[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 2 or (len(parts) == 2 and not parts[1]):
        raise ValueError(f"data.source: expected hf:NAME or hf:NAME:CONFIG, got {source!r}")
    return parts[0], parts[1] if len(parts) == 2 else None


def _source_files(path: Path) -> list[Path]:
    """The text files of a path source, in reading order."""
    if path.is_file():
        return [path]
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        # Hidden directories (.git, .venv, .tox) hold tooling, not the user's text.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath) / f for f in filenames if f.endswith(TEXT_SUFFIXES) and not f.startswith(".")]
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def _source_identity(source: str) -> dict:
    """What the cached stream depends on, cheap to compute (no text is read)."""
    if source == "stdlib":
        return {"source": "stdlib", "python": sys.version, "dir": str(corpus.stdlib_dir()),
                "excluded": sorted(corpus.EXCLUDED_DIRS)}
    if source.startswith("hf:"):
        name, config = _parse_hf(source)
        return {"source": "hf", "name": name, "config": config}
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise ValueError(f"data.source: no such file or directory: {source}")
    files = _source_files(path)
    if not files:
        raise ValueError(f"data.source: {source} holds no {', '.join('*' + s for s in TEXT_SUFFIXES)} files")
    # Size and mtime stand in for the content: an edited file gives a new key.
    stats = [(p.relative_to(path).as_posix() if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns)
             for p in files]
    return {"source": "path", "path": str(path), "files": stats}


def _join_limited(texts, max_chars: int) -> str:
    """``texts`` joined by ``FILE_SEPARATOR``, reading no further than ``max_chars`` (0 = all)."""
    parts, total = [], 0
    for text in texts:
        parts.append(text)
        total += len(text) + len(FILE_SEPARATOR)
        if max_chars and total >= max_chars:
            break
    joined = FILE_SEPARATOR.join(parts)
    return joined[:max_chars] if max_chars else joined


def _read_hf(source: str, max_chars: int) -> str:
    name, config = _parse_hf(source)
    advice = "install it with `pip install datasets`, or set data.source to a local text file or directory"
    try:
        import datasets
    except ImportError as exc:
        raise ValueError(f"data.source {source!r}: the Hugging Face dataset {name!r} needs the `datasets` package"
                         f" ({exc}); {advice}") from None
    try:
        # Streaming reads only the first max_chars instead of downloading the whole data set.
        rows = datasets.load_dataset(name, config, split="train", streaming=bool(max_chars))
        return _join_limited(_text_column(rows, source), max_chars)
    except _NoTextColumn:
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    raise ValueError(f"data.source {source!r}: could not load the Hugging Face dataset {name!r}"
                     f"{f' (config {config!r})' if config else ''}: {reason}. Check the name and the network, or"
                     f" set data.source to a local text file or directory") from None


class _NoTextColumn(ValueError):
    """A dataset that loads but has no string column (not a loading failure)."""


def _text_column(rows, source: str):
    """The values of the first string column of a dataset's rows, in order."""
    column = None
    for row in rows:
        if column is None:
            column = next((key for key, value in row.items() if isinstance(value, str)), None)
            if column is None:
                raise _NoTextColumn(f"data.source {source!r}: the train split has no text column"
                                 f" (columns: {', '.join(row)})")
        yield row[column]


def _read_text(source: str, max_chars: int) -> str:
    if source == "stdlib":
        return _join_limited((doc for _, doc in corpus.iter_stdlib_docstrings()), max_chars)
    if source.startswith("hf:"):
        return _read_hf(source, max_chars)
    path = Path(source).expanduser().resolve()
    files = (p.read_text(encoding="utf-8", errors="replace") for p in _source_files(path))
    return _join_limited(files, max_chars)


# ---------------------------------------------------------------- tokenizing and the cache


def _cache_entry(config: DataConfig, identity: dict) -> Path:
    key = {"format": CACHE_FORMAT, "identity": identity, "max_chars": config.max_chars, "tokenizer": config.tokenizer}
    if config.tokenizer == "bpe":
        # The BPE is trained on the first (1 - val_fraction) of the text, so that fraction matters too.
        key.update(bpe_vocab_size=config.bpe_vocab_size, val_fraction=config.val_fraction,
                   tokenizers=tokenizers_version())
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(config.cache_dir or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "sparse-attention")
    return root.expanduser() / "tokenizers" / f"{config.tokenizer}-{digest}"


def _load_cached(entry: Path, kind: str):
    """``(tokenizer, tokens, meta)`` from a complete cache entry, else ``None``."""
    meta_path = entry / "meta.json"
    if not meta_path.exists():  # meta.json is written last: its presence means complete
        return None
    meta = json.loads(meta_path.read_text())
    tokenizer = (BPETokenizer.from_json((entry / "tokenizer.json").read_text()) if kind == "bpe"
                 else ByteTokenizer())
    return tokenizer, np.load(entry / "tokens.npy"), meta


def _store(entry: Path, tokenizer, tokens: np.ndarray, meta: dict) -> None:
    if isinstance(tokenizer, BPETokenizer):
        atomic_write(entry / "tokenizer.json", tokenizer.to_json().encode())
    buffer = io.BytesIO()
    np.save(buffer, tokens)
    atomic_write(entry / "tokens.npy", buffer.getvalue())
    atomic_write(entry / "meta.json", json.dumps(meta, indent=1).encode())


def _build_stream(config: DataConfig, progress: bool):
    """Read the text, make the tokenizer, encode: ``(tokenizer, tokens, meta)``."""
    text = _read_text(config.source, config.max_chars)
    if not text.strip():
        raise ValueError(f"data.source {config.source!r}: no text (empty files or an empty dataset)")
    if config.tokenizer == "bpe":
        # Train on the head only, so the tokenizer has not seen the validation text.
        head = text[:max(1, round(len(text) * (1 - config.val_fraction)))]
        tokenizer = train_bpe([head], config.bpe_vocab_size, progress=progress)
    else:
        tokenizer = ByteTokenizer()
    tokens = tokenizer.encode_array(text, progress=progress)
    return tokenizer, tokens, {"n_chars": len(text), "n_tokens": len(tokens)}


def _source_label(source: str) -> str:
    if source == "stdlib":
        return f"stdlib docstrings (Python {sys.version.split()[0]})"
    return source


def load_data(config: DataConfig, seq_len: int, *, seed: int = 0, progress: bool = False) -> LMData:
    """The batches of ``config`` for sequences of ``seq_len`` tokens.

    Args:
        config: the data section of a run (source, tokenizer, split, cache): a
            :class:`~.config.DataConfig`.
        seq_len: tokens per sequence ``N``; text splits must hold at least ``N + 1`` tokens.
        seed: seeds the order of training batches (not the validation batches).
        progress: show progress bars while training the BPE and tokenizing (else print nothing).
    Returns:
        An :class:`LMData` (a :class:`TextData` or a :class:`TaskData`).
    Raises:
        ValueError: a missing path, an empty text, an unloadable ``hf:`` dataset, a split shorter
            than ``seq_len + 1`` tokens. TypeError: arguments of the wrong type.
    """
    if not isinstance(config, DataConfig):
        raise TypeError(f"config must be a DataConfig, got {type(config).__name__}")
    check_int("seq_len", seq_len, 1)
    check_int("seed", seed, 0)
    if config.source in TASKS:
        task = make_task(config.source, seq_len)
        description = f"{task.description} (generated per step; data.tokenizer ignored)"
        return TaskData(task, seq_len=seq_len, seed=seed, description=description)
    entry = _cache_entry(config, _source_identity(config.source))
    cached = _load_cached(entry, config.tokenizer)
    if cached is None:
        cached = _build_stream(config, progress)
        _store(entry, *cached)
    tokenizer, tokens, meta = cached
    tok_label = f"bpe (vocab {tokenizer.vocab_size})" if config.tokenizer == "bpe" else "bytes (vocab 256)"
    n_train, n_val = split_sizes(len(tokens), config.val_fraction)
    description = (f"{_source_label(config.source)}: {meta['n_chars']:,} chars -> {len(tokens):,} tokens, {tok_label};"
                   f" train {n_train:,} / val {n_val:,} tokens")
    return TextData(tokens=tokens, val_fraction=config.val_fraction, tokenizer=tokenizer, seq_len=seq_len, seed=seed,
                    description=description)
