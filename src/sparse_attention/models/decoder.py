"""A decoder-only MoE language model whose attention method comes from config (GLM4-MoE style).

``token embedding -> n_layers x [RMSNorm -> attention -> + ; RMSNorm -> MoE FFN -> +] ->
RMSNorm -> tied output projection``. Attention: the package's one attention layer,
:class:`~sparse_attention.layers.attention.SparseSelfAttention` (RoPE, GQA, dense / DSA / any
selection method). Feed-forward: :class:`MoEFeedForward` (routed + shared experts).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.attention import AttentionAux, AttentionConfig, SparseSelfAttention
from ..layers.kv_cache import LayerCache
from ..layers.moe import MoEFeedForward
from .config import ModelConfig

IGNORE_INDEX = -100
#: Per-layer statistics a ``collect=True`` forward reports (attention selection, MoE load).
STAT_KEYS = ("sparsity", "recall", "oracle_recall", "indexer_kl", "coverage", "mean_distance", "expert_load_max")


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def attention_config(config: ModelConfig) -> AttentionConfig:
    """The attention layer's config for this model: the method's parameters are
    ``config.selection_params`` (``model.method_params`` and ``model.top_k``), and a dense
    model keeps ``model.top_k`` for its oracle statistics."""
    return AttentionConfig(
        dim=config.d_model, n_heads=config.n_heads, n_kv_heads=config.n_kv_heads, method=config.attention,
        method_params=config.selection_params if config.attention != "dense" else {}, causal=True,
        rope_theta=config.rope_theta, indexer_heads=config.indexer_heads, indexer_head_dim=config.indexer_head_dim,
        backend=config.backend, stats_top_k=config.top_k,
    )


class Block(nn.Module):
    """Pre-norm transformer block: attention and MoE feed-forward, each with a residual."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = SparseSelfAttention(attention_config(config))
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = MoEFeedForward(config.d_model, config.d_ff, config.n_experts, config.expert_top_k,
                                  config.n_shared_experts)

    def forward(self, x: Tensor, mode: str, collect: bool, keep_scores: bool) -> tuple[Tensor, AttentionAux, Tensor]:
        y, aux = self.attn.forward_with_aux(self.attn_norm(x), mode, collect=collect, keep_scores=keep_scores)
        x = x + y
        moe = self.ffn(self.ffn_norm(x))
        if collect:
            aux.stats["expert_load_max"] = moe.load.max().item()
        return x + moe.out, aux, moe.aux_loss

    def decode(self, x: Tensor, cache: LayerCache) -> Tensor:
        """The block on new tokens after the cached ones (see ``SparseSelfAttention.decode``)."""
        x = x + self.attn.decode(self.attn_norm(x), cache)
        return x + self.ffn(self.ffn_norm(x)).out


@dataclass
class LMOutput:
    """Forward result.

    Attributes:
        logits: ``[B, N, vocab]``.
        loss: mean next-token cross entropy over scored targets (None without targets).
        correct, scored: correctly predicted and scored target counts (accuracy = ratio).
        aux_loss: load-balancing loss summed over layers.
        indexer_loss: DSA KL loss averaged over layers (None when no layer has one).
        layers: per-layer :class:`AttentionAux` (``selection`` None with ``keep_selections=False``).
    """

    logits: Tensor
    loss: Tensor | None
    correct: int
    scored: int
    aux_loss: Tensor
    indexer_loss: Tensor | None
    layers: list[AttentionAux] = field(default_factory=list)


