"""Scalability and energy report sections: generated from the JSON, plots written."""

import copy

import pytest

from sparse_attention.experiments.attention import energy, scalability
from sparse_attention.experiments.attention.context import RunContext, SuiteConfig
from sparse_attention.report import energy as energy_report
from sparse_attention.report import render_report, write_plots
from sparse_attention.report import scalability as scalability_report


@pytest.fixture(scope="module")
def results():
    config = SuiteConfig(lengths=(64, 128), budget=16, methods=("local", "topk"), heads=2, kv_heads=1, head_dim=16)
    ctx = RunContext(config)
    return {"config": config.to_dict(), "machine": {"device": "cpu"}, "runtime_s": {"total": 1.0},
            "experiments": {"scalability": scalability.run(ctx), "energy": energy.run(ctx)}}


def test_sections_render_every_method_and_length(results):
    text = render_report(results)
    assert "## Scalability" in text and "## Energy proxy" in text and "Horowitz" in text
    for method in ("dense", "local", "topk"):
        assert f"| {method}" in text or f" {method} |" in text
    from sparse_attention.ops import backends

    assert any(b.name in text for b in backends())  # the backend auto chose is reported


def test_changed_json_value_changes_the_tables(results):
    changed = copy.deepcopy(results)
    row = next(r for r in changed["experiments"]["scalability"]["rows"] if r["method"] == "topk")
    row["end_to_end_ms"], row["time_ratio"] = 98765.4, 4321.5
    erow = next(r for r in changed["experiments"]["energy"]["rows"] if r["method"] == "local")
    erow["flops"], erow["flops_ratio"] = 7.654321e12, 0.111
    before, after = render_report(results), render_report(changed)
    assert "98765.4 (4321.50x)" in after and "98765.4" not in before
    assert "7654.321 (0.11x)" in after


def test_summary_sentence_is_computed(results):
    section = copy.deepcopy(results["experiments"]["scalability"])
    n = max(r["n"] for r in section["rows"])
    for r in section["rows"]:
        if r["n"] == n and r["method"] == "local":
            r["time_ratio"] = 0.5
    text = scalability_report.tables(section, results)
    assert "faster than dense there: local" in text and "fastest sparse method end to end is local" in text


def test_missing_memory_is_shown_as_a_dash_and_plots_still_render(results, tmp_path):
    section = copy.deepcopy(results["experiments"]["scalability"])
    section["settings"]["memory_unavailable"] = "no statistics on this platform"
    for r in section["rows"]:
        r["peak_bytes"] = r["dense_peak_bytes"] = r["memory_ratio"] = None
    text = scalability_report.tables(section, results)
    assert "Peak memory unavailable: no statistics on this platform" in text
    assert "| 64 | - | - | - |" in text
    import matplotlib

    matplotlib.use("Agg")
    assert scalability_report.plots(section, tmp_path) == ["scalability.png"]


def test_plots_are_written(results, tmp_path):
    files = write_plots(results, tmp_path)
    assert files["scalability"] == ["scalability.png"] and files["energy"] == ["energy.png"]
    assert all((tmp_path / f).stat().st_size > 1000 for names in files.values() for f in names)
    assert energy_report.plots(results["experiments"]["energy"], tmp_path) == ["energy.png"]


def test_each_head_layout_gets_its_tables_and_plot(results, tmp_path):
    section = copy.deepcopy(results["experiments"]["scalability"])
    other = [{**r, "heads": 2, "kv_heads": 2, "time_ratio": r["time_ratio"] * 0 + 0.25 if r["method"] != "dense"
              else 1.0} for r in section["rows"]]
    section["rows"] += other
    text = scalability_report.tables(section, results)
    assert "### H=2, H_kv=1 (MQA 2:1)" in text and "### H=2, H_kv=2 (MHA 2:2)" in text
    assert "(0.25x)" in text  # the second layout's own numbers
    assert "Peak memory of the selection alone" in text
    import matplotlib

    matplotlib.use("Agg")
    assert scalability_report.plots(section, tmp_path) == ["scalability.png", "scalability_2x2.png"]


def test_results_without_layout_fields_still_render(results):
    section = copy.deepcopy(results["experiments"]["scalability"])
    for r in section["rows"]:
        for key in ("heads", "kv_heads", "selection_peak_bytes", "index_bytes", "selection_memory_ratio"):
            r.pop(key, None)
    text = scalability_report.tables(section, results)
    assert "## Scalability" in text and "###" not in text and "Peak memory of the selection alone" not in text
