"""Attention ops: the shared sparse attention kernel, its backends, and dense attention."""

from .backends import Backend, backends, choose_backend, register_backend
from .dense import dense_attention, masked_dense_attention, selection_counts
from .sparse_attention import sparse_attention

__all__ = [
    "Backend",
    "backends",
    "choose_backend",
    "register_backend",
    "dense_attention",
    "masked_dense_attention",
    "selection_counts",
    "sparse_attention",
]
