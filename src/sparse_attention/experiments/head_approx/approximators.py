"""Approximations of one attention head from ``K`` selected keys.

A variant is a selection and a head over the selected keys (:data:`VARIANTS`):

* selections: ``seed_selector`` (the seed's design: an MLP from the query alone,
  ``D -> hidden -> T`` position logits, trained by cross-entropy to the teacher's most attended
  key; at inference its top-``K`` positions, causally masked), ``topk`` (this package's exact
  top-k of ``q . k``) and ``dsa`` (this package's lightning indexer, one per layer, trained on the
  teacher's attention by the DSA warm-up loss, its top-``K`` shared by the layer's heads);
* heads: ``softmax`` (the package's sparse attention over the selected keys: the no-MLP
  reference), ``mlp`` (an MLP over the selected keys' values, attention logits and validity, in
  rank order) and ``seed_mlp`` (the seed's: an MLP over the concatenated values in rank order,
  trained on the teacher's top-``K`` keys and evaluated on the selector's).

Every selection is causal: a query never picks a key after its own position. Slots a short
prefix leaves empty (``t + 1 < K``) hold zeros and a validity flag of 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...layers.indexer import LightningIndexer
from ...layers.indexer_loss import dense_indexer_loss
from ...ops.dense import causal_mask
from ...ops.attention import sparse_attention
from ...selection.base import select

#: variant -> (selection, head)
VARIANTS = {
    "seed": ("seed_selector", "seed_mlp"),
    "topk+softmax": ("topk", "softmax"),
    "topk+mlp": ("topk", "mlp"),
    "dsa+softmax": ("dsa", "softmax"),
    "dsa+mlp": ("dsa", "mlp"),
}


def mlp(inputs: int, hidden: int, outputs: int, seed: int) -> nn.Sequential:
    """``inputs -> hidden (GELU) -> outputs``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, outputs))


