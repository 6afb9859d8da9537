"""Peer libraries from PyPI, timed by ``sparse-attention bench kernels --peers``.

Each peer computes its *own* sparse attention (its own rule for which keys a query sees),
so no correctness check applies: the benchmark times it next to dense SDPA at settings
chosen to match ours, and says how many keys each query attends to. One adapter per peer
builds ``fn(q, k, v) -> out`` for our layout (``q [B, H, N, D]``, ``k``/``v``
``[B, H_kv, N, D]``, ``out [B, H, N, D]``); KV heads are repeated where a peer needs
multi-head attention (the repeat is timed with it).

Matching rule for the three attention functions: about ``2K`` scores per query, of which
about ``K`` survive the peer's causal mask (our backends attend to exactly ``K`` keys).
native-sparse-attention-pytorch only exists as a module with its own projections: it is
timed as that module's forward at ``dim = H * D`` with our heads, its ``K`` fine keys in
selected blocks plus its fixed extras (compressed blocks, sliding window).

The libraries are an optional extra (``pip install sparse-attention[peers]``) and are
imported only when a peer is built.
"""

from __future__ import annotations

import getpass
import importlib
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from typing import Callable

import torch

INSTALL_HINT = "pip install sparse-attention[peers]"
NO_CHECK = "not applicable: a peer computes its own sparse attention, not ours (no reference to compare)"


@dataclass
class PeerAttention:
    """A built peer: ``fn(q, k, v) -> out [B, H, N, D]`` and what it computes."""

    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    settings: str
    keys_per_query: float  # mean keys a query attends to after the peer's causal mask (approximate)
    indices: torch.Tensor | None = None  # [1, 1, N, K]: the selection whose attention it computes, if one of ours
    backward: bool = True  # False: forward only here (no gradient on this device)


@dataclass(frozen=True)
class Peer:
    name: str  # what --peers takes
    package: str  # PyPI distribution
    module: str  # import name
    build: Callable[..., PeerAttention]  # (n, k, h, h_kv, d, device, dtype) -> PeerAttention


