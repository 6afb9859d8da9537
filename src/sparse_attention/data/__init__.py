"""Data: synthetic attention inputs, text corpora, and LM token data (:mod:`.lm`: batches, tokenizers, tasks)."""

from .synthetic import clustered_qkv, gaussian_qkv

__all__ = ["clustered_qkv", "gaussian_qkv"]
