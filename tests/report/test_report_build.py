"""The report is generated from the JSON: a changed value changes the report."""

import copy

import pytest

from sparse_attention.experiments.attention import needle, sparsity
from sparse_attention.experiments.attention.context import RunContext, SuiteConfig
from sparse_attention.report import render_report, write_plots
from sparse_attention.report.readme import BEGIN, END, update_readme


@pytest.fixture(scope="module")
def results():
    config = SuiteConfig(lengths=(64, 96), budget=16, methods=("dense", "local"), heads=2, kv_heads=1, head_dim=16)
    ctx = RunContext(config)
    return {"config": config.to_dict(), "machine": {"device": "cpu"}, "runtime_s": {"total": 1.0},
            "experiments": {"needle": needle.run(ctx), "sparsity": sparsity.run(ctx)}}


def test_changed_json_value_changes_the_report(results):
    before = render_report(results)
    changed = copy.deepcopy(results)
    changed["experiments"]["sparsity"]["rows"][0]["edges_per_query"] = 12345.5
    changed["experiments"]["needle"]["rows"][0]["cosine"] = 0.123456
    after = render_report(changed)
    assert "12345.5" in after and "12345.5" not in before
    assert "0.123" in after


def test_plots_are_written(results, tmp_path):
    files = write_plots(results, tmp_path)
    assert files["needle"] == ["needle.png"] and files["sparsity"] == ["sparsity.png"]
    assert all((tmp_path / f).stat().st_size > 1000 for names in files.values() for f in names)


def test_readme_block_is_replaced(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    (tmp_path / "res").mkdir()
    update_readme(readme, render_report(results, {"needle": ["needle.png"]}), tmp_path / "res")
    text = readme.read_text()
    assert "old" not in text and "intro" in text and "outro" in text
    assert "## Needle retrieval" in text and "](res/needle.png)" in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no generated block"):
        update_readme(readme, "x", tmp_path)


def test_an_experiment_without_a_report_section_is_a_clear_error():
    with pytest.raises(ValueError, match="without a report section: add report/nonexistent.py"):
        render_report({"experiments": {"nonexistent": {}}})
