"""Data: synthetic attention inputs (and, later, corpora and tokenizers)."""

from .synthetic import clustered_qkv, gaussian_qkv

__all__ = ["clustered_qkv", "gaussian_qkv"]
