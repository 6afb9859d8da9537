"""The data section of a run: where an LM's tokens come from, validated once here."""

from __future__ import annotations

from dataclasses import dataclass

from ...utils.checks import check_config_int


@dataclass
class DataConfig:
    """Where tokens come from (see :mod:`.token_data`).

    Attributes:
        source: ``stdlib`` (embedded: Python standard library docstrings), a path to a text
            file or a directory of ``*.txt``/``*.md``/``*.py`` files, ``hf:NAME[:CONFIG]`` (a
            Hugging Face dataset, needs ``datasets`` and network or a cache), ``mqar``
            (multi-query associative recall) or ``needle`` (needle-retrieval LM task).
        tokenizer: ``bpe`` (byte-level BPE trained locally and cached) or ``bytes``.
        bpe_vocab_size: vocabulary of the trained BPE.
        val_fraction: share of the token stream held out (the tail) for validation.
        max_chars: cap on the characters read from a text source (0 = all).
        cache_dir: where tokenizers and token streams are cached (default ``~/.cache/sparse-attention``).
    """

    source: str = "stdlib"
    tokenizer: str = "bpe"
    bpe_vocab_size: int = 4096
    val_fraction: float = 0.05
    max_chars: int = 0
    cache_dir: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"data.source must be a non-empty string, got {self.source!r}")
        if self.tokenizer not in ("bpe", "bytes"):
            raise ValueError(f"data.tokenizer must be 'bpe' or 'bytes', got {self.tokenizer!r}")
        check_config_int("data", "bpe_vocab_size", self.bpe_vocab_size)
        if self.bpe_vocab_size < 260:
            raise ValueError(f"data.bpe_vocab_size must be >= 260 (256 bytes + specials), got {self.bpe_vocab_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        check_config_int("data", "max_chars", self.max_chars, allow_zero=True)
