"""sparse-attention: every sparse attention method behind one API.

Every method is a *selection* (which keys each query may see) followed by one shared
sparse attention kernel::

    import sparse_attention as sa
    out = sa.attention(q, k, v, method="dsa", top_k=64)          # select + kernel
    sel = sa.select(q, k, "ssa")                                 # just the selection
    out = sa.sparse_attention(q, k, v, sel.indices)              # just the kernel
    stats = sa.selection_stats(sel, q, k)                        # sparsity, recall, ...
"""

from .api import attention
from .layers import AttentionConfig, LightningIndexer, SparseSelfAttention
from .ops import backends, dense_attention, sparse_attention
from .selection import MethodSpec, Param, Selection, dsa_select, get_method, list_methods, register_method, select
from .selection.stats import SelectionStats, attention_recall, selection_stats

__version__ = "0.1.0"

__all__ = [
    "attention",
    "sparse_attention",
    "dense_attention",
    "backends",
    "select",
    "Selection",
    "MethodSpec",
    "Param",
    "get_method",
    "list_methods",
    "register_method",
    "dsa_select",
    "selection_stats",
    "attention_recall",
    "SelectionStats",
    "AttentionConfig",
    "SparseSelfAttention",
    "LightningIndexer",
]
