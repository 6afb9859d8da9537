"""The counted cost model: exact where it has a closed form, sane scaling, never a crash."""

import math

import pytest
import torch
from helpers import make_qkv

import sparse_attention as sa
from sparse_attention.selection.base import unregister_method
from sparse_attention.selection.costs import (
    INDEX_BYTES,
    attention_bytes,
    dense_stats,
    method_costs,
    selection_costs,
    selection_flops,
)
from sparse_attention.selection.stats import causal_budget

SHAPE = dict(batch=1, heads=4, kv_heads=2, head_dim=16)
DEFAULTS = {"local": {"window": 16}, "topk": {"top_k": 16}, "dsa": {"top_k": 16}, "ssa": {}, "routing": {},
            "lsh": {"bucket_size": 8}}


def _costs(method, n, params=None, causal=True, n_k=None, b=1):
    params = DEFAULTS.get(method, {}) if params is None else params
    q, k, _ = make_qkv(b=b, h=SHAPE["heads"], h_kv=SHAPE["kv_heads"], n_q=n, n_k=n_k, d=SHAPE["head_dim"])
    selection = sa.select(q, k, method, causal=causal, **params)
    stats = sa.selection_stats(selection)
    return method_costs(method, stats, selection, params, **{**SHAPE, "batch": b})


@pytest.mark.parametrize("n_q,n_k", [(33, 33), (33, 47), (47, 33), (1, 16), (16, 1), (100, 100)])
@pytest.mark.parametrize("causal", [True, False])
def test_dense_stats_equal_the_dense_selection(n_q, n_k, causal):
    q, k, _ = make_qkv(n_q=n_q, n_k=n_k)
    expected = sa.selection_stats(sa.select(q, k, "dense", causal=causal)).to_dict()
    for key, value in dense_stats(n_q, n_k, causal).to_dict().items():
        if expected[key] is not None:
            assert value == pytest.approx(expected[key], rel=1e-6, abs=1e-6), key


@pytest.mark.parametrize("n", [16, 64, 257])
def test_dense_attention_flops_closed_form(n):
    d = SHAPE["head_dim"]
    costs = method_costs("dense", dense_stats(n, n), None, {}, **SHAPE)
    assert costs["attention_flops"] == SHAPE["heads"] * causal_budget(n, n) * (4 * d + 5)
    assert costs["selection_flops"] == 0 and costs["selection_bytes"] == 0
    # Dense SDPA reads no indices: K and V per causal pair and KV head, q and the output once.
    expected = (SHAPE["kv_heads"] * causal_budget(n, n) * 2 * d + SHAPE["heads"] * n * 2 * d) * 4
    assert costs["attention_bytes"] == expected


def test_topk_selection_flops_scale_as_n_squared():
    a, b = (_costs("topk", n)["selection_flops"] for n in (64, 128))
    assert 3.5 < b / a < 4.5
    # exactly H * causal pairs * (2D + 1): a score and a top-k comparison per visible pair
    assert b == SHAPE["heads"] * causal_budget(128, 128) * (2 * SHAPE["head_dim"] + 1)


@pytest.mark.parametrize("method", ["dense", "local", "topk", "dsa", "ssa", "routing", "lsh"])
def test_costs_grow_with_n(method):
    small, large = _costs(method, 64), _costs(method, 256)
    for key in ("attention_flops", "flops", "attention_bytes", "bytes", "compulsory_bytes"):
        assert large[key] > small[key], key
    if method not in ("dense", "local"):
        assert large["selection_flops"] > small["selection_flops"] > 0
        assert large["selection_bytes"] > small["selection_bytes"] > 0


def test_local_and_dense_select_for_free_and_batch_scales_linearly():
    assert _costs("local", 64)["selection_flops"] == 0
    one, two = _costs("topk", 40), _costs("topk", 40, b=2)
    for key in one:
        assert two[key] == pytest.approx(2 * one[key]), key


def test_shared_selection_reads_fewer_bytes_than_per_head():
    stats = dense_stats(64, 64)
    shared = attention_bytes(stats, 1, **SHAPE)
    per_head = attention_bytes(stats, SHAPE["heads"], **SHAPE)
    assert per_head > shared
    with_index = attention_bytes(stats, 1, **SHAPE, index_bytes=INDEX_BYTES)
    assert with_index - shared == stats.n_queries * stats.slots * INDEX_BYTES


