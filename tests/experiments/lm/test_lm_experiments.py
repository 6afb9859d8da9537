"""LM analysis: training/comparison plots, the DSA experiment, visualisation, ablation, profiling."""

import json
import math

import pytest
import torch

from sparse_attention.experiments.lm.compare import (
    COMPARISON_DEFINITIONS,
    comparison_metrics,
    run_dsa_experiment,
)
from sparse_attention.experiments.lm.phases import DSA_PHASES, attention_phases
from sparse_attention.experiments.lm.profile import (
    _models,
    parse_lengths,
    profile_lengths,
    write_profile,
)
from sparse_attention.experiments.lm.sweep import (
    parse_values,
    resolve_key,
    run_ablation,
    run_name,
)
from sparse_attention.experiments.lm.visualize import (
    indexer_head_scores,
    parse_layers,
    restricted_attention,
    selection_mask,
    visualize_run,
)
from sparse_attention.report.lm.plots import (
    plot_performance_comparison,
    plot_training_curves,
    stage_boundaries,
)
from sparse_attention.report.lm.summary import run_summary
from sparse_attention.training.config import apply_overrides, preset
from sparse_attention.training.run_dir import load_model, load_results


def tiny(cache, *extra):
    return apply_overrides(preset("tiny"), ["train.warmup.steps=2", "train.main.steps=4", "train.eval_every=2",
                                            f"data.cache_dir={cache}", *extra])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("dsa")
    metrics = run_dsa_experiment(tiny(cache), out, progress=False)
    return out, metrics


# ---------------------------------------------------------------- experiment dsa


def test_experiment_writes_both_runs_and_the_comparison(experiment):
    out, _ = experiment
    for run in ("dense", "sparse"):
        assert (out / run / "training_results.json").is_file()
        assert (out / run / "training_curves.png").stat().st_size > 0  # drawn by run_dsa_experiment
    names = {p.name for p in (out / "comparison").iterdir()}
    assert {"comparison_metrics.json", "performance_comparison.png", "attention_statistics.png",
            "attention_pattern_layer0.png", "attention_pattern_layer1.png", "indexer_heads_layer0.png",
            "indexer_heads_layer1.png"} <= names


def test_the_dsa_run_starts_from_the_dense_runs_pretraining(tmp_path, cache):
    run_dsa_experiment(tiny(cache, "train.pretrain.steps=2"), tmp_path, progress=False, visualize=False)
    sparse = load_results(tmp_path / "sparse")
    assert sparse["pretrained_from"] == str(tmp_path / "dense" / "pretrain_checkpoint")
    assert not any(r["stage"] == "pretrain" for r in sparse["train_losses"])
    assert load_results(tmp_path / "dense")["pretrained_from"] is None


