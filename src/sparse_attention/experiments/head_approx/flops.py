"""FLOP models of a dense attention layer against one whose heads are approximated.

Two models side by side:

* **The seed's** (``compute_analysis.py`` of the seed project), multiply-adds counted as one
  FLOP, non-causal, batch 1, in three conventions. Its code: full attention ``Q K^T`` and
  ``P V`` at ``H T^2 d`` each plus ``3 H T^2`` for the softmax and ``4 T D^2`` for the q/k/v/o
  projections; sparse: the same projections, **one** head replaced by a selector MLP
  (``d -> h_s -> T`` per query, then top-k at ``T log2 k``) and an approximator MLP
  (``k d -> h_a -> d``), the other ``H - 1`` heads attending ``k`` keys each
  (``2 T k d + 3 T k``) whose indices cost nothing. Its code without the projections
  (``attention_only``). And its **published** table, which the numbers there match: full
  ``2 H T^2 d`` for all heads against the two MLPs of the one approximated head alone (no
  softmax, no top-k, no other head, no projection).
* **Ours**: two FLOPs per multiply-add, causal (a query sees ``t + 1`` keys, ``P = T (T + 1) / 2``
  pairs per head), GQA projections, and every head approximated with its selection paid for:
  exact top-k of ``q . k`` (``2 d`` per visible pair: as much as ``Q K^T`` itself), the DSA
  lightning indexer (``2 H_I d_I`` per pair, shared by the heads, plus its projections) or the
  seed's position selector (``2 (d h + h T)`` per query, whatever its position), then over the
  ``k`` selected keys either the softmax (``k (4 d + 3)``) or the MLP over their values and
  scores (``2 (k (d + 1) h + h d)``).

Everything here is arithmetic on the shape; nothing is timed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

#: The seed's settings (its ``analyze_compute_scaling``): (T, H, d) per model, top-k 8, both MLPs 128 wide.
SEED_CONFIGS = ((64, 2, 64), (128, 4, 64), (256, 8, 64), (512, 12, 64), (1024, 16, 64), (2048, 20, 64),
                (4096, 32, 64))
SEED_TOP_K = 8
SEED_HIDDEN = 128

#: Selections of our model and the per-key head computed over them.
SELECTIONS = ("topk", "dsa", "seed_selector")
HEADS = ("softmax", "mlp")


def seed_full_flops(t: int, h: int, d: int, *, convention: str) -> float:
    """The seed's full attention in ``convention`` (:data:`SEED_CONVENTIONS`)."""
    if convention == "published":
        return 2 * h * t * t * d
    flops = 2 * h * t * t * d + 3 * h * t * t
    return flops + (4 * t * (h * d) ** 2 if convention == "with_projections" else 0)


def seed_sparse_flops(t: int, h: int, d: int, *, convention: str, top_k: int = SEED_TOP_K,
                      selector_hidden: int = SEED_HIDDEN, approx_hidden: int = SEED_HIDDEN) -> float:
    """The seed's sparse attention in ``convention``: the MLP head (selector, top-k, approximator),
    the ``H - 1`` top-k heads and the projections, as far as the convention counts them."""
    mlps = (t * d * selector_hidden + t * selector_hidden * t + t * top_k * d * approx_hidden
            + t * approx_hidden * d)
    if convention == "published":
        return mlps
    other_heads = (h - 1) * (2 * t * top_k * d + 3 * t * top_k)
    flops = mlps + t * t * math.log2(top_k) + other_heads
    return flops + (4 * t * (h * d) ** 2 if convention == "with_projections" else 0)


#: The seed's three ways of counting (see the module docstring).
SEED_CONVENTIONS = ("published", "attention_only", "with_projections")


@dataclass(frozen=True)
class LayerShape:
    """One attention layer: ``T`` tokens, width ``D``, ``H`` query / ``H_kv`` KV heads of ``d``."""

    t: int
    d_model: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def pairs(self) -> float:
        """Causal (query, key) pairs per head: ``T (T + 1) / 2``."""
        return self.t * (self.t + 1) / 2

    def projection_flops(self) -> float:
        """q, k, v, o projections: ``2 T D d (2 H + 2 H_kv)``."""
        return 2 * self.t * self.d_model * self.head_dim * (2 * self.heads + 2 * self.kv_heads)


