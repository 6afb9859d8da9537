"""Where the time of one attention layer goes: dense attention against the phases of DSA.

:func:`attention_phases` builds one attention layer of the model config (the LM's own
:class:`~sparse_attention.layers.attention.SparseSelfAttention` with method ``dsa``) and, on
random inputs ``x [B, N, dim]``, times each phase of its sparse training stage and of its
evaluation forward, interleaved sample by sample with dense attention (SDPA):

* ``dense_attention``: SDPA over the causal pairs (train: forward + backward of ``q, k, v``);
* ``indexer_projection``: the lightning indexer's projections ``x -> (q_I, k_I, w)``;
* ``selection``: the fused indexer scoring + top-k (no gradient, the same in training and evaluation);
* ``sparse_attention``: the sparse kernel over the selected keys (train: forward + backward; the
  forward, as the layer runs it, also gathers the KL's target where the kernel can:
  :func:`~sparse_attention.ops.attention.sparse_attention_with_head_mean`);
* ``indexer_kl``: the KL over the selected keys with its gradient (training only), from that
  target when it was gathered (``kl_target`` in the result says which).

Next to each time it counts the phase's FLOPs, so that the split says both where the time
goes and what ratio is possible at all: ``flop_bound_*`` is dense attention's FLOPs over DSA's
(the dense/DSA time ratio of the layer if every phase ran at the same FLOP rate).

FLOP conventions (per head, per (query, key) pair): attention forward ``4 D`` (``q.k`` and the
value sum), training ``14 D`` (forward, then backward recomputing ``q.k`` and forming
``dP, dV, dQ, dK``); selection: the ``dsa`` method's own cost model
(:func:`~sparse_attention.selection.costs.selection_flops`); KL: ``2 D`` per attention head
(the target logits; none when the attention gathered the target) + ``6 D_I`` per indexer head
(logits, ``dq_I``, ``dk_I``); projections
``2 dim (H_I D_I + D_I + H_I)`` per token, 3x that for training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: Matrix products of width ``D`` per (query, key) pair and head: forward ``q.k`` and ``p.v``.
FORWARD_PRODUCTS = 2
#: Forward + backward (``q.k`` recomputed, ``dP``, ``dV``, ``dQ``, ``dK``).
TRAIN_PRODUCTS = 7
#: Phases of the DSA layer, in execution order (``indexer_kl``: training only).
DSA_PHASES = ("indexer_projection", "selection", "sparse_attention", "indexer_kl")


def _timed(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median ms of each function over ``repeats`` interleaved single calls (after one warm-up call each)."""
    from ...utils.timing import time_interleaved

    results = time_interleaved(list(fns.values()), device, repeats=repeats, warmup=1)
    return {name: r["median_ms"] for name, r in zip(fns, results)}


def _backward(out: Tensor, *leaves: Tensor) -> None:
    """Backward of ``out`` with a fixed upstream gradient; the leaves' gradients are dropped after."""
    out.backward(torch.ones_like(out))
    for leaf in leaves:
        leaf.grad = None


def _causal_pairs(n: int) -> int:
    return n * (n + 1) // 2