def test_comparison_metrics_are_the_runs_own_numbers(experiment):
    out, returned = experiment
    metrics = json.loads((out / "comparison" / "comparison_metrics.json").read_text())
    assert set(COMPARISON_DEFINITIONS) <= set(metrics) and metrics["definitions"] == COMPARISON_DEFINITIONS
    dense, sparse = load_results(out / "dense"), load_results(out / "sparse")
    assert [s["name"] for s in dense["stages"]] == ["dense"]
    assert [s["name"] for s in sparse["stages"]] == ["warmup", "sparse"]
    d, s, w = dense["final"]["dense"], sparse["final"]["sparse"], sparse["final"]["warmup"]
    for key in ("val_loss", "val_accuracy", "val_perplexity"):
        assert metrics[f"{key}_dense"] == d[key] and metrics[f"{key}_sparse"] == s[key]
    assert metrics["relative_val_loss_gap"] == pytest.approx((s["val_loss"] - d["val_loss"]) / d["val_loss"])
    assert metrics["recall_after_warmup"] == w["recall"] and metrics["recall_final"] == s["recall"]
    assert metrics["oracle_recall_final"] == s["oracle_recall"]
    assert metrics["indexer_kl_after_warmup"] == w["indexer_kl"] and metrics["indexer_kl_final"] == s["indexer_kl"]
    for key in ("sparsity", "coverage", "mean_distance"):
        assert metrics[key] == s[key]
    # time per step: median of the main stage's evaluation windows; ratio dense / sparse
    windows = [r["time_per_step"] for r in sparse["evals"] if r["stage"] == "sparse"]
    assert len(windows) == 2 and metrics["time_per_step_sparse_s"] == pytest.approx(sum(windows) / 2)
    assert metrics["time_per_step_ratio"] == pytest.approx(
        metrics["time_per_step_dense_s"] / metrics["time_per_step_sparse_s"])
    tokens = 2 * 32  # tiny: batch 2, N 32
    assert metrics["tokens_per_s_sparse"] == pytest.approx(tokens / metrics["time_per_step_sparse_s"])
    assert 0 < metrics["sparsity"] < 1 and 0 < metrics["recall_final"] <= 1
    assert metrics["config"]["dense"]["model"]["attention"] == "dense"
    assert metrics["config"]["sparse"]["model"]["attention"] == "dsa"
    dense_cfg, sparse_cfg = metrics["config"]["dense"], metrics["config"]["sparse"]
    dense_cfg["model"].pop("attention"), sparse_cfg["model"].pop("attention")
    assert dense_cfg == sparse_cfg  # one config, only the attention differs
    for key in ("device", "torch", "threads", "git_sha"):
        assert key in metrics["machine"]
    assert metrics["val_loss_sparse"] == returned["val_loss_sparse"]


def test_resume_skips_finished_runs_and_rejects_another_config(experiment, cache):
    out, first = experiment
    stamp = (out / "sparse" / "training_results.json").stat().st_mtime_ns
    again = run_dsa_experiment(tiny(cache), out, resume=True, progress=False, visualize=False)
    assert (out / "sparse" / "training_results.json").stat().st_mtime_ns == stamp
    assert {k: again[k] for k in COMPARISON_DEFINITIONS} == {k: first[k] for k in COMPARISON_DEFINITIONS}
    with pytest.raises(ValueError, match="another config"):
        run_dsa_experiment(tiny(cache, "model.top_k=4"), out, resume=True, progress=False, visualize=False)


# ---------------------------------------------------------------- plots


def test_plot_functions_write_pngs_also_with_missing_values(experiment, tmp_path):
    out, _ = experiment
    dense, sparse = load_results(out / "dense"), load_results(out / "sparse")
    assert stage_boundaries(sparse) == [(2, "warmup | sparse")] and stage_boundaries(dense) == []
    for results, name in ((dense, "dense.png"), (sparse, "sparse.png")):
        assert plot_training_curves(results, tmp_path / name).stat().st_size > 0
    # timings missing (stored as null) must not break the figures
    broken = json.loads(json.dumps(sparse))
    for record in broken["evals"]:
        record["time_per_step"] = record["tokens_per_s"] = record["peak_memory_mb"] = None
    assert run_summary(broken)["time_per_step_s"] is None
    assert comparison_metrics(dense, broken)["time_per_step_ratio"] is None
    assert plot_training_curves(broken, tmp_path / "broken.png").is_file()
    assert plot_performance_comparison(dense, broken, tmp_path / "sub" / "cmp.png").stat().st_size > 0


# ---------------------------------------------------------------- visualize


def test_visualize_writes_figures_and_statistics_of_the_chosen_layers(experiment, tmp_path):
    out, _ = experiment
    document = visualize_run(out / "sparse", tmp_path, layers="1", sample=3, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "attention_pattern_layer1.png", "attention_statistics.png", "indexer_heads_layer1.png"]
    stats = json.loads((tmp_path / "attention_statistics.json").read_text())
    assert stats["sample"] == 3 and [layer["layer"] for layer in stats["layers"]] == [1]
    layer = stats["layers"][0]
    assert 0 < layer["sparsity"] < 1 and 0 < layer["recall"] <= 1 and layer["mean_distance"] > 0
    assert sum(layer["distance_histogram"]["counts"]) == pytest.approx(layer["edges_per_query"] * 32)
    assert document["layers"] == stats["layers"]


