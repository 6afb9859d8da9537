"""Sparsity invariants: values in range and consistent with the selections."""

import pytest
import torch

from sparse_attention import select, selection_stats
from sparse_attention.data import gaussian_qkv
from sparse_attention.experiments.attention import sparsity
from sparse_attention.experiments.attention.context import RunContext, SuiteConfig


@pytest.fixture(scope="module")
def config():
    return SuiteConfig(lengths=(64, 128), budget=16, methods=("dense", "local", "ssa"), heads=2, kv_heads=1,
                       head_dim=16)


@pytest.fixture(scope="module")
def section(config):
    return sparsity.run(RunContext(config))


def test_rows_in_range_and_dense_is_full(section):
    for r in section["rows"]:
        assert 0.0 <= r["sparsity"] <= 1.0 and 0.0 <= r["causal_sparsity"] <= 1.0
        if r["method"] == "dense":
            assert r["causal_sparsity"] == 0.0
            assert r["edges_per_query"] == (r["n"] if r["mode"] == "noncausal" else (r["n"] + 1) / 2)


def test_rows_match_the_selection(section, config):
    row = next(r for r in section["rows"] if (r["mode"], r["n"], r["method"]) == ("causal", 128, "ssa"))
    q, k, _ = gaussian_qkv(1, config.heads, config.kv_heads, 128, config.head_dim, seed=config.seed + 128)
    stats = selection_stats(select(q, k, "ssa", causal=True, seed=config.seed))
    assert row["edges"] == stats.edges and row["sparsity"] == stats.sparsity


def test_fitted_exponents(section):
    exps = {(e["mode"], e["method"]): e["exponent"] for e in section["exponents"]}
    assert exps[("noncausal", "dense")] == pytest.approx(1.0)
    assert sparsity.fit_exponent([10, 100, 1000], [3.0, 30.0, 300.0]) == pytest.approx(1.0)
    assert sparsity.fit_exponent([10], [1.0]) is None
    assert torch.isfinite(torch.tensor(exps[("causal", "local")]))
