"""A tiny run of every step of the head-approximation study: structure, the claims it must hold,
and a report that follows the JSON."""

import copy
import json
import math

import pytest
import torch

from sparse_attention.cli.main import main
from sparse_attention.experiments.head_approx.study import HeadApproxConfig, Study
from sparse_attention.report.head_approx import plots, render

TINY = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, seq_len=64, teacher_steps=60, batch_size=4,
            tokenizer="bytes", max_chars=200_000, train_sequences=8, val_sequences=4, shard_size=4,
            k_values=(4, 16), fit_steps=80, indexer_steps=10, hidden=32, max_rows=2048,
            flop_widths=(128, 512), flop_lengths=(64, 1024, 16384), runtime_widths=(64,), runtime_lengths=(64, 128),
            runtime_top_k=8, runtime_repeats=1)


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("head_approx")
    results = Study(HeadApproxConfig(**TINY), out).run()
    return out, results


def test_every_step_is_recorded(study):
    out, results = study
    assert set(results["steps"]) == {"teacher", "signals", "heads", "replacement", "flops", "runtime"}
    assert (out / "results.json").exists() and json.loads((out / "results.json").read_text())["steps"]
    assert math.isfinite(results["steps"]["teacher"]["val_loss"])
    shards = sorted((out / "signals" / "train" / "layer0").glob("*.safetensors"))
    assert len(shards) == 2  # 8 sequences in shards of 4: bounded memory


def test_an_mlp_head_beats_a_constant_predictor(study):
    rows = study[1]["steps"]["heads"]["rows"]
    assert {r["variant"] for r in rows} == {"seed", "topk+softmax", "topk+mlp", "dsa+softmax", "dsa+mlp"}
    mlp = [r for r in rows if r["variant"] == "topk+mlp" and r["top_k"] == 16]
    assert len(mlp) == 4  # 2 layers x 2 heads
    # Normalised error: the constant predictor (the mean training output) scores 1 on every head.
    assert all(r["constant_norm_error"] == pytest.approx(1.0, abs=0.2) for r in mlp)
    fitted = [r["val_norm_error"] for r in rows if r["variant"] == "topk+mlp"]
    constant = [r["constant_norm_error"] for r in rows if r["variant"] == "topk+mlp"]
    assert sum(fitted) / len(fitted) < 0.95 * sum(constant) / len(constant)
    exact = [r for r in rows if r["variant"] == "topk+softmax" and r["top_k"] == 16]
    assert all(0 <= r["top1_recall"] <= 1 for r in exact)


def test_replaced_models_have_finite_losses(study):
    rows = study[1]["steps"]["replacement"]["rows"]
    teacher = next(r for r in rows if r["scope"] == "teacher")
    assert math.isfinite(teacher["loss"]) and teacher["delta_loss"] == 0
    replaced = [r for r in rows if r["scope"] != "teacher"]
    assert {r["heads_replaced"] for r in replaced} == {1, 2, 4}
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["perplexity"]) for r in replaced)


def test_runtime_rows_and_crossovers(study):
    runtime = study[1]["steps"]["runtime"]
    assert len(runtime["rows"]) == 2 and all(r["dense_ms"] > 0 for r in runtime["rows"])
    assert set(runtime["measured_crossover"]) == set(runtime["predicted_crossover"])


def test_report_follows_the_json(study, tmp_path):
    results = study[1]
    text = render(results, plots(results, tmp_path))
    for heading in ("## Teacher", "## Per-head error", "## Replacement in the model", "## FLOP model", "## Runtime"):
        assert heading in text
    assert "1.0M / 5.8M (0.18x)" in text and "2147.5M / 218.1M (9.85x)" in text  # the seed's own table
    changed = copy.deepcopy(results)
    changed["steps"]["replacement"]["rows"][0]["loss"] = 123.4567
    assert "123.4567" in render(changed) and "123.4567" not in text
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["flops.png", "quality.png", "runtime.png"]


def test_resume_keeps_steps_and_cli_renders(study, capsys):
    out, results = study
    again = Study(HeadApproxConfig(**TINY), out).run(resume=True)
    assert again["steps"]["heads"] == results["steps"]["heads"]
    flops_only = Study(HeadApproxConfig(**TINY, steps=("flops",)), out).run(resume=True)  # other steps kept
    assert flops_only["steps"]["runtime"] == results["steps"]["runtime"]
    assert main(["head-approx", "--report", str(out / "results.json")]) == 0
    assert (out / "report.md").exists() and (out / "flops.png").exists()
    with pytest.raises(ValueError, match="another configuration"):
        Study(HeadApproxConfig(**{**TINY, "hidden": 16}), out).run(resume=True)


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="variants"):
        HeadApproxConfig(variants=("magic",))
    with pytest.raises(ValueError, match="k_values"):
        HeadApproxConfig(k_values=())
    with pytest.raises(ValueError, match="n_heads"):
        HeadApproxConfig(n_heads=3, n_kv_heads=2)
    torch.manual_seed(0)
