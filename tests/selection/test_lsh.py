"""Tests of the ``lsh`` selection (Reformer angular LSH)."""

from __future__ import annotations

import pytest
import torch

from sparse_attention.ops.dense import dense_attention
from sparse_attention.ops.attention import sparse_attention
from sparse_attention.selection import select
from sparse_attention.selection.lsh import (
    hash_buckets,
    random_rotations,
    resolve_n_buckets,
    select_lsh,
)


def _qkv(n, *, b=2, h=4, h_kv=2, d=16, n_q=None, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n if n_q is None else n_q, d, generator=gen)
    k = torch.randn(b, h_kv, n, d, generator=gen)
    v = torch.randn(b, h_kv, n, d, generator=gen)
    if grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n", [1, 63, 200])
def test_full_coverage_equals_dense(n, causal):
    q, k, v = _qkv(n, grad=True)
    sel = select(q, k, "lsh", causal=causal, n_buckets=1, bucket_size=n)
    out = sparse_attention(q, k, v, sel.indices, causal=causal)
    ref = dense_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g_out)
    grads_ref = torch.autograd.grad(ref, (q, k, v), g_out)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
    assert sel.info == {"n_hashes": 4, "n_buckets": 1, "bucket_size": n}


@pytest.mark.parametrize("t", [0, 7, 30, 62])
def test_exactly_causal(t):
    n = 64
    q, k, v = _qkv(n, seed=1)
    params = dict(n_hashes=2, n_buckets=4, bucket_size=4, seed=3)
    sel = select(q, k, "lsh", causal=True, **params)
    out = sparse_attention(q, k, v, sel.indices, causal=True)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    gen = torch.Generator().manual_seed(t)
    for x in (q2, k2, v2):  # everything after t changes, including future queries
        x[:, :, t + 1:] = torch.randn(x[:, :, t + 1:].shape, generator=gen)
    sel2 = select(q2, k2, "lsh", causal=True, **params)
    out2 = sparse_attention(q2, k2, v2, sel2.indices, causal=True)
    torch.testing.assert_close(out2[:, :, : t + 1], out[:, :, : t + 1], atol=0, rtol=0)
    assert not torch.equal(out2[:, :, t + 1:], out[:, :, t + 1:]) or t + 1 == n


def test_deterministic_per_seed():
    q, k, _ = _qkv(100)
    a = select(q, k, "lsh", bucket_size=8, seed=5)
    b = select(q, k, "lsh", bucket_size=8, seed=5)
    c = select(q, k, "lsh", bucket_size=8, seed=6)
    assert torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, c.indices)


