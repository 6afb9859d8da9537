"""Candidate lists (or chosen clusters) -> sorted unique index rows on CPU (``csrc/compact_cpu.cpp``).

The clustering and hashing selections build per-query candidate lists with duplicates and
padding; this turns them into the ascending, duplicate-free rows the kernels read with one
bitmap pass per row instead of two sorts. Each function returns exactly what its sort-based
reference in :mod:`.reference` returns.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ..cpp.build import CppExtension

EXTENSION = CppExtension("compact", Path(__file__).with_name("csrc"))


def supports(first: Tensor, *inputs, **options) -> str | None:
    """None when the kernels can run on inputs whose first tensor is ``first`` (a CPU tensor)."""
    return None if first.device.type == "cpu" else f"runs on CPU tensors only, got {first.device.type}"


def compact_rows(indices: Tensor, n_keys: int, limit: Tensor | None = None, key_range: tuple[int, int] | None = None,
                 isa: str | None = None) -> Tensor:
    """:func:`sparse_attention.ops.compact.compact_rows` (arguments and result as there) by one bitmap
    pass per row; ``isa``: the build to run (default the session's level)."""
    *lead, n_q, m = indices.shape
    flat = indices.reshape(math.prod(lead) * n_q, m).long()  # [R, M]
    lim = torch.empty(0, dtype=torch.long) if limit is None else limit.long().reshape(n_q)
    start, stop = (0, 0) if key_range is None else (int(key_range[0]), int(key_range[1]))
    out = EXTENSION.require(isa).compact_rows(flat, int(n_keys), lim, start, stop)  # [R, K]
    return out.view(*lead, n_q, out.shape[-1])


def cluster_rows(members: Tensor, chosen: Tensor, n_keys: int, limit: Tensor | None = None,
                 key_range: tuple[int, int] | None = None, isa: str | None = None) -> Tensor:
    """:func:`sparse_attention.ops.compact.cluster_rows`: reads the chosen clusters' members straight
    into each row's bitmap, never gathering the ``[Q, c x M]`` candidate lists."""
    lim = torch.empty(0, dtype=torch.long) if limit is None else limit.long().reshape(-1)
    start, stop = (0, 0) if key_range is None else (int(key_range[0]), int(key_range[1]))
    return EXTENSION.require(isa).cluster_rows(members.long(), chosen.long(), int(n_keys), lim, start, stop)


def lsh_rows(order: Tensor, lo: Tensor, at: Tensor, hi: Tensor, pos: Tensor, window: int, causal: bool,
             include_self: bool, n_keys: int, isa: str | None = None) -> Tensor:
    """:func:`sparse_attention.ops.compact.lsh_rows`: each row reads its runs of the sorted orders
    straight into its bitmap."""
    return EXTENSION.require(isa).lsh_rows(order.long(), lo.long(), at.long(), hi.long(), pos.long(), int(window),
                                       bool(causal), bool(include_self), int(n_keys))
