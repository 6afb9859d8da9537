"""Synthetic LM tasks that test retrieval over a long context: MQAR and needle retrieval.

A task draws whole sequences of ``seq_len + 1`` tokens from a ``torch.Generator``; the LM
inputs are ``tokens[:, :-1]``, the targets ``tokens[:, 1:]``, and only the targets marked in
``scored`` count (the rest become ``-100``). So the usual "targets = inputs shifted by one"
holds at every scored position, and the loss measures the retrieval alone: the random keys,
values and filler are unpredictable and never scored.

* **MQAR** (multi-query associative recall, Zoology / Based, Arora et al. 2023): key-value
  pairs ``k v k v ...`` then, at random slots, each key again followed by its value. The model
  must output the value when it reads a repeated key.
* **Needle**: random filler symbols, a needle ``<needle> a b c`` at a random depth, and at the
  end ``<needle>`` again: the model must output ``a b c``. Filler and needle values share one
  alphabet, so the marker (not the symbols) is what leads to the answer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .tokenizer import SymbolTokenizer

#: MQAR key and value alphabets (disjoint id ranges after the pad token).
MQAR_KEYS = 512
MQAR_VALUES = 512
#: Needle task: symbols shared by filler and needle value, and the needle value length.
NEEDLE_SYMBOLS = 256
NEEDLE_VALUE_LEN = 3


def _randperm_rows(gen: torch.Generator, rows: int, n: int, k: int) -> Tensor:
    """``k`` distinct integers in ``[0, n)`` per row, in random order: ``[rows, k]`` int64."""
    return torch.rand(rows, n, generator=gen).argsort(dim=1)[:, :k]


class MQARTask:
    """Multi-query associative recall with ``num_pairs = clamp(seq_len // 8, 1, MQAR_KEYS // 2)``.

    Vocabulary: ``<pad>`` (0), keys ``k0..k511`` (1..512), values ``v0..v511`` (513..1024).
    Tokens (``T = seq_len + 1``): ``P`` pairs with distinct keys at positions ``0..2P-1``, then
    ``(T - 2P) // 2`` two-token slots; ``P`` random slots hold ``key value`` (every key asked
    once), the others ``<pad> <pad>``. A scored target sits at every repeated key.
    """

    name = "mqar"

    def __init__(self, seq_len: int) -> None:
        if seq_len < 4:
            raise ValueError(f"seq_len must be >= 4 for the mqar task, got {seq_len}")
        self.seq_len = seq_len
        self.num_pairs = max(1, min(seq_len // 8, MQAR_KEYS // 2))
        self.num_slots = (seq_len + 1 - 2 * self.num_pairs) // 2
        assert self.num_slots >= self.num_pairs
        names = ["<pad>"] + [f"k{i}" for i in range(MQAR_KEYS)] + [f"v{i}" for i in range(MQAR_VALUES)]
        self.tokenizer = SymbolTokenizer(names)
        self.description = (f"mqar: {self.num_pairs} key-value pairs then {self.num_pairs} queries per {seq_len}-token"
                            f" sequence, {MQAR_KEYS} keys / {MQAR_VALUES} values, vocab {len(names)}")

    def sample(self, gen: torch.Generator, rows: int) -> tuple[Tensor, Tensor]:
        """``rows`` sequences: ``tokens [rows, seq_len + 1]`` int64, ``scored [rows, seq_len]`` bool."""
        pairs, length = self.num_pairs, self.seq_len + 1
        keys = _randperm_rows(gen, rows, MQAR_KEYS, pairs) + 1  # distinct keys: each query has one answer
        values = torch.randint(MQAR_VALUES, (rows, pairs), generator=gen) + 1 + MQAR_KEYS
        tokens = torch.zeros(rows, length, dtype=torch.long)
        tokens[:, 0:2 * pairs:2] = keys
        tokens[:, 1:2 * pairs:2] = values
        # Random slots give the queries a random order and random distances to their pairs.
        query_at = 2 * pairs + 2 * _randperm_rows(gen, rows, self.num_slots, pairs)  # [rows, P]
        tokens.scatter_(1, query_at, keys)
        tokens.scatter_(1, query_at + 1, values)
        scored = torch.zeros(rows, self.seq_len, dtype=torch.bool)
        scored.scatter_(1, query_at, True)  # the target at a query key's position is its value
        return tokens, scored


class NeedleTask:
    """Needle retrieval: ``T = seq_len + 1`` tokens of filler from ``NEEDLE_SYMBOLS`` symbols,
    ``<needle> + NEEDLE_VALUE_LEN`` random symbols at a uniform random depth, and the last
    ``NEEDLE_VALUE_LEN + 1`` tokens ``<needle>`` and the same symbols again. Scored targets: the
    final value symbols (predicted from the last ``<needle>`` on).

    Vocabulary: ``s0..s255`` (0..255) and ``<needle>`` (256); ``<needle>`` appears exactly twice.
    """

    name = "needle"

    def __init__(self, seq_len: int) -> None:
        minimum = 2 * NEEDLE_VALUE_LEN + 1
        if seq_len < minimum:
            raise ValueError(f"seq_len must be >= {minimum} for the needle task, got {seq_len}")
        self.seq_len = seq_len
        self.value_len = NEEDLE_VALUE_LEN
        self.marker = NEEDLE_SYMBOLS
        self.tokenizer = SymbolTokenizer([f"s{i}" for i in range(NEEDLE_SYMBOLS)] + ["<needle>"])
        self.description = (f"needle: <needle> + {NEEDLE_VALUE_LEN} symbols at a random depth in {seq_len} tokens"
                            f" of random filler ({NEEDLE_SYMBOLS} symbols), recalled at the end;"
                            f" vocab {NEEDLE_SYMBOLS + 1}")

    def sample(self, gen: torch.Generator, rows: int) -> tuple[Tensor, Tensor]:
        """``rows`` sequences: ``tokens [rows, seq_len + 1]`` int64, ``scored [rows, seq_len]`` bool."""
        n, span = self.seq_len, self.value_len + 1  # span: marker + value
        tokens = torch.randint(NEEDLE_SYMBOLS, (rows, n + 1), generator=gen)
        value = torch.randint(NEEDLE_SYMBOLS, (rows, self.value_len), generator=gen)
        # The needle lies anywhere before the final query and never overlaps it.
        depth = torch.randint(n + 2 - 2 * span, (rows, 1), generator=gen)  # [rows, 1]
        offsets = torch.arange(1, span)
        tokens.scatter_(1, depth, self.marker)
        tokens.scatter_(1, depth + offsets, value)
        query = n + 1 - span
        tokens[:, query] = self.marker
        tokens[:, query + 1:] = value
        scored = torch.zeros(rows, n, dtype=torch.bool)
        scored[:, query:] = True  # targets query+1 .. n: the value tokens
        return tokens, scored


#: Task sources of ``DataConfig.source``.
TASKS = {"mqar": MQARTask, "needle": NeedleTask}


def make_task(name: str, seq_len: int) -> MQARTask | NeedleTask:
    """The synthetic task ``name`` (``mqar`` or ``needle``) for sequences of ``seq_len`` tokens."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name](seq_len)