def _repeat_kv(t: torch.Tensor, h: int) -> torch.Tensor:
    """``[B, H_kv, N, D] -> [B, H, N, D]``: query head ``i`` uses KV head ``i // (H / H_kv)``."""
    return t if t.shape[1] == h else t.repeat_interleave(h // t.shape[1], dim=1)


def _local_attention(n: int, k: int, h: int, h_kv: int, d: int, device, dtype) -> PeerAttention:
    from local_attention import LocalAttention

    w = max(1, min(k, n))
    attn = LocalAttention(window_size=w, causal=True, look_backward=1, exact_windowsize=True, autopad=True)
    attn = attn.to(device).eval()

    def fn(q, kk, v):
        return attn(q, _repeat_kv(kk, h), _repeat_kv(v, h))  # it folds leading dims: [B, H, N, D]

    pos = torch.arange(n, dtype=torch.float64)
    keys = float((pos.clamp(max=w) + 1).mean())  # keys [i - w, i]
    return PeerAttention(fn, f"LocalAttention(window_size={w}, causal=True, look_backward=1, exact_windowsize=True,"
                             f" autopad=True), no rotary: blocks of {w} queries score {2 * w} keys (own block +"
                             f" one back), the mask keeps keys [i-{w}, i]; KV heads repeated to {h}", keys)


def _reformer(n: int, k: int, h: int, h_kv: int, d: int, device, dtype) -> PeerAttention:
    from reformer_pytorch.reformer_pytorch import LSHAttention

    n_hashes, bucket = 2, max(1, min(k, n) // 2)
    if n % (2 * bucket):
        raise ValueError(f"reformer LSHAttention needs N divisible by 2 * bucket_size = {2 * bucket}, got N={n}")
    attn = LSHAttention(bucket_size=bucket, n_hashes=n_hashes, causal=True).to(device).eval()  # eval: no bucket cache

    def fn(q, kk, v):
        b, _, t, dh = q.shape
        out, _, _ = attn(q.reshape(b * h, t, dh), _repeat_kv(v, h).reshape(b * h, t, dh))  # shares QK: k unused
        return out.reshape(b, h, t, dh)

    return PeerAttention(fn, f"LSHAttention(bucket_size={bucket}, n_hashes={n_hashes}, causal=True): shared QK (q is"
                             f" also the key, k is ignored), {n_hashes} hash rounds x chunks of {bucket} sorted"
                             f" positions scoring own chunk + one back = {2 * bucket * n_hashes} scores per query,"
                             f" about half later positions (masked); KV heads repeated to {h}",
                         float(min(bucket * n_hashes, n)))


def _routing(n: int, k: int, h: int, h_kv: int, d: int, device, dtype) -> PeerAttention:
    from routing_transformer.routing_transformer import KmeansAttention

    window = max(1, min(2 * k, n))
    clusters = max(1, n // window)
    attn = KmeansAttention(num_clusters=clusters, window_size=window, num_heads=h, head_dim=d, causal=True)
    attn = attn.to(device, dtype).eval()  # eval: the k-means means are not updated

    def fn(q, kk, v):
        out, _aux_loss = attn(q, _repeat_kv(kk, h), _repeat_kv(v, h))
        return out

    return PeerAttention(fn, f"KmeansAttention(num_clusters={clusters}, window_size={window}, causal=True): each"
                             f" cluster takes its {window} nearest queries and keys (means from 10 k-means"
                             f" iterations on the first call, not updated), {window} + 1 memory key scored per"
                             f" query, about half later positions (masked); queries no cluster takes get zeros;"
                             f" KV heads repeated to {h}", float(min(window, n) / 2 + 1))


def _nsa(n: int, k: int, h: int, h_kv: int, d: int, device, dtype) -> PeerAttention:
    from native_sparse_attention_pytorch import SparseAttention

    sel_block = max(1, min(64, k))
    n_sel = max(1, k // sel_block)
    stride = min(16, sel_block)
    window = sel_block
    dim = h * d
    attn = SparseAttention(dim=dim, dim_head=d, heads=h, kv_heads=h_kv, sliding_window_size=window,
                           compress_block_size=2 * stride, compress_block_sliding_stride=stride,
                           selection_block_size=sel_block, num_selected_blocks=n_sel, causal=True)
    attn = attn.to(device, dtype).eval()

    def fn(q, kk, v):
        b, _, t, dh = q.shape
        out = attn(q.transpose(1, 2).reshape(b, t, h * dh))  # its own q/k/v from q: k and v unused
        return out.reshape(b, t, h, dh).transpose(1, 2)

    selected = min(n_sel * sel_block, n)
    keys = n / (2 * stride) + 1 + selected + (sel_block + 1) / 2 + min(window, n) + 1
    return PeerAttention(fn, f"SparseAttention(dim={dim}, dim_head={d}, heads={h}, kv_heads={h_kv},"
                             f" sliding_window_size={window}, compress_block_size={2 * stride},"
                             f" compress_block_sliding_stride={stride}, selection_block_size={sel_block},"
                             f" num_selected_blocks={n_sel}, causal=True): a whole module forward from q reshaped"
                             f" to [B, N, {dim}] (RMSNorm, its own q/k/v and output projections, compression"
                             f" MLPs, gate; k and v unused); per query {selected} selected fine keys + causal"
                             f" diagonal block + window {window} + ~N/{2 * stride} compressed blocks", keys)


def random_block_selection(n: int, k: int, block: int, seed: int = 0) -> torch.Tensor:
    """``chosen [blocks, blocks]`` bool: query block ``i`` takes its own (diagonal) block and
    ``K / block - 1`` random earlier key blocks (all earlier ones when fewer exist)."""
    blocks = -(-n // block)
    per_query = max(1, min(k, n) // block)
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.eye(blocks, dtype=torch.bool)
    for qb in range(1, blocks):
        chosen[qb, torch.randperm(qb, generator=gen)[:per_query - 1]] = True
    return chosen


def block_selection_indices(chosen: torch.Tensor, n: int, block: int) -> torch.Tensor:
    """The token-level selection ``[1, 1, N, K_max]`` (``-1`` padded, causal) of a block selection."""
    blocks = chosen.shape[0]
    keys = torch.arange(blocks * block).view(blocks, block)  # [blocks, block] key positions per block
    rows = []
    for t in range(n):
        row = keys[chosen[t // block]].flatten()
        rows.append(row[(row <= t) & (row < n)])
    width = max(len(r) for r in rows)
    out = torch.full((n, width), -1, dtype=torch.long)
    for t, row in enumerate(rows):
        out[t, :len(row)] = row
    return out[None, None]


def separate_compile_cache_under_isa_cap() -> None:
    """Under ``ATEN_CPU_CAPABILITY`` (the AVX2 emulation), give ``torch.compile`` a cache of its
    own, ``$TORCHINDUCTOR_CACHE_DIR`` unless set. PyTorch's compile cache does not tell the
    capabilities apart: a kernel compiled in an AVX2-held process and then loaded by an
    unrestricted one returned wrong FlexAttention outputs here (torch 2.13)."""
    cap = os.environ.get("ATEN_CPU_CAPABILITY")
    if cap and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        user = getpass.getuser()  # as PyTorch names its default cache, torchinductor_<user>
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}_{cap.lower()}")


def _flex(n: int, k: int, h: int, h_kv: int, d: int, device, dtype) -> PeerAttention:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    separate_compile_cache_under_isa_cap()

    block = 128 if n >= 256 else 16
    chosen = random_block_selection(n, k, block)
    chosen_dev = chosen.to(device)

    def mask_mod(b, head, q_idx, kv_idx):
        return chosen_dev[q_idx // block, kv_idx // block] & (kv_idx <= q_idx)

    block_mask = create_block_mask(mask_mod, None, None, n, n, device=str(device), BLOCK_SIZE=block)
    compiled = torch.compile(flex_attention, dynamic=False)  # compiled on the warm-up call

    backward = torch.device(device).type != "cpu"  # torch's FlexAttention has no CPU backward

    def fn(q, kk, v):
        if not backward:  # forward only (inference), said by the row
            q, kk, v = q.detach(), kk.detach(), v.detach()
        return compiled(q, kk, v, block_mask=block_mask, enable_gqa=h_kv != h)

    earlier = max(1, min(k, n) // block) - 1
    keys = (chosen.sum(1).float() - 1).clamp(min=0).mean().item() * block + (block + 1) / 2
    return PeerAttention(fn, f"torch flex_attention (torch.compile) with a BlockMask of {block}x{block} blocks: each"
                             f" query block takes its diagonal block (causal) and up to {earlier} random earlier"
                             f" key blocks; GQA native. Computes our attention over that block selection"
                             f" (tests compare it with the reference kernel)", keys,
                         indices=block_selection_indices(chosen, n, block), backward=backward)


PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("local-attention", "local-attention", "local_attention", _local_attention),
    Peer("reformer", "reformer-pytorch", "reformer_pytorch", _reformer),
    Peer("routing", "routing-transformer", "routing_transformer", _routing),
    Peer("nsa", "native-sparse-attention-pytorch", "native_sparse_attention_pytorch", _nsa),
    Peer("flex", "torch", "torch.nn.attention.flex_attention", _flex),
)}


def resolve_peers(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Peer names (``"all"``, short names or PyPI names, comma-separated allowed) -> short names."""
    by_package = {p.package: p.name for p in PEERS.values()}
    out: list[str] = []
    for item in names:
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name == "all":
                found = list(PEERS)
            elif name in PEERS or name in by_package:
                found = [by_package.get(name, name)]
            else:
                raise ValueError(f"unknown peer {name!r}; known peers: all, "
                                 + ", ".join(f"{p.name} ({p.package})" for p in PEERS.values()))
            out.extend(f for f in found if f not in out)
    return tuple(out)


def peer_version(name: str) -> str | None:
    """Installed version of the peer's PyPI package, or None if it is not installed."""
    try:
        return importlib.metadata.version(PEERS[name].package)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_peer(name: str, q: torch.Tensor, k: torch.Tensor, top_k: int) -> PeerAttention:
    """The adapter of peer ``name`` for ``q [B, H, N, D]``, ``k [B, H_kv, N, D]`` and our ``K``.
    Raises ImportError when the peer's library is not installed."""
    peer = PEERS[name]
    importlib.import_module(peer.module)
    _, h, n, d = q.shape
    return peer.build(n, top_k, h, k.shape[1], d, q.device, q.dtype)


def measure_peer(name: str, q, k, v, top_k: int, timed: Callable, dense: dict, base: dict,
                 backward: bool) -> dict:
    """One benchmark row for a peer: built at this point's settings and timed with ``timed``
    (the caller's timing helper: same warm-up, repeats and dense SDPA row as our backends;
    ``grad_inputs=None`` times the forward only, for a peer without a backward here).
    A peer that is not installed is not timed; one that fails at this size records the error."""
    peer = PEERS[name]
    n = q.shape[2]
    row = {**base, "backend": f"peer:{name}", "kind": "peer", "library": peer.package,
           "version": peer_version(name), "correctness": NO_CHECK}
    try:
        built = build_peer(name, q, k, top_k)
    except ImportError as err:
        return {**row, "status": f"not installed ({INSTALL_HINT})", "reason": f"{type(err).__name__}: {err}"}
    except Exception as err:  # a peer's own assertion or shape limit at this size
        return {**row, "status": "error", "reason": f"{type(err).__name__}: {err}"}
    pairs = n * (n + 1) / 2
    row.update(settings=built.settings, keys_per_query=built.keys_per_query,
               ideal_ratio=pairs / (n * built.keys_per_query))
    backward = backward and built.backward
    try:
        row.update(timed(lambda: built.fn(q, k, v), (q, k, v) if backward else None))
    except Exception as err:
        return {**row, "status": "error", "reason": f"{type(err).__name__}: {err}"}
    row["status"] = "ok" if built.backward else "ok (forward only: no backward on this device)"
    row["forward_speedup"] = dense["forward_ms"] / row["forward_ms"]
    if backward:
        row["forward_backward_speedup"] = dense["forward_backward_ms"] / row["forward_backward_ms"]
    return row