class Standardized(nn.Module):
    """``net`` on standardised inputs, predicting the standardised target: ``mean + std * net(...)``.

    The statistics are the training rows'. At initialisation (``net`` ~ 0) it predicts the mean
    training output, the constant predictor, and training only has to learn what varies.
    """

    def __init__(self, net: nn.Module, features: Tensor, target: Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("in_mean", features.mean(0))
        self.register_buffer("in_std", features.std(0).clamp_min(1e-6))
        self.register_buffer("out_mean", target.mean(0))
        self.register_buffer("out_std", target.std(0).clamp_min(1e-6))

    def forward(self, features: Tensor) -> Tensor:
        return self.out_mean + self.out_std * self.net((features - self.in_mean) / self.in_std)


@dataclass
class TrainSettings:
    """Optimisation of every small model of the study (Adam, cosine decay)."""

    steps: int = 300
    batch: int = 512
    lr: float = 3e-3
    seed: int = 0


def _fit(model: nn.Module, loss_fn, n_rows: int, s: TrainSettings) -> float:
    """Minimise ``loss_fn(model, rows)`` over random batches of ``n_rows`` rows; returns the last loss."""
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, s.steps))
    gen = torch.Generator().manual_seed(s.seed)
    loss = torch.tensor(float("nan"))
    for _ in range(s.steps):
        rows = torch.randint(0, n_rows, (min(s.batch, n_rows),), generator=gen)
        loss = loss_fn(model, rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


# ----------------------------------------------------------------------------- selections

def rank_by_logit(q: Tensor, k: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row's selected keys by attention logit, best first.

    Args: ``q [S, T, D]``, ``k [S, T, D]`` of one head; ``idx [S, T, K]`` (``-1`` = empty).
    Returns: ``(idx, logits)`` ``[S, T, K]``, empty slots last with logit ``-inf``.
    """
    safe = idx.clamp(min=0)
    keys = torch.gather(k.unsqueeze(1).expand(-1, idx.shape[1], -1, -1), 2,
                        safe.unsqueeze(-1).expand(-1, -1, -1, k.shape[-1]))  # [S, T, K, D]
    logits = (keys @ q.unsqueeze(-1)).squeeze(-1) * q.shape[-1] ** -0.5  # [S, T, K]
    logits = logits.masked_fill(idx < 0, float("-inf"))
    order = logits.argsort(dim=-1, descending=True, stable=True)
    return idx.gather(-1, order), logits.gather(-1, order)


def topk_keys(q: Tensor, k: Tensor, top_k: int) -> Tensor:
    """This package's exact top-k of ``q . k`` (causal) for one head: ``[S, T, K]``."""
    return select(q.unsqueeze(1), k.unsqueeze(1), "topk", causal=True, top_k=top_k).indices[:, 0]


def dsa_keys(indexer: LightningIndexer, x: Tensor, top_k: int) -> Tensor:
    """The lightning indexer's causal top-k for ``x [S, T, dim]``: ``[S, T, K]`` (shared by the heads)."""
    return indexer.select(x, top_k=top_k, causal=True).indices[:, 0]


def selector_keys(selector: nn.Module, q: Tensor, top_k: int) -> Tensor:
    """The seed's selector: top-k of its causally masked position logits, best first: ``[S, T, K]``."""
    t = q.shape[1]
    with torch.no_grad():
        logits = selector(q)[..., :t].masked_fill(~causal_mask(t, t, q.device), float("-inf"))  # [S, T, T]
    values, idx = logits.topk(min(top_k, t), dim=-1)
    return torch.where(torch.isfinite(values), idx, torch.full_like(idx, -1))


def train_selector(q: Tensor, top1: Tensor, max_len: int, hidden: int, s: TrainSettings) -> nn.Module:
    """The seed's ``KeySelector``: ``q [S, T, D] -> logits over max_len positions``, trained by
    cross-entropy (causally masked) to the teacher's most attended key ``top1 [S, T]``."""
    rows_q = q.reshape(-1, q.shape[-1])
    t = q.shape[1]
    target = top1.reshape(-1).long()
    position = torch.arange(t).repeat(q.shape[0])  # each row's own position: later keys are masked
    selector = mlp(q.shape[-1], hidden, max_len, s.seed)

    def loss_fn(model, rows):
        logits = model(rows_q[rows])[:, :t]
        future = torch.arange(t)[None, :] > position[rows, None]
        return F.cross_entropy(logits.masked_fill(future, float("-inf")), target[rows])

    _fit(selector, loss_fn, rows_q.shape[0], s)
    return selector.eval()


def train_indexer(x: Tensor, q: Tensor, k: Tensor, *, heads: int, head_dim: int, rope_theta: float,
                  s: TrainSettings) -> LightningIndexer:
    """A lightning indexer for one layer trained by the DSA warm-up loss (KL to the teacher's
    head-summed attention) on ``x [S, T, dim]``, ``q [S, H, T, D]``, ``k [S, H_kv, T, D]``."""
    torch.manual_seed(s.seed)
    indexer = LightningIndexer(x.shape[-1], heads, head_dim, rope_theta=rope_theta or 10000.0)
    opt = torch.optim.Adam(indexer.parameters(), lr=s.lr)
    gen = torch.Generator().manual_seed(s.seed)
    seqs = max(1, min(x.shape[0], s.batch // max(1, x.shape[1])))  # ~batch query rows per step
    for _ in range(s.steps):
        pick = torch.randint(0, x.shape[0], (seqs,), generator=gen)
        loss = dense_indexer_loss(q[pick], k[pick], *indexer(x[pick]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return indexer.eval()


# ----------------------------------------------------------------------------- heads

def gather_rows(v: Tensor, idx: Tensor) -> Tensor:
    """``v [S, T, D]`` at ``idx [S, T, K]`` -> ``[S, T, K, D]``, zeros at empty slots."""
    out = torch.gather(v.unsqueeze(1).expand(-1, idx.shape[1], -1, -1), 2,
                       idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, -1, v.shape[-1]))
    return out * (idx >= 0).unsqueeze(-1)


def mlp_features(q: Tensor, k: Tensor, v: Tensor, idx: Tensor) -> Tensor:
    """Per row: the selected keys in rank order, each as ``[value, logit, valid]``: ``[S, T, K (D + 2)]``."""
    idx, logits = rank_by_logit(q, k, idx)
    valid = (idx >= 0).float()
    feats = torch.cat([gather_rows(v, idx), torch.nan_to_num(logits, neginf=0.0).unsqueeze(-1) * valid.unsqueeze(-1),
                       valid.unsqueeze(-1)], dim=-1)  # [S, T, K, D + 2]
    return feats.flatten(-2)


def seed_features(v: Tensor, idx: Tensor) -> Tensor:
    """The seed approximator's input: the values at ``idx`` concatenated in slot order: ``[S, T, K D]``."""
    return gather_rows(v, idx).flatten(-2)


def softmax_head(q: Tensor, k: Tensor, v: Tensor, idx: Tensor) -> Tensor:
    """Softmax attention over the selected keys only, by this package's sparse kernel: ``[S, T, D]``."""
    return sparse_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), idx.unsqueeze(1), causal=True)[:, 0]


def pad_slots(idx: Tensor, top_k: int) -> Tensor:
    """``idx`` with exactly ``top_k`` slots (``-1`` padding), so one MLP serves every length."""
    extra = top_k - idx.shape[-1]
    return F.pad(idx, (0, extra), value=-1) if extra > 0 else idx


@dataclass
class HeadApprox:
    """One approximated head: its variant, ``K``, and the trained parts it needs."""

    variant: str
    top_k: int
    head_dim: int
    selector: nn.Module | None = None  # seed_selector
    indexer: LightningIndexer | None = None  # dsa (the layer's, shared)
    net: nn.Module | None = None  # mlp / seed_mlp
    info: dict = field(default_factory=dict)

    @property
    def selection(self) -> str:
        return VARIANTS[self.variant][0]

    @property
    def head(self) -> str:
        return VARIANTS[self.variant][1]

    def keys(self, q: Tensor, k: Tensor, x: Tensor | None) -> Tensor:
        """The selected keys ``[S, T, K]`` of this head for ``q, k [S, T, D]`` (``x [S, T, dim]`` for dsa)."""
        if self.selection == "topk":
            idx = topk_keys(q, k, self.top_k)
        elif self.selection == "dsa":
            idx = dsa_keys(self.indexer, x, self.top_k)
        else:
            idx = selector_keys(self.selector, q, self.top_k)
        return pad_slots(idx, self.top_k)

    @torch.no_grad()
    def predict(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor | None = None) -> Tensor:
        """The head's approximate output ``[S, T, D]`` from its ``q, k, v [S, T, D]``."""
        idx = self.keys(q, k, x)
        if self.head == "softmax":
            return softmax_head(q, k, v, idx)
        feats = mlp_features(q, k, v, idx) if self.head == "mlp" else seed_features(v, idx)
        return self.net(feats)


def fit_head(variant: str, top_k: int, train: dict[str, Tensor], *, hidden: int, s: TrainSettings,
             selector: nn.Module | None = None, indexer: LightningIndexer | None = None,
             max_rows: int = 16384) -> HeadApprox:
    """Train the MLP of ``variant`` (if it has one) for one head from its teacher signals.

    Args:
        train: ``q, k, v, out [S, T, D]`` of the head, ``x [S, T, dim]``, ``top_idx [S, T, >= K]``
            (the teacher's most attended keys, best first).
        selector / indexer: the trained selection of ``seed`` / ``dsa*`` variants.
        max_rows: query rows the MLP trains on (a fixed random subset; all when fewer).
    """
    q, k, v, out = train["q"], train["k"], train["v"], train["out"]
    approx = HeadApprox(variant, top_k, q.shape[-1], selector=selector, indexer=indexer)
    if approx.head == "softmax":
        return approx
    gen = torch.Generator().manual_seed(s.seed + 1)
    n_seq, t = q.shape[:2]
    keep = torch.zeros(n_seq * t, dtype=torch.bool)
    keep[torch.randperm(n_seq * t, generator=gen)[:max_rows]] = True
    keep = keep.view(n_seq, t)
    parts = []
    for start in range(0, n_seq, 8):  # a few sequences at a time: only the kept rows' features stay
        sl = slice(start, start + 8)
        if approx.head == "mlp":
            x = train.get("x")
            feats = mlp_features(q[sl], k[sl], v[sl], approx.keys(q[sl], k[sl], None if x is None else x[sl]))
        else:  # the seed trains on the teacher's top-K keys in rank order
            feats = seed_features(v[sl], pad_slots(train["top_idx"][sl, :, :top_k].long(), top_k))
        parts.append(feats[keep[sl]])  # [kept rows, F]
    feats, target = torch.cat(parts), out[keep]
    net = Standardized(mlp(feats.shape[-1], hidden, q.shape[-1], s.seed), feats, target)
    final = _fit(net, lambda m, rows: F.mse_loss(m(feats[rows]), target[rows]), feats.shape[0], s)
    approx.net = net.eval()
    approx.info["train_mse"] = final
    return approx


def relative_error(pred: Tensor, target: Tensor, reference: Tensor | None = None) -> float:
    """``||pred - target|| / ||target - reference||`` over all rows (Frobenius); ``reference`` 0 by
    default (the seed's relative error), the mean training output for the normalised error (the
    constant predictor then scores 1)."""
    base = target.float() if reference is None else target.float() - reference.float()
    return float((pred - target).float().norm() / base.norm().clamp_min(1e-12))


def selection_recall(idx: Tensor, top1: Tensor) -> float:
    """Share of rows whose selection holds the teacher's most attended key ``top1 [S, T]``."""
    return float((idx == top1.unsqueeze(-1).long()).any(dim=-1).float().mean())
