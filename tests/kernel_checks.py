"""Shared checks of the fast CPU kernel against the float64 reference."""

import torch
from helpers import assert_close, grads

from sparse_attention import sparse_attention
from sparse_attention.ops.attention import cpu

#: relative RMS error allowed against the float64 reference, per dtype.
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def random_indices(b, h_sel, n_q, n_k, slots, seed=0, empty_fraction=0.2, unique=True):
    gen = torch.Generator().manual_seed(seed)
    if unique and slots <= n_k:
        idx = torch.rand(b, h_sel, n_q, n_k, generator=gen).argsort(-1)[..., :slots]
    else:
        idx = torch.randint(0, n_k, (b, h_sel, n_q, slots), generator=gen)
    return idx.masked_fill(torch.rand(idx.shape, generator=gen) < empty_fraction, -1)


def compare(q, k, v, idx, causal, dtype, isa=None):
    """The cpu backend (the build of level ``isa``, default the session's) against float64."""
    qc, kc, vc = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    if isa is None:
        out, backend = sparse_attention(qc, kc, vc, idx, causal=causal, backend="cpu", return_backend=True)
        assert backend == "cpu"
    else:
        out = cpu.sparse_attention_cpu(qc, kc, vc, idx, causal=causal, scale=q.shape[-1] ** -0.5, isa=isa)
    assert out.dtype == dtype
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (qc, kc, vc))
    ref = sparse_attention(qr, kr, vr, idx, causal=causal, backend="reference")
    tol = TOLERANCE[dtype]
    assert_close(out, ref, tol)
    for g_out, g_ref in zip(grads(out, qc, kc, vc), grads(ref, qr, kr, vr)):
        assert torch.isfinite(g_out).all()
        assert_close(g_out, g_ref, tol)