def test_visualize_pieces_match_the_model(experiment):
    out, _ = experiment
    model, config = load_model(out / "sparse")
    captured = {}

    def hook(module, args, output):
        captured["x"] = output  # the attention layer's input

    model.blocks[0].attn_norm.register_forward_hook(hook)
    inputs = torch.randint(config.model.vocab_size, (1, 32))
    with torch.no_grad():
        output = model(inputs, mode="sparse", keep_scores=True)
        heads = indexer_head_scores(model.blocks[0].attn.indexer, captured["x"])
    visible = torch.ones(32, 32).tril().bool()
    scores = output.layers[0].indexer_scores[0]
    assert heads.shape == (config.model.indexer_heads, 32, 32)
    torch.testing.assert_close(heads.sum(0)[visible], scores[visible], rtol=1e-4, atol=1e-6)
    mask = selection_mask(output.layers[0].selection.indices[0, 0], 32)
    assert not (mask & ~visible).any() and (mask.sum(-1) == torch.arange(1, 33).clamp(max=config.model.top_k)).all()
    probs = torch.softmax(torch.randn(2, 32, 32).masked_fill(~visible, float("-inf")), -1)
    restricted = restricted_attention(probs, mask)
    torch.testing.assert_close(restricted.sum(-1), torch.ones(32))
    assert (restricted[~mask] == 0).all()


def test_visualize_errors(experiment, tmp_path):
    out, _ = experiment
    with pytest.raises(ValueError, match="needs a dsa run"):
        visualize_run(out / "dense", tmp_path, progress=False)
    with pytest.raises(ValueError, match="run folder not found"):
        visualize_run(tmp_path / "missing", progress=False)
    with pytest.raises(ValueError, match="layers 0..1"):
        parse_layers("0,2", 2)
    with pytest.raises(ValueError, match="--sample"):
        visualize_run(out / "sparse", tmp_path, sample=-1, progress=False)
    assert parse_layers(None, 3) == [0, 1, 2] and parse_layers("2,0", 3) == [0, 2]


# ---------------------------------------------------------------- ablation


def test_resolve_key_full_short_ambiguous_unknown():
    assert resolve_key("model.indexer_heads") == "model.indexer_heads"
    assert resolve_key("indexer_heads") == "model.indexer_heads"
    assert resolve_key("main.steps") == "train.main.steps"
    with pytest.raises(ValueError, match="ambiguous.*train.warmup.steps.*train.main.steps"):
        resolve_key("steps")
    with pytest.raises(ValueError, match="did you mean.*indexer_heads"):
        resolve_key("indexer_head")
    with pytest.raises(ValueError, match="no such config key"):
        resolve_key("zzzz")


def test_parse_values_errors():
    assert parse_values("2, 4,8") == ["2", "4", "8"]
    with pytest.raises(ValueError, match="at least one value"):
        parse_values(" , ")
    with pytest.raises(ValueError, match="repeats 2"):
        parse_values("2,4,2")
    assert run_name("model.method_params", '{"a": 1}') == "method_params=__a___1_"


