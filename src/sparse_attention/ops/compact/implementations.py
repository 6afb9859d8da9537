"""The row compaction ops' implementations and what each declares it supports.

Three entry points, each an op of its own under the rule of :mod:`sparse_attention.ops.dispatch`:
``compact_rows`` (candidate lists), ``cluster_rows`` (chosen clusters' members) and ``lsh_rows``
(keys sorted by bucket). Each has a ``reference`` (two sorts per row, any device) and a ``cpu``
kernel (one bitmap pass per row).
"""

from __future__ import annotations

from ..dispatch import Implementation, Op
from . import cpu, reference


def _anywhere(*inputs, **options) -> None:
    return None


def _op(name: str, reference_fn, cpu_fn) -> Op:
    op = Op(name)
    op.register(Implementation(name="reference", priority=0, run=reference_fn, supports=_anywhere,
                               description="PyTorch: sort, drop duplicates, sort again (any device)"))
    op.register(Implementation(name="cpu", priority=10, run=cpu_fn, supports=cpu.supports,
                               unavailable=cpu.EXTENSION.load_error,
                               description="C++: one bitmap of N_k bits per row, read back in order"))
    return op


COMPACT_ROWS = _op("compact_rows", reference.compact_rows_reference, cpu.compact_rows)
CLUSTER_ROWS = _op("cluster_rows", reference.cluster_rows_reference, cpu.cluster_rows)
LSH_ROWS = _op("lsh_rows", reference.lsh_rows_reference, cpu.lsh_rows)
