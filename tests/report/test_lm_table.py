"""README tables of LM results are generated from the JSON files, and change with them."""

from __future__ import annotations

import json

import pytest

from sparse_attention.report.lm.table import LM_BEGIN, LM_END, lm_tables


def comparison(gap: float) -> dict:
    return {"val_loss_dense": 4.0, "val_loss_sparse": 4.0 * (1 + gap), "relative_val_loss_gap": gap,
            "recall_after_warmup": 0.91, "recall_final": 0.95, "time_per_step_ratio": 0.5,
            "machine": {"device": "cpu", "threads": 2}, "config": {"sparse": {"train": {"seq_len": 1024},
                                                                             "model": {"top_k": 256}}}}


def test_tables_follow_the_json(tmp_path):
    folder = tmp_path / "exp" / "comparison"
    folder.mkdir(parents=True)
    (folder / "comparison_metrics.json").write_text(json.dumps(comparison(0.0123)))
    profile = {"settings": {"batch_size": 2, "top_k_fraction": 0.25}, "rows": [
        {"seq_len": 128, "top_k": 32, "dense_train_ms": 10.0, "dsa_train_ms": 20.0, "train_time_ratio": 0.5,
         "dense_forward_ms": 4.0, "dsa_forward_ms": 8.0, "forward_time_ratio": 0.5}]}
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    text = lm_tables([tmp_path / "exp", tmp_path / "profile.json"])
    assert "+1.23 %" in text and "N = 1024, top-k = 256" in text and "| 128 | 32 |" in text
    (folder / "comparison_metrics.json").write_text(json.dumps(comparison(0.05)))
    assert "+5.00 %" in lm_tables([tmp_path / "exp"])
    with pytest.raises(ValueError, match="no such results file"):
        lm_tables([tmp_path / "missing.json"])


def test_profile_table_shows_the_phase_split(tmp_path):
    phases = {"train_ms": {"dense_attention": 30.0, "indexer_projection": 1.0, "selection": 12.0,
                           "sparse_attention": 20.0, "indexer_kl": 7.0},
              "train_gflop": {"dense_attention": 3.0, "indexer_projection": 0.1, "selection": 1.5,
                              "sparse_attention": 0.5, "indexer_kl": 0.4},
              "forward_ms": {"dense_attention": 9.0, "indexer_projection": 0.5, "selection": 12.0,
                             "sparse_attention": 5.5},
              "dsa_train_ms": 40.0, "dsa_forward_ms": 18.0, "flop_bound_train": 1.0, "flop_bound_forward": 0.4,
              "rest_train_ms": {"dense": 50.0, "dsa": 61.0}, "rest_forward_ms": {"dense": 5.0, "dsa": 6.0}}
    row = {"seq_len": 4096, "top_k": 512, "dense_train_ms": 170.0, "dsa_train_ms": 221.0, "dense_forward_ms": 41.0,
           "dsa_forward_ms": 78.0, "dense_train_saved_mb": 250.0, "dsa_train_saved_mb": 270.0, "phases": phases}
    (tmp_path / "profile.json").write_text(json.dumps({"settings": {"batch_size": 1}, "rows": [row]}))
    text = lm_tables([tmp_path / "profile.json"])
    assert "| 250 / 270 |" in text  # saved for backward
    assert "Memory: peak: in the timing process, after its timed steps." in text  # a profile without settings.memory
    settings = {"batch_size": 1, "memory": "peak: in a fresh process"}
    (tmp_path / "profile.json").write_text(json.dumps({"settings": settings, "rows": [row]}))
    assert "Memory: peak: in a fresh process." in lm_tables([tmp_path / "profile.json"])
    assert "| 4096 | 512 | 30.0 (3.00) | 1.0 (0.10) | 12.0 (1.50) | 20.0 (0.50) | 7.0 (0.40) | 40.0 | 0.75 | 1.00" \
        " | 50 / 61 | 0.50 (0.40) |" in text


def test_machine_line_names_the_kernel_build_and_pytorchs_isa_cap(tmp_path):
    kernel = {"isa_level": "avx2", "cpu_flags": ["avx2", "fma", "avx512f"], "torch_cpu_capability": "AVX2",
              "isa_caps": {"ATEN_CPU_CAPABILITY": "avx2"}}
    profile = {"machine": {"device": "cpu", "threads": 2, "cpu_kernel": kernel}, "settings": {"batch_size": 1},
               "rows": []}
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    text = lm_tables([tmp_path / "profile.json"])
    assert "CPU kernel built for avx2 (CPU flags: avx2, fma, avx512f)" in text
    assert "PyTorch's kernels held to AVX2 (ATEN_CPU_CAPABILITY=avx2)" in text


def test_cli_rewrites_the_readme_block(tmp_path):
    from sparse_attention.cli.main import main

    (tmp_path / "c.json").write_text(json.dumps(comparison(0.02)))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{LM_BEGIN}\nold\n{LM_END}\nrest\n")
    assert main(["experiment", "table", str(tmp_path / "c.json"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "+2.00 %" in text and text.endswith("rest\n")
