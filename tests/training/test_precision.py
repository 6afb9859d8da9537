"""train.precision: bf16 where the device has bf16 arithmetic, fp32 with a note elsewhere."""

import pytest
import torch

from sparse_attention.training import precision as precision_module
from sparse_attention.training.config import preset
from sparse_attention.training.precision import apply_precision, bf16_unsupported_reason


def test_fp32_leaves_the_config_alone():
    config = preset("tiny", "dsa")
    assert apply_precision(config, torch.device("cpu")) == (config, None)


def test_bf16_turns_on_autocast_and_the_bf16_indexer(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    config = preset("tiny", "dsa").with_paths({"train.precision": "bf16", "model.method_params": {"top_k": 8}})
    applied, note = apply_precision(config, torch.device("cpu"))
    assert note is None and applied.train.dtype == "bfloat16"
    assert applied.model.method_params == {"top_k": 8, "precision": "bfloat16"}
    dense, _ = apply_precision(preset("tiny", "dense").with_paths({"train.precision": "bf16"}), torch.device("cpu"))
    assert dense.train.dtype == "bfloat16" and dense.model.method_params == {}


def test_bf16_without_bf16_arithmetic_stays_fp32_and_says_so(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    config = preset("tiny", "dsa").with_paths({"train.precision": "bf16"})
    with pytest.warns(RuntimeWarning, match="running fp32: this CPU has neither AVX512-BF16 nor AMX-BF16"):
        applied, note = apply_precision(config, torch.device("cpu"))
    assert applied == config and "running fp32" in note
    assert bf16_unsupported_reason(torch.device("cpu")) is None or "neither" in bf16_unsupported_reason(
        torch.device("cpu"))


def test_bad_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="train.precision must be 'fp32' or 'bf16'"):
        preset("tiny").with_paths({"train.precision": "fp16"})


def test_a_bf16_dsa_run_trains(tmp_path, monkeypatch):
    from sparse_attention.training.trainer import Trainer

    # Every CPU runs the bf16 paths (emulated where it lacks bf16 instructions): let this one take them.
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    config = preset("tiny", "dsa").with_paths({"train.precision": "bf16"})
    trainer = Trainer(config, tmp_path, progress=False)
    results = trainer.run()
    trainer.close()
    assert results["config"]["train"]["dtype"] == "bfloat16" and results["precision_note"] is None
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in results["train_losses"])
