"""Select keys with every registered method, run the shared sparse kernel, compare with dense.

    python examples/attention_api.py [--length 1024]
"""

import argparse

import torch

import sparse_attention as sa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1024, help="sequence length N")
    args = parser.parse_args()
    torch.manual_seed(0)
    q = torch.randn(1, 8, args.length, 64)  # [B, H, N, D]
    k = torch.randn(1, 2, args.length, 64)  # [B, H_kv, N, D]: GQA 8:2
    v = torch.randn(1, 2, args.length, 64)
    dense = sa.dense_attention(q, k, v, causal=True)
    print(f"{'method':8} {'edges/query':>11} {'recall':>7} {'cosine vs dense':>15}")
    for spec in sa.list_methods():
        selection = sa.select(q, k, spec.name, causal=True)  # the method's defaults
        out = sa.sparse_attention(q, k, v, selection.indices, causal=True)
        stats = sa.selection_stats(selection, q, k)
        cosine = torch.nn.functional.cosine_similarity(out.flatten(), dense.flatten(), dim=0).item()
        print(f"{spec.name:8} {stats.edges_per_query:11.1f} {stats.attention_recall:7.3f} {cosine:15.4f}")


if __name__ == "__main__":
    main()
