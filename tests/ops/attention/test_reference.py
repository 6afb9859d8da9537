"""The reference kernel against a masked dense computation (outputs and gradients)."""

import math

import pytest
import torch
from helpers import assert_close, grads, make_qkv

from sparse_attention import sparse_attention
from sparse_attention.ops import masked_dense_attention, selection_counts
from sparse_attention.ops.attention.reference import sparse_attention_reference

SHAPES = [  # (B, H, H_kv, N)
    (2, 4, 4, 1),
    (1, 4, 2, 63),
    (2, 6, 1, 63),
    (1, 2, 1, 1000),
]


def random_indices(b, h_sel, n_q, n_k, slots, seed=0, empty_fraction=0.2):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n_k, (b, h_sel, n_q, slots), generator=gen)
    empty = torch.rand(idx.shape, generator=gen) < empty_fraction
    return idx.masked_fill(empty, -1)


def oracle(q, k, v, idx, causal):
    return masked_dense_attention(q, k, v, idx, causal=causal)


@pytest.mark.parametrize("b,h,h_kv,n", SHAPES)
@pytest.mark.parametrize("layout", ["shared", "per_kv_head", "per_head"])
@pytest.mark.parametrize("causal", [True, False])
def test_reference_matches_masked_dense(b, h, h_kv, n, layout, causal):
    q, k, v = make_qkv(b, h, h_kv, n, d=16, dtype=torch.float64, requires_grad=True)
    h_sel = {"shared": 1, "per_kv_head": h_kv, "per_head": h}[layout]
    slots = min(n, 24) if n > 1 else 3
    idx = random_indices(b, h_sel, n, n, slots, seed=n + h_sel)
    out = sparse_attention(q, k, v, idx, causal=causal, backend="reference")
    ref = oracle(q, k, v, idx, causal)
    assert_close(out, ref, 1e-9)
    for g_out, g_ref in zip(grads(out, q, k, v), grads(ref, q, k, v)):
        assert_close(g_out, g_ref, 1e-8)


def test_query_chunking_does_not_change_results():
    q, k, v = make_qkv(1, 4, 2, 100, requires_grad=True)
    idx = random_indices(1, 2, 100, 100, 17)
    whole = sparse_attention_reference(q, k, v, idx, causal=True, scale=0.25)
    chunked = sparse_attention_reference(q, k, v, idx, causal=True, scale=0.25, query_chunk=7)
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_causal_mask_is_enforced_inside_the_kernel():
    q, k, v = make_qkv(1, 2, 2, 20)
    future = torch.arange(20).expand(1, 1, 20, 20).contiguous()  # every key, past and future
    past_only = torch.where(future <= torch.arange(20)[:, None], future, -1)
    assert torch.allclose(sparse_attention(q, k, v, future), sparse_attention(q, k, v, past_only), atol=1e-6)


def test_duplicates_count_twice():
    """A key listed twice gets twice the weight: softmax with log 2 added to its logit."""
    q, k, v = make_qkv(1, 1, 1, 4, dtype=torch.float64)
    idx = torch.tensor([[[[0, 1, 1, 2]] * 4]])  # query rows all list key 1 twice
    out = sparse_attention(q, k, v, idx, causal=False)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    bias = torch.tensor([0.0, math.log(2.0), 0.0, float("-inf")], dtype=torch.float64)
    expected = torch.softmax(logits + bias, dim=-1) @ v
    assert torch.allclose(out, expected, atol=1e-12)


def test_empty_rows_give_zero_output_and_zero_gradients():
    q, k, v = make_qkv(1, 2, 1, 8, requires_grad=True)
    idx = torch.full((1, 1, 8, 3), -1)
    idx[0, 0, 5] = torch.tensor([0, 2, 7])  # row 5 has keys 0 and 2 (7 is in its future)
    idx[0, 0, 2] = torch.tensor([6, 7, -1])  # row 2: only future keys -> empty under causal
    out = sparse_attention(q, k, v, idx, causal=True)
    assert torch.isfinite(out).all()
    empty = [i for i in range(8) if i != 5]
    assert torch.count_nonzero(out[:, :, empty]) == 0
    gq, gk, gv = grads(out, q, k, v)
    for g in (gq, gk, gv):
        assert torch.isfinite(g).all()
    assert torch.count_nonzero(gq[:, :, empty]) == 0
    assert torch.count_nonzero(gk[:, :, [1, 3, 4, 5, 6, 7]]) == 0  # only keys 0 and 2 are used


def test_nan_in_a_query_row_stays_in_that_row():
    q, k, v = make_qkv(1, 2, 2, 16)
    q[0, 1, 9, 3] = float("nan")
    idx = random_indices(1, 1, 16, 16, 8, empty_fraction=0.0)
    out = sparse_attention(q, k, v, idx, causal=False)
    assert torch.isnan(out[0, 1, 9]).all()
    mask = torch.ones_like(out, dtype=torch.bool)
    mask[0, 1, 9] = False
    assert torch.isfinite(out[mask]).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    q, k, v = make_qkv(1, 4, 2, 50, dtype=dtype)
    idx = random_indices(1, 2, 50, 50, 12)
    out = sparse_attention(q, k, v, idx)
    assert out.dtype == dtype
    ref = sparse_attention(q.float(), k.float(), v.float(), idx)
    assert_close(out.float(), ref, 1e-2)


def test_non_contiguous_inputs_and_int32_indices():
    q, k, v = make_qkv(1, 4, 2, 40, d=16)
    qt = q.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    idx = random_indices(1, 4, 40, 40, 9)
    assert torch.allclose(sparse_attention(qt, k, v, idx.int()), sparse_attention(q, k, v, idx), atol=1e-6)


def test_query_and_key_lengths_differ_end_aligned():
    """Causal queries align with the end of the keys (decode with a KV cache)."""
    q, k, v = make_qkv(1, 2, 2, n_q=3, n_k=10, dtype=torch.float64)
    idx = torch.arange(10).expand(1, 1, 3, 10).contiguous()
    out = sparse_attention(q, k, v, idx, causal=True)
    counts = selection_counts(idx, 10, True)
    assert counts[0, 0].sum(-1).tolist() == [8.0, 9.0, 10.0]
    assert_close(out, masked_dense_attention(q, k, v, idx, causal=True), 1e-12)
