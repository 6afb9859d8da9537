"""Spectral preservation: how well a sparse attention matrix keeps the spectrum of the dense one.

For each source of ``q, k`` (``clustered_qkv``: structured attention; ``gaussian_qkv``:
near-uniform attention, a worst case) and each method, the causal attention probability
matrices of every head are built explicitly at a small ``N`` (512 quick, 1024 full, never
more than the suite's longest length):

* dense ``A = softmax(q k^T / sqrt(D) + causal mask)``, ``[B, H, N, N]``;
* sparse ``A_s``: the softmax over each query's selected keys only, scattered into ``N x N``
  (zeros elsewhere), i.e. exactly the weights the shared sparse kernel applies to ``v``.

Per head (float64 SVD): relative spectral-norm error ``||A - A_s||_2 / ||A||_2``, relative
Frobenius error, and for each rank ``r`` in :data:`RANKS` the relative error of the top-``r``
singular values ``||s_r(A) - s_r(A_s)|| / ||s_r(A)||`` and the overlap of the top-``r``
singular subspaces ``||U_r^T U_{s,r}||_F^2 / r`` (left, query side) and the same with ``V``
(right, key side): 1 = same subspace, ``r / N`` = unrelated. Also the stable rank
``||A_s||_F^2 / ||A_s||_2^2`` and the attention-mass recall of the selection.

At this small ``N`` the suite budget (256) would cover half of the sequence, so the
fixed-budget methods (``local`` window, ``topk``/``dsa`` top-k) get
``min(budget, N * BUDGET_FRACTION)`` keys, comparable to the clustering methods' edges.

Runtime (2 CPU cores shared with other jobs, measured): 10-15 s in quick mode (N = 512);
full mode (N = 1024) about 110 s, most of it in the selections and the float64 SVDs.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch
from torch import Tensor

from ...data.synthetic import clustered_qkv, gaussian_qkv
from ...ops.dense import causal_mask, selection_counts
from ...ops.validation import resolve_scale
from ...selection.base import Selection, get_method, select
from ...selection.stats import attention_recall, selection_stats
from .context import RunContext

RANKS = (8, 32)
QUICK_N, FULL_N = 512, 1024
BUDGET_FRACTION = 1 / 8
SOURCES = {"clustered": clustered_qkv, "gaussian": gaussian_qkv}
PLOT_HEAD = 0  # the head whose full spectra are stored for the plot


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch single-threaded on CPU, for computations whose result, not speed, is reported.

    On a busy 2-core machine, OpenMP threads spin-wait for each other on every small op:
    SVDs of a few hundred rows and the k-means of the selections then run 10-50x slower
    (measured); one thread is immune and, at these sizes, barely slower on an idle machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def analysis_length(cfg: Any, quick_n: int, full_n: int) -> int:
    """The one length of a fixed-length analysis: ``quick_n`` or ``full_n``, never longer than the
    suite's longest length (so a small test configuration runs small)."""
    return min(quick_n if cfg.quick else full_n, max(cfg.lengths))


def clustered_defaults() -> dict[str, Any]:
    """The keyword defaults of ``clustered_qkv`` (cluster count, spread, sharpness) the suite uses."""
    params = inspect.signature(clustered_qkv).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "seed"}


def spectral_params(method: str, ctx: RunContext, n: int) -> dict[str, Any]:
    """``ctx.settings(method)`` with the fixed budgets capped at ``N * BUDGET_FRACTION`` keys."""
    params = dict(ctx.settings(method))
    cap = max(1, int(n * BUDGET_FRACTION))
    key = get_method(method).budget_param
    if key in params:
        params[key] = min(params[key], cap)
    return params


def _scaled_logits(q: Tensor, k: Tensor) -> Tensor:
    """``q k^T / sqrt(D)`` in float64 with KV heads repeated: ``[B, H, N_q, N_k]``."""
    k = k.double().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    return (q.double() @ k.transpose(-1, -2)) * resolve_scale(None, q.shape[-1])


def dense_probabilities(q: Tensor, k: Tensor) -> Tensor:
    """Causal dense attention probabilities in float64, ``[B, H, N_q, N_k]`` (end-aligned)."""
    mask = causal_mask(q.shape[2], k.shape[2], q.device)  # [N_q, N_k]
    probs = torch.softmax(_scaled_logits(q, k).masked_fill(~mask, float("-inf")), dim=-1)
    return torch.nan_to_num(probs, nan=0.0)


