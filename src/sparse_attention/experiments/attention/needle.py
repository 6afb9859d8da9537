"""Needle retrieval: can the last query find one key hidden in the sequence?

Two constructions (``q, k, v`` otherwise i.i.d. standard normal, the needle planted in every
KV head, the last query pointing at it in every head):

* ``seed``: the seed study's construction, kept for comparability. The needle key is
  ``10x`` the norm of the noise keys, so dense attention puts almost all mass on it and any
  method that keeps the needle in its selection retrieves it.
* ``fair``: the needle key has the ordinary norm ``sqrt(D)``; the query is ``1.5 sqrt(D)``
  along it; ``8`` distractor keys share ``cos = 0.8`` with the needle direction and carry
  other values. Dense attention still finds the needle, but a method has to select it among
  competitors for a reason other than its size.

Needle positions (depths) are spread over the sequence: fractions 0.05 .. 0.75 (beyond the
local window of the suite budget) and one inside the window (``N - budget // 2``).
Reported per (construction, N, method, depth class): mean cosine between the last query's
output and the needle value, and the rate at which the needle is in the selection.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ...ops.dense import dense_attention
from ...ops.attention import sparse_attention
from ...selection.base import select
from .context import RunContext

BEYOND_FRACTIONS = (0.05, 0.25, 0.5, 0.75)
FAIR_QUERY_SCALE = 1.5
FAIR_DISTRACTORS = 8
FAIR_DISTRACTOR_COS = 0.8
SEED_NEEDLE_NORM = 10.0


def needle_positions(n: int, budget: int) -> list[tuple[int, str]]:
    """``(position, depth class)`` pairs: beyond the local window and inside it."""
    beyond = [(int(f * n), "beyond_window") for f in BEYOND_FRACTIONS if int(f * n) < n - budget]
    return beyond + [(max(0, n - 1 - budget // 2), "inside_window")]


def make_needle_batch(construction: str, n: int, positions: list[int], heads: int, kv_heads: int, head_dim: int,
                      seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One trial per batch element.

    Returns ``q [T, H, N, D]``, ``k, v [T, H_kv, N, D]`` and the needle values ``[T, H_kv, D]``.
    """
    if construction not in ("seed", "fair"):
        raise ValueError(f"construction must be 'seed' or 'fair', got {construction!r}")
    gen = torch.Generator().manual_seed(seed)
    t = len(positions)
    q = torch.randn(t, heads, n, head_dim, generator=gen)
    k = torch.randn(t, kv_heads, n, head_dim, generator=gen)
    v = torch.randn(t, kv_heads, n, head_dim, generator=gen)
    direction = torch.nn.functional.normalize(torch.randn(t, 1, head_dim, generator=gen), dim=-1)  # [T, 1, D]
    root_d = math.sqrt(head_dim)
    pos = torch.tensor(positions)
    trial = torch.arange(t)
    if construction == "seed":
        k[trial, :, pos] = SEED_NEEDLE_NORM * root_d * direction
        q[:, :, -1] = root_d * direction
    else:
        k[trial, :, pos] = root_d * direction
        q[:, :, -1] = FAIR_QUERY_SCALE * root_d * direction
        # Distractors: random positions before the query (not the needle), partly aligned.
        for i in range(t):
            choices = torch.randperm(n - 1, generator=gen)
            slots = choices[choices != positions[i]][:FAIR_DISTRACTORS]
            other = torch.nn.functional.normalize(torch.randn(len(slots), head_dim, generator=gen), dim=-1)
            other = torch.nn.functional.normalize(other - (other @ direction[i, 0])[:, None] * direction[i], dim=-1)
            aligned = FAIR_DISTRACTOR_COS * direction[i] + math.sqrt(1 - FAIR_DISTRACTOR_COS**2) * other
            k[i, :, slots] = root_d * aligned
    return q, k, v, v[trial, :, pos]


def _last_query_cosine(out: Tensor, needle_value: Tensor, groups: int) -> Tensor:
    """Cosine of each head's last output ``out [T, H, 1, D]`` with its needle value: ``[T, H]``."""
    target = needle_value.repeat_interleave(groups, dim=1)  # [T, H, D]
    return torch.nn.functional.cosine_similarity(out[:, :, -1], target, dim=-1)


def _needle_selected(indices: Tensor, positions: list[int], heads: int) -> Tensor:
    """Whether the needle is in the last query's selection, per trial and head: ``[T, H]``."""
    last = indices[:, :, -1]  # [T, H_sel, K]
    hit = (last == torch.tensor(positions)[:, None, None]).any(-1)  # [T, H_sel]
    if hit.shape[1] != heads:
        hit = hit.repeat_interleave(heads // hit.shape[1], dim=1)
    return hit


def run(ctx: RunContext) -> dict[str, Any]:
    """Needle retrieval table: N x method, both constructions, depth classes."""
    cfg = ctx.config
    repeats = 1 if cfg.quick else 2
    rows = []
    jobs = [(c, n) for c in ("seed", "fair") for n in cfg.lengths]
    for construction, n in ctx.progress(jobs, "needle"):
        placed = needle_positions(n, cfg.budget) * repeats
        positions, classes = [p for p, _ in placed], [c for _, c in placed]
        q, k, v, needle_value = make_needle_batch(construction, n, positions, cfg.heads, cfg.kv_heads, cfg.head_dim,
                                                  seed=cfg.seed + n)
        q, k, v, needle_value = (t.to(ctx.device) for t in (q, k, v, needle_value))
        groups = cfg.heads // cfg.kv_heads
        last_q = q[:, :, -1:]
        for method in cfg.methods:
            with torch.no_grad():
                if method == "dense":
                    out = dense_attention(last_q, k, v, causal=True)
                    selected = torch.ones(len(positions), cfg.heads, dtype=torch.bool)
                else:
                    selection = select(q, k, method, causal=True, **ctx.settings(method))
                    out = sparse_attention(last_q, k, v, selection.indices[:, :, -1:], causal=True)
                    selected = _needle_selected(selection.indices.cpu(), positions, cfg.heads)
            cosine = _last_query_cosine(out, needle_value, groups).cpu()  # [T, H]
            for depth_class in ("beyond_window", "inside_window"):
                mask = torch.tensor([c == depth_class for c in classes])
                if not mask.any():
                    continue
                rows.append({
                    "construction": construction, "n": n, "method": method, "depth_class": depth_class,
                    "cosine": float(cosine[mask].mean()), "selected_rate": float(selected[mask].float().mean()),
                    "trials": int(mask.sum()) * cfg.heads,
                })
    return {
        "rows": rows,
        "settings": {
            "beyond_fractions": BEYOND_FRACTIONS, "inside_position": "N - 1 - budget // 2", "repeats": repeats,
            "seed_needle_norm": SEED_NEEDLE_NORM, "fair_query_scale": FAIR_QUERY_SCALE,
            "fair_distractors": FAIR_DISTRACTORS, "fair_distractor_cos": FAIR_DISTRACTOR_COS,
            "methods": {m: ctx.settings(m) for m in cfg.methods},
        },
    }
