"""``local``: a sliding window of exactly ``window`` keys, plus optional attention sinks."""

from __future__ import annotations

import torch
from torch import Tensor

from ..utils.checks import check_int
from ._util import query_key_limit
from .base import Param, Selection, register_method


def local_cost(selection: Selection, params: dict, **shape) -> tuple[float, float]:
    """Index arithmetic only: no FLOPs, nothing read (the written indices are counted by the caller)."""
    return 0.0, 0.0


@register_method(
    "local",
    params=[
        Param("window", 256, "keys per query including itself; causal: the `window` most recent keys,"
              " non-causal: a window centred on the query", "seed 000 (Local-256); lucidrains/local-attention"),
        Param("sinks", 0, "first `sinks` tokens always visible (attention sinks)", "Xiao et al. 2023, StreamingLLM"),
    ],
    summary="sliding window of exactly `window` keys (+ optional sink tokens)",
    reference="Beltagy et al. 2020 (Longformer); Xiao et al. 2023 (sinks)",
    budget_param="window", cost=local_cost, color="tab:gray", marker="s",
    full_coverage=lambda n: {"window": 2 * n},  # 2N: a centred window covers every key too
)
def select_local(q: Tensor, k: Tensor, *, causal: bool = True, window: int = 256, sinks: int = 0) -> Selection:
    """Each query sees exactly ``window`` keys (fewer only at the sequence edges).

    Unlike a blocked implementation, the window is exact: ``window=256`` means 256 keys,
    not 257-512. Causal: keys ``[t - window + 1, t]`` where ``t`` is the query's last
    visible key. Non-causal: keys ``[i - (window - 1) // 2, i + window // 2]``. Sinks that
    already fall inside the window are not listed twice. ``H_sel = 1``.
    """
    check_int("window", window)
    check_int("sinks", sinks, 0)
    b, n_q, n_k = q.shape[0], q.shape[2], k.shape[2]
    device = q.device
    limit = query_key_limit(n_q, n_k, causal, device)  # [N_q]
    if causal:
        first = limit - window + 1
    else:
        first = torch.arange(n_q, device=device) * n_k // n_q - (window - 1) // 2
    win = first[:, None] + torch.arange(window, device=device)[None, :]  # [N_q, window]
    win.masked_fill_((win < 0) | (win >= n_k) | (win > limit[:, None]), -1)  # in place: one index-sized tensor
    parts = [win]
    if sinks > 0:
        sink = torch.arange(min(sinks, n_k), device=device)[None, :].expand(n_q, -1)
        already = (sink >= first[:, None]) | (sink > limit[:, None])
        parts.insert(0, torch.where(already, -1, sink))
    idx = torch.cat(parts, dim=-1) if len(parts) > 1 else win
    return Selection(idx.expand(b, 1, n_q, idx.shape[-1]), n_k, causal, "local",
                     {"window": window, "sinks": sinks})
