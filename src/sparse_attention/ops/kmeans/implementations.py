"""The k-means ops' implementations and what each declares it supports: ``kmeans_seed`` (the
k-means++ draws) and ``kmeans_assign`` (nearest centroid), each with a ``reference`` (PyTorch, any
device) and a ``cpu`` kernel, under the rule of :mod:`sparse_attention.ops.dispatch`."""

from __future__ import annotations

from ..dispatch import Implementation, Op
from . import cpu, reference


def _anywhere(*inputs, **options) -> None:
    return None


KMEANS_SEED = Op("kmeans_seed")
KMEANS_SEED.register(Implementation(
    name="reference", priority=0, run=reference.kmeanspp_picks_reference, supports=_anywhere,
    description="PyTorch: a few calls per draw (cumsum + searchsorted over float64 weights; any device)"))
KMEANS_SEED.register(Implementation(
    name="cpu", priority=10, run=cpu.kmeanspp_picks, supports=cpu.supports, unavailable=cpu.EXTENSION.load_error,
    description="C++: one loop per problem over the k sequential draws"))

KMEANS_ASSIGN = Op("kmeans_assign")
KMEANS_ASSIGN.register(Implementation(
    name="reference", priority=0, run=reference.assign_reference, supports=_anywhere,
    description="PyTorch: one batched GEMM against the centroids, then argmax (any device)"))
KMEANS_ASSIGN.register(Implementation(
    name="cpu", priority=10, run=cpu.assign, supports=cpu.supports, unavailable=cpu.EXTENSION.load_error,
    description="C++: GEMM and argmax fused, no [G, L, C] score matrix"))
