"""Triton sparse attention (GPU; also runs on CPU tensors under ``TRITON_INTERPRET=1``).

One program per (query token, batch x KV head): the group's ``G`` query heads form the rows
of ``tl.dot`` (padded to at least 16), the selected keys are gathered in blocks of
``BLOCK_K`` and folded in with an online softmax. The backward program recomputes the
probabilities from the saved log-sum-exp, writes ``dq`` and scatters ``dk``/``dv`` with
atomic adds (so duplicate indices and keys shared by many queries accumulate correctly;
GPU results are not bit-reproducible run to run). Selections shared by all heads or one per
KV head run as they are; per-query-head selections (``topk``, ``ssa``, ``routing``, ``lsh``
on GQA/MQA) run as MHA: each KV head is repeated for its query heads (``repeat_interleave``,
G times the K/V bytes; autograd sums the repeated heads' gradients back), so every program
has one head and its own index row.
The interpreter mishandles bf16 ``tl.dot``, so under it every dot runs in float32.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..dispatch import Fallback

try:  # triton is optional: without it the backend reports why and dispatch skips it
    import triton
    import triton.language as tl

    _IMPORT_ERROR = None
except Exception as err:  # pragma: no cover - depends on the environment
    triton = tl = None
    _IMPORT_ERROR = f"triton is not importable ({type(err).__name__}: {err})"

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_K = 32


if triton is not None:

    @triton.jit
    def _fwd_kernel(Q, K, V, IDX, O, LSE, scale, n_q, n_k, n_slots, h_kv, offset,
                    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sib, sih, sin, sob, soh, son,
                    G: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr,
                    DV: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr, UPCAST: tl.constexpr,
                    PRECISION: tl.constexpr):
        t = tl.program_id(0)
        bg = tl.program_id(1)
        b = bg // h_kv
        g = bg % h_kv
        heads = tl.arange(0, BLOCK_H)
        hmask = heads < G
        dims = tl.arange(0, D)
        vdims = tl.arange(0, DV)
        q_ptr = Q + b * sqb + (g * G + heads)[:, None] * sqh + t * sqn + dims[None, :]
        q = tl.load(q_ptr, mask=hmask[:, None], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        if SHARED:
            sel = 0
        else:
            sel = g
        limit = t + offset
        m_i = tl.full((BLOCK_H,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_H,), tl.float32)
        acc = tl.zeros((BLOCK_H, DV), tl.float32)
        for start in range(0, n_slots, BLOCK_K):
            offs = start + tl.arange(0, BLOCK_K)
            idx = tl.load(IDX + b * sib + sel * sih + t * sin + offs, mask=offs < n_slots, other=-1)
            valid = idx >= 0
            if CAUSAL:
                valid = valid & (idx <= limit)
            safe = tl.where(valid, idx, 0)
            k = tl.load(K + b * skb + g * skh + safe[:, None] * skn + dims[None, :], mask=valid[:, None], other=0.0)
            v = tl.load(V + b * svb + g * svh + safe[:, None] * svn + vdims[None, :], mask=valid[:, None], other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION).to(tl.float32)
            m_i = m_new
        has = (l_i > 0) | (l_i != l_i)  # a NaN score makes l_i NaN: the row is NaN (the NaN rule), not empty
        out = tl.where(has[:, None], acc / tl.where(has, l_i, 1.0)[:, None], 0.0)
        o_ptr = O + b * sob + (g * G + heads)[:, None] * soh + t * son + vdims[None, :]
        tl.store(o_ptr, out.to(O.dtype.element_ty), mask=hmask[:, None])
        lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
        tl.store(LSE + (b * h_kv * G + g * G + heads) * n_q + t, lse, mask=hmask)

    @triton.jit
    def _bwd_kernel(Q, K, V, IDX, O, DO, LSE, DQ, DK, DV_, scale, n_q, n_k, n_slots, h_kv, offset,
                    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sib, sih, sin, sob, soh, son,
                    G: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr,
                    DV: tl.constexpr, CAUSAL: tl.constexpr, SHARED: tl.constexpr):
        # All of Q, O, DO, DQ share one layout (contiguous [B, H, N_q, *]); DK/DV are float32
        # with K's and V's layouts.
        t = tl.program_id(0)
        bg = tl.program_id(1)
        b = bg // h_kv
        g = bg % h_kv
        heads = tl.arange(0, BLOCK_H)
        hmask = heads < G
        dims = tl.arange(0, D)
        vdims = tl.arange(0, DV)
        row = b * sqb + (g * G + heads)[:, None] * sqh + t * sqn
        orow = b * sob + (g * G + heads)[:, None] * soh + t * son
        q = tl.load(Q + row + dims[None, :], mask=hmask[:, None], other=0.0).to(tl.float32)
        do = tl.load(DO + orow + vdims[None, :], mask=hmask[:, None], other=0.0).to(tl.float32)
        o = tl.load(O + orow + vdims[None, :], mask=hmask[:, None], other=0.0).to(tl.float32)
        delta = tl.sum(do * o, 1)
        lse = tl.load(LSE + (b * h_kv * G + g * G + heads) * n_q + t, mask=hmask, other=float("-inf"))
        live = lse > float("-inf")
        lse_safe = tl.where(live, lse, 0.0)
        if SHARED:
            sel = 0
        else:
            sel = g
        limit = t + offset
        dq = tl.zeros((BLOCK_H, D), tl.float32)
        for start in range(0, n_slots, BLOCK_K):
            offs = start + tl.arange(0, BLOCK_K)
            idx = tl.load(IDX + b * sib + sel * sih + t * sin + offs, mask=offs < n_slots, other=-1)
            valid = idx >= 0
            if CAUSAL:
                valid = valid & (idx <= limit)
            safe = tl.where(valid, idx, 0)
            k = tl.load(K + b * skb + g * skh + safe[:, None] * skn + dims[None, :], mask=valid[:, None],
                        other=0.0).to(tl.float32)
            v = tl.load(V + b * svb + g * svh + safe[:, None] * svn + vdims[None, :], mask=valid[:, None],
                        other=0.0).to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            p = tl.exp(s - lse_safe[:, None])
            p = tl.where(valid[None, :] & live[:, None], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds, k, input_precision="ieee") * scale
            dk = tl.dot(tl.trans(ds), q, input_precision="ieee") * scale  # [BLOCK_K, D]
            dv = tl.dot(tl.trans(p), do, input_precision="ieee")  # [BLOCK_K, DV]
            tl.atomic_add(DK + b * skb + g * skh + safe[:, None] * skn + dims[None, :], dk, mask=valid[:, None])
            tl.atomic_add(DV_ + b * svb + g * svh + safe[:, None] * svn + vdims[None, :], dv, mask=valid[:, None])
        tl.store(DQ + row + dims[None, :], dq, mask=hmask[:, None])


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _launch_args(q: Tensor, k: Tensor, v: Tensor, indices: Tensor):
    b, h, n_q, d = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    g = h // h_kv
    return dict(G=g, BLOCK_H=max(16, _pow2(g)), BLOCK_K=BLOCK_K, D=d, DV=v.shape[-1],
                SHARED=indices.shape[1] == 1), (n_q, b * h_kv), (n_q, n_k, indices.shape[3], h_kv, n_k - n_q)


class _SparseAttentionTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, causal, scale):
        meta, grid, sizes = _launch_args(q, k, v, indices)
        out = torch.empty(*q.shape[:3], v.shape[-1], device=q.device, dtype=q.dtype)
        lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
        _fwd_kernel[grid](q, k, v, indices, out, lse, scale, *sizes, *q.stride()[:3], *k.stride()[:3],
                          *v.stride()[:3], *indices.stride()[:3], *out.stride()[:3], CAUSAL=causal,
                          UPCAST=INTERPRET or q.dtype == torch.float32,
                          PRECISION="ieee" if INTERPRET or q.dtype == torch.float32 else "tf32", **meta)
        ctx.save_for_backward(q, k, v, indices, out, lse)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, indices, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        meta, grid, sizes = _launch_args(q, k, v, indices)
        dq = torch.empty(q.shape, device=q.device, dtype=torch.float32)
        dk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
        dv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        _bwd_kernel[grid](q, k, v, indices, out, grad_out, lse, dq, dk, dv, ctx.scale, *sizes, *q.stride()[:3],
                          *k.stride()[:3], *v.stride()[:3], *indices.stride()[:3], *out.stride()[:3],
                          CAUSAL=ctx.causal, **meta)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def sparse_attention_triton(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, *, causal: bool,
                            scale: float) -> Tensor:
    """Same contract as the reference kernel (shared, per-KV-head or per-query-head selections)."""
    h, h_kv = q.shape[1], k.shape[1]
    if indices.shape[1] == h != h_kv:  # per-query-head on GQA/MQA: run as MHA over repeated KV heads
        k, v = k.repeat_interleave(h // h_kv, dim=1), v.repeat_interleave(h // h_kv, dim=1)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return _SparseAttentionTriton.apply(q, k, v, indices.long().contiguous(), causal, float(scale))


def unavailable_reason() -> str | None:
    """Why this backend cannot run on this machine at all (None when it can run somewhere here)."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if not torch.cuda.is_available() and not INTERPRET:
        return "no CUDA device (set TRITON_INTERPRET=1 for the CPU interpreter)"
    return None


def supports(q: Tensor, k: Tensor, v: Tensor, indices: Tensor, needs_grad: bool) -> str | None:
    """None when this backend can run the inputs, else the reason (CUDA tensors without an
    importable triton: a documented fallback to the reference)."""
    if q.device.type != "cuda" and not INTERPRET:
        return "needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)"
    if _IMPORT_ERROR is not None:
        return Fallback(_IMPORT_ERROR)
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {q.dtype} not supported (float32, float16, bfloat16)"
    d, dv = q.shape[-1], v.shape[-1]
    if d != _pow2(d) or dv != _pow2(dv) or d < 16 or dv < 16:
        return f"head dims must be powers of two >= 16, got D={d}, D_v={dv}"
    if indices.shape[1] not in (1, k.shape[1], q.shape[1]):
        return f"index heads must be 1, H_kv={k.shape[1]} or H={q.shape[1]}, got {indices.shape[1]}"
    if q.shape[1] // k.shape[1] > 128:
        return "more than 128 query heads per KV head"
    return None
