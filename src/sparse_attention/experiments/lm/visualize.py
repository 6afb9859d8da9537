"""What a trained DSA model attends to, on one validation sequence.

:func:`visualize_run` loads a run's model, runs one validation sequence through it in
``sparse`` mode, captures each layer's attention input (the normed hidden state) with forward
hooks on ``block.attn``, and writes for each chosen layer ``L``:

* ``attention_pattern_layer{L}.png``: indexer scores | top-k selection mask | the main
  attention's probabilities restricted to the selected keys (softmax over the selection =
  the dense probabilities renormalised on it), averaged over heads;
* ``indexer_heads_layer{L}.png``: each indexer head's weighted ReLU scores
  ``w[t, j] * relu(q_I[t, j] . k_I[s])`` (they sum to the indexer scores);

and ``attention_statistics.png`` / ``attention_statistics.json``: per layer the sparsity, the
recall of dense attention mass, the coverage and mean distance that the model's own
statistics report for this sequence, and a histogram of the selected query-key distances.

Only runs with the lightning indexer (``model.attention=dsa``) can be visualised: a dense run
has no indexer and no selection, and :func:`visualize_run` raises ValueError for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ...ops.dense import dense_probabilities
from ...ops.validation import resolve_scale
from ...report.style import save
from ...utils.checks import check_int
from ...utils.results_io import write_json

#: At most this many bins in the selected-distance histogram.
DISTANCE_BINS = 32


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    """``"0,2"`` -> ``[0, 2]``; None or empty -> every layer. ValueError outside ``[0, n_layers)``."""
    if text is None or not str(text).strip():
        return list(range(n_layers))
    try:
        layers = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--layers expects comma-separated layer numbers like 0,1, got {text!r}") from None
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise ValueError(f"--layers {text!r}: the model has layers 0..{n_layers - 1}")
    return sorted(set(layers))


def selection_mask(indices: Tensor, n_keys: int) -> Tensor:
    """``indices [N, K]`` (-1 = empty) -> boolean ``[N, n_keys]`` mask of the selected keys."""
    n = indices.shape[0]
    mask = torch.zeros(n, n_keys + 1, dtype=torch.bool, device=indices.device)
    mask.scatter_(1, torch.where(indices >= 0, indices, n_keys).long(), True)
    return mask[:, :n_keys]


def restricted_attention(probs: Tensor, mask: Tensor) -> Tensor:
    """Dense probabilities ``[H, N, N]`` restricted to ``mask [N, N]`` and renormalised per row,
    averaged over heads: the sparse attention's own probabilities. Rows with no key are 0."""
    kept = probs * mask
    total = kept.sum(-1, keepdim=True)
    return torch.where(total > 0, kept / total.clamp(min=1e-30), torch.zeros_like(kept)).mean(0)


def indexer_head_scores(indexer, x: Tensor) -> Tensor:
    """Per-head weighted ReLU scores ``[H_I, N, N]`` of one sequence ``x [1, N, dim]`` (no mask)."""
    index_q, index_k, weights = indexer(x)  # [1, H_I, N, D_I], [1, N, D_I], [1, N, H_I]
    logits = torch.relu(index_q[0] @ index_k[0].transpose(-1, -2))  # [H_I, N, N]
    return logits * weights[0].transpose(0, 1)[:, :, None]


def _masked(matrix: Tensor, visible: Tensor):
    """A numpy masked array that hides the entries outside ``visible`` (drawn blank)."""
    import numpy as np

    return np.ma.masked_where(~visible.cpu().numpy(), matrix.float().cpu().numpy())


def _sample(run_config, sample: int, progress: bool) -> tuple[Tensor, Tensor, str]:
    """Validation sequence number ``sample`` (in the trainer's validation order), with its text."""
    from ...data.lm import load_data

    check_int("--sample", sample, 0)
    train = run_config.train
    data = load_data(run_config.data, train.seq_len, seed=train.seed, progress=progress)
    batch, row = divmod(sample, train.batch_size)
    inputs, targets = data.val_batches(batch + 1, train.batch_size)[batch]
    inputs, targets = inputs[row:row + 1], targets[row:row + 1]
    try:
        text = data.tokenizer.decode(inputs[0].tolist())
    except (ValueError, KeyError, IndexError, TypeError, UnicodeError):  # the text is only a caption
        text = ""
    return inputs, targets, text