def dense_layer_flops(s: LayerShape) -> float:
    """Projections + every head's causal attention: ``P (4 d + 3)`` per head."""
    return s.projection_flops() + s.heads * s.pairs * (4 * s.head_dim + 3)


def selection_flops(s: LayerShape, selection: str, top_k: int, *, hidden: int = SEED_HIDDEN, indexer_heads: int = 4,
                    indexer_dim: int = 64) -> float:
    """FLOPs of choosing ``top_k`` keys for every query of every head (``selection`` in :data:`SELECTIONS`)."""
    k = max(1, min(top_k, s.t))
    compare = s.pairs * math.log2(max(k, 2))  # keeping the best k of the visible keys
    if selection == "topk":  # exact q . k per head
        return s.heads * (2 * s.head_dim * s.pairs + compare)
    if selection == "dsa":  # one lightning indexer shared by the heads, and its projections
        proj = 2 * s.t * s.d_model * (indexer_heads * indexer_dim + indexer_dim + indexer_heads)
        return proj + 2 * indexer_heads * indexer_dim * s.pairs + indexer_heads * s.pairs + compare
    if selection == "seed_selector":  # position logits over all T per query, per head
        return s.heads * (s.t * 2 * (s.head_dim * hidden + hidden * s.t) + compare)
    raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")


def head_flops(s: LayerShape, head: str, top_k: int, *, hidden: int = SEED_HIDDEN) -> float:
    """FLOPs of every head's output from its ``top_k`` selected keys (``head`` in :data:`HEADS`)."""
    k = max(1, min(top_k, s.t))
    if head == "softmax":
        return s.heads * s.t * k * (4 * s.head_dim + 3)
    if head == "mlp":  # values and scores of the k keys -> hidden -> d
        return s.heads * s.t * 2 * (k * (s.head_dim + 1) * hidden + hidden * s.head_dim)
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")


def approx_layer_flops(s: LayerShape, selection: str, head: str, top_k: int, **kw) -> float:
    """Projections + selection + heads over the selected keys."""
    hidden = kw.pop("hidden", SEED_HIDDEN)
    return s.projection_flops() + selection_flops(s, selection, top_k, hidden=hidden, **kw) + head_flops(
        s, head, top_k, hidden=hidden)


def crossover_length(d_model: int, head_dim: int, selection: str, head: str, top_k: int, *,
                     lengths: list[int], kv_heads: int | None = None, **kw) -> int | None:
    """Smallest length of ``lengths`` at which the approximated layer costs fewer FLOPs than the dense one."""
    heads = d_model // head_dim
    for t in sorted(lengths):
        s = LayerShape(t, d_model, heads, kv_heads or heads, head_dim)
        if approx_layer_flops(s, selection, head, top_k, **kw) < dense_layer_flops(s):
            return t
    return None


def seed_table() -> list[dict]:
    """The seed's configurations through the seed's formulas, in each of its conventions."""
    rows = []
    for t, h, d in SEED_CONFIGS:
        row = {"t": t, "heads": h, "head_dim": d, "d_model": h * d}
        for convention in SEED_CONVENTIONS:
            full = seed_full_flops(t, h, d, convention=convention)
            sparse = seed_sparse_flops(t, h, d, convention=convention)
            row[convention] = {"full_flops": full, "sparse_flops": sparse, "speedup": full / sparse}
        rows.append(row)
    return rows


def our_grid(widths: list[int], lengths: list[int], top_k: int, *, head_dim: int = 64, hidden: int = SEED_HIDDEN,
             indexer_heads: int = 4, indexer_dim: int = 64) -> list[dict]:
    """Our model on every (width, length): the dense layer and each (selection, head) variant."""
    rows = []
    for d_model in widths:
        heads = max(1, d_model // head_dim)
        for t in lengths:
            s = LayerShape(t, d_model, heads, heads, head_dim)
            dense = dense_layer_flops(s)
            row = {**asdict(s), "top_k": top_k, "dense_flops": dense, "variants": {}}
            for selection in SELECTIONS:
                for head in HEADS:
                    flops = approx_layer_flops(s, selection, head, top_k, hidden=hidden, indexer_heads=indexer_heads,
                                               indexer_dim=indexer_dim)
                    row["variants"][f"{selection}+{head}"] = {"flops": flops, "speedup": dense / flops}
            rows.append(row)
    return rows
