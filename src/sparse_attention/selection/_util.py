"""Small tensor helpers shared by selection methods."""

from __future__ import annotations

import torch

from ..ops.validation import query_key_limit
from ..utils.checks import check_int

__all__ = ["make_generator", "query_key_limit"]


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator; random draws happen on CPU so results match across devices."""
    check_int("seed", seed, 0)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen
