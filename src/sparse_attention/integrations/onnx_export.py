"""ONNX export of the LM (dense or DSA attention), batch and sequence length dynamic.

The exporter (``torch.onnx.export``, torch.export-based) traces each attention layer's
:meth:`~sparse_attention.layers.attention.SparseSelfAttention.export_forward` and each MoE layer's
dense-gate form, which use plain tensor operations only: for DSA the indexer scores every causal
pair, ``TopK`` picks the keys, and a softmax masked to them attends (the graph holds ``MatMul``,
``Relu``, ``TopK``, ``ScatterElements`` and ``Softmax``). The graph computes ``logits [B, N, vocab]``
from ``input_ids [B, N]``; :func:`check_onnx` runs it in onnxruntime against the PyTorch model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .._optional import require


class LogitsOnly(nn.Module):
    """The LM as a graph the exporter can trace: ``input_ids [B, N] -> logits [B, N, vocab]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids).logits


def export_onnx(model: nn.Module, output: str | Path, *, example_length: int = 16, opset: int = 18) -> Path:
    """Write ``model`` (a :class:`~sparse_attention.models.decoder.SparseLM`) to ``output``.

    Args:
        example_length: tokens of the example input traced (any length >= 2 works afterwards).
        opset: ONNX opset.
    Raises:
        ValueError: an attention method other than dense and dsa.
        MissingDependency: onnx / onnxscript not installed (``pip install 'sparse-attention[export]'``).
    """
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    for block in getattr(model, "blocks", []):
        method = block.attn.config.method
        if method not in ("dense", "dsa"):
            raise ValueError(f"ONNX export supports dense and dsa attention, not {method!r}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    wrapper = LogitsOnly(model).eval()
    example = torch.zeros(2, example_length, dtype=torch.long)
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=2)
    with torch.no_grad():
        program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=["input_ids"],
                                    output_names=["logits"], opset_version=opset,
                                    dynamic_shapes={"input_ids": {0: batch, 1: length}}, verbose=False)
    program.save(str(output))
    return output


def check_onnx(path: str | Path, model: nn.Module, input_ids: Tensor) -> float:
    """Largest absolute difference between onnxruntime's logits and the PyTorch model's for ``input_ids``."""
    ort = require("onnxruntime", "checking an ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input_ids": input_ids.numpy()})
    with torch.no_grad():
        reference = model(input_ids).logits
    return float((torch.from_numpy(logits) - reference).abs().max())