def visualize_run(run_dir: str | Path, out_dir: str | Path | None = None, *, layers: Sequence[int] | str | None = None,
                  sample: int = 0, progress: bool = True) -> dict:
    """Write the figures of the module docstring for ``run_dir`` into ``out_dir``
    (default ``RUN_DIR/visualize``). Returns the contents of ``attention_statistics.json``."""
    from tqdm import tqdm

    from ...training.run_dir import load_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder not found: {run_dir}")
    model, config = load_model(run_dir)
    if not config.model.uses_indexer:
        raise ValueError(f"{run_dir} was trained with attention {config.model.attention!r}: visualize needs a dsa run"
                         " (its lightning indexer and top-k selection are what is drawn); train one with"
                         " `sparse-attention train --attention dsa`")
    chosen = parse_layers(layers if isinstance(layers, (str, type(None))) else ",".join(map(str, layers)),
                          config.model.n_layers)
    out = Path(out_dir) if out_dir is not None else run_dir / "visualize"
    out.mkdir(parents=True, exist_ok=True)
    inputs, targets, text = _sample(config, sample, progress)
    n = inputs.shape[1]

    captured: dict[int, Tensor] = {}
    # The attention layer's input: the output of the block's attention norm.
    handles = [block.attn_norm.register_forward_hook(lambda module, args, output, i=i: captured.__setitem__(i, output))
               for i, block in enumerate(model.blocks)]
    try:
        with torch.no_grad():
            output = model(inputs, targets, mode="sparse", collect=True, keep_scores=True)
    finally:
        for handle in handles:
            handle.remove()

    positions = torch.arange(n)
    visible = positions[None, :] <= positions[:, None]  # [N, N] causal
    layer_stats, files = [], []
    for layer in tqdm(chosen, desc="layers", unit="layer", disable=not progress):
        attn, aux = model.blocks[layer].attn, output.layers[layer]
        x = captured[layer]  # [1, N, d_model], the normed hidden state
        indices = aux.selection.indices[0, 0]  # [N, K]
        mask = selection_mask(indices, n) & visible
        with torch.no_grad():
            q, k, _ = attn.project(x)
            probs = dense_probabilities(q, k, causal=True, scale=resolve_scale(None, q.shape[-1]))[0]  # [H, N, N]
            restricted = restricted_attention(probs, mask)  # [N, N]
            heads = indexer_head_scores(attn.indexer, x)  # [H_I, N, N]
        files.append(_plot_pattern(out, layer, aux.indexer_scores[0], visible, mask, restricted,
                                   attn.top_k))
        files.append(_plot_heads(out, layer, heads, visible))
        valid = indices >= 0
        distances = (positions[:, None] - indices)[valid]  # selected query-key distances
        width = -(-n // DISTANCE_BINS)  # integer bins: bin i holds distances [i * width, (i + 1) * width)
        counts = torch.bincount(distances // width, minlength=-(-n // width))
        layer_stats.append({
            "layer": layer,
            **{key: aux.stats.get(key) for key in ("sparsity", "recall", "coverage", "mean_distance", "indexer_kl")},
            "edges_per_query": float(mask.sum()) / n,
            "distance_histogram": {"bin_edges": [i * width for i in range(len(counts) + 1)],
                                   "counts": counts.tolist()},
        })
    document = {
        "run_dir": str(run_dir), "sample": sample, "seq_len": n, "top_k": config.model.top_k,
        "layers": layer_stats, "val_loss": float(output.loss), "text": text,
        "files": files + ["attention_statistics.png"],
    }
    _plot_statistics(out, layer_stats, n, config.model.top_k)
    write_json(out / "attention_statistics.json", document)
    return document


def _plot_pattern(out: Path, layer: int, scores: Tensor, visible: Tensor, mask: Tensor, restricted: Tensor,
                  top_k: int) -> str:
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    image = axes[0].imshow(_masked(scores, visible), cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=axes[0], fraction=0.046)
    axes[0].set_title("indexer scores (sum over heads)")
    axes[1].imshow(mask.float().numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(f"top-{top_k} selection ({float(mask.sum()) / mask.shape[0]:.1f} keys/query)")
    shown = _masked(restricted, mask)
    positive = restricted[mask & (restricted > 0)]
    norm = LogNorm(vmin=max(float(positive.min()), 1e-6), vmax=float(positive.max())) if positive.numel() else None
    image = axes[2].imshow(shown, cmap="magma", norm=norm, interpolation="nearest")
    fig.colorbar(image, ax=axes[2], fraction=0.046)
    axes[2].set_title("sparse attention probabilities (mean over heads)")
    for ax in axes:
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.suptitle(f"layer {layer}")
    return save(fig, out, f"attention_pattern_layer{layer}.png")


def _plot_heads(out: Path, layer: int, heads: Tensor, visible: Tensor) -> str:
    plt = _pyplot()
    count = heads.shape[0]
    cols = min(count, 4)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4 * rows), squeeze=False)
    for j, ax in enumerate(axes.ravel()):
        if j >= count:
            ax.axis("off")
            continue
        limit = max(float(heads[j][visible].abs().max()), 1e-12)
        image = ax.imshow(_masked(heads[j], visible), cmap="coolwarm", interpolation="nearest", vmin=-limit,
                          vmax=limit)
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title(f"indexer head {j}: w * relu(q.k)", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.suptitle(f"layer {layer}: per-head indexer scores (they sum to the indexer score)")
    return save(fig, out, f"indexer_heads_layer{layer}.png")


def _plot_statistics(out: Path, stats: list[dict], n: int, top_k: int) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 5, figsize=(21, 4))
    labels = [str(s["layer"]) for s in stats]
    for ax, key, title in ((axes[0], "sparsity", "causal sparsity"), (axes[1], "recall", "recall of dense mass"),
                           (axes[2], "coverage", "key coverage"), (axes[3], "mean_distance", "mean selected distance")):
        values = [s[key] if s[key] is not None else 0.0 for s in stats]
        bars = ax.bar(labels, values, color="tab:red", alpha=0.8)
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("layer")
        if key != "mean_distance":
            ax.set_ylim(0, 1.05)
    ax = axes[4]
    for s in stats:
        hist = s["distance_histogram"]
        ax.stairs(hist["counts"], hist["bin_edges"], label=f"layer {s['layer']}")
    ax.set_title("selected query-key distances")
    ax.set_xlabel("distance (tokens)")
    ax.set_ylabel("selected pairs")
    ax.legend(fontsize=8)
    fig.suptitle(f"selection statistics on one validation sequence (N={n}, top_k={top_k})")
    return save(fig, out, "attention_statistics.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
