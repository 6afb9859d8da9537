"""Ops: one room per op (``attention``, ``topk``, ``indexer_kl``, ``kmeans``, ``compact``), each
with its pure-PyTorch reference, its CPU kernel (+ its own C++), its Triton kernel where one
exists and the declarations of what each supports; one dispatch rule for all of them
(:mod:`.dispatch`); the shared C++ headers and build (:mod:`.cpp`); dense attention."""

from .attention import Backend, backends, choose_backend, register_backend, sparse_attention  # isort: skip
from . import compact, indexer_kl, kmeans, topk  # noqa: F401, E402  (each room registers its op, after attention)
from .dense import dense_attention, masked_dense_attention, selection_counts
from .dispatch import all_ops, dispatch_record

__all__ = [
    "Backend",
    "all_ops",
    "backends",
    "choose_backend",
    "register_backend",
    "dense_attention",
    "dispatch_record",
    "masked_dense_attention",
    "selection_counts",
    "sparse_attention",
]
