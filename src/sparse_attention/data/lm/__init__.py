"""LM token data: batches of text corpora and synthetic tasks, the tokenizers, the tasks.

* :mod:`.config`: :class:`DataConfig`, the data section of a run (source, tokenizer, split, cache).
* :mod:`.token_data`: :func:`load_data` and the :class:`LMData` batches it returns (text sources,
  the token-stream cache, train/validation splits).
* :mod:`.tokenizer`: byte, byte-level BPE and named-symbol tokenizers.
* :mod:`.tasks`: the synthetic retrieval tasks ``mqar`` and ``needle``.
"""

from .config import DataConfig
from .token_data import IGNORE_INDEX, LMData, TaskData, TextData, load_data

__all__ = ["IGNORE_INDEX", "DataConfig", "LMData", "TaskData", "TextData", "load_data"]
