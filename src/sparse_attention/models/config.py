"""Configuration of the language model: widths, depth, MoE, attention method and indexer shape."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..selection.base import get_method
from ..utils.checks import check_config_int, check_number


@dataclass
class ModelConfig:
    """A decoder-only LM: RMSNorm, RoPE, GQA attention with a configurable method, GLM4-style MoE.

    Attributes:
        vocab_size: tokens; ``0`` means "take it from the tokenizer" (resolved by the trainer).
        d_model, n_layers, n_heads, n_kv_heads: widths and depth; ``n_kv_heads`` divides
            ``n_heads`` (GQA).
        d_ff: hidden width of every expert (routed and shared).
        n_experts, expert_top_k: routed experts and how many each token uses.
        n_shared_experts: always-on experts added to the routed output (GLM4-MoE uses 1).
        aux_loss_coef: weight of the Switch-style load-balancing loss.
        attention: ``dense`` or a registered selection method (``dsa`` = lightning indexer).
        top_k: keys per query for ``dsa``/``topk``-like methods: the one place it is set (a
            different ``method_params["top_k"]`` is an error that names both).
        method_params: the selection method's other parameters (``scoring``, ``window``, ...).
        indexer_heads, indexer_head_dim: lightning indexer shape (``dsa``).
        rope_theta: RoPE base. norm_eps: RMSNorm epsilon.
        backend: sparse attention backend (``auto`` picks the fastest that fits).
    """

    vocab_size: int = 0
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int = 8
    d_ff: int = 512
    n_experts: int = 4
    expert_top_k: int = 2
    n_shared_experts: int = 1
    aux_loss_coef: float = 0.01
    attention: str = "dense"
    top_k: int = 64
    method_params: dict = field(default_factory=dict)
    indexer_heads: int = 4
    indexer_head_dim: int = 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    backend: str = "auto"

    def __post_init__(self) -> None:
        owner = "model"
        check_config_int(owner, "vocab_size", self.vocab_size, allow_zero=True)
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "n_experts", "expert_top_k",
                     "top_k", "indexer_heads", "indexer_head_dim"):
            check_config_int(owner, name, getattr(self, name))
        check_config_int(owner, "n_shared_experts", self.n_shared_experts, allow_zero=True)
        check_number(owner, "aux_loss_coef", self.aux_loss_coef, allow_zero=True)
        check_number(owner, "rope_theta", self.rope_theta)
        check_number(owner, "norm_eps", self.norm_eps)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"model.d_model ({self.d_model}) / model.n_heads ({self.n_heads}) must be an even int")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"model.n_heads ({self.n_heads}) must be a multiple of model.n_kv_heads"
                             f" ({self.n_kv_heads})")
        if self.expert_top_k > self.n_experts:
            raise ValueError(f"model.expert_top_k ({self.expert_top_k}) must be <= model.n_experts"
                             f" ({self.n_experts})")
        if self.indexer_head_dim % 2:
            raise ValueError(f"model.indexer_head_dim must be even (RoPE), got {self.indexer_head_dim}")
        if not isinstance(self.method_params, dict):
            raise TypeError(f"model.method_params must be a dict, got {type(self.method_params).__name__}")
        given = self.method_params.get("top_k", self.top_k)
        if given != self.top_k:
            raise ValueError(f"model.method_params.top_k ({given!r}) conflicts with model.top_k ({self.top_k}): keys"
                             " per query are set by model.top_k alone; drop top_k from model.method_params")
        if self.attention != "dense":
            get_method(self.attention).check_params(self.selection_params)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def selection_params(self) -> dict:
        """Parameters passed to the selection method: ``method_params`` plus ``model.top_k`` where the
        method takes a ``top_k``."""
        params = {name: value for name, value in self.method_params.items() if name != "top_k"}
        if "top_k" in {p.name for p in get_method(self.attention).params}:
            params["top_k"] = self.top_k
        return params

    @property
    def uses_indexer(self) -> bool:
        return self.attention == "dsa"
