"""Spectral, ablation and Pareto report sections: generated from the JSON, frontier logic, plots."""

import copy
import random

import pytest

from sparse_attention.experiments.attention import ablation, pareto, spectral
from sparse_attention.experiments.attention.context import RunContext, SuiteConfig
from sparse_attention.report import pareto as pareto_report
from sparse_attention.report import render_report, write_plots
from sparse_attention.report.spectral import head_means

NAMES = ("spectral", "ablation", "pareto")


@pytest.fixture(scope="module")
def results():
    config = SuiteConfig(lengths=(64, 128), budget=16, methods=("dense", "local", "topk", "ssa"), heads=2,
                         kv_heads=1, head_dim=16)
    ctx = RunContext(config)
    return {"config": config.to_dict(), "machine": {"device": "cpu"}, "runtime_s": {"total": 1.0},
            "experiments": {"spectral": spectral.run(ctx), "ablation": ablation.run(ctx), "pareto": pareto.run(ctx)}}


def test_sections_render(results):
    text = render_report(results)
    for title in ("## Spectral preservation", "## SSA ablation", "## Pareto frontier"):
        assert title in text
    assert "Frontier of output cosine vs dense against time" in text


@pytest.mark.parametrize("name, key", [("spectral", "spectral_norm_error"), ("ablation", "recall"),
                                       ("pareto", "recall")])
def test_changed_json_value_changes_the_report(results, name, key):
    before = render_report(results)
    changed = copy.deepcopy(results)
    rows = changed["experiments"][name]["rows"]
    if name == "spectral":  # the table shows the mean over heads: change every head of one method
        for r in rows:
            if r["method"] == "local" and r["source"] == "clustered":
                r[key] = 0.654321
    else:
        rows[1][key] = 0.654321
    after = render_report(changed)
    assert "0.654" in after and after != before


def test_ablation_marks_the_seed_default(results):
    text = render_report(results).split("## SSA ablation")[1]
    assert text.count("*") >= 3  # once per metric table (recall, cosine, sparsity)


def test_pareto_front_on_constructed_points():
    rows = [{"c": 1.0, "q": 0.5}, {"c": 2.0, "q": 0.4}, {"c": 3.0, "q": 0.9}, {"c": 3.0, "q": 0.9},
            {"c": 0.5, "q": 0.1}]
    # 1 is dominated by 0; the two identical points dominate neither each other nor are dominated.
    assert pareto_report.pareto_front(rows, "c", "q") == [4, 0, 2, 3]


def test_pareto_front_properties_on_random_points():
    gen = random.Random(0)
    rows = [{"c": gen.random(), "q": gen.random()} for _ in range(200)]
    front = pareto_report.pareto_front(rows, "c", "q")
    on = set(front)

    def dominates(a, b):
        return a["c"] <= b["c"] and a["q"] >= b["q"] and (a["c"] < b["c"] or a["q"] > b["q"])

    assert all(not dominates(rows[j], rows[i]) for i in front for j in range(len(rows)))
    assert all(any(dominates(rows[i], rows[j]) for i in front) for j in range(len(rows)) if j not in on)
    qualities = [rows[i]["q"] for i in front]
    assert qualities == sorted(qualities)  # in increasing cost, quality only goes up


def test_cheapest_and_best_settings_are_on_every_frontier(results):
    rows = results["experiments"]["pareto"]["rows"]
    for quality, _ in pareto_report.QUALITIES:
        for cost, _, _ in pareto_report.COSTS:
            front = pareto_report.pareto_front(rows, cost, quality)
            cheapest = min(range(len(rows)), key=lambda i: (rows[i][cost], -rows[i][quality]))
            best = max(range(len(rows)), key=lambda i: (rows[i][quality], -rows[i][cost]))
            assert front[0] == cheapest and best in front


def test_head_means_average_the_heads(results):
    section = results["experiments"]["spectral"]
    rows = [r for r in section["rows"] if r["source"] == "clustered" and r["method"] == "local"]
    mean = next(r for r in head_means(section, "clustered") if r["method"] == "local")
    assert mean["recall"] == pytest.approx(sum(r["recall"] for r in rows) / len(rows))
    assert mean["recall:min"] <= mean["recall"] <= mean["recall:max"]


def test_plots_are_written(results, tmp_path):
    files = write_plots(results, tmp_path)
    for name in NAMES:
        assert files[name] == [f"{name}.png"]
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