def test_ablation_trains_one_run_per_value_and_skips_finished_ones(cache, tmp_path):
    config = tiny(cache, "model.attention=dsa", "train.main.steps=2")
    document = run_ablation(config, "indexer_heads", "1,2", tmp_path, progress=False)
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["key"] == "model.indexer_heads" and saved["values"] == ["1", "2"]
    assert (tmp_path / "ablation.png").is_file()
    for value in ("1", "2"):
        results = load_results(tmp_path / f"indexer_heads={value}")
        assert results["config"]["model"]["indexer_heads"] == int(value)
        row = saved["results"][value]
        final = results["final"]["sparse"]
        assert row["val_loss"] == final["val_loss"] and row["recall"] == final["recall"]
        assert row["trained_now"] is True and row["time_per_step_s"] > 0
    again = run_ablation(config, "model.indexer_heads", ["2"], tmp_path, progress=False)
    assert again["results"]["2"]["trained_now"] is False
    assert again["results"]["2"]["val_loss"] == document["results"]["2"]["val_loss"]
    with pytest.raises(ValueError, match="not a valid model.indexer_heads"):
        run_ablation(config, "indexer_heads", "0", tmp_path, progress=False)


# ---------------------------------------------------------------- profile


def test_profile_models_share_weights():
    config = preset("tiny")
    dense_config, dense, sparse_config, sparse = _models(config, 16, 4, 256, 1)
    assert dense_config.model.attention == "dense" and sparse_config.model.attention == "dsa"
    assert sparse_config.model.top_k == 4 and sparse_config.train.seq_len == 16
    shared = dense.state_dict()
    for name, value in sparse.state_dict().items():
        assert (".indexer." in name) != (name in shared)
        if name in shared:
            assert torch.equal(value, shared[name])


def test_profile_rows_and_files(tmp_path):
    document = profile_lengths(preset("tiny"), [16, 32], batch_size=1, repeats=2, top_k_fraction=0.25, progress=False)
    assert [r["seq_len"] for r in document["rows"]] == [16, 32] and [r["top_k"] for r in document["rows"]] == [4, 8]
    for row in document["rows"]:
        for key in ("dense_train_ms", "dsa_train_ms", "dense_forward_ms", "dsa_forward_ms", "train_time_ratio",
                    "forward_time_ratio"):
            assert row[key] > 0 and math.isfinite(row[key])
        assert row["train_time_ratio"] == pytest.approx(row["dense_train_ms"] / row["dsa_train_ms"])
        assert len(row["samples_ms"]["train"]["dense"]) == 2 and row["backend"]
        # DSA also keeps its selection but not the indexer's activations (its gradients are taken at once):
        # at this size the two come out within a few percent, either way round.
        assert row["dsa_train_saved_mb"] == pytest.approx(row["dense_train_saved_mb"], rel=0.2)
        assert row["dense_train_saved_mb"] > 0
        if document["settings"]["memory_unavailable"] is None:  # measured in a fresh process
            assert all(row[f"{m}_{s}_peak_mb"] > 0 for m in ("dense", "dsa") for s in ("train", "forward"))
        split = row["phases"]
        assert set(split["train_ms"]) == {"dense_attention", *DSA_PHASES}
        assert set(split["forward_ms"]) == {"dense_attention", *DSA_PHASES} - {"indexer_kl"}
        assert all(value > 0 for value in split["train_ms"].values())
        assert split["dsa_train_ms"] == pytest.approx(sum(split["train_ms"][name] for name in DSA_PHASES))
        layers = preset("tiny").model.n_layers
        assert split["rest_train_ms"]["dsa"] == pytest.approx(row["dsa_train_ms"] - layers * split["dsa_train_ms"])
    assert "fresh process" in document["settings"]["memory"]
    json_path, png = write_profile(document, tmp_path / "p" / "profile.json")
    assert json.loads(json_path.read_text())["rows"][0]["seq_len"] == 16 and png.stat().st_size > 0
    assert "phases" not in profile_lengths(preset("tiny"), [16], batch_size=1, repeats=1, phases=False,
                                           progress=False)["rows"][0]


