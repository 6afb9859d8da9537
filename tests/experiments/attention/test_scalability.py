"""Scalability experiment on a tiny configuration: structure, ratios, backends, memory."""

import json

import pytest

from sparse_attention.experiments.attention import scalability
from sparse_attention.experiments.attention.context import RunContext, SuiteConfig
from sparse_attention.ops.attention import backends
from sparse_attention.utils.memory import peak_memory_unavailable

CONFIG = SuiteConfig(lengths=(64, 128), budget=16, methods=("local", "topk", "ssa"), heads=2, kv_heads=1,
                     head_dim=16, seed=3)


@pytest.fixture(scope="module")
def section():
    seen = []
    result = scalability.run(RunContext(CONFIG, progress=lambda items, desc: seen.append(desc) or items))
    assert seen == ["scalability"]
    return result


def test_one_row_per_length_and_method(section):
    keys = [(r["n"], r["method"]) for r in section["rows"]]
    assert sorted(keys) == sorted((n, m) for n in CONFIG.lengths for m in CONFIG.methods)
    json.dumps(section)  # JSON-serialisable as stored in results.json


def test_dense_is_the_reference(section):
    for r in section["rows"]:
        if r["method"] == "dense":
            assert r["time_ratio"] == 1.0 and r["backend"] == "sdpa" and r["selection_ms"] is None
            assert r["end_to_end_ms"] == r["dense_ms"] > 0


def test_sparse_rows_are_consistent(section):
    names = {b.name for b in backends()}
    for r in section["rows"]:
        if r["method"] == "dense":
            continue
        assert r["backend"] in names
        assert r["selection_ms"] > 0 and r["kernel_ms"] > 0 and r["dense_ms"] > 0
        # With the phase split inside each call, medians of 2 rounds (= means) add up exactly.
        assert r["end_to_end_ms"] == pytest.approx(r["selection_ms"] + r["kernel_ms"])
        assert r["time_ratio"] == pytest.approx(r["end_to_end_ms"] / r["dense_ms"])
        assert r["kernel_ratio"] == pytest.approx(r["kernel_ms"] / r["dense_ms"])
        assert r["repeats"] == scalability.QUICK_REPEATS
        assert 1 <= r["slots"] <= r["n"]


def test_memory_measured_or_explained(section):
    reason = section["settings"]["memory_unavailable"]
    assert reason == peak_memory_unavailable(CONFIG.device)
    for r in section["rows"]:
        if reason is None:
            assert isinstance(r["peak_bytes"], int) and r["peak_bytes"] >= 0
            assert r["memory_ratio"] == pytest.approx(r["peak_bytes"] / r["dense_peak_bytes"]) \
                if r["dense_peak_bytes"] else r["memory_ratio"] is None
        else:
            assert r["peak_bytes"] is None and r["memory_ratio"] is None


def test_settings_document_the_run(section):
    s = section["settings"]
    assert s["backend_request"] == "auto" and s["repeats"] == scalability.QUICK_REPEATS
    assert set(s["methods"]) == set(CONFIG.methods) and s["methods"]["local"] == {"window": 16}
    assert (s["heads"], s["kv_heads"], s["head_dim"]) == (2, 1, 16)


def test_measure_length_with_dense_only():
    import torch

    q, k, v = torch.randn(1, 2, 32, 8), torch.randn(1, 1, 32, 8), torch.randn(1, 1, 32, 8)
    rows = scalability.measure_length(q, k, v, ["dense"], {"dense": {}}, 3, "cpu")
    assert len(rows) == 1 and rows[0]["repeats"] == 3 and rows[0]["time_ratio"] == 1.0


def test_selection_memory_is_measured_next_to_its_index_tensor(section):
    reason = section["settings"]["memory_unavailable"]
    for r in section["rows"]:
        if r["method"] == "dense":
            assert "selection_peak_bytes" not in r
            continue
        assert r["index_bytes"] >= r["n"] * 8  # int64, at least one slot per query
        if reason is None:
            assert isinstance(r["selection_peak_bytes"], int)
            assert r["selection_memory_ratio"] == pytest.approx(r["selection_peak_bytes"] / r["index_bytes"])
        else:
            assert r["selection_peak_bytes"] is None and r["selection_memory_ratio"] is None


def test_head_layouts_are_measured_in_turn():
    cfg = SuiteConfig(lengths=(32,), budget=8, methods=("local", "lsh"), head_dim=8, head_layouts=("2:1", "2:2"))
    result = scalability.run(RunContext(cfg))
    keys = {(r["heads"], r["kv_heads"], r["method"]) for r in result["rows"]}
    assert keys == {(h, h_kv, m) for h, h_kv in ((2, 1), (2, 2)) for m in ("dense", "local", "lsh")}
    assert result["settings"]["head_layouts"] == [[2, 1], [2, 2]]
    assert (result["settings"]["heads"], result["settings"]["kv_heads"]) == (2, 1)


@pytest.mark.parametrize("layout", ["4", "4:3", "0:1", "a:b", "4:2:1"])
def test_bad_head_layouts_are_clear_errors(layout):
    with pytest.raises(ValueError, match="head_layouts"):
        SuiteConfig(head_layouts=(layout,))
