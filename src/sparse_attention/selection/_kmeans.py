"""Batched k-means: k-means++ initialisation, then Lloyd iterations.

Used by the clustering selectors (``ssa``: Euclidean k-means over keys; ``routing``:
spherical k-means over unit queries and keys). ``G`` independent problems of ``L`` points
each are solved at once; the only Python loops are over the ``k`` initialisation steps and
the Lloyd iterations. Memory is O(G * L * k), never O(L^2).

Random draws happen on CPU from a seeded ``torch.Generator`` (indices are then moved to the
data's device), so a given seed picks the same initial points on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.checks import check_int


def _sample_rows(weights: Tensor, generator: torch.Generator) -> Tensor:
    """One index per row of ``weights [G, L]``, drawn with probability proportional to weight.

    Rows whose weights are all zero (every point coincides with a chosen centroid, or
    non-finite inputs) fall back to a uniform draw instead of making ``multinomial`` fail.
    """
    w = weights.detach().to("cpu", torch.float64)
    w = torch.nan_to_num(w, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    dead = w.sum(dim=-1, keepdim=True) <= 0
    w = torch.where(dead, torch.ones_like(w), w)
    return torch.multinomial(w, 1, generator=generator).squeeze(-1).to(weights.device)  # [G]


def _sq_distance(x: Tensor, x_sq: Tensor, c: Tensor, spherical: bool) -> Tensor:
    """Squared distance ``[G, L]`` of every point of ``x [G, L, D]`` to one centroid ``c [G, D]``.

    ``x_sq [G, L]`` holds the points' squared norms, so the distance is one matrix-vector
    product (``|x|^2 - 2 x.c + |c|^2``) rather than a ``[G, L, D]`` temporary.
    Spherical: squared chord ``2 - 2 cos`` between unit vectors, so k-means++ weighs by
    squared distance in both modes.
    """
    dots = (x @ c.unsqueeze(-1)).squeeze(-1)  # [G, L]
    if spherical:
        return (2.0 - 2.0 * dots).clamp_min(0.0)
    return (x_sq - 2.0 * dots + (c * c).sum(-1, keepdim=True)).clamp_min(0.0)


def kmeans_pp_init(x: Tensor, k: int, generator: torch.Generator, *, spherical: bool = False) -> Tensor:
    """k-means++ seeding: ``k`` points of ``x [G, L, D]`` chosen with D^2 weighting.

    Returns ``[G, k, D]``. With ``k > L`` (or many duplicate points) some centroids repeat;
    Lloyd then leaves the duplicates empty, which is harmless.
    """
    g, n, _ = x.shape
    rows = torch.arange(g, device=x.device)
    x_sq = (x * x).sum(-1)  # [G, L]
    first = _sample_rows(torch.ones(g, n, device=x.device), generator)  # uniform first pick
    chosen = [x[rows, first]]  # each [G, D]
    min_d = _sq_distance(x, x_sq, chosen[0], spherical)  # [G, L] distance to the nearest chosen centroid
    for _ in range(1, k):
        nxt = x[rows, _sample_rows(min_d, generator)]
        chosen.append(nxt)
        min_d = torch.minimum(min_d, _sq_distance(x, x_sq, nxt, spherical))
    return torch.stack(chosen, dim=1)  # [G, k, D]


def _assign(x: Tensor, c: Tensor, spherical: bool) -> Tensor:
    """Nearest centroid ``[G, L]`` for ``x [G, L, D]``, ``c [G, k, D]``."""
    dots = x @ c.transpose(-1, -2)  # [G, L, k]
    if spherical:
        return dots.argmax(dim=-1)
    # argmin ||x - c||^2 = argmax (x.c - ||c||^2 / 2): the ||x||^2 term is shared by a row.
    return (dots - 0.5 * (c * c).sum(dim=-1).unsqueeze(1)).argmax(dim=-1)


def _update(x: Tensor, labels: Tensor, c: Tensor, spherical: bool) -> Tensor:
    """New centroids ``[G, k, D]``; a cluster left empty keeps its previous centroid."""
    g, k, d = c.shape
    if x.device.type == "cpu":  # scatter_add is deterministic on CPU and avoids a [G, L, k] one-hot
        sums = torch.zeros(g, k, d, dtype=x.dtype).scatter_add_(1, labels.unsqueeze(-1).expand(-1, -1, d), x)
        counts = torch.zeros(g, k, dtype=x.dtype).scatter_add_(1, labels, torch.ones_like(labels, dtype=x.dtype))
    else:  # one-hot matmul: deterministic on GPU (no atomics)
        onehot = F.one_hot(labels, k).to(x.dtype)  # [G, L, k]
        sums = onehot.transpose(1, 2) @ x  # [G, k, D]
        counts = onehot.sum(dim=1)  # [G, k]
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
        generator: seeded CPU generator for the k-means++ draws.
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
