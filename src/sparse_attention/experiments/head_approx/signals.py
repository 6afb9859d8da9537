"""Teacher signals: what every attention layer of a trained dense LM sees and outputs, on disk.

For a set of sequences the teacher runs forward once with hooks on every layer
(:attr:`~sparse_attention.layers.attention.SparseSelfAttention.head_hook` and the attention's
input norm) and writes, per layer, safetensors shards of

* ``x [S, T, dim]``: the layer's normalised input (what a DSA indexer reads),
* ``q [S, H, T, D]``, ``k``, ``v [S, H_kv, T, D]``: the projections with RoPE,
* ``out [S, H, T, D]``: each head's attention output before the output projection,
* ``top_idx [S, H, T, K]`` (int32) and ``top_prob [S, H, T, K]``: each head's ``K`` most
  attended keys and their probabilities (``-1`` / 0 past the causal prefix),

``shard_size`` sequences per file, so memory stays bounded by one shard whatever the number
of sequences. ``meta.json`` (written last) names the teacher and the settings; a folder whose
meta matches is reused instead of recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...models.decoder import SparseLM
from ...ops.dense import causal_mask
from ...training.checkpoint import safetensors_torch
from ...utils.results_io import read_json, write_json

FIELDS = ("x", "q", "k", "v", "out", "top_idx", "top_prob")


def attention_probs(q: Tensor, k: Tensor) -> Tensor:
    """Causal softmax attention ``[..., H, T, T]`` of ``q [..., H, T, D]`` and ``k [..., H_kv, T, D]`` (GQA)."""
    g = q.shape[-3] // k.shape[-3]
    k = k.repeat_interleave(g, dim=-3)
    t = q.shape[-2]
    logits = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    return logits.masked_fill(~causal_mask(t, t, q.device), float("-inf")).softmax(dim=-1)


def top_attended(probs: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """``(idx int32, prob)`` of the ``top_k`` largest probabilities per row, most attended first;
    ``-1`` and 0 where a row has fewer causally visible keys."""
    k = min(top_k, probs.shape[-1])
    values, idx = probs.topk(k, dim=-1)
    idx = torch.where(values > 0, idx, torch.full_like(idx, -1))
    return idx.int(), values


@dataclass
class Capture:
    """Hooks that record every layer's signals during one teacher forward."""

    model: SparseLM
    top_k: int

    def __post_init__(self) -> None:
        self.layers: list[dict[str, Tensor]] = [{} for _ in self.model.blocks]
        self._handles = []
        for i, block in enumerate(self.model.blocks):
            self._handles.append(block.attn_norm.register_forward_hook(self._norm_hook(i)))
            block.attn.head_hook = self._head_hook(i)

    def _norm_hook(self, i: int):
        def hook(module, args, output):
            self.layers[i]["x"] = output.detach()
        return hook

    def _head_hook(self, i: int):
        def hook(q: Tensor, k: Tensor, v: Tensor, out: Tensor) -> Tensor:
            layer = self.layers[i]
            layer.update(q=q.detach(), k=k.detach(), v=v.detach(), out=out.detach())
            layer["top_idx"], layer["top_prob"] = top_attended(attention_probs(q.detach(), k.detach()), self.top_k)
            return out
        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        for block in self.model.blocks:
            block.attn.head_hook = None


def _shard_path(root: Path, split: str, layer: int, shard: int) -> Path:
    return root / split / f"layer{layer}" / f"shard{shard:04d}.safetensors"


def write_signals(model: SparseLM, batches: dict[str, list[Tensor]], out_dir: str | Path, *, top_k: int,
                  shard_size: int, meta: dict[str, Any], progress=lambda items, desc: items) -> dict[str, Any]:
    """Run the teacher over ``batches`` (split -> list of ``input_ids [B, T]``) and write the shards.

    Reuses ``out_dir`` when its ``meta.json`` equals ``meta`` plus the shapes written. Returns
    the meta (with ``sequences`` per split and ``shards`` per split).
    """
    st = safetensors_torch()
    out = Path(out_dir)
    wanted = {**meta, "top_k": top_k, "shard_size": shard_size,
              "sequences": {split: int(sum(b.shape[0] for b in bs)) for split, bs in batches.items()}}
    if (out / "meta.json").exists() and read_json(out / "meta.json").get("settings") == wanted:
        return read_json(out / "meta.json")
    model.eval()
    capture = Capture(model, top_k)
    shards: dict[str, int] = {}
    try:
        for split, split_batches in batches.items():
            pending: list[list[dict[str, Tensor]]] = []
            count, shard = 0, 0
            for input_ids in progress(split_batches, f"teacher signals ({split})"):
                with torch.no_grad():
                    model(input_ids)
                pending.append([{name: t.cpu() for name, t in layer.items()} for layer in capture.layers])
                count += input_ids.shape[0]
                if count >= shard_size:
                    _flush(st, out, split, shard, pending)
                    pending, count, shard = [], 0, shard + 1
            if pending:
                _flush(st, out, split, shard, pending)
                shard += 1
            shards[split] = shard
    finally:
        capture.close()
    result = {"settings": wanted, "shards": shards, "fields": list(FIELDS)}
    write_json(out / "meta.json", result)  # last: its presence marks the folder complete
    return result


def _flush(st, root: Path, split: str, shard: int, pending: list[list[dict[str, Tensor]]]) -> None:
    """One shard per layer from the pending batches (concatenated along the sequence axis)."""
    for layer in range(len(pending[0])):
        tensors = {name: torch.cat([batch[layer][name] for batch in pending]).contiguous() for name in FIELDS}
        path = _shard_path(root, split, layer, shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        st.save_file(tensors, str(tmp))
        tmp.replace(path)


def read_layer(root: str | Path, split: str, layer: int, fields: tuple[str, ...] = FIELDS) -> dict[str, Tensor]:
    """Every shard of one layer and split, concatenated: ``{field: tensor}``."""
    st = safetensors_torch()
    root = Path(root)
    meta = read_json(root / "meta.json")
    parts: dict[str, list[Tensor]] = {name: [] for name in fields}
    for shard in range(meta["shards"][split]):
        loaded = st.load_file(str(_shard_path(root, split, layer, shard)))
        for name in fields:
            parts[name].append(loaded[name])
    return {name: torch.cat(ts) for name, ts in parts.items()}
