"""A DSA attention layer (lightning indexer + top-k) in a forward and backward pass, and its
warm-up mode, where the indexer learns from the dense attention by KL.

    python examples/attention_layer.py [--length 512]
"""

import argparse

import torch

from sparse_attention import AttentionConfig, SparseSelfAttention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=512, help="sequence length N")
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = SparseSelfAttention(AttentionConfig(dim=256, n_heads=8, n_kv_heads=2, method="dsa",
                                                method_params={"top_k": 64}))
    x = torch.randn(2, args.length, 256, requires_grad=True)  # [B, N, dim]
    y, selection = layer(x, return_selection=True)  # sparse mode: the indexer's top-64 keys per token
    y.square().mean().backward()
    print(f"output {tuple(y.shape)}, selection {tuple(selection.indices.shape)} (shared by all heads),"
          f" input gradient norm {x.grad.norm():.4g}")
    # Warm-up: dense output; the KL from the dense attention to the indexer trains the indexer only.
    y, aux = layer.forward_with_aux(x.detach(), "warmup")
    aux.indexer_loss.backward()
    trained = sorted({name.split(".")[0] for name, p in layer.named_parameters() if p.grad is not None
                      and p.grad.abs().sum() > 0 and name.startswith("indexer")})
    print(f"warm-up KL {aux.indexer_loss.item():.4g}; parameters it reaches: {trained}")


if __name__ == "__main__":
    main()
