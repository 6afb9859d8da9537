"""Needle retrieval invariants on a tiny configuration."""

import pytest

from sparse_attention.experiments.attention import needle
from sparse_attention.experiments.attention.context import RunContext, SuiteConfig


@pytest.fixture(scope="module")
def section():
    config = SuiteConfig(lengths=(96, 160), budget=16, methods=("dense", "local", "topk"), heads=2, kv_heads=1,
                         head_dim=16)
    return needle.run(RunContext(config))


def _row(section, construction, n, method, depth_class):
    return next(r for r in section["rows"] if (r["construction"], r["n"], r["method"], r["depth_class"]) ==
                (construction, n, method, depth_class))


def test_dense_always_selects_and_seed_needle_is_found(section):
    for n in (96, 160):
        for depth in ("beyond_window", "inside_window"):
            dense = _row(section, "seed", n, "dense", depth)
            assert dense["selected_rate"] == 1.0 and dense["cosine"] > 0.99


def test_local_misses_needle_beyond_window_and_finds_it_inside(section):
    for construction in ("seed", "fair"):
        for n in (96, 160):
            assert _row(section, construction, n, "local", "beyond_window")["selected_rate"] == 0.0
            assert _row(section, construction, n, "local", "inside_window")["selected_rate"] == 1.0


def test_topk_with_budget_finds_the_seed_needle(section):
    assert all(_row(section, "seed", n, "topk", d)["selected_rate"] == 1.0
               for n in (96, 160) for d in ("beyond_window", "inside_window"))


def test_values_in_range(section):
    for r in section["rows"]:
        assert -1.0 <= r["cosine"] <= 1.0 and 0.0 <= r["selected_rate"] <= 1.0 and r["trials"] > 0


def test_positions_are_inside_and_beyond_the_window():
    placed = needle.needle_positions(1000, 100)
    assert all(p < 1000 - 100 for p, c in placed if c == "beyond_window")
    inside = [p for p, c in placed if c == "inside_window"]
    assert inside and all(999 - p < 100 for p in inside)


def test_bad_construction():
    with pytest.raises(ValueError, match="construction"):
        needle.make_needle_batch("easy", 64, [3], 2, 1, 8, seed=0)
