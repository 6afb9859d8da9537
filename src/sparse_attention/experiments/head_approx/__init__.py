"""The head-approximation study (the fourth seed): attention heads replaced by a top-K selection
plus a small MLP, measured against the heads they replace (quality, FLOPs, runtime)."""
