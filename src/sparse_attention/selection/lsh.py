"""``lsh``: Reformer's angular LSH attention (Kitaev et al. 2020), as a selection.

Keys and queries are hashed by random rotations; a query attends to the keys that landed
in its bucket and are near it in position, per hash round; the rounds are unioned.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.compact import lsh_rows
from ..utils.checks import check_int
from ._util import make_generator, query_key_limit
from .base import Param, Selection, register_method
from .costs import INDEX_BYTES, log2, merge_flops


def resolve_n_buckets(n_buckets: int | None, n_keys: int, bucket_size: int) -> int:
    """Validate ``n_buckets`` (1 or a positive even int); ``None`` -> ``max(2, N_k // bucket_size)``, made even."""
    if n_buckets is None:
        n = max(2, n_keys // bucket_size)
        return n + n % 2
    check_int("n_buckets", n_buckets)
    if n_buckets != 1 and n_buckets % 2:
        # argmax over [xR ; -xR] always yields an even number of buckets.
        raise ValueError(f"n_buckets must be 1 or even, got {n_buckets}")
    return n_buckets


def random_rotations(n_hashes: int, dim: int, n_buckets: int, seed: int, device=None) -> Tensor:
    """``[n_hashes, D, n_buckets // 2]`` float32 standard-normal rotations, drawn on CPU from ``seed``."""
    gen = make_generator(seed)
    rot = torch.randn(n_hashes, dim, max(1, n_buckets // 2), generator=gen, dtype=torch.float32)
    return rot.to(device) if device is not None else rot


_HASH_BLOCK_BYTES = 4 << 20  # products per block of rows in hash_rounds (a CPU block stays in L2/L3)


def hash_buckets(x: Tensor, rotation: Tensor) -> Tensor:
    """Angular LSH ``argmax([xR ; -xR])`` of ``x [..., N, D]`` with ``rotation [D, n_buckets/2]``.

    Returns ``[..., N]`` int64 buckets in ``[0, n_buckets)``.
    """
    return hash_rounds(x, rotation[None])[0]


def hash_rounds(x: Tensor, rotations: Tensor) -> Tensor:
    """:func:`hash_buckets` for every round at once: ``rotations [R, D, n_buckets/2]`` -> ``[R, ..., N]``.

    One GEMM against all rounds' rotations per block of rows, reduced while the block's
    ``[rows, R * n_buckets/2]`` products are still in cache (on CPU, blocks of ~4 MiB):
    about a third faster than a full-size product per round, which is written to and read
    back from memory twice (max, then min).
    """
    rounds, d, half = rotations.shape
    rows = x.reshape(-1, d)  # [T, D], T = every leading index x N
    cols = rotations.permute(1, 0, 2).reshape(d, rounds * half)  # [D, R * b/2]
    out = torch.empty(rounds, rows.shape[0], dtype=torch.long, device=x.device)  # [R, T]
    budget = _HASH_BLOCK_BYTES if x.device.type == "cpu" else 64 * _HASH_BLOCK_BYTES
    block = max(16, budget // (4 * rounds * half))
    for start in range(0, rows.shape[0], block):
        xr = (rows[start:start + block].float() @ cols).view(-1, rounds, half)  # [T_b, R, b/2]
        # argmax over [xR ; -xR] without building it: the largest of xR, or the smallest of xR
        # shifted by n_buckets/2; ties and NaN (a NaN row's first NaN) go to the xR half, as
        # argmax over the concatenation has them.
        top, top_at = xr.max(dim=-1)
        low, low_at = xr.min(dim=-1)
        out[:, start:start + block] = torch.where(torch.isnan(top) | (top >= -low), top_at, low_at + half).T
    return out.view(rounds, *x.shape[:-1])


def _bucket_runs(qb: Tensor, kb: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One hash round's keys sorted by (bucket, position) and each query's place in that order.

    Args:
        qb: ``[B, H_kv, M]`` query buckets (``M = G * N_q``, queries grouped by KV head).
        kb: ``[B, H_kv, N_k]`` key buckets.
        pos: ``[M]`` the query's end-aligned position (= its causal limit), in ``[-1, N_k - 1]``.
    Returns:
        ``order [B, H_kv, N_k]``: key positions sorted by (bucket, position); ``lo``, ``at``,
        ``hi`` ``[B, H_kv, M]``: the query's bucket is ``order[lo:hi]``, and its keys at
        positions ``<= pos`` are ``order[lo:at]``.
    """
    n_k = kb.shape[-1]
    keys = torch.arange(n_k, device=kb.device)
    # Composite key bucket * N_k + position: sorting it groups buckets, positions ascending.
    sorted_ck, order = (kb * n_k + keys).sort(dim=-1, stable=True)  # [B, H_kv, N_k] each
    base = qb * n_k
    lo = torch.searchsorted(sorted_ck, base)  # first key of the query's bucket
    hi = torch.searchsorted(sorted_ck, base + n_k)  # one past its last key
    # pos >= -1 keeps base + pos above every key of the previous bucket.
    at = torch.searchsorted(sorted_ck, base + pos, right=True)  # [B, H_kv, M]
    return order, lo, at, hi


def lsh_cost(selection: Selection, params: dict, *, heads: int, kv_heads: int, head_dim: int,
             dtype_bytes: int) -> tuple[float, float]:
    """Per hash round every query head and KV head token is rotated and hashed (``2 D b/2 + b``
    for ``b`` buckets), keys are sorted (``N_k log2 N_k`` per KV head) and each query row
    binary-searches its bucket (``3 log2 N_k``); plus merging each row's candidate lists."""
    info, d = selection.info, head_dim
    n_q, n_k = selection.indices.shape[2], selection.n_keys
    n_buckets = int(info["n_buckets"])
    rounds = 1 if n_buckets == 1 else int(info["n_hashes"])
    tokens = heads * n_q + kv_heads * n_k
    flops = elements = 0.0
    if n_buckets > 1:  # one bucket needs no hashing
        flops += rounds * tokens * (2 * d * (n_buckets // 2) + n_buckets)
        elements += rounds * (tokens * d + d * n_buckets // 2)
    flops += rounds * (kv_heads * n_k * log2(n_k) + heads * n_q * 3 * log2(n_k))
    elements += rounds * 2 * kv_heads * n_k * (INDEX_BYTES / dtype_bytes)  # sort keys by bucket
    return flops + merge_flops(selection), elements


def lsh_sweep(quick: bool) -> list[dict]:
    """Pareto settings: hash rounds and bucket size."""
    settings = ((1, 64), (4, 64)) if quick else ((1, 64), (2, 32), (2, 64), (4, 64), (8, 64), (4, 128))
    return [{"n_hashes": h, "bucket_size": s} for h, s in settings]


@register_method(
    "lsh",
    params=[
        Param("n_hashes", 4, "hash rounds; a query sees the union of its rounds", "Kitaev et al. 2020, Sec. 3"),
        Param("n_buckets", None, "buckets per round: 1 (all keys in one bucket) or even; None ="
              " max(2, N_k // bucket_size) rounded up to even", "Kitaev et al. 2020, Sec. 2"),
        Param("bucket_size", 64, "Reformer chunk length; a query sees 2*bucket_size same-bucket keys per round",
              "Kitaev et al. 2020 (chunk 64)"),
        Param("seed", 0, "seed of the random rotations", ""),
        Param("include_self", True, "always include the key at the query's own (end-aligned) position",
              "Kitaev et al. 2020, Sec. 2 (self only when nothing else); here always, so no row is empty"),
    ],
    summary="Reformer angular LSH: 2*bucket_size nearest same-bucket keys per hash round, exactly causal",
    reference="Kitaev et al. 2020 (Reformer)",
    cost=lsh_cost, sweep=lsh_sweep, color="tab:orange", marker="P",
    full_coverage=lambda n: {"n_buckets": 1, "bucket_size": n},
)
def select_lsh(q: Tensor, k: Tensor, *, causal: bool = True, n_hashes: int = 4, n_buckets: int | None = None,
               bucket_size: int = 64, seed: int = 0, include_self: bool = True) -> Selection:
    """Reformer LSH attention on ``q [B, H, N_q, D]``, ``k [B, H_kv, N_k, D]``; ``H_sel = H``.

    Each round draws rotations ``R [D, n_buckets/2]`` (shared by all heads) and hashes
    every query head and every KV head with ``h(x) = argmax([xR ; -xR])``. Query ``i`` of
    head ``h`` then attends to keys of KV head ``h // (H // H_kv)`` in its own bucket:

    * causal: the ``2 * bucket_size`` most recent same-bucket keys at positions ``<= t``,
      ``t = i + N_k - N_q`` its causal limit;
    * non-causal: the ``2 * bucket_size`` same-bucket keys nearest to position ``t``
      (ties go to the earlier key).

    Reformer sorts tokens by (bucket, position), cuts the order into chunks of
    ``bucket_size`` and lets a chunk see itself and the previous chunk, i.e. about
    ``2 * bucket_size`` neighbouring same-bucket tokens. The rule above says that
    directly, which makes it **exactly causal**: whether key ``j`` is selected for query
    ``i`` depends only on the hashes of ``q_i`` and of keys ``<= t``. Sort + chunk is not:
    future tokens entering a bucket shift the chunk boundaries seen by earlier ones.

    ``include_self`` adds the key at position ``t`` (when ``t >= 0``), so that causal rows
    are never empty. Reformer (shared Q and K) masks a token's own key and uses it only
    when nothing else is visible; with separate q and k a query need not even share a
    bucket with its own key, so here it is always kept.

    ``n_buckets=1`` puts every key in one bucket; with ``bucket_size >= N_k`` every
    (causally visible) key is then selected, which equals dense attention.

    Returns:
        ``Selection`` with ``indices [B, H, N_q, K]``, ``K <= n_hashes * 2 * bucket_size + 1``,
        ascending, ``-1`` padded, no duplicates, no causally invisible keys.
    """
    check_int("n_hashes", n_hashes)
    check_int("bucket_size", bucket_size)
    if not isinstance(include_self, bool):
        raise TypeError(f"include_self must be a bool, got {type(include_self).__name__}")
    b, h, n_q, d = q.shape
    h_kv, n_k = k.shape[1], k.shape[2]
    g = h // h_kv
    device = q.device
    n_buckets = resolve_n_buckets(n_buckets, n_k, bucket_size)
    rotations = random_rotations(n_hashes, d, n_buckets, seed, device)  # [n_hashes, D, n_buckets/2]
    window = 2 * bucket_size
    limit = query_key_limit(n_q, n_k, True, device)  # [N_q] end-aligned own position
    pos = limit.clamp(min=-1).repeat(g)  # [G * N_q], matches the grouped query layout below
    q_grouped = q.reshape(b, h_kv, g * n_q, d)  # query head h = kv head h // G, group h % G

    if n_buckets == 1:
        # Every key in one bucket: every round would select the same keys, so run one.
        q_buckets = torch.zeros(1, b, h_kv, g * n_q, dtype=torch.long, device=device)
        k_buckets = torch.zeros(1, b, h_kv, n_k, dtype=torch.long, device=device)
    else:
        q_buckets = hash_rounds(q_grouped, rotations)  # [n_hashes, B, H_kv, G * N_q]
        k_buckets = hash_rounds(k, rotations)  # [n_hashes, B, H_kv, N_k]
    runs = [_bucket_runs(qb, kb, pos) for qb, kb in zip(q_buckets, k_buckets)]  # per round: (order, lo, at, hi)
    # Each row reads its runs of the sorted orders (the lsh_rows op; on CPU no [rows, rounds x W] list).
    order, lo, at, hi = (torch.stack(t).reshape(len(runs), b * h_kv, -1) for t in zip(*runs))
    idx = lsh_rows(order, lo, at, hi, pos, window, causal, include_self, n_k)  # [B * H_kv, G * N_q, K]
    idx = idx.view(b, h, n_q, idx.shape[-1])
    return Selection(idx, n_k, causal, "lsh",
                     {"n_hashes": n_hashes, "n_buckets": n_buckets, "bucket_size": bucket_size})
