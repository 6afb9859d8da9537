"""Smoke runs of `experiment dsa`, `visualize`, `ablation` and `profile` on the tiny preset, and their errors."""

import json

import pytest

from sparse_attention.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return ["--preset", "tiny", "--set", "train.warmup.steps=2", "--set", "train.main.steps=2",
            "--set", f"data.cache_dir={cache}", "--quiet"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("dsa")
    assert main(["experiment", "dsa", *tiny, "--out", str(out)]) == 0
    return out


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_experiment_dsa_writes_runs_comparison_and_prints_it(experiment, tiny, capsys):
    metrics = json.loads((experiment / "comparison" / "comparison_metrics.json").read_text())
    for run in ("dense", "sparse"):
        results = json.loads((experiment / run / "training_results.json").read_text())
        assert results["config"]["train"]["main"]["steps"] == 2
        assert (experiment / run / "training_curves.png").is_file()
    assert metrics["val_loss_sparse"] == json.loads(
        (experiment / "sparse" / "training_results.json").read_text())["final"]["sparse"]["val_loss"]
    assert (experiment / "comparison" / "performance_comparison.png").is_file()
    assert (experiment / "comparison" / "attention_pattern_layer1.png").is_file()
    # --resume reuses both finished runs and prints the same comparison
    assert main(["experiment", "dsa", *tiny, "--out", str(experiment), "--resume", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"dense {metrics['val_loss_dense']:.4f}" in printed and "recall after warm-up" in printed


def test_visualize_command(experiment, tmp_path, capsys):
    assert main(["visualize", str(experiment / "sparse"), "--out", str(tmp_path), "--layers", "0", "--sample", "1",
                 "--quiet"]) == 0
    assert {p.name for p in tmp_path.glob("*.png")} == {"attention_pattern_layer0.png", "indexer_heads_layer0.png",
                                                         "attention_statistics.png"}
    assert "layer 0: sparsity" in capsys.readouterr().out
    assert main(["visualize", str(experiment / "sparse"), "--quiet"]) == 0  # default: RUN_DIR/visualize, all layers
    assert (experiment / "sparse" / "visualize" / "attention_pattern_layer1.png").is_file()


def test_ablation_command_with_a_short_key(tiny, tmp_path, capsys):
    assert main(["ablation", *tiny, "--attention", "dense", "--vary", "main.steps", "--values", "1,2",
                 "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "ablation.json").read_text())
    assert document["key"] == "train.main.steps" and list(document["results"]) == ["1", "2"]
    assert document["results"]["2"]["steps"] == 2 and document["results"]["1"].get("recall") is None
    assert (tmp_path / "ablation.png").is_file() and (tmp_path / "steps=1" / "training_results.json").is_file()
    assert "val loss" in capsys.readouterr().out


def test_profile_command(tmp_path, capsys):
    path = tmp_path / "prof" / "profile.json"
    assert main(["profile", "--preset", "tiny", "--seq-lengths", "16,32", "--batch-size", "1", "--repeats", "1",
                 "--json", str(path), "--quiet"]) == 0
    document = json.loads(path.read_text())
    assert [r["seq_len"] for r in document["rows"]] == [16, 32]
    assert all(r["dense_train_ms"] > 0 and r["dsa_train_ms"] > 0 and r["train_time_ratio"] > 0
               for r in document["rows"])
    assert (tmp_path / "prof" / "profile.png").is_file()
    assert "dense / dsa" in capsys.readouterr().out


def test_errors_are_one_line(experiment, tiny, tmp_path, capsys):
    assert "at least one value" in _error(capsys, ["ablation", *tiny, "--vary", "top_k", "--values", ",",
                                                   "--out", str(tmp_path)])
    assert "ambiguous" in _error(capsys, ["ablation", *tiny, "--vary", "lr", "--values", "1", "--out", str(tmp_path)])
    assert "no such config key" in _error(capsys, ["ablation", *tiny, "--vary", "nope", "--values", "1"])
    assert "must be positive" in _error(capsys, ["profile", "--preset", "tiny", "--seq-lengths", "16,0",
                                                 "--json", str(tmp_path / "p.json")])
    assert "--top-k-fraction" in _error(capsys, ["profile", "--preset", "tiny", "--seq-lengths", "16",
                                                 "--top-k-fraction", "0", "--json", str(tmp_path / "p.json")])
    assert "run folder not found" in _error(capsys, ["visualize", str(tmp_path / "missing")])
    assert "needs a dsa run" in _error(capsys, ["visualize", str(experiment / "dense")])
    assert "--layers" in _error(capsys, ["visualize", str(experiment / "sparse"), "--layers", "5"])
    assert not (tmp_path / "p.json").exists()


def test_help_strings(capsys):
    for argv in (["experiment", "dsa", "--help"], ["visualize", "--help"], ["ablation", "--help"],
                 ["profile", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "--" in capsys.readouterr().out
