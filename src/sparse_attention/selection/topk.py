"""``topk``: exact top-k of ``q . k`` per query head, the oracle for any top-k method."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.kernels.topk_cpu import fused_topk
from ..utils.checks import check_int
from ._util import chunked_topk, use_fused_scoring
from .base import Param, Selection, register_method
from .costs import pairs


def topk_cost(selection: Selection, params: dict, *, heads: int, kv_heads: int, head_dim: int,
              dtype_bytes: int) -> tuple[float, float]:
    """``H P (2 D + 1)`` FLOPs (score and one top-k comparison per visible pair); reads a key per
    pair (serving its ``G`` heads) and every query once."""
    n_q, visible = selection.indices.shape[2], pairs(selection)
    return heads * visible * (2 * head_dim + 1), kv_heads * visible * head_dim + heads * n_q * head_dim


@register_method(
    "topk",
    params=[Param("top_k", 64, "keys per query (K = min(top_k, N_k)); rows with fewer causal keys pad with -1",
                  "upper bound for DSA/NSA/MoBA-style top-k selection"),
            Param("scoring", "auto", "fused (C++ scoring + top-k in one pass, CPU), chunked (torch GEMM + topk) or auto",
                  "")],
    summary="exact top-k of q.k per head (oracle upper bound for top-k methods)",
    reference="Gupta et al. 2021 (top-k attention)",
    budget_param="top_k", cost=topk_cost, color="tab:green", marker="^",
    full_coverage=lambda n: {"top_k": n}, masks_keys=True,
)
def select_topk(q: Tensor, k: Tensor, *, causal: bool = True, top_k: int = 64, scoring: str = "auto",
                key_mask: Tensor | None = None) -> Selection:
    """Per query head, the ``top_k`` keys with the largest ``q . k`` (``H_sel = H``).

    ``scoring="fused"`` scores and selects in one C++ pass (memory O(N_q * K)); ``"chunked"``
    computes scores in query chunks (memory O(chunk * N_k)); ``"auto"`` fused where it runs.
    ``key_mask [B, N_k]`` (False = padding, checked by :func:`~.base.select`): padded keys score
    ``-inf``, which the chunked scoring applies, so a key mask always scores in chunks.
    """
    check_int("top_k", top_k)
    b, h, n_q, d = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    g = h // h_kv
    if key_mask is not None and scoring == "fused":
        raise ValueError("scoring='fused' cannot take a key_mask (padded keys score -inf in the chunked scoring)")
    if key_mask is None and use_fused_scoring(scoring, q, k):
        with torch.no_grad():  # [B * H, 1 head, N_q, D] rows against [B * H_kv, N_k, D] keys
            idx = fused_topk(q.reshape(b * h, 1, n_q, d), k.reshape(b * h_kv, n_k, d), None, top_k=top_k,
                             causal=causal, relu=False, group=g)
        return Selection(idx.view(b, h, n_q, -1), n_k, causal, "topk", {"top_k": top_k, "scoring": "fused"})
    q_grouped = q.reshape(b, h_kv, g, n_q, d)

    def scores(start: int, stop: int, key_stop: int) -> Tensor:
        keys = k[:, :, :key_stop].transpose(-1, -2)  # [B, H_kv, D, N']
        s = q_grouped[:, :, :, start:stop].reshape(b, h_kv, g * (stop - start), d) @ keys  # one GEMM per KV head
        return s.reshape(b, h, stop - start, key_stop)

    idx = chunked_topk(scores, n_q, n_k, top_k, causal=causal, device=q.device, rows_per_query=b * h,
                       key_mask=key_mask)
    return Selection(idx, n_k, causal, "topk", {"top_k": top_k, "scoring": "chunked"})
