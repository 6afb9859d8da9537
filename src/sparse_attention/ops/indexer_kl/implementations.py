"""The sparse-stage indexer KL's implementations and what each declares it supports: ``reference``
(PyTorch, chunked over queries, any device) and ``fused`` (the CPU kernel: loss and gradient in one
pass), chosen by :data:`INDEXER_KL` under the rule of :mod:`sparse_attention.ops.dispatch`."""

from __future__ import annotations

from ..dispatch import Implementation, Op, anywhere
from . import cpu
from .reference import indexer_loss_from_target_reference, sparse_indexer_loss_reference

#: The sparse-stage indexer KL op; its implementations are chosen with ``implementation=``.
INDEXER_KL = Op("indexer_kl")

INDEXER_KL.register(Implementation(
    name="reference", priority=0, run=sparse_indexer_loss_reference, supports=anywhere,
    description="PyTorch: indexer logits at the selected keys, the sparse attention target and the KL, per"
    " query chunk (any device; autograd)"))
INDEXER_KL.register(Implementation(
    name="fused", priority=10, run=cpu.indexer_kl_cpu, supports=cpu.supports, unavailable=cpu.EXTENSION.load_error,
    description="C++: per query row the logits, the target and the KL with its gradient, no gathered copies"))

#: The same KL from a given target (the attention's head-mean probabilities per slot), so that
#: nothing recomputes the attention scores.
INDEXER_KL_FROM_TARGET = Op("indexer_kl_from_target")

INDEXER_KL_FROM_TARGET.register(Implementation(
    name="reference", priority=0, run=indexer_loss_from_target_reference, supports=anywhere,
    description="PyTorch: indexer logits at the selected keys and the KL to the given target (any device; autograd)"))
INDEXER_KL_FROM_TARGET.register(Implementation(
    name="fused", priority=10, run=cpu.indexer_kl_from_target_cpu, supports=cpu.supports_from_target,
    unavailable=cpu.EXTENSION.load_error,
    description="C++: per query row the indexer logits and the KL to the given target with its gradient"))
