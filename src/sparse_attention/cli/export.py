"""``sparse-attention export``: a trained run as an ONNX graph, checked in onnxruntime."""

from __future__ import annotations

import argparse
import logging


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a trained LM run (dense or DSA attention) to ONNX, batch and length"
                                      " dynamic, and check it in onnxruntime (optional extra: export)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `sparse-attention lm train`")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from ..integrations.onnx_export import check_onnx, export_onnx
    from ..training.run_dir import load_model

    model, config = load_model(args.run_dir)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter's notes on absent torchvision ops
    path = export_onnx(model, args.output, opset=args.opset)
    print(f"wrote {path} ({config.model.attention} attention, {config.model.n_layers} layers; inputs input_ids"
          " [batch, length] int64, output logits [batch, length, vocab])")
    if not args.no_check:
        gen = torch.Generator().manual_seed(0)
        for batch, length in ((1, 7), (2, min(config.train.seq_len, 64))):
            ids = torch.randint(0, config.model.vocab_size, (batch, length), generator=gen)
            err = check_onnx(path, model, ids)
            print(f"onnxruntime vs PyTorch at batch {batch}, length {length}: max abs error {err:.2e}")
            if not err <= 1e-4:
                raise ValueError(f"the exported graph differs from the model by {err:.2e} (> 1e-4)")
    return 0
