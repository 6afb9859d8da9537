"""The row compaction ops' implementations and what each declares it supports.

Three entry points, each an op of its own under the rule of :mod:`sparse_attention.ops.dispatch`:
``compact_rows`` (candidate lists), ``cluster_rows`` (chosen clusters' members) and ``lsh_rows``
(keys sorted by bucket). Each has a ``reference`` (two sorts per row, any device) and a ``cpu``
kernel (one bitmap pass per row).
"""

from __future__ import annotations

from ..dispatch import reference_and_cpu
from . import cpu, reference

_SORTS = "PyTorch: sort, drop duplicates, sort again (any device)"
_BITMAP = "C++: one bitmap of N_k bits per row, read back in order"

COMPACT_ROWS = reference_and_cpu("compact_rows", reference.compact_rows_reference, _SORTS, cpu.compact_rows, _BITMAP,
                                 cpu.supports, cpu.EXTENSION.load_error)
CLUSTER_ROWS = reference_and_cpu("cluster_rows", reference.cluster_rows_reference, _SORTS, cpu.cluster_rows, _BITMAP,
                                 cpu.supports, cpu.EXTENSION.load_error)
LSH_ROWS = reference_and_cpu("lsh_rows", reference.lsh_rows_reference, _SORTS, cpu.lsh_rows, _BITMAP, cpu.supports,
                             cpu.EXTENSION.load_error)
