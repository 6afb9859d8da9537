"""k-means steps of the clustering selections (``ssa``, ``routing``): the k-means++ draws, the
nearest-centroid assignment and the per-cluster sums of the update. ``reference.py`` (the oracle), ``cpu.py`` + ``csrc/`` (C++ kernels),
``implementations.py`` (what each supports). The Lloyd loop itself is
:func:`sparse_attention.selection._kmeans.kmeans`."""

from __future__ import annotations

from torch import Tensor

from .implementations import KMEANS_ASSIGN, KMEANS_SEED, KMEANS_SUMS


def kmeanspp_picks(x: Tensor, uniforms: Tensor, spherical: bool, *, implementation: str = "auto") -> Tensor:
    """Indices ``[G, k]`` of the points k-means++ draws from ``x [G, L, D]`` with ``uniforms [G, k]``.

    Draw 0 is ``floor(u * L)``; draw ``j`` the first point whose running sum of weights (float64
    squared distance to the nearest point drawn so far, 0 where not a positive finite number)
    exceeds ``u * total``, uniform again when every weight is 0. ``spherical``: ``x`` holds unit
    vectors and the distance is ``2 - 2 cos``.
    """
    return KMEANS_SEED.choose(implementation, x).run(x, uniforms, spherical)


def assign(x: Tensor, centroids: Tensor, bias: Tensor | None = None, *, implementation: str = "auto") -> Tensor:
    """Nearest centroid ``[G, L]`` int64: ``argmax_c (x . c + bias_c)`` for ``x [G, L, D]``,
    ``centroids [G, C, D]``, ``bias [G, C]`` (None = 0; ``-|c|^2 / 2`` for Euclidean k-means). Ties go
    to the first centroid and a NaN score counts as ``+inf``, as ``torch.argmax`` orders them."""
    return KMEANS_ASSIGN.choose(implementation, x).run(x, centroids, bias)



def cluster_sums(x: Tensor, labels: Tensor, k: int, *, implementation: str = "auto") -> tuple[Tensor, Tensor]:
    """Per cluster the sum ``[G, k, D]`` and the count ``[G, k]`` (in ``x``'s dtype) of the points
    ``x [G, L, D]`` whose ``labels [G, L]`` name it: the Lloyd update's reduction."""
    return KMEANS_SUMS.choose(implementation, x).run(x, labels, k)


__all__ = ["KMEANS_ASSIGN", "KMEANS_SEED", "KMEANS_SUMS", "assign", "cluster_sums", "kmeanspp_picks"]
