"""Energy proxy on a tiny configuration: counts, the documented energy model, ratios."""

import json

import pytest

from sparse_attention.experiments.attention import energy
from sparse_attention.experiments.attention.context import RunContext, SuiteConfig
from sparse_attention.selection.stats import causal_budget

CONFIG = SuiteConfig(lengths=(64, 128), budget=16, methods=("local", "topk", "dsa", "ssa", "routing", "lsh"),
                     heads=2, kv_heads=1, head_dim=16, seed=1)


@pytest.fixture(scope="module")
def section():
    return energy.run(RunContext(CONFIG))


def test_rows_cover_lengths_and_methods(section):
    lengths = section["settings"]["lengths"]
    assert lengths == [64, 128, 256]  # the suite's lengths plus 2 * max
    assert sorted((r["n"], r["method"]) for r in section["rows"]) == sorted(
        (n, m) for n in lengths for m in CONFIG.methods)
    json.dumps(section)


def test_energy_model_is_the_documented_one(section):
    s = section["settings"]
    assert s["joules_per_flop"] == pytest.approx((s["pj_fp32_add"] + s["pj_fp32_mult"]) / 2 * 1e-12)
    assert s["joules_per_byte"] == pytest.approx(s["pj_dram_read_32bit"] / 4 * 1e-12)
    assert "Horowitz" in s["citation"] and "2014" in s["citation"]
    for r in section["rows"]:
        assert r["energy_j"] == pytest.approx(r["flops"] * s["joules_per_flop"] + r["bytes"] * s["joules_per_byte"])
        assert r["energy_j"] == pytest.approx(r["energy_attention_j"] + r["energy_selection_j"])
        assert 0 < r["energy_min_j"] <= r["energy_j"]


def test_dense_row_and_ratios(section):
    heads, d = CONFIG.heads, CONFIG.head_dim
    dense = {r["n"]: r for r in section["rows"] if r["method"] == "dense"}
    for r in section["rows"]:
        ref = dense[r["n"]]
        assert r["flops_ratio"] == pytest.approx(r["flops"] / ref["flops"])
        assert r["energy_ratio"] == pytest.approx(r["energy_j"] / ref["energy_j"])
        if r["method"] == "dense":
            assert r["flops"] == heads * causal_budget(r["n"], r["n"]) * (4 * d + 5)
            assert r["energy_ratio"] == 1.0 and r["selection_flops"] == 0
        elif r["method"] == "local":
            assert r["selection_flops"] == 0 and r["attention_flops"] < ref["attention_flops"]
        else:
            assert r["selection_flops"] > 0


def test_counts_grow_with_n(section):
    by_method = {}
    for r in section["rows"]:
        by_method.setdefault(r["method"], []).append(r)
    for method, rows in by_method.items():
        rows.sort(key=lambda r: r["n"])
        for key in ("flops", "bytes", "energy_j"):
            values = [r[key] for r in rows]
            assert values == sorted(values) and values[0] < values[-1], (method, key)


def test_energy_lengths_rule():
    assert energy.energy_lengths(SuiteConfig(lengths=(512, 1024, 2048))) == [512, 1024, 2048, 4096]
    assert energy.energy_lengths(SuiteConfig(lengths=(512, 4096))) == [512, 4096]  # 8192 is over the cap
    assert energy.energy_lengths(SuiteConfig(lengths=(512, 1024), quick=False)) == [512, 1024]
