"""Selection methods: which keys each query may attend to. One file per method."""

from . import dense, dsa, local, lsh, routing, ssa, topk  # noqa: F401  (registers the methods)
from .base import MethodSpec, Param, Selection, get_method, list_methods, register_method, select
from .dsa import dsa_select, indexer_scores

__all__ = [
    "MethodSpec",
    "Param",
    "Selection",
    "get_method",
    "list_methods",
    "register_method",
    "select",
    "dsa_select",
    "indexer_scores",
]
