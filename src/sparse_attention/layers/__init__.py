"""nn.Modules: the configurable attention layer, the lightning indexer, RoPE."""

from .attention import AttentionConfig, SparseSelfAttention
from .indexer import LightningIndexer
from .rope import apply_rope

__all__ = ["AttentionConfig", "SparseSelfAttention", "LightningIndexer", "apply_rope"]
