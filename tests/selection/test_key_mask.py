"""Key padding masks in the core API: padded keys are never selected nor attended, every method
and backend; rows left with no key give zeros; clear errors for bad masks."""

import pytest
import torch

import sparse_attention as sa
from sparse_attention.ops.dense import dense_attention
from sparse_attention.ops.attention import sparse_attention
from sparse_attention.selection import list_methods, select

METHODS = [spec.name for spec in list_methods()]


def _qkv(b=2, h=4, h_kv=2, n_q=40, n_k=40, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n_q, d, generator=gen), torch.randn(b, h_kv, n_k, d, generator=gen),
            torch.randn(b, h_kv, n_k, d, generator=gen))


def _masks(b, n_k):
    """Left padding (batch 0), right padding and a hole (batch 1)."""
    mask = torch.ones(b, n_k, dtype=torch.bool)
    mask[0, :7] = False
    mask[1, -5:] = False
    mask[1, 12] = False
    return mask


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("causal", [True, False])
def test_full_coverage_with_padding_equals_masked_dense(method, causal):
    q, k, v = _qkv()
    mask = _masks(2, 40)
    params = next(s for s in list_methods() if s.name == method).full_coverage(40)
    out = sa.attention(q, k, v, method, causal=causal, key_mask=mask, **params)
    ref = dense_attention(q, k, v, causal=causal, key_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_padded_keys_are_never_selected(method):
    q, k, _ = _qkv(n_q=30, n_k=50, seed=3)
    mask = _masks(2, 50)
    idx = select(q, k, method, causal=True, key_mask=mask).indices
    idx = idx.expand(2, *idx.shape[1:])
    for b in range(2):
        chosen = idx[b][idx[b] >= 0]
        assert mask[b, chosen].all(), method


@pytest.mark.parametrize("method", ["topk", "dsa"])
def test_top_k_methods_keep_their_best_k_real_keys(method):
    q, k, _ = _qkv(n_q=50, n_k=50, seed=4)
    mask = _masks(2, 50)
    idx = select(q, k, method, causal=True, top_k=8, key_mask=mask).indices
    limit = torch.arange(50)
    for b in range(2):
        visible_real = torch.stack([mask[b, : t + 1].sum() for t in limit])  # real keys each query can see
        counts = (idx[b] >= 0).sum(-1)  # [H_sel, N_q]
        assert torch.equal(counts, torch.minimum(visible_real, torch.tensor(8)).expand_as(counts)), method
    if method == "topk":  # the chosen keys are the best real ones: compare with scores masked by hand
        scores = (q @ k.repeat_interleave(2, dim=1).transpose(-1, -2)).masked_fill(~mask[:, None, None], float("-inf"))
        scores = scores.masked_fill(torch.ones(50, 50, dtype=torch.bool).triu(1), float("-inf"))
        kth = scores.topk(8, dim=-1).values[..., -1:]
        picked = torch.gather(scores, -1, idx.clamp(min=0))
        assert (picked[idx >= 0] >= kth.expand_as(picked)[idx >= 0] - 1e-6).all()


def test_rows_without_a_real_key_give_zeros_and_zero_gradients():
    q, k, v = (t.requires_grad_() for t in _qkv(b=1, seed=5))
    mask = torch.ones(1, 40, dtype=torch.bool)
    mask[0, :6] = False  # left padding: queries 0..5 see only padded keys under the causal mask
    out = sa.attention(q, k, v, "topk", top_k=4, key_mask=mask)
    assert torch.equal(out[:, :, :6], torch.zeros_like(out[:, :, :6]))
    out.sum().backward()
    assert torch.equal(q.grad[:, :, :6], torch.zeros_like(q.grad[:, :, :6]))
    assert torch.equal(k.grad[:, :, :6], torch.zeros_like(k.grad[:, :, :6]))  # padded keys get no gradient


def test_integer_masks_and_batch_broadcast():
    q, k, v = _qkv(seed=6)
    mask = _masks(2, 40)
    a = sa.attention(q, k, v, "local", window=8, key_mask=mask.long())
    b = sa.attention(q, k, v, "local", window=8, key_mask=mask)
    torch.testing.assert_close(a, b)
    one = mask[:1]
    c = sa.attention(q, k, v, "dense", key_mask=one)  # [1, N_k] applies to every batch element
    torch.testing.assert_close(c, dense_attention(q, k, v, key_mask=one.expand(2, 40)))
    full = sa.attention(q, k, v, "topk", top_k=6, key_mask=torch.ones(2, 40, dtype=torch.bool))
    torch.testing.assert_close(full, sa.attention(q, k, v, "topk", top_k=6))  # an all-real mask changes nothing


@pytest.mark.parametrize("mask, exc, text", [
    (torch.ones(2, 39, dtype=torch.bool), ValueError, "key_mask must have shape"),
    (torch.ones(3, 40, dtype=torch.bool), ValueError, "key_mask must have shape"),
    (torch.ones(2, 40), TypeError, "bool or integer"),
    (torch.full((2, 40), 2), ValueError, "other than 0 and 1"),
    ([[1] * 40] * 2, TypeError, "torch.Tensor"),
])
def test_bad_masks_are_clear_errors(mask, exc, text):
    q, k, v = _qkv()
    with pytest.raises(exc, match=text):
        sa.attention(q, k, v, "topk", key_mask=mask)
    with pytest.raises(exc, match=text):
        sa.attention(q, k, v, "dense", key_mask=mask)


def test_fused_scoring_refuses_a_key_mask():
    q, k, _ = _qkv()
    with pytest.raises(ValueError, match="key_mask"):
        select(q, k, "topk", scoring="fused", key_mask=_masks(2, 40))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_every_backend_follows_the_selection(backend):
    q, k, v = _qkv(seed=7)
    mask = _masks(2, 40)
    idx = select(q, k, "lsh", key_mask=mask).indices
    out = sparse_attention(q, k, v, idx, backend=backend)
    ref = sparse_attention(q.double(), k.double(), v.double(), idx, backend="reference")
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


# dsa scores chunked on both sides: its ReLU scores tie at 0, and the fused scorer breaks ties otherwise
@pytest.mark.parametrize("method,params", [("dense", {}), ("topk", {"top_k": 8}), ("local", {"window": 8}),
                                           ("dsa", {"top_k": 8, "scoring": "chunked"}), ("lsh", {})])
def test_attention_layer_with_right_padding_equals_the_unpadded_sequence(method, params):
    from sparse_attention import AttentionConfig, SparseSelfAttention

    torch.manual_seed(0)
    layer = SparseSelfAttention(AttentionConfig(dim=32, n_heads=4, n_kv_heads=2, method=method, method_params=params))
    x = torch.randn(2, 30, 32)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 22:] = False  # sequence 1 is 22 tokens long
    with torch.no_grad():
        padded = layer(x, key_mask=mask)
        alone = layer(x[1:, :22])
        full = layer(x[:1])
    torch.testing.assert_close(padded[1:, :22], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[:1], full, atol=1e-5, rtol=1e-5)


def test_attention_layer_refuses_a_mask_where_it_is_not_supported():
    from sparse_attention import AttentionConfig, SparseSelfAttention

    layer = SparseSelfAttention(AttentionConfig(dim=32, n_heads=2, method="dsa", method_params={"top_k": 4}))
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, :2] = False
    with pytest.raises(ValueError, match="key_mask"):
        layer.forward_with_aux(torch.randn(1, 10, 32), "warmup", key_mask=mask)
