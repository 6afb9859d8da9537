"""Shared test helpers: inputs, gradients, relative-error comparison."""

import torch


def make_qkv(b=1, h=4, h_kv=2, n_q=33, n_k=None, d=16, dtype=torch.float32, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    n_k = n_q if n_k is None else n_k
    q = torch.randn(b, h, n_q, d, generator=gen, dtype=torch.float64).to(dtype)
    k = torch.randn(b, h_kv, n_k, d, generator=gen, dtype=torch.float64).to(dtype)
    v = torch.randn(b, h_kv, n_k, d, generator=gen, dtype=torch.float64).to(dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))


def grads(out, *inputs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, upstream, allow_unused=True)


def assert_close(a, b, tol=1e-5):
    a, b = a.detach().double(), b.detach().double()
    # Relative error, with a floor of RMS 0.1 per element so that gradients that are zero in
    # theory (and round to ~1e-7 in practice) do not divide noise by noise.
    err = (a - b).norm() / max(float(b.norm()), 0.1 * b.numel() ** 0.5)
    assert err <= tol, f"relative error {float(err):.3g} > {tol}"
