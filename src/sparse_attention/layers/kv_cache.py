"""What a decoding attention layer keeps between steps: its keys and values, and for DSA its
lightning indexer's keys (DeepSeek-V3.2's inference keeps an indexer-key cache beside the KV cache)."""

from __future__ import annotations

from torch import Tensor


def _grow(buffer: Tensor | None, new: Tensor, length: int, dim: int) -> Tensor:
    """``buffer`` (its first ``length`` entries along ``dim`` in use) with ``new`` written after them.

    The buffer's capacity doubles when it is full, so appending one token costs O(1) amortised
    instead of copying every cached token (what ``torch.cat`` per step does).
    """
    needed = length + new.shape[dim]
    if buffer is None or buffer.shape[dim] < needed:
        shape = list(new.shape)
        shape[dim] = max(needed, 2 * length, 16)
        grown = new.new_empty(shape)
        if buffer is not None:
            grown.narrow(dim, 0, length).copy_(buffer.narrow(dim, 0, length))
        buffer = grown
    buffer.narrow(dim, length, new.shape[dim]).copy_(new)
    return buffer


class LayerCache:
    """Keys and values of the tokens a layer has seen, in position order.

    Attributes (views of the first ``length`` tokens of buffers that grow by doubling):
        k, v: ``[B, H_kv, L, D]`` (after RoPE), None before the first step.
        index_k: ``[B, L, D_I]`` the lightning indexer's keys (method ``dsa``), else None.
    """

    def __init__(self) -> None:
        self._k: Tensor | None = None  # [B, H_kv, capacity, D]
        self._v: Tensor | None = None
        self._index_k: Tensor | None = None  # [B, capacity, D_I]
        self.length = 0  # tokens cached (L)

    @property
    def k(self) -> Tensor | None:
        return None if self._k is None else self._k[:, :, :self.length]

    @property
    def v(self) -> Tensor | None:
        return None if self._v is None else self._v[:, :, :self.length]

    @property
    def index_k(self) -> Tensor | None:
        return None if self._index_k is None else self._index_k[:, :self.length]

    def append(self, k: Tensor, v: Tensor, index_k: Tensor | None = None) -> None:
        """Add the keys and values of new tokens (``[B, H_kv, n, D]``; ``index_k [B, n, D_I]``)."""
        self._k = _grow(self._k, k, self.length, dim=2)
        self._v = _grow(self._v, v, self.length, dim=2)
        if index_k is not None:
            self._index_k = _grow(self._index_k, index_k, self.length, dim=1)
        self.length += k.shape[2]
