"""Training harness: the DSA recipe's gradient rules, resume, DDP and config errors (tiny preset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sparse_attention.models.decoder import SparseLM
from sparse_attention.training.config import apply_overrides, preset
from sparse_attention.data.lm import load_data
from sparse_attention.training.trainer import Trainer, plan_stages, train


def tiny_config(tmp_path, attention="dsa", *extra):
    return apply_overrides(preset("tiny", attention), [f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}",
                                                       *extra])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("data"))
    return load_data(config.data, config.train.seq_len, seed=config.train.seed)


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_stages_follow_the_recipe(tmp_path):
    assert [s.name for s in plan_stages(tiny_config(tmp_path))] == ["warmup", "sparse"]
    assert [s.name for s in plan_stages(tiny_config(tmp_path, "dense"))] == ["dense"]
    assert [s.name for s in plan_stages(tiny_config(tmp_path, "topk"))] == ["sparse"]
    with_pretrain = tiny_config(tmp_path, "dsa", "train.pretrain.steps=3")
    assert [(s.name, s.mode) for s in plan_stages(with_pretrain)] == [
        ("pretrain", "dense"), ("warmup", "warmup"), ("sparse", "sparse")]


def test_warmup_changes_only_indexer_weights(tmp_path, tiny_data):
    config = tiny_config(tmp_path, "dsa", "train.warmup.steps=2")
    trainer = Trainer(config, tmp_path / "run", progress=False, data=tiny_data)
    before = snapshot(trainer.model)
    trainer.run(stop_after=2)  # exactly the warm-up stage
    trainer.close()
    indexer = {name for name, _ in trainer.model.named_parameters() if ".indexer." in name}
    assert indexer
    for name, p in trainer.model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == (name in indexer), name


def test_sparse_stage_separates_lm_loss_and_indexer_kl(tiny_data):
    config = preset("tiny", "dsa")
    config.model.vocab_size = tiny_data.vocab_size
    model = SparseLM(config.model)
    inputs, targets = tiny_data.train_batch(0, 2)
    indexer = {id(p) for p in model.indexer_parameters()}

    out = model(inputs, targets, mode="sparse")
    out.loss.backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in model.indexer_parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.parameters() if id(p) not in indexer)

    model.zero_grad(set_to_none=True)
    out.indexer_loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters() if id(p) not in indexer)
    assert all(p.grad is not None and p.grad.any() for p in model.indexer_parameters())


def test_dense_and_dsa_models_share_initial_weights():
    config = preset("tiny", "dsa")
    config.model.vocab_size = 256
    dense_config = preset("tiny", "dense")
    dense_config.model.vocab_size = 256
    dsa, dense = SparseLM(config.model, seed=3), SparseLM(dense_config.model, seed=3)
    dense_params = dict(dense.named_parameters())
    for name, p in dsa.named_parameters():
        if ".indexer." not in name:
            assert torch.equal(p, dense_params[name]), name


def test_resume_reproduces_the_uninterrupted_losses(tmp_path, tiny_data):
    extra = ("train.warmup.steps=3", "train.main.steps=4", "train.checkpoint_every=2", "train.eval_every=3")
    full = train(tiny_config(tmp_path, "dsa", *extra), tmp_path / "full", progress=False, data=tiny_data)
    # A hard stop after 6 steps: the last checkpoint is at sparse step 2 (position 5), so step 6
    # was logged, is dropped from metrics.jsonl on resume and is trained again.
    config = tiny_config(tmp_path, "dsa", *extra)
    assert train(config, tmp_path / "cut", progress=False, data=tiny_data, stop_after=6) is None
    resumed = train(tiny_config(tmp_path, "dsa", *extra), tmp_path / "cut", resume=True, progress=False,
                    data=tiny_data)
    assert [r["loss"] for r in resumed["train_losses"]] == [r["loss"] for r in full["train_losses"]]
    assert [r["position"] for r in resumed["train_losses"]] == list(range(1, 8))
    assert resumed["final_eval"]["val_loss"] == full["final_eval"]["val_loss"]


def test_resume_refuses_a_changed_config(tmp_path, tiny_data):
    train(tiny_config(tmp_path, "dense", "train.checkpoint_every=1"), tmp_path / "run", progress=False,
          data=tiny_data, stop_after=1)
    with pytest.raises(ValueError, match=r"config differs .* in train\.main\.lr: 0\.003 -> 0\.1\. Only"):
        train(tiny_config(tmp_path, "dense", "train.checkpoint_every=1", "train.main.lr=0.1"), tmp_path / "run",
              resume=True,
              progress=False, data=tiny_data)
    with pytest.raises(ValueError, match=r"train\.main\.steps: 3 -> 2"):  # a schedule may grow, not shrink
        train(tiny_config(tmp_path, "dense", "train.checkpoint_every=1", "train.main.steps=2"), tmp_path / "run",
              resume=True, progress=False, data=tiny_data)
    with pytest.raises(ValueError, match="no checkpoint"):
        train(tiny_config(tmp_path, "dense"), tmp_path / "empty", resume=True, progress=False, data=tiny_data)


def test_a_finished_run_extends_with_more_main_steps(tmp_path, tiny_data):
    # Training 3 steps, then resuming the finished run with train.main.steps=5, trains steps 4-5
    # from the saved weights and optimizer moments; a run trained for 5 steps from the start with
    # the same schedule after step 3 is not the reference (its cosine schedule differs), so the
    # check is on what must hold: the first 3 losses kept, 2 more, a new results file and config.
    short = train(tiny_config(tmp_path, "dense"), tmp_path / "run", progress=False, data=tiny_data)
    longer = train(tiny_config(tmp_path, "dense", "train.main.steps=5"), tmp_path / "run", resume=True,
                   progress=False, data=tiny_data)
    losses = [r["loss"] for r in longer["train_losses"]]
    assert losses[:3] == [r["loss"] for r in short["train_losses"]] and len(losses) == 5
    assert longer["final_eval"]["step"] == 5
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["main"]["steps"] == 5


def test_eval_lines_use_significant_digits():
    from sparse_attention.training.trainer import _format_eval

    line = _format_eval({"stage": "warmup", "step": 2, "val_loss": 3.2e-5, "val_accuracy": 0.5, "val_perplexity": 1.0,
                         "time_per_step": 0.01, "indexer_kl": 4.2e-5})
    assert "val loss 3.2e-05" in line and "KL 4.2e-05" in line


def test_run_folder_holds_results_metrics_and_weights(tmp_path, tiny_data):
    config = tiny_config(tmp_path, "dsa")
    before = config.to_dict()
    results = train(config, tmp_path / "run", progress=False, data=tiny_data)
    assert config.to_dict() == before  # the trainer works on a copy (vocab_size is set there)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "training_results.json"):
        assert (run / name).exists(), name
    assert not list(run.glob("*.png"))  # the trainer writes JSON and draws nothing (callers plot)
    assert set(results["final"]) == {"warmup", "sparse"}
    sparse = results["final"]["sparse"]
    for key in ("val_loss", "val_accuracy", "val_perplexity", "time_per_step", "tokens_per_s", "sparsity",
                "recall", "indexer_kl", "coverage", "mean_distance"):
        assert key in sparse, key
    assert 0.0 <= sparse["recall"] <= 1.0 and 0.0 <= sparse["sparsity"] <= 1.0
    assert sparse["val_perplexity"] == pytest.approx(torch.tensor(sparse["val_loss"]).exp().item(), rel=1e-6)


def test_ddp_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cache = json.dumps(str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "sparse_attention", "train",
           "--preset", "tiny", "--attention", "dsa", "--quiet", "--out", str(tmp_path / "ddp"),
           "--set", f"data.cache_dir={cache}", "--set", "train.warmup.steps=1", "--set", "train.main.steps=1",
           "--set", "train.device=cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "ddp" / "training_results.json").read_text())
    assert results["world_size"] == 2
    assert len(results["train_losses"]) == 2


@pytest.mark.parametrize("override, message", [
    ("model.n_heads=3", "n_heads"),
    ("model.expert_top_k=9", "expert_top_k"),
    ("train.batch_size=0", "batch_size"),
    ("train.dtype=\"float8\"", "dtype"),
    ("train.device=\"tpu\"", "device"),
    ("data.tokenizer=\"words\"", "tokenizer"),
    ("model.attention=\"nope\"", "nope"),
    ("train.nope=1", "nope"),
])
def test_bad_config_values_name_the_field(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, "dsa", override)


def test_cli_reports_bad_values_and_paths(tmp_path, capsys):
    from sparse_attention.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "tiny", "--out", str(tmp_path / "x"), "--set", "model.top_k=0"])
    assert exit_info.value.code == 2
    assert "model.top_k" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--preset", "tiny", "--out", str(tmp_path / "x"), "--data", str(tmp_path / "missing.txt")])
    assert "no such file" in capsys.readouterr().err


def test_cli_train_runs_the_tiny_preset(tmp_path, capsys):
    from sparse_attention.cli.main import main

    cache = json.dumps(str(tmp_path / "cache"))
    assert main(["train", "--preset", "tiny", "--attention", "dsa", "--quiet", "--out", str(tmp_path / "run"),
                 "--set", f"data.cache_dir={cache}"]) == 0
    out = capsys.readouterr().out
    assert "val loss" in out  # the final summary line
    assert "[warmup" not in out and "[sparse" not in out  # --quiet: no eval lines
    assert (tmp_path / "run" / "training_results.json").exists()


def test_a_dsa_run_started_from_a_dense_pretraining_equals_one_that_pretrains_itself(tmp_path, tiny_data):
    extra = ("train.pretrain.steps=3", "train.warmup.steps=2", "train.main.steps=3", "train.eval_every=2")
    dense = train(tiny_config(tmp_path, "dense", *extra), tmp_path / "dense", progress=False, data=tiny_data)
    assert dense is not None and (tmp_path / "dense" / "pretrain_checkpoint" / "model.safetensors").exists()
    own = train(tiny_config(tmp_path, "dsa", *extra), tmp_path / "own", progress=False, data=tiny_data)
    reused = train(tiny_config(tmp_path, "dsa", *extra), tmp_path / "reused", progress=False, data=tiny_data,
                   pretrained=tmp_path / "dense" / "pretrain_checkpoint")
    after_pretraining = [r for r in own["train_losses"] if r["stage"] != "pretrain"]
    assert [r["loss"] for r in reused["train_losses"]] == [r["loss"] for r in after_pretraining]
    assert reused["final_eval"]["val_loss"] == own["final_eval"]["val_loss"]
    assert reused["pretrained_from"] == str(tmp_path / "dense" / "pretrain_checkpoint")


def test_starting_from_a_pretraining_refuses_another_config(tmp_path, tiny_data):
    extra = ("train.pretrain.steps=2", "train.warmup.steps=1", "train.main.steps=1")
    train(tiny_config(tmp_path, "dense", *extra), tmp_path / "dense", progress=False, data=tiny_data)
    checkpoint = tmp_path / "dense" / "pretrain_checkpoint"
    with pytest.raises(ValueError, match="pre-trained with another config .*train.pretrain.lr"):
        Trainer(tiny_config(tmp_path, "dsa", *extra, "train.pretrain.lr=0.01"), tmp_path / "a", progress=False,
                data=tiny_data, pretrained=checkpoint)
    with pytest.raises(ValueError, match="no pretrain stage"):
        Trainer(tiny_config(tmp_path, "dsa", "train.warmup.steps=1", "train.main.steps=1"), tmp_path / "b",
                progress=False, data=tiny_data, pretrained=checkpoint)
    with pytest.raises(ValueError, match="not a pre-training checkpoint"):
        Trainer(tiny_config(tmp_path, "dsa", *extra), tmp_path / "c", progress=False, data=tiny_data,
                pretrained=tmp_path / "nowhere")
