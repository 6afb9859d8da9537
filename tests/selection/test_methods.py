"""Properties every selection method must have: full coverage == dense, causality, determinism."""

import pytest
import torch
from helpers import assert_close, grads, make_qkv

from sparse_attention import attention, dense_attention, get_method, list_methods, select

METHODS = [m.name for m in list_methods()]


def full_coverage(method: str, n: int) -> dict:
    """Settings under which the method selects every (causal) key: from its spec."""
    spec = get_method(method)
    assert spec.full_coverage is not None, f"{method}: give its spec a full_coverage"
    return spec.full_coverage(n)


def sparse_setting(method: str) -> dict:
    """Small settings that make each method genuinely sparse at N ~ 100."""
    return {
        "dense": {},
        "local": {"window": 8, "sinks": 2},
        "topk": {"top_k": 8},
        "dsa": {"top_k": 8},
        "ssa": {"clusters_per_query": 2, "block_size": 32},
        "routing": {"block_size": 32},
        "lsh": {"bucket_size": 4, "n_hashes": 2},
    }[method]


def test_all_issue_methods_are_registered():
    assert {"dense", "local", "topk", "dsa", "ssa", "routing", "lsh"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [1, 63, 200])
@pytest.mark.parametrize("causal", [True, False])
def test_full_coverage_equals_dense(method, n, causal):
    q, k, v = make_qkv(1, 4, 2, n, d=16, requires_grad=True)
    out = attention(q, k, v, method, causal=causal, **full_coverage(method, n))
    ref = dense_attention(q, k, v, causal=causal)
    assert_close(out, ref, 1e-5)
    for g_out, g_ref in zip(grads(out, q, k, v), grads(ref, q, k, v)):
        assert_close(g_out, g_ref, 1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t", [0, 31, 32, 70])
def test_causality(method, t):
    """Changing keys and values after position t never changes outputs at positions <= t."""
    n = 96
    q, k, v = make_qkv(1, 4, 2, n, d=16)
    params = sparse_setting(method)
    out = attention(q, k, v, method, causal=True, **params)
    k2, v2 = k.clone(), v.clone()
    gen = torch.Generator().manual_seed(t)
    k2[:, :, t + 1:] = torch.randn(k2[:, :, t + 1:].shape, generator=gen) * 3
    v2[:, :, t + 1:] = torch.randn(v2[:, :, t + 1:].shape, generator=gen) * 3
    out2 = attention(q, k2, v2, method, causal=True, **params)
    assert torch.equal(out[:, :, : t + 1], out2[:, :, : t + 1])


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_selection(method):
    q, k, _ = make_qkv(2, 4, 2, 80, d=16)
    a = select(q, k, method, **sparse_setting(method))
    b = select(q, k, method, **sparse_setting(method))
    assert torch.equal(a.indices, b.indices)
    assert a.method == method and a.n_keys == 80


@pytest.mark.parametrize("method", METHODS)
def test_selections_have_no_duplicates_and_no_future_keys(method):
    q, k, _ = make_qkv(1, 4, 2, 90, d=16)
    idx = select(q, k, method, causal=True, **sparse_setting(method)).indices
    positions = torch.arange(90)[:, None]
    assert ((idx == -1) | ((idx >= 0) & (idx <= positions))).all()
    ordered, _ = idx.sort(dim=-1)
    repeated = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)
    assert not repeated.any()
    assert idx.shape[1] in (1, 2, 4)


def test_local_window_is_exact():
    q, k, _ = make_qkv(1, 2, 2, 50)
    sel = select(q, k, "local", window=5, sinks=2)
    row = sorted(i for i in sel.indices[0, 0, 30].tolist() if i >= 0)
    assert row == [0, 1, 26, 27, 28, 29, 30]
    row = sorted(i for i in sel.indices[0, 0, 3].tolist() if i >= 0)
    assert row == [0, 1, 2, 3]


def test_topk_selects_the_largest_scores():
    q, k, _ = make_qkv(1, 2, 1, 30, d=8)
    sel = select(q, k, "topk", causal=False, top_k=4)
    scores = q @ k.transpose(-1, -2)  # [1, 2, 30, 30]
    expected = scores.topk(4, dim=-1).indices
    assert torch.equal(sel.indices.sort(-1).values, expected.sort(-1).values)
