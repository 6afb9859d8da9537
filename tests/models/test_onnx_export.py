"""ONNX export of dense and DSA LMs: dynamic batch and length, onnxruntime equals PyTorch (<= 1e-4)."""

import pytest
import torch

from sparse_attention.models.config import ModelConfig
from sparse_attention.models.decoder import SparseLM

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from sparse_attention.integrations.onnx_export import check_onnx, export_onnx  # noqa: E402


@pytest.mark.parametrize("attention", ["dense", "dsa"])
def test_exported_graph_equals_the_model_at_other_batches_and_lengths(attention, tmp_path):
    cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, n_experts=3,
                      expert_top_k=2, attention=attention, top_k=6, indexer_heads=2, indexer_head_dim=16)
    model = SparseLM(cfg, seed=3).eval()
    path = export_onnx(model, tmp_path / f"{attention}.onnx", example_length=12)
    for batch, length in ((1, 3), (2, 12), (3, 41)):  # shorter than top-k, the traced shape, longer
        ids = torch.randint(0, 61, (batch, length), generator=torch.Generator().manual_seed(length))
        assert check_onnx(path, model, ids) <= 1e-4


def test_export_refuses_other_methods(tmp_path):
    cfg = ModelConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, n_experts=2,
                      expert_top_k=1, attention="local", method_params={"window": 4})
    with pytest.raises(ValueError, match="dense and dsa"):
        export_onnx(SparseLM(cfg).eval(), tmp_path / "x.onnx")
