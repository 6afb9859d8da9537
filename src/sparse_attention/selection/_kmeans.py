"""Batched k-means: k-means++ initialisation, then Lloyd iterations.

Used by the clustering selectors (``ssa``: Euclidean k-means over keys; ``routing``:
spherical k-means over unit queries and keys). ``G`` independent problems of ``L`` points
each are solved at once. An assignment is one batched GEMM against the centroids (the
centroid norms folded in as its bias) and an argmax, an update one ``index_add``; memory is
O(G * L * k), never O(L^2).

k-means++ draws ``k`` points one after another, each with probability proportional to its
squared distance to the nearest point drawn so far. The draws are inverse-CDF draws from
``k`` uniforms per problem taken from the seeded ``torch.Generator`` on CPU, with distances and
running sums in float64 (the ``kmeans_seed`` op, :mod:`sparse_attention.ops.kmeans`: a C++ loop
on CPU, its PyTorch reference elsewhere, the same draws from the same uniforms). A given seed
therefore picks the same initial points on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import kmeans as kmeans_op
from ..utils.checks import check_int


def kmeans_pp_init(x: Tensor, k: int, generator: torch.Generator, *, spherical: bool = False) -> Tensor:
    """k-means++ seeding: ``k`` points of ``x [G, L, D]`` chosen with D^2 weighting.

    Returns ``[G, k, D]``. With ``k > L`` (or many duplicate points) some centroids repeat;
    Lloyd then leaves the duplicates empty, which is harmless.
    """
    g = x.shape[0]
    uniforms = torch.rand(g, k, generator=generator, dtype=torch.float64)  # [G, k], on CPU
    picks = kmeans_op.kmeanspp_picks(x, uniforms, spherical)
    return torch.gather(x, 1, picks.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[2]))  # [G, k, D]


def _assign(x: Tensor, c: Tensor, spherical: bool) -> Tensor:
    """Nearest centroid ``[G, L]`` for ``x [G, L, D]``, ``c [G, k, D]`` (the ``kmeans_assign`` op):
    spherical, the largest ``x.c``; Euclidean, the largest ``x.c - |c|^2 / 2`` (``argmin |x - c|^2``;
    the ``|x|^2`` term is shared by a row). First centroid on ties."""
    return kmeans_op.assign(x, c, None if spherical else -0.5 * (c * c).sum(dim=-1))


def _update(x: Tensor, labels: Tensor, c: Tensor, spherical: bool) -> Tensor:
    """New centroids ``[G, k, D]``; a cluster left empty keeps its previous centroid."""
    sums, counts = kmeans_op.cluster_sums(x, labels, c.shape[1])  # [G, k, D], [G, k]
    if spherical:
        norms = sums.norm(dim=-1, keepdim=True)
        new = sums / norms.clamp_min(1e-12)
        keep_old = (counts == 0).unsqueeze(-1) | (norms <= 1e-12)  # members may cancel out
    else:
        new = sums / counts.clamp_min(1).unsqueeze(-1)
        keep_old = (counts == 0).unsqueeze(-1)
    return torch.where(keep_old, c, new)


def kmeans(
    x: Tensor,
    k: int,
    *,
    iters: int = 10,
    generator: torch.Generator,
    spherical: bool = False,
) -> tuple[Tensor, Tensor]:
    """Cluster each of ``G`` point sets independently.

    Args:
        x: ``[G, L, D]`` points (any float dtype; computed in float32).
        k: clusters per problem (positive; may exceed ``L``, leaving some clusters empty).
        iters: at most this many Lloyd iterations (centroid update + reassignment); stops
            early once no assignment changes in any of the ``G`` problems.
        generator: seeded CPU generator for the k-means++ draws (``k`` uniforms per problem).
        spherical: cosine k-means: points and centroids are unit-normalised and points go
            to the centroid of largest dot product. Otherwise Euclidean.
    Returns:
        ``centroids [G, k, D]`` (float32; unit norm when ``spherical``) and
        ``assignments [G, L]`` int64, the nearest centroid of each point under the
        returned centroids.
    """
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a [G, L, D] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if x.shape[1] == 0:
        raise ValueError("x must hold at least one point per problem (L >= 1)")
    check_int("k", k)
    check_int("iters", iters)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    x = x.detach().float()
    if spherical:
        x = F.normalize(x, dim=-1)
    c = kmeans_pp_init(x, k, generator, spherical=spherical)  # [G, k, D]
    labels = _assign(x, c, spherical)  # [G, L]
    for _ in range(iters):
        c = _update(x, labels, c, spherical)
        new_labels = _assign(x, c, spherical)
        converged = torch.equal(new_labels, labels)
        labels = new_labels
        if converged:
            break
    return c, labels
