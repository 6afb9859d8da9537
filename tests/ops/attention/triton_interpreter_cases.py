"""Collected only under TRITON_INTERPRET=1, by test_triton.py (the interpreter must be on before
triton is imported): the Triton backend against the float64 reference, outputs and q/k/v
gradients, on every index layout, GQA/MQA, duplicates, empty rows and float16."""

import pytest
import torch
from helpers import assert_close, grads, make_qkv

from sparse_attention import sparse_attention

CASES = [  # (B, H, H_kv, N, D, K, layout, causal, dtype, tol)
    (1, 4, 2, 1, 16, 1, "shared", True, torch.float32, 1e-5),
    (1, 4, 2, 63, 16, 5, "shared", True, torch.float32, 1e-5),
    (2, 4, 4, 33, 32, 33, "per_kv_head", False, torch.float32, 1e-5),  # every key of a row, non-causal
    (1, 16, 1, 40, 16, 40, "shared", True, torch.float32, 1e-5),
    (1, 2, 1, 33, 16, 70, "shared", True, torch.float32, 1e-5),  # K > N: duplicates
    (1, 4, 2, 30, 16, 8, "per_kv_head", True, torch.float16, 5e-3),
    (1, 4, 2, 37, 16, 9, "per_head", True, torch.float32, 1e-5),  # GQA: KV heads repeated per query head
    (2, 3, 1, 20, 32, 25, "per_head", False, torch.float32, 1e-5),  # MQA, K > N
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c[:8])))
def test_triton_interpreter_matches_the_reference(case):
    b, h, h_kv, n, d, k, layout, causal, dtype, tol = case
    q, kk, v = make_qkv(b, h, h_kv, n, d=d, dtype=torch.float64, seed=n)
    gen = torch.Generator().manual_seed(n + k)
    h_sel = {"shared": 1, "per_kv_head": h_kv, "per_head": h}[layout]
    idx = torch.randint(0, n, (b, h_sel, n, k), generator=gen)
    idx = idx.masked_fill(torch.rand(idx.shape, generator=gen) < 0.2, -1)
    idx[..., min(3, n - 1), :] = -1  # one row without keys
    xs = [t.to(dtype).requires_grad_() for t in (q, kk, v)]
    out, backend = sparse_attention(*xs, idx, causal=causal, backend="triton", return_backend=True)
    refs = [t.detach().double().requires_grad_() for t in xs]
    ref = sparse_attention(*refs, idx, causal=causal, backend="reference")
    assert backend == "triton"
    assert_close(out, ref, tol)
    for g, r in zip(grads(out, *xs), grads(ref, *refs)):
        assert torch.isfinite(g).all()
        assert_close(g, r, tol)


def test_triton_interpreter_declines_a_selection_of_other_heads():
    q, kk, v = make_qkv(1, 4, 2, 8, d=16)
    with pytest.raises(ValueError, match="H_sel=3 must be 1, H_kv=2 or H=4"):
        sparse_attention(q, kk, v, torch.zeros(1, 3, 8, 2, dtype=torch.long), backend="triton")
