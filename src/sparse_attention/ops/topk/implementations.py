"""The scored top-k op's implementations and what each declares it supports.

``chunked`` (the reference, :func:`.reference.scored_topk_reference`: the formula + ``torch.topk``
per query chunk, any device) and ``fused`` (the CPU kernel, :func:`.cpu.fused_topk`: scoring and
selection in one C++ pass, memory O(N_q * K)), chosen by :data:`TOPK` under the rule of
:mod:`sparse_attention.ops.dispatch` with the selections' ``scoring=`` option.
"""

from __future__ import annotations

from ..dispatch import Implementation, Op, anywhere
from . import cpu
from .reference import scored_topk_reference

#: The scored top-k op (selections ``topk`` and ``dsa``).
TOPK = Op("topk", option="scoring")

TOPK.register(Implementation(
    name="chunked", priority=0, run=scored_topk_reference, supports=anywhere,
    description="score chunks of queries with torch GEMMs, torch.topk per chunk (any device; memory O(chunk * N_k))",
))
TOPK.register(Implementation(
    name="fused", priority=10, run=cpu.fused_topk, supports=cpu.supports, unavailable=cpu.EXTENSION.load_error,
    description="C++: score key panels and keep each query's best K with a running threshold (fp32, or bf16 on"
    " AMX / AVX512-BF16); memory O(N_q * K)",
))

