"""GLM4-MoE-style feed-forward: routed SwiGLU experts with top-k routing plus shared experts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.autocast import in_autocast_dtype


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``: the expert MLP of GLM4-MoE (and LLaMA)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


@dataclass
class MoEOutput:
    """``out [B, N, dim]``; ``aux_loss`` the load-balancing loss (scalar); ``load [E]`` the share
    of routed slots each expert received (sums to 1)."""

    out: Tensor
    aux_loss: Tensor
    load: Tensor


class MoEFeedForward(nn.Module):
    """Routed experts + shared experts, as in GLM4-MoE.

    Routing follows GLM4-MoE: sigmoid router scores, the ``top_k`` highest per token, their
    scores renormalised to sum to one (``norm_topk_prob``). GLM4-MoE balances load with a
    bias on the routing scores updated outside the gradient (DeepSeek-V3's auxiliary-loss-free
    scheme) at a scale of hundreds of experts; with a handful of experts the classic
    Switch-Transformer loss ``E * sum_e f_e * P_e`` (``f`` = share of slots routed to ``e``,
    ``P`` = mean normalised router score) is simpler and keeps every expert in use, so it is
    what this layer returns for the trainer to weight.

    Args:
        dim: model width. hidden: expert hidden width. n_experts: routed experts.
        top_k: experts per token. n_shared: always-on experts (their outputs are added).
    """

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int, n_shared: int = 1):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(dim, hidden) for _ in range(n_experts))
        self.shared = nn.ModuleList(SwiGLU(dim, hidden) for _ in range(n_shared))

    def _export_forward(self, tokens: Tensor, top_experts: Tensor, gates: Tensor, shape) -> MoEOutput:
        """For ONNX export: every expert on every token, weighted by a dense gate matrix that is
        zero outside each token's top-k (the same sum, with no data-dependent loop); no aux loss."""
        dense_gates = torch.zeros(tokens.shape[0], self.n_experts, dtype=gates.dtype,
                                  device=tokens.device).scatter(1, top_experts, gates)  # [T, E]
        out = torch.zeros(tokens.shape, dtype=gates.dtype, device=tokens.device)
        for e, expert in enumerate(self.experts):
            out = out + dense_gates[:, e:e + 1] * expert(tokens)
        for expert in self.shared:
            out = out + expert(tokens)
        zero = tokens.new_zeros(())
        return MoEOutput(out.view(shape), zero, tokens.new_zeros(self.n_experts))

    def forward(self, x: Tensor) -> MoEOutput:
        """``x [B, N, dim]`` -> :class:`MoEOutput`."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [T, dim]
        # under autocast cast once, so that the router and each expert's gate and up projections
        # save one copy (the output still accumulates in x's dtype)
        tokens = in_autocast_dtype(flat)
        scores = torch.sigmoid(self.router(tokens).float())  # [T, E]
        top_scores, top_experts = scores.topk(self.top_k, dim=-1)  # [T, k]
        gates = (top_scores / top_scores.sum(dim=-1, keepdim=True)).to(x.dtype)
        if torch.onnx.is_in_onnx_export():
            return self._export_forward(tokens, top_experts, gates, shape)
        out = torch.zeros_like(flat)
        flat_experts = top_experts.reshape(-1)  # [T * k]
        counts = torch.bincount(flat_experts, minlength=self.n_experts)
        # Group the (token, slot) pairs by expert once; each expert then runs one dense GEMM
        # over its tokens instead of masking all T tokens.
        order = flat_experts.argsort(stable=True)
        token_of_slot = order // self.top_k
        gate_of_slot = gates.reshape(-1)[order]
        start = 0
        for expert, count in zip(self.experts, counts.tolist()):
            if count:
                rows = token_of_slot[start:start + count]
                out.index_add_(0, rows, expert(tokens[rows]) * gate_of_slot[start:start + count, None])
            start += count
        for expert in self.shared:
            out = out + expert(tokens)
        load = counts.float() / flat_experts.numel()  # f_e
        importance = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=0)  # P_e
        aux_loss = self.n_experts * (load * importance).sum()
        return MoEOutput(out.view(shape), aux_loss, load.detach())
