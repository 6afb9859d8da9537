"""k-means on CPU (``csrc/kmeans_cpu.cpp``): the sequential k-means++ draws and the fused assignment.

:func:`kmeanspp_picks` returns the points that :func:`.reference.kmeanspp_picks_reference` picks
from the same uniforms (float64 distances on both sides), in one C++ loop per problem instead of a
few PyTorch calls per draw; :func:`assign` fuses the GEMM and the argmax.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp.build import CppExtension

EXTENSION = CppExtension("kmeans", Path(__file__).with_name("csrc"))


def supports(x: Tensor, *inputs, **options) -> str | None:
    """None when the kernels can run on points ``x`` (a CPU tensor)."""
    return None if x.device.type == "cpu" else f"runs on CPU tensors only, got {x.device.type}"


def kmeanspp_picks(x: Tensor, uniforms: Tensor, spherical: bool, isa: str | None = None) -> Tensor:
    """Indices ``[G, k]`` of the points k-means++ draws from ``x [G, L, D]`` with ``uniforms [G, k]``.

    Draw 0 is ``floor(u * L)``; draw ``j`` the first point whose running sum of weights (squared
    distance to the nearest point drawn so far, 0 where not a positive finite number) exceeds
    ``u * total``, uniform again when every weight is 0. ``spherical``: ``x`` holds unit vectors
    and the distance is ``2 - 2 cos``.
    """
    return EXTENSION.require(isa).kmeanspp_picks(x.float().contiguous(), uniforms.double().contiguous(), bool(spherical))


def assign(x: Tensor, centroids: Tensor, bias: Tensor | None = None, isa: str | None = None) -> Tensor:
    """Nearest centroid ``[G, L]`` int64: ``argmax_c (x . c + bias_c)`` for ``x [G, L, D]``, ``centroids [G, C, D]``.

    ``bias [G, C]`` (None = 0) carries ``-|c|^2 / 2`` for Euclidean k-means. Ties go to the first
    centroid and a NaN score counts as ``+inf``, as ``torch.argmax`` orders them. The GEMM and the
    argmax are fused: no ``[G, L, C]`` score matrix is written.
    """
    b = torch.empty(0) if bias is None else bias.float().contiguous()
    return EXTENSION.require(isa).kmeans_assign(x.float().contiguous(), centroids.float().contiguous(), b)


def cluster_sums(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`.reference.cluster_sums_reference` by ``index_add`` and ``bincount``: deterministic on CPU,
    and no ``[G, L, k]`` one-hot (PyTorch ops; the CPU's implementation, not a C++ kernel)."""
    g, d = x.shape[0], x.shape[-1]
    flat = (labels + k * torch.arange(g).unsqueeze(-1)).reshape(-1)  # [G * L]: cluster of problem g
    sums = torch.zeros(g * k, d, dtype=x.dtype).index_add_(0, flat, x.reshape(-1, d)).view(g, k, d)
    return sums, torch.bincount(flat, minlength=g * k).view(g, k).to(x.dtype)
