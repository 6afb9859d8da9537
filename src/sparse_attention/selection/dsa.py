"""``dsa``: DeepSeek Sparse Attention selection (DeepSeek-V3.2-Exp lightning indexer).

The indexer scores every (query t, key s) pair with ``I[t,s] = sum_j w[t,j] * ReLU(q_I[t,j] .
k_I[s])`` (tech report Eq. 1): ``H_I`` small indexer heads, one key head shared by all of them
(MQA), and a per-token per-head weight ``w`` with no softmax. Each query keeps the ``top_k``
keys of highest score; the causal mask is applied before top-k and again after (a slot that
only held a masked key becomes empty). One selection is shared by all attention heads
(``H_sel = 1``), as in DeepSeek-V3.2 where MLA runs in MQA mode.

Scoring is chunked over queries: memory O(chunk * N_k * H_I), never N x N for long N.
The trainable module that owns the projections is
:class:`sparse_attention.layers.indexer.LightningIndexer`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..ops.topk import scored_topk
from ..utils.checks import check_int
from ._util import make_generator
from .base import Param, Selection, register_method
from .costs import pairs


def _check_indexer_inputs(index_q: Tensor, index_k: Tensor, weights: Tensor) -> None:
    for name, t in (("index_q", index_q), ("index_k", index_k), ("weights", weights)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if index_q.dim() != 4:
        raise ValueError(f"index_q must be [B, H_I, N_q, D_I], got shape {tuple(index_q.shape)}")
    b, h_i, n_q, d_i = index_q.shape
    if index_k.dim() != 3 or index_k.shape[0] != b or index_k.shape[2] != d_i:
        raise ValueError(f"index_k must be [B={b}, N_k, D_I={d_i}], got shape {tuple(index_k.shape)}")
    if weights.shape != (b, n_q, h_i):
        raise ValueError(f"weights must be [B, N_q, H_I] = {(b, n_q, h_i)}, got {tuple(weights.shape)}")
    if index_k.shape[1] == 0 or n_q == 0:
        raise ValueError("empty sequence passed to the lightning indexer")
    if index_k.device != index_q.device or weights.device != index_q.device:
        raise ValueError("index_q, index_k and weights must be on one device")


def dsa_select(index_q: Tensor, index_k: Tensor, weights: Tensor, *, top_k: int, causal: bool = True,
               scoring: str = "auto", precision: str = "float32", key_mask: Tensor | None = None) -> Selection:
    """Top-k keys per query by lightning-indexer score, shared by all heads.

    Args: as :func:`sparse_attention.ops.topk.indexer_scores`; ``top_k`` keys per query (``K = min(top_k, N_k)``);
    ``scoring``: ``"fused"`` scores and selects in one C++ pass (CPU, memory O(N_q * K)),
    ``"chunked"`` uses torch GEMMs + ``torch.topk`` per query chunk (any device), ``"auto"``
    the fused kernel where it runs. Both return a valid top-k; they may break exact ties
    differently. ``precision``: ``"float32"`` or ``"bfloat16"`` (indexer inputs rounded to
    bf16, products summed in fp32; the fused kernel then uses AMX tiles where the CPU has
    them. DeepSeek-V3.2 computes its indexer in FP8). ``key_mask [B, N_k]`` bool (False =
    padding): padded keys score ``-inf`` before the top-k; it always scores in chunks.
    Returns: a :class:`Selection` with ``indices [B, 1, N_q, K]`` (slots in no particular order).
    """
    _check_indexer_inputs(index_q, index_k, weights)
    check_int("top_k", top_k)
    n_k = index_k.shape[1]
    info = {"top_k": top_k, "indexer_heads": index_q.shape[1], "precision": precision}
    idx, ran = scored_topk(index_q, index_k, weights, top_k=top_k, causal=causal, relu=True,
                           precision=precision, key_mask=key_mask, scoring=scoring)  # [B, N_q, K]
    return Selection(idx.unsqueeze(1), n_k, causal, "dsa", {**info, "scoring": ran})


def random_indexer(q: Tensor, k: Tensor, n_heads: int, head_dim: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """An untrained indexer built from the attention's own q/k by random projection.

    Indexer head ``j`` sketches query head ``j mod H`` and the key is the mean over KV heads,
    both through one shared random Gaussian projection ``P [D, D_I] / sqrt(D_I)``; then
    ``q_I . k_I`` is a Johnson-Lindenstrauss estimate of the attention logit of that head
    (exact in expectation). Weights are uniform, ``H_I**-0.5 * D_I**-0.5`` as in DeepSeek's
    scaling. This is what an indexer can know without training; a trained one replaces it.

    Returns ``index_q [B, H_I, N_q, D_I]``, ``index_k [B, N_k, D_I]``, ``weights [B, N_q, H_I]``.
    """
    b, h, n_q, d = q.shape
    gen = make_generator(seed)
    proj = (torch.randn(d, head_dim, generator=gen) / math.sqrt(head_dim)).to(q.device, torch.float32)
    heads = torch.arange(n_heads) % h
    index_q = q[:, heads.to(q.device)].float() @ proj  # [B, H_I, N_q, D_I]
    index_k = k.float().mean(dim=1) @ proj  # [B, N_k, D_I]
    weights = torch.full((b, n_q, n_heads), n_heads**-0.5 * head_dim**-0.5, device=q.device)
    return index_q, index_k, weights


def dsa_cost(selection: Selection, params: dict, *, heads: int, kv_heads: int, head_dim: int,
             dtype_bytes: int) -> tuple[float, float]:
    """Per visible pair ``H_I (2 D_I + 3) + 1`` FLOPs (dot, ReLU, weight multiply-add per indexer
    head, top-k), one shared indexer key read per pair, ``q_I`` and ``w`` once; plus the random
    projection of ``q`` and ``k`` when the indexer is untrained."""
    info, d = selection.info, head_dim
    n_q, n_k, visible = selection.indices.shape[2], selection.n_keys, pairs(selection)
    h_i = int(info.get("indexer_heads", params["n_heads"]))
    given = params["index_q"]  # trained indexer tensors carry their own D_I
    d_i = int(given.shape[-1]) if given is not None else int(params["head_dim"])
    flops = visible * (h_i * (2 * d_i + 3) + 1)
    elements = visible * d_i + n_q * h_i * (d_i + 1)
    if info.get("indexer") == "random projection":
        flops += 2 * d * d_i * (h_i * n_q + n_k) + kv_heads * n_k * d  # project q heads; mean of keys
        elements += h_i * n_q * d + kv_heads * n_k * d + d * d_i
    return flops, elements


@register_method(
    "dsa",
    params=[
        Param("top_k", 64, "keys per query (DeepSeek-V3.2 uses 2048 at 128K context)", "DeepSeek-V3.2-Exp config"),
        Param("n_heads", 4, "indexer heads H_I (DeepSeek: 64) when no indexer tensors are given",
              "seed 003 (4 x 64); DeepSeek-V3.2-Exp"),
        Param("head_dim", 64, "indexer head dim D_I (DeepSeek: 128)", "seed 003; DeepSeek-V3.2-Exp"),
        Param("seed", 0, "seed of the random-projection indexer", ""),
        Param("index_q", None, "trained indexer queries [B, H_I, N_q, D_I]; None = random projection of q",
              "LightningIndexer"),
        Param("index_k", None, "trained indexer keys [B, N_k, D_I]", "LightningIndexer"),
        Param("index_weights", None, "trained indexer weights [B, N_q, H_I]", "LightningIndexer"),
        Param("scoring", "auto", "fused (C++ scoring + top-k in one pass, CPU), chunked (torch GEMM + topk) or auto",
              ""),
        Param("precision", "float32", "indexer arithmetic: float32, or bfloat16 (rounded inputs, fp32 sums; AMX)",
              "DeepSeek-V3.2 runs the indexer in FP8"),
    ],
    summary="DeepSeek lightning indexer + top-k, one selection shared by all heads",
    reference="DeepSeek-AI 2025, DeepSeek-V3.2-Exp (DSA)",
    budget_param="top_k", cost=dsa_cost, color="tab:red", marker="D",
    full_coverage=lambda n: {"top_k": n}, masks_keys=True,
)
def select_dsa(
    q: Tensor, k: Tensor, *, causal: bool = True, top_k: int = 64, n_heads: int = 4, head_dim: int = 64,
    seed: int = 0, index_q: Tensor | None = None, index_k: Tensor | None = None, index_weights: Tensor | None = None,
    scoring: str = "auto", precision: str = "float32", key_mask: Tensor | None = None,
) -> Selection:
    """DSA selection from given indexer tensors, or from an untrained random-projection indexer.

    Pass all three of ``index_q``, ``index_k``, ``index_weights`` (e.g. from a trained
    :class:`LightningIndexer`) or none of them (see :func:`random_indexer`). ``key_mask``: see
    :func:`dsa_select`.
    """
    given = [t is not None for t in (index_q, index_k, index_weights)]
    if any(given) and not all(given):
        raise ValueError("pass all of index_q, index_k and index_weights, or none of them")
    if not any(given):
        check_int("n_heads", n_heads)
        check_int("head_dim", head_dim)
        index_q, index_k, index_weights = random_indexer(q, k, n_heads, head_dim, seed)
    elif index_q.shape[2] != q.shape[2] or index_k.shape[1] != k.shape[2]:
        raise ValueError("indexer tensors must cover the same queries and keys as q and k")
    selection = dsa_select(index_q, index_k, index_weights, top_k=top_k, causal=causal, scoring=scoring,
                           precision=precision, key_mask=key_mask)
    selection.info["indexer"] = "random projection" if not any(given) else "given"
    return selection
