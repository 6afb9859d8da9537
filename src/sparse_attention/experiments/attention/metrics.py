"""Fidelity of an attention output against the dense output."""

from __future__ import annotations

import torch
from torch import Tensor


def row_cosine(out: Tensor, ref: Tensor) -> float:
    """Mean over query rows of the cosine between ``out`` and ``ref`` (``[..., N, D]``)."""
    return float(torch.nn.functional.cosine_similarity(out.float(), ref.float(), dim=-1).mean())


def relative_l2(out: Tensor, ref: Tensor) -> float:
    """``||out - ref|| / ||ref||`` over the whole tensor."""
    ref = ref.float()
    return float((out.float() - ref).norm() / ref.norm().clamp_min(1e-30))
