"""Selection methods: which keys each query may attend to. One file per method."""

# Import order is registration order, which is the order `sparse-attention methods` lists.
from . import dense, local, topk, dsa, ssa, routing, lsh  # noqa: F401,I001  (registers the methods)
from .base import MethodSpec, Param, Selection, get_method, list_methods, register_method, select
from ..ops.topk import indexer_scores  # the one indexer score formula (ops/topk/reference.py)
from .dsa import dsa_select

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
