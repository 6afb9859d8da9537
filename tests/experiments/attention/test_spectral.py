"""Spectral preservation invariants on a tiny configuration."""

import json

import pytest
import torch
from helpers import make_qkv

from sparse_attention import select, sparse_attention
from sparse_attention.experiments.attention import spectral
from sparse_attention.experiments.attention.context import RunContext, SuiteConfig

METHODS = ("dense", "local", "topk", "dsa", "ssa")


@pytest.fixture(scope="module")
def config():
    return SuiteConfig(lengths=(64, 96), budget=48, methods=METHODS, heads=2, kv_heads=1, head_dim=16)


@pytest.fixture(scope="module")
def section(config):
    return spectral.run(RunContext(config))


def test_shape_of_the_section(section, config):
    n = section["settings"]["n"]
    assert n == max(config.lengths)  # a tiny config never analyses more than its longest length
    assert len(section["rows"]) == len(spectral.SOURCES) * len(METHODS) * config.heads
    for source in spectral.SOURCES:
        assert set(section["spectra"][source]) == set(METHODS)
        for values in section["spectra"][source].values():
            assert len(values) == n and all(a >= b for a, b in zip(values, values[1:]))  # descending
    json.dumps(section)


def test_dense_preserves_everything(section):
    for r in (r for r in section["rows"] if r["method"] == "dense"):
        assert r["spectral_norm_error"] < 1e-9 and r["frobenius_error"] < 1e-9
        assert r["recall"] == pytest.approx(1.0) and r["causal_sparsity"] == 0.0
        for rank in section["settings"]["ranks"]:
            assert r[f"sv_error@{rank}"] < 1e-9
            assert r[f"overlap_left@{rank}"] == pytest.approx(1.0) == r[f"overlap_right@{rank}"]


def test_metrics_in_range_and_sparse_methods_lose_something(section):
    for r in section["rows"]:
        assert r["spectral_norm_error"] >= 0 and r["frobenius_error"] >= 0 and 0 <= r["recall"] <= 1 + 1e-9
        for rank in section["settings"]["ranks"]:
            assert -1e-9 <= r[f"overlap_left@{rank}"] <= 1 + 1e-9 and -1e-9 <= r[f"overlap_right@{rank}"] <= 1 + 1e-9
    local = [r for r in section["rows"] if r["method"] == "local"]
    assert all(r["recall"] < 1 and r["spectral_norm_error"] > 1e-3 for r in local)


def test_fixed_budgets_are_capped(section, config):
    n = section["settings"]["n"]
    cap = int(n * spectral.BUDGET_FRACTION)
    assert cap < config.budget  # so the test exercises the cap
    assert section["settings"]["methods"]["local"]["window"] == cap
    assert section["settings"]["methods"]["topk"]["top_k"] == cap


def test_sparse_probabilities_are_the_kernel_weights():
    q, k, v = make_qkv(1, 4, 2, 40, d=8)
    for method, params in (("local", {"window": 5}), ("topk", {"top_k": 7}), ("dsa", {"top_k": 6}), ("ssa", {})):
        selection = select(q, k, method, **params)
        probs = spectral.sparse_probabilities(q, k, selection)[0]  # [H, N, N]
        assert torch.allclose(probs.sum(-1), torch.ones(4, 40, dtype=probs.dtype))
        assert (probs.triu(1) == 0).all()  # causal
        out = probs.float() @ v[0].repeat_interleave(2, dim=0)  # [H, N, D]
        assert torch.allclose(out, sparse_attention(q, k, v, selection.indices)[0], atol=1e-5)


def test_dense_selection_gives_the_dense_matrix():
    q, k, _ = make_qkv(1, 2, 1, 30, d=8)
    dense = spectral.dense_probabilities(q, k)
    assert torch.allclose(spectral.sparse_probabilities(q, k, select(q, k, "dense")), dense)
    assert torch.allclose(dense.sum(-1), torch.ones(1, 2, 30, dtype=dense.dtype))


def test_spectral_metrics_of_a_perturbation():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 20, 20, generator=gen, dtype=torch.float64)
    same, _ = spectral.spectral_metrics(a, a.clone(), (4,), torch.linalg.svd(a))
    assert all(m["spectral_norm_error"] < 1e-12 and m["overlap_left@4"] == pytest.approx(1.0) for m in same)
    noisy = a + 0.3 * torch.rand(2, 20, 20, generator=gen, dtype=torch.float64)
    worse, _ = spectral.spectral_metrics(a, noisy, (4,), torch.linalg.svd(a))
    expected = torch.linalg.matrix_norm(a - noisy, ord=2) / torch.linalg.matrix_norm(a, ord=2)
    assert [m["spectral_norm_error"] for m in worse] == pytest.approx(expected.tolist())


def test_single_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with spectral.single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