def attention_phases(model_config, n: int, top_k: int, *, batch_size: int = 1, repeats: int = 3,
                     device: torch.device | str = "cpu", seed: int = 0, dtype: str = "float32") -> dict:
    """Time and count the phases of one attention layer at length ``n`` (module docstring).

    Args:
        model_config: a :class:`~sparse_attention.models.config.ModelConfig` (width, heads,
            indexer shape, backend; its attention setting is ignored).
        n: sequence length; top_k: DSA keys per query.
        batch_size: sequences; repeats: timed samples per phase; device: where it runs.
        dtype: ``float32``, or ``bfloat16`` to run every phase under bfloat16 autocast as a training
            step with ``train.precision=bf16`` does (the layer's weights stay float32; the indexer's
            scoring precision is the model config's, which ``apply_precision`` sets).
    Returns:
        ``{"train_ms": {phase: ms}, "forward_ms": {phase: ms}, "train_gflop": {...}, "forward_gflop": {...},
        "dsa_train_ms", "dsa_forward_ms", "flop_bound_train", "flop_bound_forward", "sparse_pairs", ...}``;
        ``dense_attention`` is a phase of its own, the DSA totals sum :data:`DSA_PHASES`.
    """
    from ...layers.indexer_loss import sparse_indexer_loss, sparse_indexer_loss_from_target
    from ...models.decoder import attention_config
    from ...ops.dense import dense_attention
    from ...ops.attention import sparse_attention, sparse_attention_with_head_mean
    from ...selection.costs import selection_flops
    from ...selection.dsa import dsa_select

    config = attention_config(model_config)
    config.method, config.method_params = "dsa", {**config.method_params, "top_k": top_k}
    from ...layers.attention import SparseSelfAttention

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    device = torch.device(device)
    torch.manual_seed(seed)
    layer = SparseSelfAttention(config).to(device)
    params = layer.indexer_selection_params()
    x = torch.randn(batch_size, n, config.dim, device=device)

    def precision(fn: Callable[[], object]) -> Callable[[], object]:
        """``fn`` under the step's autocast (bfloat16), or as it is (float32)."""
        if dtype == "float32":
            return fn

        def call():
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                return fn()
        return call

    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype != "float32"):
        q, k, v = (t.contiguous() for t in layer.project(x))  # q [B, H, N, D], k, v [B, H_kv, N, D]
        index_q, index_k, weights = layer.indexer(x)  # [B, H_I, N, D_I], [B, N, D_I], [B, N, H_I]
        selection = dsa_select(index_q, index_k, weights, causal=True, **params)
    indices = selection.indices  # [B, 1, N, K]
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    index_leaves = [t.clone().requires_grad_() for t in (index_q, index_k, weights)]
    x_leaf = x.clone().requires_grad_()

    def dense_train():
        _backward(dense_attention(*leaves, causal=True), *leaves)

    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype != "float32"):
        _, target = sparse_attention_with_head_mean(q, k, v, indices, causal=True, backend=config.backend)

    def sparse_train():  # as the layer's training forward runs it: gathering the KL's target where it can
        out, _ = sparse_attention_with_head_mean(*leaves, indices, causal=True, backend=config.backend)
        _backward(out, *leaves)

    def projection_train():
        _backward(torch.cat([t.flatten() for t in layer.indexer(x_leaf)]), x_leaf)
        layer.zero_grad(set_to_none=True)

    def kl_train():
        if target is not None:
            loss = sparse_indexer_loss_from_target(target, *index_leaves, indices[:, 0])
        else:
            loss = sparse_indexer_loss(q, k, *index_leaves, indices[:, 0])
        _backward(loss, *index_leaves)

    def select():
        with torch.no_grad():
            dsa_select(index_q, index_k, weights, causal=True, **params)

    def no_grad(fn: Callable, *args, **kwargs) -> Callable[[], object]:
        def call():
            with torch.no_grad():
                fn(*args, **kwargs)
        return call

    train = _timed({name: precision(fn) for name, fn in {
        "dense_attention": dense_train, "indexer_projection": projection_train, "selection": select,
        "sparse_attention": sparse_train, "indexer_kl": kl_train}.items()}, device, repeats)
    forward = _timed({name: precision(fn) for name, fn in {
        "dense_attention": no_grad(dense_attention, q, k, v, causal=True),
        "indexer_projection": no_grad(layer.indexer, x), "selection": select,
        "sparse_attention": no_grad(sparse_attention, q, k, v, indices, causal=True,
                                    backend=config.backend)}.items()}, device, repeats)

    b, h, d = batch_size, config.n_heads, config.head_dim
    h_i, d_i = config.indexer_heads, config.indexer_head_dim
    sparse_pairs = int((indices >= 0).sum()) // b  # per sequence
    dense_pairs = _causal_pairs(n)
    chosen = selection_flops("dsa", selection, {**params, "index_q": index_q}, batch=b, heads=h,
                             kv_heads=config.n_kv_heads, head_dim=d)
    projection = 2 * b * n * config.dim * (h_i * d_i + d_i + h_i)
    forward_flops = {"dense_attention": b * h * dense_pairs * FORWARD_PRODUCTS * 2 * d,
                     "indexer_projection": projection, "selection": chosen,
                     "sparse_attention": b * h * sparse_pairs * FORWARD_PRODUCTS * 2 * d}
    train_flops = {**forward_flops, "dense_attention": b * h * dense_pairs * TRAIN_PRODUCTS * 2 * d,
                   "indexer_projection": 3 * projection,
                   "sparse_attention": b * h * sparse_pairs * TRAIN_PRODUCTS * 2 * d,
                   "indexer_kl": b * sparse_pairs * ((0 if target is not None else 2 * d * h) + 6 * d_i * h_i)}

    def dsa_sum(values: dict) -> float:
        return sum(values[name] for name in DSA_PHASES if name in values)

    return {
        "train_ms": train, "forward_ms": forward,
        "train_gflop": {name: value / 1e9 for name, value in train_flops.items()},
        "forward_gflop": {name: value / 1e9 for name, value in forward_flops.items()},
        "dsa_train_ms": dsa_sum(train), "dsa_forward_ms": dsa_sum(forward),
        "flop_bound_train": train_flops["dense_attention"] / dsa_sum(train_flops),
        "flop_bound_forward": forward_flops["dense_attention"] / dsa_sum(forward_flops),
        "sparse_pairs": sparse_pairs, "dense_pairs": dense_pairs, "repeats": repeats, "dtype": dtype,
        "kl_target": "gathered by the attention" if target is not None else "computed by the KL",
        "attention_dtype": str(q.dtype).removeprefix("torch."),
        "timing": "median of interleaved single calls after one warm-up call each",
    }


def rest_of_model_ms(step_ms: float, layer_ms: float, n_layers: int) -> float:
    """A whole step's time outside attention: ``step_ms - n_layers * layer_ms`` (embeddings, norms,
    projections, MoE, LM head, optimizer)."""
    return step_ms - n_layers * layer_ms
