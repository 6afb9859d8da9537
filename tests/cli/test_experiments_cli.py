"""Smoke runs of `experiments`, `plot` and `report` on a tiny configuration."""

import json

import pytest

from sparse_attention.cli.main import main
from sparse_attention.experiments.attention.suite import EXPERIMENTS
from sparse_attention.report.readme import BEGIN, END

TINY = ["--quick", "--lengths", "64", "96", "--budget", "16", "--methods", "dense", "local", "topk"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    assert main(["experiments", *TINY, "--output-dir", str(out)]) == 0
    return out


def test_suite_writes_results_report_and_every_plot(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["experiments"]) == set(EXPERIMENTS)
    for key in ("device", "torch", "threads", "git_sha"):
        assert key in results["machine"]
    assert results["config"]["seed"] == 0 and results["config"]["quick"] is True
    report = (run_dir / "report.md").read_text()
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    assert len(pngs) >= len(EXPERIMENTS)
    for png in pngs:
        assert f"]({png})" in report


def test_plot_regenerates_from_json_alone(run_dir, tmp_path):
    assert main(["plot", str(run_dir / "results.json"), "--output-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name for p in run_dir.glob("*.png"))


def test_report_updates_readme_block(run_dir, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{BEGIN}\n{END}\n")
    assert main(["report", str(run_dir / "results.json"), "--readme", str(readme)]) == 0
    assert "### Needle retrieval" in readme.read_text()


def test_resume_keeps_finished_experiments(run_dir, capsys):
    before = json.loads((run_dir / "results.json").read_text())
    assert main(["experiments", *TINY, "--output-dir", str(run_dir), "--resume", "--only", "needle"]) == 0
    after = json.loads((run_dir / "results.json").read_text())
    assert after["experiments"]["needle"] == before["experiments"]["needle"]
    assert "kept from the previous run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["experiments", "--device", "npu"], "MindSpore"),
    (["experiments", "--methods", "magic"], "unknown"),
    (["experiments", "--lengths", "8"], "lengths"),
    (["plot", "/nonexistent/results.json"], "not found"),
    (["experiments", "--long", "--quick"], "--long"),
    (["experiments", "--head-layouts", "4:3"], "head_layouts"),
])
def test_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_long_mode_runs_scalability_alone_in_both_layouts(tmp_path, monkeypatch):
    from sparse_attention.experiments.attention import suite

    seen = {}

    def fake_run_suite(config, out, **kwargs):
        seen["config"] = config
        return {"config": config.to_dict(), "experiments": {}, "runtime_s": {"total": 0.0}}

    monkeypatch.setattr(suite, "run_suite", fake_run_suite)
    assert main(["suite", "--long", "--output-dir", str(tmp_path)]) == 0
    config = seen["config"]
    assert config.experiments == ("scalability",) and config.lengths == (8192, 16384, 32768)
    assert config.layouts() == [(4, 2), (4, 1)]
    assert main(["suite", "--long", "--lengths", "4096", "--head-layouts", "8:1", "--output-dir", str(tmp_path)]) == 0
    assert seen["config"].lengths == (4096,) and seen["config"].layouts() == [(8, 1)]
