"""The k-means ops' implementations and what each declares it supports: ``kmeans_seed`` (the
k-means++ draws), ``kmeans_assign`` (nearest centroid) and ``kmeans_sums`` (per-cluster sums and
counts of the Lloyd update), each with a ``reference`` (PyTorch, any device) and a ``cpu``
implementation, under the rule of :mod:`sparse_attention.ops.dispatch`."""

from __future__ import annotations

from ..dispatch import reference_and_cpu
from . import cpu, reference

KMEANS_SEED = reference_and_cpu(
    "kmeans_seed",
    reference.kmeanspp_picks_reference, "PyTorch: a few calls per draw (cumsum + searchsorted over float64 weights;"
    " any device)",
    cpu.kmeanspp_picks, "C++: one loop per problem over the k sequential draws", cpu.supports, cpu.EXTENSION.load_error)
KMEANS_ASSIGN = reference_and_cpu(
    "kmeans_assign",
    reference.assign_reference, "PyTorch: one batched GEMM against the centroids, then argmax (any device)",
    cpu.assign, "C++: GEMM and argmax fused, no [G, L, C] score matrix", cpu.supports, cpu.EXTENSION.load_error)
KMEANS_SUMS = reference_and_cpu(
    "kmeans_sums",
    reference.cluster_sums_reference, "PyTorch: one-hot matmul (any device; deterministic on GPU, no atomics)",
    cpu.cluster_sums, "PyTorch index_add + bincount on CPU (deterministic there; no [G, L, k] one-hot)", cpu.supports)
