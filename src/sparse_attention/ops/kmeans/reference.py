"""k-means steps in PyTorch: the k-means++ draws and the nearest-centroid assignment.

The oracle of :mod:`.cpu` (any device): the same draws from the same uniforms (float64
distances), the same argmax with its tie rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _sq_distance64(x: Tensor, x_sq: Tensor, c: Tensor, spherical: bool) -> Tensor:
    """Squared distance ``[G, L]`` (float64) of the points ``x [G, L, D]`` to one point ``c [G, D]`` each.

    Euclidean: ``|x|^2 - 2 x.c + |c|^2`` (``x_sq [G, L]``: the squared norms); spherical (unit
    points): the squared chord ``2 - 2 cos``, so k-means++ weighs by squared distance in both
    modes. Clamped at 0.
    """
    dots = (x * c.unsqueeze(1)).sum(-1)  # [G, L]
    if spherical:
        return (2.0 - 2.0 * dots).clamp_min(0.0)
    return (x_sq - 2.0 * dots + (c * c).sum(-1, keepdim=True)).clamp_min(0.0)


def kmeanspp_picks_reference(x: Tensor, uniforms: Tensor, spherical: bool) -> Tensor:
    """Indices ``[G, k]`` of the points k-means++ draws from ``x [G, L, D]`` given ``uniforms [G, k]``.

    Draw 0 is uniform (``floor(u * L)``). Draw ``j`` weighs every point by its float64 squared
    distance to the nearest point drawn so far (0 where that is not a positive finite number)
    and takes the first point whose running sum of weights exceeds ``u_j`` times their total;
    where every weight is 0 (all points coincide with drawn ones) it is uniform again. Any
    device; the reference of :func:`.cpu.kmeanspp_picks`.
    """
    g, n, _ = x.shape
    x = x.double()
    u = uniforms.to(x.device, torch.float64)
    rows = torch.arange(g, device=x.device)
    x_sq = (x * x).sum(-1)  # [G, L]
    uniform = (u * n).long().clamp(max=n - 1)  # [G, k] uniform draws
    picks = [uniform[:, 0]]
    min_d = _sq_distance64(x, x_sq, x[rows, picks[0]], spherical)  # [G, L]
    for j in range(1, u.shape[1]):
        w = torch.where(torch.isfinite(min_d) & (min_d > 0), min_d, torch.zeros_like(min_d))
        cum = w.cumsum(-1)  # [G, L], a sequential sum as in the C++ loop
        total = cum[:, -1]
        nxt = torch.searchsorted(cum, (u[:, j] * total).unsqueeze(-1), right=True).squeeze(-1).clamp(max=n - 1)
        nxt = torch.where(total > 0, nxt, uniform[:, j])
        picks.append(nxt)
        min_d = torch.minimum(min_d, _sq_distance64(x, x_sq, x[rows, nxt], spherical))
    return torch.stack(picks, dim=1)  # [G, k]


def assign_reference(x: Tensor, centroids: Tensor, bias: Tensor | None = None) -> Tensor:
    """Nearest centroid ``[G, L]``: ``argmax_c (x . c + bias_c)`` for ``x [G, L, D]``, ``centroids
    [G, C, D]``, ``bias [G, C]`` (None = 0), one batched GEMM then ``argmax`` (first centroid on ties)."""
    if bias is None:
        return (x @ centroids.transpose(-1, -2)).argmax(dim=-1)  # [G, L, C] -> [G, L]
    return torch.baddbmm(bias.unsqueeze(1), x, centroids.transpose(-1, -2)).argmax(dim=-1)


def cluster_sums_reference(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per cluster the sum ``[G, k, D]`` and the count ``[G, k]`` of the points ``x [G, L, D]`` with
    ``labels [G, L]``, by a one-hot matmul: no atomics, so deterministic on a GPU too (any device)."""
    onehot = F.one_hot(labels, k).to(x.dtype)  # [G, L, k]
    return onehot.transpose(1, 2) @ x, onehot.sum(dim=1)
