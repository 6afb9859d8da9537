"""Sparse attention kernels. Each module exposes one kernel function with the signature
``kernel(q, k, v, indices, *, causal, scale) -> Tensor``; registration and dispatch live in
:mod:`sparse_attention.ops.backends`. Kernels never import the reference."""
