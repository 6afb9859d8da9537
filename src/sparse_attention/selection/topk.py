"""``topk``: exact top-k of ``q . k`` per query head, the oracle for any top-k method."""

from __future__ import annotations

from torch import Tensor

from ..ops.topk import scored_topk
from ..utils.checks import check_int
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
    rows_mask = None if key_mask is None else key_mask.repeat_interleave(h_kv, dim=0)  # [B * H_kv, N_k]
    # [B * H, 1 head, N_q, D] rows against [B * H_kv, N_k, D] keys: row r scores key row r // G
    idx, ran = scored_topk(q.reshape(b * h, 1, n_q, d), k.reshape(b * h_kv, n_k, d), None, top_k=top_k,
                           causal=causal, relu=False, group=h // h_kv, key_mask=rows_mask,
                           scoring=scoring)  # [B * H, N_q, K]
    return Selection(idx.view(b, h, n_q, -1), n_k, causal, "topk", {"top_k": top_k, "scoring": ran})

