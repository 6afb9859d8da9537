"""Tokenizers of the LM harness: raw UTF-8 bytes, a locally trained byte-level BPE, and named symbols.

Every tokenizer has ``encode(str) -> list[int]``, ``decode(list[int]) -> str`` and
``vocab_size``. ``encode_stream`` turns a long text into one numpy token stream (with an
optional progress bar). Cache files are written with ``utils.results_io.atomic_write``, so a
reader never sees half a file even when several processes (DDP ranks) build the same cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..._optional import require

#: What needs ``tokenizers`` (named by the error when it is not installed).
BPE_FEATURE = "the BPE tokenizer (data.tokenizer=bpe)"

#: Special token of the BPE (reserved for document separators; the byte stream never needs it).
END_OF_TEXT = "<|endoftext|>"
#: Text is encoded in pieces of about this many characters, cut after a newline: the pieces
#: feed the progress bar and ``encode_batch`` (parallel in Rust).
CHUNK_CHARS = 1 << 16


def _as_ints(ids: Iterable[int]) -> list[int]:
    """``ids`` (a list, tuple, numpy array or 1-D tensor) as a list of Python ints."""
    tolist = getattr(ids, "tolist", None)
    return [int(i) for i in (tolist() if tolist is not None else ids)]


class ByteTokenizer:
    """Raw UTF-8 bytes: token ``i`` is the byte ``i``; vocabulary 256, no special tokens."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        # A window may cut a multi-byte character: show it as U+FFFD instead of failing.
        return bytes(_as_ints(ids)).decode("utf-8", errors="replace")

    def encode_array(self, text: str, *, progress: bool = False) -> np.ndarray:
        """``text`` as a ``uint8`` array (no progress bar: this takes milliseconds)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


class BPETokenizer:
    """A byte-level BPE (GPT-2 style) from the ``tokenizers`` package.

    Byte-level means every string round-trips: ``decode(encode(s)) == s``.
    """

    name = "bpe"

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode(_as_ints(ids))

    def encode_array(self, text: str, *, progress: bool = False) -> np.ndarray:
        """``text`` as one token array (``uint16`` when the vocabulary fits, else ``int32``).

        The text is encoded in newline-cut pieces; decoding the result gives ``text`` back
        exactly, though a whitespace run at a cut may be split into two tokens.
        """
        from tqdm.auto import tqdm

        dtype = np.uint16 if self.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
        chunks = split_text(text, CHUNK_CHARS)
        parts = []
        with tqdm(total=len(text), unit="char", unit_scale=True, desc="tokenizing", disable=not progress) as bar:
            for start in range(0, len(chunks), 64):
                group = chunks[start:start + 64]
                parts += [np.asarray(enc.ids, dtype=dtype) for enc in self._tokenizer.encode_batch(group)]
                bar.update(sum(len(chunk) for chunk in group))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def to_json(self) -> str:
        return self._tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        return cls(require("tokenizers", BPE_FEATURE).Tokenizer.from_str(text))


def split_text(text: str, chunk_chars: int) -> list[str]:
    """``text`` cut into pieces of at least ``chunk_chars`` characters, each ending after a newline
    (the last piece ends where the text does). ``"".join(pieces) == text``."""
    pieces, start = [], 0
    while start < len(text):
        cut = text.find("\n", start + chunk_chars)
        end = len(text) if cut < 0 else cut + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def train_bpe(texts: Iterable[str], vocab_size: int, *, progress: bool = False) -> BPETokenizer:
    """Train a byte-level BPE with at most ``vocab_size`` tokens (256 bytes, ``END_OF_TEXT``, merges).

    A small text may yield fewer tokens than asked for (no pair left to merge); read the real
    size from ``vocab_size`` of the result.
    """
    require("tokenizers", BPE_FEATURE)  # installed: the import below succeeds
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # No prefix space: it would insert a character and break decode(encode(s)) == s.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tokenizer)


def tokenizers_version() -> str:
    return require("tokenizers", BPE_FEATURE).__version__


class SymbolTokenizer:
    """Named symbols of a synthetic task: token ``i`` is ``names[i]``.

    ``encode`` takes whitespace-separated names (``"k3 v17"``); ``decode`` joins names with
    spaces, so logs of synthetic tasks stay readable.
    """

    name = "symbols"

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names):
            raise ValueError("symbol names must be unique")
        self.names = tuple(names)
        self._ids = {name: i for i, name in enumerate(self.names)}

    @property
    def vocab_size(self) -> int:
        return len(self.names)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[name] for name in text.split()]
        except KeyError as exc:
            raise ValueError(f"unknown symbol {exc.args[0]!r} (known: {self.names[0]} ... {self.names[-1]})") from None

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.names[i] for i in _as_ints(ids))
