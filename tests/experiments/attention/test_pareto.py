"""Pareto experiment invariants on a tiny configuration."""

import json

import pytest

from sparse_attention.experiments.attention import pareto
from sparse_attention.experiments.attention.context import (
    RunContext,
    SuiteConfig,
    all_methods,
)


@pytest.fixture(scope="module")
def config():
    return SuiteConfig(lengths=(64, 128), budget=16, heads=2, kv_heads=1, head_dim=16)


@pytest.fixture(scope="module")
def section(config):
    return pareto.run(RunContext(config))


def test_every_method_with_its_default_and_several_settings(section, config):
    assert section["settings"]["n"] == max(config.lengths)
    methods = [r["method"] for r in section["rows"]]
    assert set(methods) == set(all_methods())
    for method in all_methods():
        mine = [r for r in section["rows"] if r["method"] == method]
        assert sum(r["is_default"] for r in mine) == 1
        assert len(mine) >= (1 if method == "dense" else 2)
        assert len({json.dumps(r["params"], sort_keys=True) for r in mine}) == len(mine)  # no repeated setting
    json.dumps(section)


def test_dense_is_the_reference(section):
    dense = next(r for r in section["rows"] if r["method"] == "dense")
    assert dense["recall"] == pytest.approx(1.0) and dense["cosine"] == pytest.approx(1.0)
    assert dense["time_ratio"] == 1.0 and dense["flops_ratio"] == 1.0 and dense["selection_flops"] == 0
    assert dense["flops"] == section["dense"]["flops"] and dense["backend"] == "sdpa"


def test_costs_and_quality_in_range(section):
    for r in section["rows"]:
        assert 0 <= r["recall"] <= 1 + 1e-6 and -1 <= r["cosine"] <= 1 + 1e-6
        assert r["total_ms"] == pytest.approx(r["select_ms"] + r["kernel_ms"]) and r["kernel_ms"] > 0
        assert r["flops"] == pytest.approx(r["selection_flops"] + r["attention_flops"]) and r["attention_flops"] > 0
        if r["method"] == "local":
            assert r["selection_flops"] == 0
        elif r["method"] != "dense":
            assert r["selection_flops"] > 0 and r["select_ms"] > 0


def test_exact_topk_recalls_most_at_equal_budget(section):
    # Top-k of q.k keeps the largest probabilities of each row: no K-key selection recalls more mass.
    def at(method, key, budget):
        return next(r for r in section["rows"] if r["method"] == method and r["params"][key] == budget)

    for budget in {r["params"]["top_k"] for r in section["rows"] if r["method"] == "topk"}:
        top = at("topk", "top_k", budget)
        assert top["recall"] >= at("dsa", "top_k", budget)["recall"] - 1e-6
        assert top["recall"] >= at("local", "window", budget)["recall"] - 1e-6
        assert top["edges_per_query"] == at("local", "window", budget)["edges_per_query"]


def test_budgets_follow_the_config(config):
    settings = pareto.pareto_settings(RunContext(config))
    windows = sorted(o["window"] for m, o in settings if m == "local")
    assert config.budget in windows and len(windows) == len(set(windows)) > 1
    assert all(m in config.methods for m, _ in settings)
    few = SuiteConfig(lengths=(64,), budget=16, methods=("local",), heads=2, kv_heads=1, head_dim=16)
    assert {m for m, _ in pareto.pareto_settings(RunContext(few))} == {"dense", "local"}