def _brute_force(q, k, *, causal, n_hashes, n_buckets, bucket_size, seed, include_self):
    """The selection rule, written out query by query."""
    b, h, n_q, d = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    g = h // h_kv
    rot = random_rotations(n_hashes, d, n_buckets, seed)
    w = 2 * bucket_size
    out = {}
    for r in range(n_hashes):
        xr_q, xr_k = q @ rot[r], k @ rot[r]
        qb = torch.cat([xr_q, -xr_q], -1).argmax(-1).tolist()
        kb = torch.cat([xr_k, -xr_k], -1).argmax(-1).tolist()
        for bi in range(b):
            for hi in range(h):
                for i in range(n_q):
                    t = i + n_k - n_q
                    same = [j for j in range(n_k) if kb[bi][hi // g][j] == qb[bi][hi][i]]
                    if causal:
                        chosen = sorted([j for j in same if j <= t], reverse=True)[:w]
                    else:
                        chosen = sorted(same, key=lambda j: (abs(j - t), j > t))[:w]
                    out.setdefault((bi, hi, i), set()).update(chosen)
    if include_self:
        for (bi, hi, i), s in out.items():
            if 0 <= i + n_k - n_q:
                s.add(i + n_k - n_q)
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("n_q", [50, 30])
def test_matches_brute_force(causal, include_self, n_q):
    n = 50
    q, k, _ = _qkv(n, b=1, h=4, h_kv=2, d=8, n_q=n_q, seed=2)
    params = dict(n_hashes=2, n_buckets=4, bucket_size=4, seed=1, include_self=include_self)
    sel = select(q, k, "lsh", causal=causal, **params)
    ref = _brute_force(q, k, causal=causal, **params)
    assert sel.indices.shape[:3] == (1, 4, n_q)
    idx = sel.indices.tolist()
    for (bi, hi, i), expected in ref.items():
        row = [j for j in idx[bi][hi][i] if j >= 0]
        assert len(row) == len(set(row))
        assert set(row) == expected, (bi, hi, i)


def test_hash_buckets_range_and_info():
    rot = random_rotations(3, 8, 6, seed=0)
    assert rot.shape == (3, 8, 3)
    x = torch.randn(2, 5, 40, 8)
    bk = hash_buckets(x, rot[0])
    assert bk.shape == (2, 5, 40) and bk.dtype == torch.long
    assert int(bk.min()) >= 0 and int(bk.max()) < 6
    assert resolve_n_buckets(None, 1000, 64) == 16  # 1000 // 64 = 15 -> even
    assert resolve_n_buckets(None, 10, 64) == 2
    q, k, _ = _qkv(300)
    sel = select_lsh(q, k, causal=True, bucket_size=16)
    assert sel.info == {"n_hashes": 4, "n_buckets": 18, "bucket_size": 16}
    assert sel.method == "lsh" and sel.n_keys == 300


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_q,n_k", [(120, 120), (40, 120), (120, 80), (1, 120)])
def test_valid_indices(causal, n_q, n_k):
    q, _, _ = _qkv(n_k, n_q=n_q, seed=4)
    _, k, _ = _qkv(n_k, seed=5)
    sel = select(q, k, "lsh", causal=causal, n_hashes=3, bucket_size=8)
    idx = sel.indices
    assert idx.dtype == torch.int64 and idx.shape[:3] == (2, 4, n_q)
    assert idx.shape[-1] <= 3 * 16 + 1
    assert int(idx.min()) >= -1 and int(idx.max()) < n_k
    valid = idx >= 0
    srt = torch.where(valid, idx, n_k + torch.arange(idx.shape[-1])).sort(-1).values
    assert not (srt[..., 1:] == srt[..., :-1]).any()  # no duplicates
    if causal:
        limit = torch.arange(n_q) + n_k - n_q
        assert not (valid & (idx > limit[:, None])).any()
        has_key = limit >= 0
        assert valid.any(-1)[:, :, has_key].all()  # include_self: no visible row is empty
    else:
        assert valid.any(-1).all()


@pytest.mark.parametrize(
    "params,name,exc",
    [
        ({"n_hashes": 0}, "n_hashes", ValueError),
        ({"n_hashes": -2}, "n_hashes", ValueError),
        ({"n_hashes": 1.5}, "n_hashes", TypeError),
        ({"bucket_size": 0}, "bucket_size", ValueError),
        ({"bucket_size": "4"}, "bucket_size", TypeError),
        ({"n_buckets": 3}, "n_buckets", ValueError),
        ({"n_buckets": 0}, "n_buckets", ValueError),
        ({"n_buckets": -4}, "n_buckets", ValueError),
        ({"n_buckets": 2.0}, "n_buckets", TypeError),
        ({"seed": "x"}, "seed", TypeError),
        ({"include_self": 1}, "include_self", TypeError),
    ],
)
def test_bad_params(params, name, exc):
    q, k, _ = _qkv(16)
    with pytest.raises(exc, match=name):
        select(q, k, "lsh", **params)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("n_q,n_k,params", [(200, 200, {}), (60, 200, {"n_hashes": 3}), (150, 90, {"n_hashes": 2}),
                                            (100, 100, {"n_buckets": 1, "bucket_size": 16}),
                                            (333, 333, {"bucket_size": 8, "n_hashes": 5})])
def test_cpu_rows_equal_the_pytorch_path(causal, include_self, n_q, n_k, params):
    """The C++ rows (runs of the sorted order, bitmap union) equal gathered candidates + sorting compaction."""
    from sparse_attention.ops.compact import cpu
    from sparse_attention.ops.dispatch import forced

    if cpu.EXTENSION.load_error() is not None:
        pytest.skip(f"CPU extension unavailable: {cpu.EXTENSION.load_error()}")
    q, k, _ = _qkv(n_k, n_q=n_q, seed=n_q)
    fast = select(q, k, "lsh", causal=causal, include_self=include_self, **params)
    with forced(lsh_rows="reference"):
        slow = select(q, k, "lsh", causal=causal, include_self=include_self, **params)
    assert torch.equal(fast.indices, slow.indices)


def test_hash_of_a_nan_or_zero_row_equals_argmax_over_both_halves():
    x = torch.randn(3, 20, 8, generator=torch.Generator().manual_seed(0))
    x[0, 3, 2], x[1, :4] = float("nan"), 0.0
    rot = random_rotations(1, 8, 10, seed=0)[0]
    xr = x @ rot
    assert torch.equal(hash_buckets(x, rot), torch.cat([xr, -xr], dim=-1).argmax(dim=-1))


def test_hash_rounds_in_row_blocks_equals_each_round_alone(monkeypatch):
    from sparse_attention.selection import lsh

    x = torch.randn(2, 3, 37, 8, generator=torch.Generator().manual_seed(1))
    x[1, 2, 5, 0] = float("nan")
    rot = random_rotations(3, 8, 12, seed=4)
    monkeypatch.setattr(lsh, "_HASH_BLOCK_BYTES", 4 * 3 * 6 * 20)  # blocks of 20 rows: 222 rows, a ragged last block
    got = lsh.hash_rounds(x, rot)
    assert got.shape == (3, 2, 3, 37)
    for r in range(3):
        xr = x @ rot[r]
        assert torch.equal(got[r], torch.cat([xr, -xr], dim=-1).argmax(dim=-1))
