"""``dense``: every key (every causal key when causal). The baseline, as a selection."""

from __future__ import annotations

import torch
from torch import Tensor

from ._util import query_key_limit
from .base import Selection, register_method


def dense_cost(selection: Selection, params: dict, **shape) -> tuple[float, float]:
    """Dense attention runs SDPA directly: no selection work."""
    return 0.0, 0.0


@register_method(
    "dense",
    params=[],
    summary="all keys; attention(method='dense') runs SDPA directly",
    reference="Vaswani et al. 2017",
    cost=dense_cost, color="black", marker="o",
    full_coverage=lambda n: {},
)
def select_dense(q: Tensor, k: Tensor, *, causal: bool = True) -> Selection:
    """Select all ``N_k`` keys for every query (``H_sel = 1``, ``K = N_k``).

    Causally invisible keys are marked ``-1`` so that statistics count real edges only.
    """
    b, n_q, n_k = q.shape[0], q.shape[2], k.shape[2]
    keys = torch.arange(n_k, device=q.device)
    limit = query_key_limit(n_q, n_k, causal, q.device)
    idx = torch.where(keys[None, :] <= limit[:, None], keys[None, :], -1)  # [N_q, N_k]
    return Selection(idx.expand(b, 1, n_q, n_k), n_k, causal, "dense")
