"""k-means++ seeding on CPU (``csrc/kmeans_cpu.cpp``): the sequential draws of the clustering selections.

:func:`kmeanspp_picks` returns the points that ``selection._kmeans.kmeanspp_picks_reference``
picks from the same uniforms (float64 distances on both sides), in one C++ loop per problem
instead of a few PyTorch calls per draw.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cpu


def available(x: Tensor, isa: str | None = None) -> bool:
    """Whether :func:`kmeanspp_picks` can run on ``x`` (a CPU tensor, extension built)."""
    return x.device.type == "cpu" and cpu.load_error(isa) is None


def kmeanspp_picks(x: Tensor, uniforms: Tensor, spherical: bool, isa: str | None = None) -> Tensor:
    """Indices ``[G, k]`` of the points k-means++ draws from ``x [G, L, D]`` with ``uniforms [G, k]``.

    Draw 0 is ``floor(u * L)``; draw ``j`` the first point whose running sum of weights (squared
    distance to the nearest point drawn so far, 0 where not a positive finite number) exceeds
    ``u * total``, uniform again when every weight is 0. ``spherical``: ``x`` holds unit vectors
    and the distance is ``2 - 2 cos``.
    """
    return cpu.extension(isa).kmeanspp_picks(x.float().contiguous(), uniforms.double().contiguous(), bool(spherical))


def assign(x: Tensor, centroids: Tensor, bias: Tensor | None = None, isa: str | None = None) -> Tensor:
    """Nearest centroid ``[G, L]`` int64: ``argmax_c (x . c + bias_c)`` for ``x [G, L, D]``, ``centroids [G, C, D]``.

    ``bias [G, C]`` (None = 0) carries ``-|c|^2 / 2`` for Euclidean k-means. Ties go to the first
    centroid and a NaN score counts as ``+inf``, as ``torch.argmax`` orders them. The GEMM and the
    argmax are fused: no ``[G, L, C]`` score matrix is written.
    """
    b = torch.empty(0) if bias is None else bias.float().contiguous()
    return cpu.extension(isa).kmeans_assign(x.float().contiguous(), centroids.float().contiguous(), b)
