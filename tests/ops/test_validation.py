"""Bad input raises ValueError/TypeError naming the argument."""

import numpy as np
import pytest
import torch
from helpers import make_qkv

from sparse_attention import attention, sparse_attention


def _inputs():
    q, k, v = make_qkv(1, 4, 2, 10)
    idx = torch.zeros(1, 1, 10, 3, dtype=torch.long)
    return q, k, v, idx


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda q, k, v, i: (q[0], k, v, i), ValueError, "q must have rank 4"),
        (lambda q, k, v, i: (q, k, v, i[0]), ValueError, "indices must have rank 4"),
        (lambda q, k, v, i: (q, k[:, :, :5], v, i), ValueError, "k and v must have the same length"),
        (lambda q, k, v, i: (torch.cat([q, q]), k, v, i), ValueError, "batch size mismatch"),
        (lambda q, k, v, i: (q, k[..., :8], v, i), ValueError, "head dim mismatch"),
        (lambda q, k, v, i: (q[:, :3], k, v, i), ValueError, "multiple of k/v heads"),
        (lambda q, k, v, i: (q, k.double(), v, i), TypeError, "one dtype"),
        (lambda q, k, v, i: (q, k, v, i.float()), TypeError, "indices must be an integer"),
        (lambda q, k, v, i: (q.long(), k, v, i), TypeError, "q must be a floating-point"),
        (lambda q, k, v, i: (q, k, v, i + 10), ValueError, "indices out of range"),
        (lambda q, k, v, i: (q, k, v, i - 2), ValueError, "indices out of range"),
        (lambda q, k, v, i: (q, k, v, i.expand(1, 3, 10, 3)), ValueError, "H_sel"),
        (lambda q, k, v, i: (q, k, v, i[:, :, :4]), ValueError, "indices length"),
        (lambda q, k, v, i: (q, k, v, i[..., :0]), ValueError, "at least one slot"),
        (lambda q, k, v, i: (q[:, :, :0], k, v, i[:, :, :0]), ValueError, "empty sequence"),
        (lambda q, k, v, i: (q.numpy(), k, v, i), TypeError, "q must be a torch.Tensor"),
        (lambda q, k, v, i: (q, k.to("meta"), v, i), ValueError, "one device"),
    ],
)
def test_bad_input_raises(mutate, error, match):
    with pytest.raises(error, match=match):
        sparse_attention(*mutate(*_inputs()))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("slot", [0, 7, 8, 10])  # the C++ kernel reads 8 slots at a time, then the rest
@pytest.mark.parametrize("bad", [-2, 40, 10**12])
def test_index_out_of_range_raises_in_every_backend(backend, slot, bad):
    # The cpu kernel checks the values itself (no separate pass over the indices); an entry
    # in the causal future of its query is still checked.
    q, k, v = make_qkv(1, 4, 2, 40)
    idx = torch.randint(0, 40, (1, 2, 40, 11))
    idx[0, 1, 3, slot] = bad
    with pytest.raises(ValueError, match="indices out of range"):
        sparse_attention(q, k, v, idx, backend=backend)


def test_bad_scale_backend_and_causal():
    q, k, v, idx = _inputs()
    with pytest.raises(ValueError, match="scale"):
        sparse_attention(q, k, v, idx, scale=-1.0)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        sparse_attention(q, k, v, idx, backend="fast")
    with pytest.raises(TypeError, match="causal"):
        sparse_attention(q, k, v, idx, causal="yes")


@pytest.mark.parametrize(
    "method, params, match",
    [
        ("nope", {}, "unknown method 'nope'"),
        ("topk", {"top_k": 0}, "top_k must be an int >= 1"),
        ("topk", {"top_k": -3}, "top_k must be an int >= 1"),
        ("dsa", {"top_k": 0}, "top_k must be an int >= 1"),
        ("local", {"window": 0}, "window must be an int >= 1"),
        ("local", {"sinks": -1}, "sinks must be an int >= 0"),
        ("local", {"window_size": 4}, "has no parameter 'window_size'"),
        ("topk", {"top_k": 2.5}, "top_k must be an int"),
    ],
)
def test_bad_method_parameters(method, params, match):
    q, k, v, _ = _inputs()
    with pytest.raises((ValueError, TypeError), match=match):
        attention(q, k, v, method, **params)


def test_zero_heads_empty_batch_and_meta_tensors_are_clear_errors():
    import sparse_attention as sa

    k = torch.randn(1, 1, 16, 8)
    with pytest.raises(ValueError, match="at least one head"):
        sa.attention(torch.randn(1, 0, 16, 8), k, k, method="topk", top_k=4)
    with pytest.raises(ValueError, match="empty batch"):
        sa.attention(torch.randn(0, 2, 16, 8), torch.randn(0, 1, 16, 8), torch.randn(0, 1, 16, 8))
    meta = [torch.empty(1, 2, 16, 8, device="meta"), torch.empty(1, 1, 16, 8, device="meta"),
            torch.empty(1, 1, 16, 8, device="meta")]
    with pytest.raises(ValueError, match="q is a meta tensor"):
        sa.attention(*meta, method="topk", top_k=4)


@pytest.mark.parametrize("method,params", [("topk", {"top_k": np.int64(4)}), ("dsa", {"top_k": np.int32(4)}),
                                           ("local", {"window": np.int64(4), "sinks": np.int64(1)})])
def test_numpy_integers_are_accepted(method, params):
    import sparse_attention as sa

    q, k, v = torch.randn(1, 2, 16, 8), torch.randn(1, 1, 16, 8), torch.randn(1, 1, 16, 8)
    expected = sa.attention(q, k, v, method=method, **{name: int(value) for name, value in params.items()})
    torch.testing.assert_close(sa.attention(q, k, v, method=method, **params), expected)
