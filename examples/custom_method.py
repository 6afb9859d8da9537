"""A new selection method is a selector and its spec: register it and it runs everywhere.

Here a strided window (every `stride`-th key back from the query, `top_k` of them) with a
budget parameter, compared with dense attention and with `local` at the same budget.

    python examples/custom_method.py [--length 1024] [--top-k 64]
"""

import argparse

import torch

import sparse_attention as sa
from sparse_attention.selection.base import Param, Selection, register_method


@register_method("strided", params=[Param("top_k", 64, "keys per query"), Param("stride", 2, "distance between keys")],
                 summary="every stride-th key back from the query", reference="examples/custom_method.py",
                 budget_param="top_k", full_coverage=lambda n: {"top_k": n, "stride": 1})
def select_strided(q, k, *, causal=True, top_k=64, stride=2):
    b, n_q, n_k = q.shape[0], q.shape[2], k.shape[2]
    last = torch.arange(n_q) + (n_k - n_q) if causal else torch.full((n_q,), n_k - 1)  # [N_q] last visible key
    idx = last[:, None] - stride * torch.arange(top_k)[None, :]  # [N_q, top_k]
    idx = torch.where(idx >= 0, idx, -1)
    return Selection(idx.expand(b, 1, n_q, top_k), n_k, causal, "strided", {"top_k": top_k, "stride": stride})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1024, help="sequence length N")
    parser.add_argument("--top-k", type=int, default=64, help="keys per query of both methods")
    args = parser.parse_args()
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, args.length, 64), torch.randn(1, 2, args.length, 64), torch.randn(1, 2, args.length, 64)
    dense = sa.dense_attention(q, k, v, causal=True)
    for method, params in (("strided", {"top_k": args.top_k}), ("local", {"window": args.top_k})):
        out = sa.attention(q, k, v, method=method, **params)
        error = ((out - dense).norm() / dense.norm()).item()
        print(f"{method:8} relative L2 error vs dense {error:.4f}")
    full = sa.attention(q, k, v, method="strided", **sa.get_method("strided").full_coverage(args.length))
    print(f"strided at full coverage equals dense: {torch.allclose(full, dense, atol=1e-5)}")


if __name__ == "__main__":
    main()