def test_attention_phases_count_the_flops_of_each_phase():
    model = preset("tiny").model
    n, top_k = 24, 5
    split = attention_phases(model, n, top_k, batch_size=2, repeats=1)
    h, d, h_i, d_i = model.n_heads, model.head_dim, model.indexer_heads, model.indexer_head_dim
    causal_pairs = n * (n + 1) // 2
    sparse_pairs = sum(min(top_k, i + 1) for i in range(n))  # every causal row holds min(K, i + 1) keys
    assert (split["dense_pairs"], split["sparse_pairs"]) == (causal_pairs, sparse_pairs)
    gflop = split["train_gflop"]
    assert gflop["dense_attention"] * 1e9 == pytest.approx(2 * h * causal_pairs * 14 * d)
    assert gflop["sparse_attention"] * 1e9 == pytest.approx(2 * h * sparse_pairs * 14 * d)
    assert split["forward_gflop"]["sparse_attention"] * 1e9 == pytest.approx(2 * h * sparse_pairs * 4 * d)
    # The attention's own products when the KL computes its target; none when the attention gathered it.
    target_products = 2 * d * h if split["kl_target"] == "computed by the KL" else 0
    assert gflop["indexer_kl"] * 1e9 == pytest.approx(2 * sparse_pairs * (target_products + 6 * d_i * h_i))
    # The dsa method's own cost model: H_I (2 D_I + 3) + 1 FLOPs per causal pair, plus the index writes.
    assert gflop["selection"] * 1e9 == pytest.approx(2 * causal_pairs * (h_i * (2 * d_i + 3) + 1))
    dsa = sum(gflop[name] for name in DSA_PHASES)
    assert split["flop_bound_train"] == pytest.approx(gflop["dense_attention"] / dsa)


def test_attention_phases_in_bfloat16_run_the_attention_in_bfloat16():
    split = attention_phases(preset("tiny").model, 24, 5, repeats=1, dtype="bfloat16")
    assert (split["dtype"], split["attention_dtype"]) == ("bfloat16", "bfloat16")
    assert all(ms > 0 for ms in split["train_ms"].values())
    assert attention_phases(preset("tiny").model, 24, 5, repeats=1)["attention_dtype"] == "float32"
    with pytest.raises(ValueError, match="dtype must be"):
        attention_phases(preset("tiny").model, 24, 5, repeats=1, dtype="float16")


def test_profile_ops_compare_the_operators_of_the_two_steps():
    from sparse_attention.experiments.lm.op_times import op_times
    from sparse_attention.report.lm.table import op_table

    a, b = torch.randn(64, 64), torch.randn(64, 64)
    rows = op_times({"dense": lambda: a @ b, "dsa": lambda: torch.relu(a)}, top=None)
    by_op = {r["op"]: r for r in rows}
    assert by_op["aten::mm"]["dense_ms"] > 0 and by_op["aten::mm"]["dsa_ms"] == 0
    assert by_op["aten::relu"]["dsa_ms"] > 0 and by_op["aten::relu"]["dense_ms"] == 0
    diffs = [abs(r["dsa_ms"] - r["dense_ms"]) for r in rows]
    assert diffs == sorted(diffs, reverse=True)
    doc = profile_lengths(preset("tiny"), [16], batch_size=1, repeats=1, phases=False, ops=True, progress=False)
    ops = doc["rows"][0]["ops"]
    assert 0 < len(ops) <= 25 and all({"op", "dense_ms", "dsa_ms"} <= set(r) for r in ops)
    assert "Operators of one training step at N = 16" in op_table(doc)


def test_profile_errors():
    with pytest.raises(ValueError, match="positive"):
        parse_lengths("128,0")
    with pytest.raises(ValueError, match="at least one"):
        parse_lengths("")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_lengths("12a")
    with pytest.raises(ValueError, match="--top-k-fraction"):
        profile_lengths(preset("tiny"), [16], top_k_fraction=1.5, progress=False)
    with pytest.raises(ValueError, match="--repeats"):
        profile_lengths(preset("tiny"), [16], repeats=0, progress=False)
