"""The sparse attention op: ``reference.py`` (the oracle), ``cpu.py`` + ``csrc/`` (C++ kernel),
``triton.py`` (GPU kernel), ``implementations.py`` (what each supports, the registry) and
``op.py`` (the public function: validation, dispatch, kernel)."""

from .implementations import ATTENTION, Backend, backends, choose_backend, register_backend
from .op import sparse_attention, sparse_attention_with_head_mean

__all__ = ["ATTENTION", "Backend", "backends", "choose_backend", "register_backend", "sparse_attention",
           "sparse_attention_with_head_mean"]
