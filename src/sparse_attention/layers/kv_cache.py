"""What a decoding attention layer keeps between steps: its keys and values, and for DSA its
lightning indexer's keys (DeepSeek-V3.2's inference keeps an indexer-key cache beside the KV cache)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LayerCache:
    """Keys and values of the tokens a layer has seen, in position order.

    Attributes:
        k, v: ``[B, H_kv, L, D]`` (after RoPE), None before the first step.
        index_k: ``[B, L, D_I]`` the lightning indexer's keys (method ``dsa``), else None.
    """

    k: Tensor | None = None
    v: Tensor | None = None
    index_k: Tensor | None = None

    @property
    def length(self) -> int:
        """Tokens cached (``L``)."""
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: Tensor, v: Tensor, index_k: Tensor | None = None) -> None:
        """Add the keys and values of new tokens (``[B, H_kv, n, D]``; ``index_k [B, n, D_I]``)."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        if index_k is not None:
            self.index_k = index_k if self.index_k is None else torch.cat([self.index_k, index_k], dim=1)
