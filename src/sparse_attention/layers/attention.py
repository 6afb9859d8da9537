"""The package's one self-attention layer: projections, RoPE, GQA and a configurable method.

``config.method`` is ``dense`` (SDPA) or any registered selection method; the selection feeds
the shared sparse attention kernel. Each forward call runs in one of three modes
(:data:`ATTENTION_MODES`):

* ``dense``: SDPA. The dense baseline, and DSA models for inspection.
* ``warmup``: dense attention output; the lightning indexer (fed ``x.detach()``) is scored
  against the dense attention of the layer (:func:`~sparse_attention.layers.indexer_loss.
  dense_indexer_loss`, by query chunks: O(N * chunk) memory, O(N^2) time). DSA stage 1.
* ``sparse``: the method's selection and the sparse kernel. For DSA the indexer selects the
  top-k keys and, when it is being trained, gets the KL restricted to its selection, with a
  detached input, so the LM loss never reaches the indexer (indices are integers) and the KL
  never reaches the model. DSA stage 2. The selection is the fused scoring + top-k of
  :func:`~sparse_attention.selection.dsa.dsa_select` (no gradient, no score matrix); the KL over
  the selected keys (:func:`~sparse_attention.layers.indexer_loss.sparse_indexer_loss`: one fused
  CPU kernel, chunked PyTorch elsewhere) holds O(N K), never ``[B, N, N]``. Where the CPU attention
  kernel runs the layer's heads on its few-heads path, the attention's forward pass also returns
  its probabilities averaged over heads per slot (the KL's target), and the KL scores only the
  indexer (``sparse_indexer_loss_from_target``).

The indexer loss of either stage reaches only the indexer's parameters; its gradients in them are
computed when the loss is (:func:`~sparse_attention.utils.gradients_now.with_gradients_now`), so
the indexer's activations and the KL's gradients in them are freed at once rather than held until
the backward pass (a DSA step would otherwise hold more memory than a dense one).

``collect`` statistics walk query chunks as the warm-up does. Only ``keep_scores``
(visualisation) holds all ``[B, N, N]`` indexer scores.

The method's parameters are worked out once, when the layer is built
(:attr:`SparseSelfAttention.selection_params`: ``config.method_params`` over the method's
defaults); for DSA its ``top_k``, ``scoring`` and ``precision`` drive every path.

``forward(x)`` returns the output (and the selection); :meth:`SparseSelfAttention.forward_with_aux`
adds the indexer loss and statistics (:class:`AttentionAux`) the LM trainer uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..ops.dense import causal_mask, dense_attention
from ..ops.attention import sparse_attention, sparse_attention_with_head_mean
from ..ops.topk import indexer_scores
from ..selection.base import Selection, get_method, select
from ..selection.dsa import dsa_select
from ..selection.key_mask import check_key_mask
from ..utils.autocast import in_autocast_dtype
from ..utils.checks import check_int
from ..utils.gradients_now import with_gradients_now
from .attention_stats import layer_stats, topk_from_scores
from .indexer import LightningIndexer
from .indexer_loss import dense_indexer_loss, sparse_indexer_loss, sparse_indexer_loss_from_target
from .kv_cache import LayerCache
from .rope import apply_rope

ATTENTION_MODES = ("dense", "warmup", "sparse")


def _float32(device: torch.device):
    """Autocast off: the indexer loss and the statistics compute in float32 under bf16 training."""
    return torch.autocast(device_type=device.type, enabled=False)


@dataclass
class AttentionConfig:
    """Configuration of :class:`SparseSelfAttention`.

    Attributes:
        dim: model width.
        n_heads: query heads ``H``.
        n_kv_heads: key/value heads ``H_kv`` (GQA); default ``n_heads``.
        head_dim: per-head width; default ``dim // n_heads``.
        method: a registered selection method (``sparse-attention methods``); ``dense``
            runs SDPA.
        method_params: parameters of the method (e.g. ``{"top_k": 64}``).
        causal: causal self-attention.
        rope_theta: RoPE base; ``0`` disables RoPE.
        bias: bias in the q/k/v/o projections.
        indexer_heads, indexer_head_dim: shape of the lightning indexer (method ``dsa``).
        backend: sparse attention backend (``auto`` picks the fastest that fits).
        stats_top_k: keys per query of the oracle statistics (``collect=True``) of a layer
            whose method has no ``top_k`` (dense); a method's own ``top_k`` wins.
    """

    dim: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    method: str = "dense"
    method_params: dict[str, Any] = field(default_factory=dict)
    causal: bool = True
    rope_theta: float = 10000.0
    bias: bool = False
    indexer_heads: int = 4
    indexer_head_dim: int = 64
    backend: str = "auto"
    stats_top_k: int = 64

    def __post_init__(self) -> None:
        for name in ("dim", "n_heads", "indexer_heads", "indexer_head_dim", "stats_top_k"):
            check_int(f"AttentionConfig.{name}", getattr(self, name))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"AttentionConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})"
                                 " unless head_dim is given")
            self.head_dim = self.dim // self.n_heads
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"AttentionConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads"
                             f" ({self.n_kv_heads})")
        if self.head_dim <= 0 or (self.rope_theta and self.head_dim % 2):
            raise ValueError(f"AttentionConfig.head_dim must be positive and even with RoPE, got {self.head_dim}")
        if self.rope_theta < 0:
            raise ValueError(f"AttentionConfig.rope_theta must be >= 0, got {self.rope_theta}")
        get_method(self.method).check_params(self.method_params)


@dataclass
class AttentionAux:
    """What a layer reports besides its output.

    Attributes:
        indexer_loss: the KL loss of this layer's indexer (scalar) or None.
        selection: the selection used (``sparse`` mode) or None.
        stats: measured statistics (``collect=True`` only): sparsity, recall, kl, coverage,
            mean distance, and ``oracle_recall``: the recall of the top-k of the head-summed
            dense attention itself, the best any selection shared by all heads can reach.
        indexer_scores: ``[B, N, N]`` causal-masked indexer scores (``keep_scores=True`` only).
    """

    indexer_loss: Tensor | None = None
    selection: Selection | None = None
    stats: dict = field(default_factory=dict)
    indexer_scores: Tensor | None = None


class SparseSelfAttention(nn.Module):
    """Multi-head self-attention with RoPE, GQA and a configurable selection method (see the
    module docstring). With ``method="dsa"`` the layer owns a :class:`LightningIndexer` whose
    selection all heads share."""

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = c = config
        #: The method's parameters, ``method_params`` over its defaults, worked out once here.
        self.selection_params: dict[str, Any] = (
            {} if c.method == "dense" else {**get_method(c.method).defaults(), **c.method_params})
        self.q_proj = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=c.bias)
        self.k_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.bias)
        self.v_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.bias)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=c.bias)
        self.indexer = (LightningIndexer(c.dim, c.indexer_heads, c.indexer_head_dim, rope_theta=c.rope_theta or 10000.0)
                        if c.method == "dsa" else None)
        #: Optional ``hook(q [B, H, N, D], k [B, H_kv, N, D], v [B, H_kv, N, D], out [B, H, N, D]) -> out``,
        #: called on every forward with the RoPE'd projections and the per-head attention output
        #: before the output projection; what it returns replaces the output. Reads teacher
        #: signals and swaps heads for approximations (experiments.head_approx) without a second
        #: copy of the forward pass.
        self.head_hook: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None = None

    @property
    def default_mode(self) -> str:
        return "dense" if self.config.method == "dense" else "sparse"

    @property
    def top_k(self) -> int:
        """Keys per query: the method's ``top_k`` (:attr:`selection_params`) where it has one,
        else ``config.stats_top_k`` (used by the oracle statistics only)."""
        return self.selection_params.get("top_k", self.config.stats_top_k)

    def project(self, x: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, N, dim]`` -> ``q [B, H, N, D]``, ``k, v [B, H_kv, N, D]`` with RoPE applied."""
        c = self.config
        b, n, _ = x.shape
        positions = torch.arange(n, device=x.device) if positions is None else positions
        q = self.q_proj(x).view(b, n, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
        if c.rope_theta:
            q = apply_rope(q, positions, theta=c.rope_theta)
            k = apply_rope(k, positions, theta=c.rope_theta)
        return q, k, v

    @property
    def selects_by_own_indexer(self) -> bool:
        """DSA selecting with this layer's lightning indexer (not with fixed indexer tensors
        given as ``method_params``)."""
        fixed = {"index_q", "index_k", "index_weights"} & self.config.method_params.keys()
        return self.indexer is not None and not fixed

    def indexer_selection_params(self) -> dict[str, Any]:
        """``top_k``, ``scoring`` and ``precision`` of the layer's own indexer (method ``dsa``), from
        :attr:`selection_params`."""
        return {name: self.selection_params[name] for name in ("top_k", "scoring", "precision")}

    def select(self, x: Tensor, q: Tensor, k: Tensor, key_mask: Tensor | None = None) -> Selection:
        """The selection for this input (no gradient: indices are integers); ``key_mask [B, N]``
        (False = padding) keeps padded keys out."""
        c = self.config
        if self.selects_by_own_indexer:
            return self.indexer.select(x, causal=c.causal, key_mask=key_mask, **self.indexer_selection_params())
        with torch.no_grad():
            return select(q.detach(), k.detach(), c.method, causal=c.causal, key_mask=key_mask, **self.selection_params)

    def forward(self, x: Tensor, *, mode: str | None = None, return_selection: bool = False,
                key_mask: Tensor | None = None) -> Tensor | tuple[Tensor, Selection | None]:
        """``x [B, N, dim]`` -> ``[B, N, dim]`` (and the selection, None for dense attention).

        ``mode`` defaults to ``sparse`` for a selection method and ``dense`` otherwise; no
        indexer loss is computed here (see :meth:`forward_with_aux`). ``key_mask [B, N]`` (bool
        or 0/1, Hugging Face's ``attention_mask``): False marks a padded position, whose key is
        never selected nor attended; a query that sees no real key outputs ``o_proj(0)``.
        """
        y, aux = self.forward_with_aux(x, mode, train_indexer=False, key_mask=key_mask)
        return (y, aux.selection) if return_selection else y

    def decode(self, x: Tensor, cache: LayerCache) -> Tensor:
        """Attention of new tokens ``x [B, n, dim]`` that follow the ``cache.length`` cached ones.

        The new tokens' keys and values (and, for DSA, indexer keys) are appended to ``cache``;
        each new query sees the cached keys and the new ones up to itself (end-aligned causal),
        through the layer's method in ``sparse`` mode (DSA: its indexer scores the new queries
        against every cached indexer key, then top-k). Returns ``[B, n, dim]``: what
        :meth:`forward` gives these positions of the whole sequence, for every method whose
        selection of a query depends only on the keys up to it (dense, ``local``, ``topk``, ``dsa``).
        """
        c = self.config
        if not c.causal:
            raise ValueError("decode: a non-causal layer cannot decode token by token")
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != c.dim:
            raise ValueError(f"x must be [B, n, dim={c.dim}], got shape {tuple(getattr(x, 'shape', ()))}")
        b, n, _ = x.shape
        positions = torch.arange(cache.length, cache.length + n, device=x.device)
        q, k, v = self.project(x, positions)
        index_k = None
        if self.selects_by_own_indexer:
            index_q, index_k, weights = self.indexer(x, positions)
        cache.append(k, v, index_k)
        if c.method == "dense":
            out = dense_attention(q, cache.k, cache.v, causal=True)
        else:
            with torch.no_grad():
                if index_k is not None:
                    selection = dsa_select(index_q, cache.index_k, weights, causal=True,
                                           **self.indexer_selection_params())
                else:
                    selection = select(q, cache.k, c.method, causal=True, **c.method_params)
            out = sparse_attention(q, cache.k, cache.v, selection.indices, causal=True, backend=c.backend)
        if self.head_hook is not None:
            out = self.head_hook(q, cache.k, cache.v, out)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, c.n_heads * c.head_dim))

    def export_forward(self, x: Tensor) -> Tensor:
        """The forward in plain tensor operations, for ONNX export (``torch.onnx.export`` calls it).

        No C++ kernel and no data-dependent Python control flow, so batch and length stay
        dynamic in the graph: dense attention is a masked softmax; DSA scores every causal pair
        with its indexer, takes the top-k (ONNX ``TopK`` keeps the lower index on ties, as the
        fused scorer does), and attends by a softmax over the dense logits masked to the
        selection (``[B, H, N, N]`` logits: O(N^2) memory, fine for export and short inference).
        Equals :meth:`forward` in ``sparse`` (dense) mode.
        """
        c = self.config
        if c.method not in ("dense", "dsa"):
            raise ValueError(f"ONNX export supports dense and dsa attention, not {c.method!r}")
        if c.method == "dsa" and not self.selects_by_own_indexer:
            raise ValueError("ONNX export of dsa needs the layer's own indexer (no fixed index tensors)")
        b, n, _ = x.shape
        q, k, v = self.project(x)
        g = c.n_heads // c.n_kv_heads
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # [B, H, N, D]
        logits = (q @ k.transpose(-1, -2)) * c.head_dim ** -0.5  # [B, H, N, N]
        allowed = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()  # [N, N]
        if c.method == "dsa":
            index_q, index_k, weights = self.indexer(x)
            scores = indexer_scores(index_q, index_k, weights).masked_fill(~allowed, float("-inf"))  # [B, N, N]
            top_k = self.top_k
            # top_k padding columns of -inf: TopK always has top_k candidates, whatever N is.
            scores = torch.cat([scores, scores.new_full((b, n, top_k), float("-inf"))], dim=-1)
            top, idx = scores.topk(top_k, dim=-1)  # [B, N, K]
            chosen = torch.zeros_like(scores).scatter(-1, idx, torch.isfinite(top).to(scores.dtype))[..., :n] > 0
            allowed = allowed & chosen.unsqueeze(1)  # [B, 1, N, N]
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        out = probs @ v  # [B, H, N, D]
        return self.o_proj(out.transpose(1, 2).reshape(b, n, c.n_heads * c.head_dim))

    def _check_input(self, x: Tensor, mode: str) -> None:
        c = self.config
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != c.dim:
            raise ValueError(f"x must be [B, N, dim={c.dim}], got shape {tuple(getattr(x, 'shape', ()))}")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"mode must be one of {ATTENTION_MODES}, got {mode!r}")
        if mode == "warmup" and self.indexer is None:
            raise ValueError(f"mode 'warmup' needs the lightning indexer (method 'dsa'), not {c.method!r}")
        if mode == "sparse" and c.method == "dense":
            raise ValueError("mode 'sparse' needs a selection method; this layer is dense")

    def forward_with_aux(self, x: Tensor, mode: str | None = None, *, collect: bool = False,
                         keep_scores: bool = False, train_indexer: bool | None = None,
                         key_mask: Tensor | None = None) -> tuple[Tensor, AttentionAux]:
        """``x [B, N, dim]`` -> ``(y [B, N, dim], AttentionAux)``.

        ``collect`` measures statistics (no gradient; costs an extra dense pass);
        ``keep_scores`` returns the masked ``[B, N, N]`` indexer scores for visualisation (and
        selects from them); ``train_indexer`` computes the DSA indexer loss (``warmup``: dense
        target by query chunks; ``sparse``: over the selected keys); by default always in
        ``warmup`` and in ``sparse`` when autograd is on or statistics are asked for.
        ``key_mask [B, N]``: padded positions (False / 0), see :meth:`forward`; not with the
        indexer loss, ``collect`` or ``keep_scores`` (which assume unpadded sequences).
        """
        if torch.onnx.is_in_onnx_export():
            return self.export_forward(x), AttentionAux()
        mode = self.default_mode if mode is None else mode
        self._check_input(x, mode)
        c = self.config
        b, n, _ = x.shape
        if train_indexer is None:
            train_indexer = mode == "warmup" or torch.is_grad_enabled() or collect or keep_scores
        key_mask = check_key_mask(key_mask, b, n, x.device)
        if key_mask is not None and bool(key_mask.all()):
            key_mask = None  # nothing padded: the unmasked paths (fused scoring) apply
        if key_mask is not None and ((self.indexer is not None and train_indexer) or collect or keep_scores):
            raise ValueError("key_mask: padded batches are supported for inference (dense and sparse modes without"
                             " the indexer loss, collect or keep_scores)")
        x = in_autocast_dtype(x)  # one low-precision copy for every projection to save
        q, k, v = self.project(x)
        aux = AttentionAux()
        scores = None
        indexer_params = self.indexer_selection_params() if self.indexer is not None else {}
        indexer_out = None  # (index_q, index_k, weights) as the selection rounds them
        if self.indexer is not None and ((mode != "dense" and train_indexer) or collect or keep_scores):
            index_q, index_k, weights = self.indexer(x.detach())  # detached: the KL trains only the indexer
            indexer_out = (index_q, index_k, weights)
            if indexer_params["precision"] == "bfloat16":
                # The rounding dsa_select applies, here differentiable (the cast passes gradients on).
                indexer_out = (index_q.bfloat16().float(), index_k.bfloat16().float(), weights)
            if keep_scores:  # for visualisation only: every [B, N, N] score
                scores = indexer_scores(*indexer_out).float()
                scores = scores.masked_fill(~causal_mask(n, n, x.device), float("-inf"))
        if mode == "sparse":
            if scores is not None:  # kept scores: select from them, so the picture shows the selection used
                indices = topk_from_scores(scores.detach(), self.top_k)  # [B, N, K]
                aux.selection = Selection(indices[:, None], n, True, "dsa",
                                          {"top_k": self.top_k, "scoring": "torch.topk of the training scores",
                                           "precision": indexer_params["precision"]})
            elif indexer_out is not None:
                # The fused selection on the indexer outputs already computed (no gradient, no score matrix).
                aux.selection = dsa_select(index_q.detach(), index_k.detach(), weights.detach(), causal=c.causal,
                                           **indexer_params)
            else:
                aux.selection = self.select(x, q, k, key_mask)
            if indexer_out is not None and train_indexer:
                # DSA sparse stage in O(N K): the KL over the selected keys only, to the head-mean
                # probabilities the attention gathers as it computes them where its kernel can.
                out, target = sparse_attention_with_head_mean(q, k, v, aux.selection.indices, causal=c.causal,
                                                              backend=c.backend)
                with _float32(x.device):
                    if target is not None:
                        aux.indexer_loss = sparse_indexer_loss_from_target(target, *indexer_out,
                                                                           aux.selection.indices[:, 0])
                    else:
                        aux.indexer_loss = sparse_indexer_loss(q.detach(), k.detach(), *indexer_out,
                                                               aux.selection.indices[:, 0])
            else:
                out = sparse_attention(q, k, v, aux.selection.indices, causal=c.causal, backend=c.backend)
        else:
            out = dense_attention(q, k, v, causal=c.causal, key_mask=key_mask)
            if mode == "warmup" and train_indexer:
                # Dense warm-up: the KL to the dense attention by query chunks (O(N * chunk) memory).
                with _float32(x.device):
                    aux.indexer_loss = dense_indexer_loss(q.detach(), k.detach(), *indexer_out)
        if aux.indexer_loss is not None:
            # The KL reaches only the indexer's parameters (detached input): its gradients now, so
            # that the indexer's activations and the KL's O(N) gradients are not held to the backward.
            aux.indexer_loss = with_gradients_now(aux.indexer_loss, self.indexer.parameters())
        if collect:
            detached = None if indexer_out is None else tuple(t.detach().float() for t in indexer_out)
            with _float32(x.device):
                aux.stats = layer_stats(q.detach().float(), k.detach().float(), detached, aux.selection, self.top_k)
        if keep_scores and scores is not None:
            aux.indexer_scores = scores.detach()
        if self.head_hook is not None:
            out = self.head_hook(q, k, v, out)  # [B, H, N, D]
        y = self.o_proj(out.transpose(1, 2).reshape(b, n, c.n_heads * c.head_dim))
        return y, aux