class SparseLM(nn.Module):
    """The language model (see the module docstring). ``config.vocab_size`` must be set;
    ``seed`` seeds the initial weights (see :meth:`reset_parameters`)."""

    def __init__(self, config: ModelConfig, seed: int = 0):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (> 0) before building the model")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Initialise every weight from a generator seeded by ``(seed, parameter name)``.

        A parameter's initial value then depends only on its name, not on which other
        modules exist, so a dense model and a DSA model built with one seed start with
        identical weights everywhere except the indexers they do not share.
        """
        for module_name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(module_name.encode()))
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.02)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()

    @property
    def default_mode(self) -> str:
        return "dense" if self.config.attention == "dense" else "sparse"

    def indexer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the lightning indexers (empty unless attention is ``dsa``)."""
        return [p for block in self.blocks if block.attn.indexer is not None for p in block.attn.indexer.parameters()]

    def forward(self, input_ids: Tensor, targets: Tensor | None = None, *, mode: str | None = None,
                collect: bool = False, keep_scores: bool = False, keep_selections: bool = True) -> LMOutput:
        """``input_ids [B, N]`` int64 (and ``targets [B, N]``, ``-100`` = not scored).

        ``mode``: ``dense``, ``warmup`` or ``sparse`` (default: ``sparse`` for a selection
        method, ``dense`` otherwise). ``collect``/``keep_scores``: see
        :meth:`~sparse_attention.layers.attention.SparseSelfAttention.forward_with_aux`.
        ``keep_selections=False`` (training steps) drops each layer's selection from the output
        once the layer is done, unless ``collect`` or ``keep_scores`` needs it: the output lives
        through the backward, and the int64 indices (``B x N x K`` per layer) with it.
        """
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must be [B, N] int64, got {tuple(input_ids.shape)} {input_ids.dtype}")
        mode = mode or self.default_mode
        x = self.embed(input_ids)  # [B, N, d_model]
        layers, aux_losses = [], []
        for block in self.blocks:
            x, aux, aux_loss = block(x, mode, collect, keep_scores)
            if not (keep_selections or collect or keep_scores):
                aux.selection = None
            layers.append(aux)
            aux_losses.append(aux_loss)
        logits = F.linear(self.norm(x), self.embed.weight)  # tied embeddings: [B, N, vocab]
        loss, correct, scored = None, 0, 0
        if targets is not None:
            if targets.shape != input_ids.shape:
                raise ValueError(f"targets must have the shape of input_ids {tuple(input_ids.shape)},"
                                 f" got {tuple(targets.shape)}")
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
            with torch.no_grad():
                valid = targets != IGNORE_INDEX
                correct = int(((logits.argmax(dim=-1) == targets) & valid).sum())
                scored = int(valid.sum())
        kl = [a.indexer_loss for a in layers if a.indexer_loss is not None]
        return LMOutput(logits, loss, correct, scored, torch.stack(aux_losses).sum(),
                        torch.stack(kl).mean() if kl else None, layers)

    def new_cache(self) -> list[LayerCache]:
        """An empty cache per layer, for :meth:`decode`."""
        return [LayerCache() for _ in self.blocks]

    @torch.no_grad()
    def decode(self, input_ids: Tensor, cache: list[LayerCache]) -> Tensor:
        """Logits ``[B, n, vocab]`` of new tokens ``input_ids [B, n]`` that follow the cached ones;
        appends them to ``cache`` (from :meth:`new_cache`). The prompt is one call, then one token a
        step; the logits equal those of :meth:`forward` on the whole sequence (``sparse`` mode)."""
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must be [B, n] int64, got {tuple(input_ids.shape)} {input_ids.dtype}")
        if len(cache) != len(self.blocks):
            raise ValueError(f"cache must hold one LayerCache per layer ({len(self.blocks)}), got {len(cache)}")
        x = self.embed(input_ids)  # [B, n, d_model]
        for block, layer_cache in zip(self.blocks, cache):
            x = block.decode(x, layer_cache)
        return F.linear(self.norm(x), self.embed.weight)

    def generate(self, input_ids: Tensor, max_new_tokens: int, **sampling) -> Tensor:
        """``input_ids [B, N]`` followed by ``max_new_tokens`` generated tokens: ``[B, N + new]``
        (greedy by default; see :func:`sparse_attention.models.generation.generate`)."""
        from .generation import generate

        return generate(self, input_ids, max_new_tokens, **sampling)
