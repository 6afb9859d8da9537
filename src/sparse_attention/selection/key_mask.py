"""Key padding masks: which keys exist (a padded batch), for every selection method.

A key mask is ``[B, N_k]``, True (or 1) where the key is a real token and False (0) where it
is padding, as Hugging Face's ``attention_mask``. Padded keys are never selected: the top-k
methods (``topk``, ``dsa``) score them ``-inf`` before their top-k, so a row still gets its best
``K`` real keys; every other method's rows drop the padded keys they hold. A query row left
with no key (e.g. a left-padded position under a causal mask) attends nothing: zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_key_mask(key_mask, batch: int, n_keys: int, device: torch.device) -> Tensor | None:
    """``key_mask`` as a bool ``[B, N_k]`` tensor on ``device`` (None stays None).

    Raises:
        TypeError: not a tensor, or not bool / integer. ValueError: a shape other than
            ``[B, N_k]`` (``[1, N_k]`` broadcasts over the batch) or integers other than 0 and 1.
    """
    if key_mask is None:
        return None
    if not isinstance(key_mask, Tensor):
        raise TypeError(f"key_mask must be a torch.Tensor [B, N_k] or None, got {type(key_mask).__name__}")
    if key_mask.dtype != torch.bool and (key_mask.is_floating_point() or key_mask.is_complex()):
        raise TypeError(f"key_mask must be bool or integer (1 = real key, 0 = padding), got dtype {key_mask.dtype}")
    if key_mask.dim() != 2 or key_mask.shape[1] != n_keys or key_mask.shape[0] not in (1, batch):
        raise ValueError(f"key_mask must have shape [B={batch}, N_k={n_keys}], got {tuple(key_mask.shape)}")
    if key_mask.dtype != torch.bool:
        if bool(((key_mask != 0) & (key_mask != 1)).any()):
            raise ValueError("key_mask holds integers other than 0 and 1 (1 = real key, 0 = padding)")
        key_mask = key_mask != 0
    return key_mask.to(device).expand(batch, n_keys)


def drop_masked_keys(indices: Tensor, key_mask: Tensor) -> Tensor:
    """``indices [B, H_sel, N_q, K]`` with every slot holding a padded key set to ``-1``."""
    b = key_mask.shape[0]
    idx = indices.expand(b, *indices.shape[1:]) if indices.shape[0] != b else indices
    flat = idx.clamp(min=0).reshape(b, -1)
    real = torch.gather(key_mask, 1, flat).view_as(idx)
    return torch.where((idx >= 0) & real, idx, torch.full_like(idx, -1))


def mask_scores(scores: Tensor, key_mask: Tensor) -> Tensor:
    """``scores [B, ..., N']`` (keys ``[0, N')``) with padded keys at ``-inf``, in place."""
    n = scores.shape[-1]
    mask = key_mask[:, :n].reshape(key_mask.shape[0], *([1] * (scores.dim() - 2)), n)
    return scores.masked_fill_(~mask, float("-inf"))
