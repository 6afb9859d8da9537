"""``train.precision``: what ``bf16`` turns on, and where it can.

``fp32`` (default) trains in float32. ``bf16`` runs the forward pass under bf16 autocast
(``train.dtype = bfloat16``) and scores a DSA model's lightning indexer in bf16
(``model.method_params.precision = bfloat16``: products of bf16-rounded inputs, fp32 sums; the
DeepSeek-V3.2 recipe runs its indexer in FP8 for the same reason: selection is the O(N^2) part).
It is applied only where the device has bf16 arithmetic: a CUDA GPU that supports bf16, or a
CPU with AVX512-BF16 or AMX-BF16. Elsewhere bf16 would be emulated and slower than fp32, so the
run stays in fp32 and says so once (a warning, and ``precision_note`` in the run's summary).
"""

from __future__ import annotations

import warnings

import torch

from ..ops.cpp.build import cpu_flags
from .config import RunConfig

PRECISIONS = ("fp32", "bf16")


def bf16_unsupported_reason(device: torch.device) -> str | None:
    """None when ``device`` has bf16 arithmetic, else why not."""
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else f"{torch.cuda.get_device_name(device)} lacks bf16"
    if device.type == "cpu":
        flags = cpu_flags()
        if {"avx512_bf16", "amx_bf16"} & flags:
            return None
        return "this CPU has neither AVX512-BF16 nor AMX-BF16 (bf16 would be emulated, slower than fp32)"
    return f"bf16 training is not set up for {device.type} devices"


def apply_precision(config: RunConfig, device: torch.device) -> tuple[RunConfig, str | None]:
    """``config`` with ``train.precision`` applied for ``device``, and a note when ``bf16`` was asked
    for but the run stays in fp32 (also warned). ``fp32`` leaves the config as it is."""
    if config.train.precision != "bf16":
        return config, None
    reason = bf16_unsupported_reason(device)
    if reason is not None:
        note = f"train.precision=bf16 asked for, running fp32: {reason}"
        warnings.warn(f"sparse-attention: {note}", RuntimeWarning, stacklevel=2)
        return config, note
    model = {}
    if config.model.uses_indexer:
        model["method_params"] = {**config.model.method_params, "precision": "bfloat16"}
    return config.with_changes(train={"dtype": "bfloat16"}, model=model), None