def sparse_probabilities(q: Tensor, k: Tensor, selection: Selection) -> Tensor:
    """Attention probabilities over the selected keys, scattered into ``[B, H, N_q, N_k]``.

    ``softmax_j(s_ij + log c_ij)`` with ``c_ij`` the number of times key ``j`` is listed for
    query ``i`` (0 = masked), the kernel's definition (duplicates count twice); rows without
    a valid key are zero. q: ``[B, H, N_q, D]``, k: ``[B, H_kv, N_k, D]``.
    """
    h = q.shape[1]
    counts = selection_counts(selection.indices, selection.n_keys, selection.causal)  # [B, H_sel, N_q, N_k]
    if counts.shape[1] not in (1, h):  # per-KV-head selection: repeat for the heads of each group
        counts = counts.repeat_interleave(h // counts.shape[1], dim=1)
    logits = _scaled_logits(q, k) + torch.log(counts.double())  # log 0 = -inf masks unselected keys
    return torch.nan_to_num(torch.softmax(logits, dim=-1), nan=0.0)  # all -inf rows -> 0


def spectral_metrics(a: Tensor, a_s: Tensor, ranks: tuple[int, ...], dense_svd: tuple[Tensor, Tensor, Tensor]
                     ) -> tuple[list[dict[str, float]], Tensor]:
    """Metrics of ``a_s`` against ``a`` (both ``[H, N, N]``), one dict per head, and ``s(A_s) [H, N]``.

    ``dense_svd`` is ``torch.linalg.svd(a)`` (computed once per source).
    """
    u, s, vh = dense_svd
    u_s, s_s, vh_s = torch.linalg.svd(a_s)
    err = torch.linalg.matrix_norm(a - a_s, ord=2)  # [H] largest singular value of the difference
    metrics = []
    for head in range(a.shape[0]):
        row = {
            "spectral_norm_error": float(err[head] / s[head, 0]),
            "frobenius_error": float((a[head] - a_s[head]).norm() / a[head].norm()),
            "stable_rank": float((s_s[head] ** 2).sum() / s_s[head, 0].clamp_min(1e-300) ** 2),
        }
        for r in ranks:
            row[f"sv_error@{r}"] = float((s[head, :r] - s_s[head, :r]).norm() / s[head, :r].norm())
            row[f"overlap_left@{r}"] = float((u[head, :, :r].T @ u_s[head, :, :r]).square().sum() / r)
            row[f"overlap_right@{r}"] = float((vh[head, :r] @ vh_s[head, :r].T).square().sum() / r)
        metrics.append(row)
    return metrics, s_s


def run(ctx: RunContext) -> dict[str, Any]:
    """Spectral errors and subspace overlaps per (source, method, head); head-0 spectra for the plot."""
    cfg = ctx.config
    n = analysis_length(cfg, QUICK_N, FULL_N)
    ranks = tuple(r for r in RANKS if r <= n)
    rows: list[dict[str, Any]] = []
    spectra: dict[str, dict[str, list[float]]] = {}
    params = {m: spectral_params(m, ctx, n) for m in cfg.methods}
    jobs = [(source, method) for source in SOURCES for method in cfg.methods]
    dense: dict[str, tuple] = {}
    # Quality only (no timing): single-threaded, see single_thread().
    with torch.no_grad(), single_thread():
        for source, method in ctx.progress(jobs, "spectral"):
            if source not in dense:  # inputs, dense A and its SVD, once per source
                q, k, _ = SOURCES[source](1, cfg.heads, cfg.kv_heads, n, cfg.head_dim, seed=cfg.seed)
                # The N x N matrices and SVDs stay on the CPU in float64 (MPS has no float64).
                a = dense_probabilities(q, k)[0]  # [H, N, N]
                dense[source] = (q, k, a, torch.linalg.svd(a))
                spectra[source] = {"dense": dense[source][3][1][PLOT_HEAD].tolist()}
            q, k, a, svd = dense[source]
            selection = select(q.to(ctx.device), k.to(ctx.device), method, causal=True, **params[method])
            selection.indices = selection.indices.cpu()
            a_s = sparse_probabilities(q, k, selection)[0]  # [H, N, N]
            metrics, s_s = spectral_metrics(a, a_s, ranks, svd)
            stats = selection_stats(selection)
            recall = attention_recall(selection, q, k, per_query=True)[0].mean(-1)  # [H]
            if method != "dense":
                spectra[source][method] = s_s[PLOT_HEAD].tolist()
            for head, row in enumerate(metrics):
                rows.append({"source": source, "n": n, "method": method, "head": head, **row,
                             "recall": float(recall[head]), "edges_per_query": stats.edges_per_query,
                             "causal_sparsity": stats.causal_sparsity})
    return {
        "rows": rows,
        "spectra": spectra,
        "settings": {
            "n": n, "ranks": list(ranks), "sources": list(SOURCES), "causal": True, "batch": 1,
            "heads": cfg.heads, "kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "seed": cfg.seed,
            "plot_head": PLOT_HEAD, "budget_fraction": BUDGET_FRACTION, "svd_dtype": "float64",
            "clustered_qkv": clustered_defaults(),
            "methods": params,
        },
    }
