"""Autocast helpers for the layers."""

from __future__ import annotations

import torch
from torch import Tensor


def in_autocast_dtype(x: Tensor) -> Tensor:
    """``x`` cast once to the autocast dtype when autocast is on for its device (else ``x`` itself).

    Under autocast every ``nn.Linear`` casts a float32 input on its own, and each one saves its
    cast copy for the backward: a layer whose projections all read ``x`` (q, k, v and the DSA
    indexer's three; a SwiGLU's gate and up) would keep one low-precision copy per projection.
    Cast once, they share one. The values are those autocast would compute.
    """
    device_type = x.device.type
    if not x.is_floating_point() or not torch.is_autocast_enabled(device_type):
        return x
    dtype = torch.get_autocast_dtype(device_type)
    return x if x.dtype == dtype else x.to(dtype)
