"""Dense attention: the baseline every method is compared with, and the masked-dense oracle.

``dense_attention`` is ``torch.nn.functional.scaled_dot_product_attention`` with GQA and the
end-aligned causal convention of this package. ``masked_dense_attention`` is the package's one
masked-dense oracle of sparse attention (dense rows masked to a selection, chunked over
queries), for tests and analyses; ``kernels/reference.py`` is the gather-based reference
kernel (a backend, O(N K) memory) that the fast kernels are tested against.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .validation import causal_offset, check_qkv, resolve_scale


def _repeat_kv(t: Tensor, n_heads: int) -> Tensor:
    """``[B, H_kv, N, D] -> [B, H, N, D]`` by repeating each KV head ``H // H_kv`` times."""
    groups = n_heads // t.shape[1]
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def causal_mask(n_q: int, n_k: int, device: torch.device | str | None = None) -> Tensor:
    """``[N_q, N_k]`` boolean mask, True where query ``i`` may see key ``j`` (end-aligned)."""
    rows = torch.arange(n_q, device=device)[:, None] + causal_offset(n_q, n_k)
    return torch.arange(n_k, device=device)[None, :] <= rows


#: SDPA takes KV heads shared by groups of query heads itself from torch 2.5 (``enable_gqa``);
#: repeating them instead copies ``H / H_kv`` times the keys and values, which dominates a decode
#: step (one query against a long cache).
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def dense_attention(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, scale: float | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Full softmax attention via SDPA. Shapes as in :func:`sparse_attention`.

    ``key_mask [B, N_k]`` bool (False = a padded key): padded keys are not attended; a query row
    left with no key gives zeros (SDPA alone would give NaN there). GQA/MQA run without copying
    the KV heads where SDPA can (torch >= 2.5).

    Returns ``[B, H, N_q, D_v]``.
    """
    check_qkv(q, k, v)
    scale = resolve_scale(scale, q.shape[-1])
    n_q, n_k = q.shape[2], k.shape[2]
    if q.shape[1] != k.shape[1] and _SDPA_GQA:
        sdpa = functools.partial(F.scaled_dot_product_attention, enable_gqa=True)
    else:
        k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
        sdpa = F.scaled_dot_product_attention
    if key_mask is None and causal and n_q == 1 and n_k >= 1:
        causal = False  # one end-aligned query sees every key: no mask (a decode step)
    if key_mask is not None:
        allowed = key_mask[:, None, None, :]  # [B, 1, 1, N_k]
        if causal:
            allowed = allowed & causal_mask(n_q, n_k, q.device)  # [B, 1, N_q, N_k]
        allowed = allowed.expand(q.shape[0], 1, n_q, n_k)
        out = sdpa(q, k, v, attn_mask=allowed, scale=scale)
        seen = allowed.any(dim=-1, keepdim=True)  # [B, 1, N_q, 1]
        return torch.where(seen, out, torch.zeros_like(out))
    if not causal:
        return sdpa(q, k, v, scale=scale)
    if n_q == n_k:
        return sdpa(q, k, v, is_causal=True, scale=scale)
    if n_q > n_k:  # the first N_q - N_k queries see no key: zeros (SDPA would give NaN rows)
        seen = sdpa(q[:, :, n_q - n_k:], k, v, is_causal=True, scale=scale)
        return torch.cat([seen.new_zeros(*seen.shape[:2], n_q - n_k, seen.shape[-1]), seen], dim=2)
    mask = causal_mask(n_q, n_k, q.device)
    return sdpa(q, k, v, attn_mask=mask, scale=scale)


def selection_counts(indices: Tensor, n_k: int, causal: bool) -> Tensor:
    """How often each key is listed among the valid slots of each query row.

    Args:
        indices: ``[B, H_sel, N_q, K]`` with ``-1`` for empty slots.
    Returns:
        ``[B, H_sel, N_q, N_k]`` float counts (0 where the key is not selected).
    """
    b, h_sel, n_q, _ = indices.shape
    idx = indices.long()
    valid = idx >= 0
    if causal:
        last_key = torch.arange(n_q, device=idx.device) + causal_offset(n_q, n_k)
        valid &= idx <= last_key[:, None]
    counts = torch.zeros(b, h_sel, n_q, n_k, device=idx.device)
    counts.scatter_add_(3, idx.clamp(min=0), valid.float())
    return counts


#: Elements of one query chunk's ``[B, H, C, N_k]`` logits in :func:`masked_dense_attention` (64 MiB fp32).
_CHUNK_ELEMENTS = 1 << 24


def masked_dense_attention(
    q: Tensor, k: Tensor, v: Tensor, indices: Tensor, *, causal: bool, scale: float | None = None,
    return_recall: bool = False, query_chunk: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The masked-dense oracle: softmax over exactly the selected keys, by dense products.

    Computes what ``sparse_attention(q, k, v, indices, causal=causal)`` computes (a key listed
    twice in a row counts twice; invalid and causally hidden slots are dropped; rows with no
    valid key give zeros), as ``softmax_j(s_ij + log c_ij)`` over ``N_k``-wide rows for a chunk
    of queries at a time, instead of the reference kernel's per-slot gathers: faster for the
    short sequences of tests and analyses, and an independent check of the kernels. Memory is
    O(chunk * N_k) per head, never ``N_q x N_k`` at once. Dense products over every key also carry a NaN or Inf
    in a key or value the row does not select (0 * NaN): for finite inputs only; the kernels'
    NaN rule is checked against the reference kernel. Float64 inputs compute in float64,
    others in float32; the output has the dtype of ``q``.

    Args:
        q: ``[B, H, N_q, D]``; k: ``[B, H_kv, N_k, D]``; v: ``[B, H_kv, N_k, D_v]``.
        indices: ``[B, H_sel, N_q, K]``, ``H_sel`` in {1, H_kv, H}, ``-1`` = empty slot.
        causal: hide keys past each query (end-aligned).
        return_recall: also return ``recall [B, H, N_q]``, the dense attention mass on the
            selected keys (1 for rows that see no key under dense attention either).
        query_chunk: queries per chunk (default: logits of about 64 MiB).
    Returns:
        ``out [B, H, N_q, D_v]`` (and ``recall``).
    """
    b, h, n_q, _ = q.shape
    n_k = k.shape[2]
    scale = resolve_scale(scale, q.shape[-1])
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    k, v = _repeat_kv(k, h).to(compute), _repeat_kv(v, h).to(compute)  # [B, H, N_k, D]
    idx = indices.long()
    if idx.shape[1] not in (1, h):
        idx = idx.repeat_interleave(h // idx.shape[1], dim=1)  # per-KV-head selection -> its query heads
    idx = idx.expand(b, -1, -1, -1)
    chunk = query_chunk or max(1, _CHUNK_ELEMENTS // max(1, b * h * n_k))
    offset = causal_offset(n_q, n_k)
    outs, recalls = [], []
    for start in range(0, n_q, chunk):
        rows = slice(start, min(start + chunk, n_q))
        logits = (q[:, :, rows].to(compute) @ k.transpose(-1, -2)) * scale  # [B, H, C, N_k]
        ic = idx[:, :, rows]  # [B, H_sel, C, K]
        valid = (ic >= 0) & (ic < n_k)
        if causal:
            last_key = torch.arange(start, rows.stop, device=q.device) + offset  # [C]
            visible = torch.arange(n_k, device=q.device)[None, :] <= last_key[:, None]  # [C, N_k]
            logits = logits.masked_fill(~visible, float("-inf"))
            valid &= ic <= last_key[:, None]
        counts = torch.zeros(*ic.shape[:-1], n_k + 1, dtype=compute, device=q.device)
        counts = counts.scatter_add_(-1, torch.where(valid, ic, n_k), valid.to(compute))[..., :n_k]  # [B, H_sel, C, N_k]
        # One exponential against the dense row maximum serves the recall and the restricted softmax.
        top = logits.amax(-1, keepdim=True)
        shifted = logits - torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()  # -inf stays -inf
        e = shifted.exp()  # 0 where hidden
        weights = e * counts
        kept = weights.sum(-1)
        if return_recall:
            total = e.sum(-1)
            chosen_mass = (e * (counts > 0)).sum(-1)
            recalls.append(torch.where(total > 0, chosen_mass / total.clamp_min(1e-30), torch.ones_like(total)))
        underflow = (kept < 1e-30) & ((counts > 0) & (shifted > float("-inf"))).any(-1)
        if bool(underflow.any()):
            # Every selected key underflowed against the dense row maximum: softmax over the selection itself.
            weights = torch.nan_to_num(torch.softmax(shifted + torch.log(counts), dim=-1), nan=0.0)
            kept = weights.sum(-1)
        outs.append((weights @ v) / torch.where(kept > 0, kept, torch.ones_like(kept))[..., None])  # [B, H, C, D_v]
    out = torch.cat(outs, dim=2).to(q.dtype)
    return (out, torch.cat(recalls, dim=-1)) if return_recall else out


def dense_probabilities(
    q: Tensor, k: Tensor, *, causal: bool, scale: float, query_slice: slice | None = None
) -> Tensor:
    """Dense attention probabilities ``[B, H, C, N_k]`` for the queries in ``query_slice``.

    Used to measure recall chunk by chunk without an ``N x N`` tensor.
    """
    h, n_q, n_k = q.shape[1], q.shape[2], k.shape[2]
    query_slice = query_slice or slice(0, n_q)
    qc = q[:, :, query_slice].float()
    logits = (qc @ _repeat_kv(k, h).float().transpose(-1, -2)) * scale
    if causal:
        rows = torch.arange(n_q, device=q.device)[query_slice]
        mask = torch.arange(n_k, device=q.device)[None, :] <= rows[:, None] + causal_offset(n_q, n_k)
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)
