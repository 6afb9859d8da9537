"""SSA ablation invariants on a tiny configuration."""

import json

import pytest
import torch
from helpers import make_qkv

from sparse_attention import select, sparse_attention
from sparse_attention.experiments.attention import ablation
from sparse_attention.experiments.attention.context import RunContext, SuiteConfig


@pytest.fixture(scope="module")
def section():
    config = SuiteConfig(lengths=(64, 192), budget=16, methods=("dense", "ssa"), heads=2, kv_heads=1, head_dim=16)
    return ablation.run(RunContext(config))


def test_full_grid_with_the_seed_default(section):
    cells = {(r["n_clusters"], r["clusters_per_query"]) for r in section["rows"]}
    assert cells == {(c, p) for c in ablation.N_CLUSTERS for p in ablation.CLUSTERS_PER_QUERY}
    default = section["settings"]["seed_default"]
    assert (default["n_clusters"], default["clusters_per_query"]) in cells
    assert all(r["n_clusters_label"] == ablation.DEFAULT_LABEL for r in section["rows"] if r["n_clusters"] is None)
    assert section["settings"]["n"] == 192
    json.dumps(section)


def test_values_in_range(section):
    for r in section["rows"]:
        assert 0 <= r["recall"] <= 1 + 1e-6 and -1 <= r["cosine"] <= 1 + 1e-6 and r["rel_l2"] >= 0
        assert 0 <= r["causal_sparsity"] <= 1 and 0 < r["edges_per_query"] <= r["n"]
        assert 0 < r["mean_clusters"] <= (r["n_clusters"] or r["n"])


def test_more_clusters_per_query_see_more_and_recall_more(section):
    # Same k-means (same seed) for every clusters_per_query: the c nearest clusters contain the c-1 nearest.
    for n_clusters in ablation.N_CLUSTERS:
        line = sorted((r for r in section["rows"] if r["n_clusters"] == n_clusters),
                      key=lambda r: r["clusters_per_query"])
        for a, b in zip(line, line[1:]):
            assert b["edges_per_query"] >= a["edges_per_query"]
            assert b["recall"] >= a["recall"] - 1e-6


def test_selected_output_matches_the_kernel():
    q, k, v = make_qkv(1, 4, 2, 70, d=8)
    for method in ("ssa", "dsa", "local"):
        selection = select(q, k, method, **({"top_k": 9} if method == "dsa" else {"window": 9} if method == "local"
                                             else {"n_clusters": 3}))
        expected = sparse_attention(q, k, v, selection.indices)
        assert torch.allclose(ablation.selected_output(q, k, v, selection), expected, atol=1e-5)


def test_reading_every_cluster_is_dense():
    q, k, v = make_qkv(1, 2, 1, 80, d=8)
    selection = select(q, k, "ssa", n_clusters=2, clusters_per_query=5)
    out = ablation.selected_output(q, k, v, selection)
    assert torch.allclose(out, sparse_attention(q, k, v, select(q, k, "dense").indices), atol=1e-5)