def test_settings_move_the_counts_the_right_way():
    assert _costs("ssa", 128, {"iters": 1})["selection_flops"] < _costs("ssa", 128, {"iters": 10})["selection_flops"]
    fitted = _costs("routing", 128, {})["selection_flops"]
    given = _costs("routing", 128, {"centroids": torch.randn(2, 8, 16)})["selection_flops"]
    assert given < fitted
    one_bucket = _costs("lsh", 128, {"n_buckets": 1, "bucket_size": 8})["selection_flops"]
    hashed = _costs("lsh", 128, {"n_buckets": 8, "bucket_size": 8})["selection_flops"]
    assert one_bucket < hashed
    assert _costs("dsa", 128, {"top_k": 16, "n_heads": 8})["selection_flops"] > \
        _costs("dsa", 128, {"top_k": 16, "n_heads": 2})["selection_flops"]


CASES = [("dense", {}), ("local", {"window": 8, "sinks": 2}), ("topk", {"top_k": 500}),
         ("dsa", {"top_k": 4, "n_heads": 2, "head_dim": 8}),
         ("ssa", {}), ("ssa", {"n_clusters": 100, "clusters_per_query": 50, "block_size": 7, "assign": "dot",
                              "iters": 1}),
         ("routing", {}), ("routing", {"centroids": torch.randn(2, 5, 16), "cluster_size": 3}),
         ("routing", {"block_size": 1000, "n_clusters": 3}),
         ("lsh", {"n_buckets": 1, "bucket_size": 100}), ("lsh", {"n_hashes": 1, "n_buckets": 2, "include_self": False}),
         ("lsh", {})]


@pytest.mark.parametrize("method,params", CASES)
@pytest.mark.parametrize("n_q,n_k", [(33, 47), (47, 33), (1, 16)])
@pytest.mark.parametrize("causal", [True, False])
def test_every_method_and_setting_is_costed(method, params, n_q, n_k, causal):
    costs = _costs(method, n_q, params, causal=causal, n_k=n_k, b=2)
    assert all(math.isfinite(v) and v >= 0 for v in costs.values()), costs
    assert costs["flops"] == pytest.approx(costs["attention_flops"] + costs["selection_flops"])
    assert costs["bytes"] == pytest.approx(costs["attention_bytes"] + costs["selection_bytes"])
    assert costs["compulsory_bytes"] <= costs["bytes"] * (1 + 1e-12)  # a lower bound of the no-reuse count


def test_trained_indexer_dimension_is_read_from_the_tensors():
    q, k, _ = make_qkv(n_q=40, d=16)
    params = {"top_k": 8, "index_q": torch.randn(1, 3, 40, 5), "index_k": torch.randn(1, 40, 5),
              "index_weights": torch.randn(1, 40, 3)}
    small = selection_costs("dsa", sa.select(q, k, "dsa", **params), params, **SHAPE)[0]
    params_big = {**params, "index_q": torch.randn(1, 3, 40, 50), "index_k": torch.randn(1, 40, 50)}
    big = selection_flops("dsa", sa.select(q, k, "dsa", **params_big), params_big, **SHAPE)
    assert big > 5 * small


def test_unknown_method_is_a_clear_error_and_a_spec_without_a_cost_model_counts_nothing():
    q, k, _ = make_qkv(n_q=8)
    selection = sa.select(q, k, "topk", top_k=4)
    with pytest.raises(ValueError, match="unknown method"):
        selection_costs("nonexistent", selection, {}, **SHAPE)
    spec = sa.get_method("topk")
    sa.register_method("topk_without_costs", params=list(spec.params), summary="test", reference="test")(spec.select)
    try:
        assert selection_costs("topk_without_costs", selection, {}, **SHAPE) is None
        counts = method_costs("topk_without_costs", sa.selection_stats(selection), selection, {}, **SHAPE)
        assert counts["attention_flops"] > 0 and counts["selection_flops"] is None and counts["flops"] is None
    finally:
        unregister_method("topk_without_costs")
