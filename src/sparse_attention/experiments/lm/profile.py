"""Training-step time and memory of the dense LM against the DSA LM, across sequence lengths.

For every length ``N`` :func:`profile_lengths` builds the model twice from one config: dense,
and DSA in ``sparse`` mode with ``model.top_k`` = the configured top-k or ``top_k_fraction * N``.
The DSA model gets the dense model's weights (everything but the indexers, which the dense
model lacks). On one batch of random tokens it measures, in the same process:

* one full training step (forward, backward, gradient clipping, AdamW step: the trainer's main
  stage, its optimizer groups and its loss, the indexer KL included for DSA), timed with
  :func:`~sparse_attention.utils.timing.time_call`, dense and DSA interleaved sample by
  sample so that a busy machine slows both alike;
* the forward pass alone (no gradient), timed the same way;
* the extra memory at the peak of one training step and of one forward pass
  (:func:`~sparse_attention.utils.memory.peak_memory_bytes`; never timed together; on the CPU
  in a fresh process per length, :func:`~sparse_attention.utils.fresh_process.run_in_fresh_process`,
  after one warm-up call each: the timed steps leave glibc's heap full of free blocks whose reuse
  would count freed memory as resident, more for whichever model allocates more blocks), and the
  bytes the step's forward saves for its backward
  (:func:`~sparse_attention.utils.memory.saved_tensor_bytes`: exact, no temporaries);
* with ``phases`` (default), the time split of one attention layer, dense attention against
  DSA's indexer projections, selection, sparse attention and KL, with each phase's FLOPs
  (:func:`~sparse_attention.experiments.lm.phases.attention_phases`), and the rest of the
  model: the step time outside the ``n_layers`` attention layers;
* with ``ops``, the self time of every operator in one training step of each model
  (:func:`~sparse_attention.experiments.lm.op_times.op_times`), the operators whose times differ
  most first: outside attention they should take the same time in both.

Ratios are dense / DSA (> 1: DSA is faster or smaller). The sparse attention backend that
``model.backend`` resolves to is recorded in every row.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch

from ...ops.record import dispatch_record, machine_with_kernel
from ...training.config import RunConfig
from ...utils.checks import check_int
from ...utils.fresh_process import run_in_fresh_process
from ...utils.memory import peak_memory_bytes, peak_memory_unavailable, saved_tensor_bytes
from ...utils.results_io import write_json
from ...utils.timing import synchronize, time_call
from .op_times import op_times
from .phases import attention_phases, rest_of_model_ms


def parse_lengths(text: str | Sequence[int]) -> list[int]:
    """``"128,256"`` (or a list) -> ``[128, 256]``; ValueError when empty, not ints or not positive."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        lengths = [int(str(p).strip()) for p in parts if str(p).strip()]
    except ValueError:
        raise ValueError(f"--seq-lengths expects comma-separated ints like 128,256, got {text!r}") from None
    if not lengths:
        raise ValueError("--seq-lengths needs at least one length")
    bad = [n for n in lengths if n <= 0]
    if bad:
        raise ValueError(f"--seq-lengths must be positive, got {', '.join(map(str, bad))}")
    return lengths


def profile_vocab_size(config: RunConfig) -> int:
    """``model.vocab_size``, or when it is 0 (resolved from data at training time) the vocabulary
    the tokenizer setting implies: 256 for bytes, ``data.bpe_vocab_size`` for BPE."""
    if config.model.vocab_size:
        return config.model.vocab_size
    return 256 if config.data.tokenizer == "bytes" else config.data.bpe_vocab_size


def _models(config: RunConfig, n: int, top_k: int, vocab: int, batch_size: int):
    """``(dense config, dense model, dsa config, dsa model)`` for length ``n``, shared weights equal."""
    from ...models.decoder import SparseLM

    train = {"seq_len": n, "batch_size": batch_size}
    dense_config = config.with_changes(train=train, model={"vocab_size": vocab, "attention": "dense"})
    sparse_config = config.with_changes(train=train, model={"vocab_size": vocab, "attention": "dsa", "top_k": top_k})
    torch.manual_seed(config.train.seed)
    dense = SparseLM(dense_config.model)
    sparse = SparseLM(sparse_config.model)
    missing, unexpected = sparse.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and all(".indexer." in name for name in missing), (missing, unexpected)
    return dense_config, dense, sparse_config, sparse


def _backend_name(config: RunConfig, batch_size: int, n: int, top_k: int, device: torch.device) -> str:
    """The sparse attention backend ``model.backend`` resolves to for these shapes."""
    from ...ops.attention import choose_backend

    m = config.model
    q = torch.empty(batch_size, m.n_heads, n, m.head_dim, device=device)
    kv = torch.empty(batch_size, m.n_kv_heads, n, m.head_dim, device=device)
    indices = torch.zeros(batch_size, 1, n, min(top_k, n), dtype=torch.long, device=device)
    return choose_backend(m.backend, q, kv, kv, indices, needs_grad=True).name


def _step_functions(config: RunConfig, model, inputs, targets, device) -> tuple[Callable, Callable, Callable]:
    """``(train_step, forward, training_loss)`` closures for ``model`` in its main-stage mode
    (``training_loss``: the step's forward with autograd on, returning the loss)."""
    from ...training.trainer import make_optimizer, plan_stages, set_trainable

    stage = plan_stages(config)[-1]  # the main stage: dense for dense, sparse for dsa
    set_trainable(model, stage)
    optimizer = make_optimizer(model, stage, config)
    train, coef = config.train, config.model.aux_loss_coef

    def autocast():
        if train.dtype == "bfloat16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    def training_loss():
        with autocast():
            out = model(inputs, targets, mode=stage.mode, keep_selections=False)  # as the trainer's steps
        loss = out.loss + coef * out.aux_loss
        if out.indexer_loss is not None:
            loss = loss + train.kl_coef * out.indexer_loss
        return loss

    def train_step():
        loss = training_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()

    def forward():
        with torch.no_grad(), autocast():
            model(inputs, targets, mode=stage.mode)

    return train_step, forward, training_loss


def _interleaved(fns: dict[str, Callable], device, repeats: int) -> dict[str, list[float]]:
    """``repeats`` timings (ms) of each function, taken in turn: a, b, a, b, ..."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_call(fn, device, repeats=1, warmup=0)["median_ms"])
    return samples


def _phases_with_rest(config: RunConfig, row: dict, device, repeats: int) -> dict:
    """One layer's phase split (:func:`attention_phases`) plus the rest of each model's step."""
    split = attention_phases(config.model, row["seq_len"], row["top_k"], batch_size=row["batch_size"],
                             repeats=repeats, device=device, seed=config.train.seed, dtype=config.train.dtype)
    layers = config.model.n_layers
    split["rest_train_ms"] = {
        "dense": rest_of_model_ms(row["dense_train_ms"], split["train_ms"]["dense_attention"], layers),
        "dsa": rest_of_model_ms(row["dsa_train_ms"], split["dsa_train_ms"], layers)}
    split["rest_forward_ms"] = {
        "dense": rest_of_model_ms(row["dense_forward_ms"], split["forward_ms"]["dense_attention"], layers),
        "dsa": rest_of_model_ms(row["dsa_forward_ms"], split["dsa_forward_ms"], layers)}
    return split


def _warm_calls(config: RunConfig, n: int, top_k: int, vocab: int, batch_size: int,
                device) -> tuple[dict[str, Callable], dict[str, Callable], RunConfig]:
    """Both models at length ``n`` (:func:`_models`) on the profile's batch, and their calls after one
    warm-up each (allocators, kernels, optimizer state): ``({"dense_train", "dsa_train",
    "dense_forward", "dsa_forward"}, {"dense", "dsa"} training losses, the DSA config)``."""
    dense_config, dense, sparse_config, sparse = _models(config, n, top_k, vocab, batch_size)
    inputs, targets = _batch(config, vocab, batch_size, n, device)
    dense_train, dense_forward, dense_loss = _step_functions(dense_config, dense.to(device), inputs, targets, device)
    sparse_train, sparse_forward, sparse_loss = _step_functions(sparse_config, sparse.to(device), inputs, targets,
                                                                device)
    calls = {"dense_train": dense_train, "dsa_train": sparse_train,
             "dense_forward": dense_forward, "dsa_forward": sparse_forward}
    for fn in calls.values():
        fn()
    synchronize(device)
    return calls, {"dense": dense_loss, "dsa": sparse_loss}, sparse_config


def _peak_of_each(fns: dict[str, Callable], device) -> dict[str, float | None]:
    """The extra memory (MB) at the peak of one call of each function, in turn."""
    return {name: _mb(peak_memory_bytes(fn, device)[1]) for name, fn in fns.items()}


def _fresh_peaks(config: dict, n: int, top_k: int, vocab: int, batch_size: int,
                 device: str) -> dict[str, float | None]:
    """:func:`_peak_of_each` of :func:`_warm_calls`, for :func:`run_in_fresh_process` (``config`` as
    :meth:`RunConfig.to_dict`)."""
    device = torch.device(device)
    return _peak_of_each(_warm_calls(RunConfig.from_dict(config), n, top_k, vocab, batch_size, device)[0], device)


def _batch(config: RunConfig, vocab: int, batch_size: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The profile's batch: ``(inputs, targets) [batch_size, n]`` of random tokens from ``train.seed``."""
    gen = torch.Generator().manual_seed(config.train.seed)
    tokens = torch.randint(vocab, (batch_size, n + 1), generator=gen)
    return tokens[:, :-1].to(device), tokens[:, 1:].to(device)


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def profile_lengths(config: RunConfig, seq_lengths: Sequence[int] | str, *, batch_size: int | None = None,
                    repeats: int = 5, top_k_fraction: float | None = None, max_top_k: int | None = None,
                    phases: bool = True, ops: bool = False, progress: bool = True) -> dict:
    """Measure every length (module docstring); returns ``{"machine", "config", "settings", "rows"}``.

    Args:
        config: the run config (its attention setting is ignored; model, optimizer, dtype,
            device and seed are used).
        seq_lengths: the lengths ``N``.
        batch_size: sequences per step (default ``train.batch_size``).
        repeats: timed samples per variant (after one untimed warm-up call each).
        top_k_fraction: DSA keys per query as a fraction of ``N`` (default: ``model.top_k``).
        max_top_k: with ``top_k_fraction``, at most this many keys per query.
        phases: also time the phases of one attention layer (module docstring).
        ops: also record each operator's self time in one training step of each model.
    """
    from tqdm import tqdm

    from ...training.distributed import resolve_device
    from ...training.precision import apply_precision

    lengths = parse_lengths(seq_lengths)
    batch_size = config.train.batch_size if batch_size is None else batch_size
    for name, value in (("--batch-size", batch_size), ("--repeats", repeats)):
        check_int(name, value)
    if top_k_fraction is not None and not 0 < top_k_fraction <= 1:
        raise ValueError(f"--top-k-fraction must be in (0, 1], got {top_k_fraction!r}")
    if max_top_k is not None:
        check_int("--max-top-k", max_top_k)
        if top_k_fraction is None:
            raise ValueError("--max-top-k caps --top-k-fraction; give both (or set model.top_k)")
    device = resolve_device(config.train.device)
    config, precision_note = apply_precision(config, device)
    vocab = profile_vocab_size(config)
    rows = []
    for n in tqdm(lengths, desc="profile", unit="length", disable=not progress):
        top_k = max(1, round(top_k_fraction * n)) if top_k_fraction is not None else config.model.top_k
        if max_top_k is not None:
            top_k = min(top_k, max_top_k)
        calls, losses, sparse_config = _warm_calls(config, n, top_k, vocab, batch_size, device)
        train_ms = _interleaved({"dense": calls["dense_train"], "dsa": calls["dsa_train"]}, device, repeats)
        forward_ms = _interleaved({"dense": calls["dense_forward"], "dsa": calls["dsa_forward"]}, device, repeats)
        if device.type == "cpu":  # module doc: not after the timed steps, in this process's heap
            peaks = run_in_fresh_process(_fresh_peaks, config.to_dict(), n, top_k, vocab, batch_size, str(device))
        else:
            peaks = _peak_of_each(calls, device)
        row = {
            "seq_len": n, "top_k": top_k, "batch_size": batch_size, "tokens": batch_size * n,
            "backend": _backend_name(sparse_config, batch_size, n, top_k, device),
            "top_k_covers_all": top_k >= n,
            "dense_train_ms": statistics.median(train_ms["dense"]), "dsa_train_ms": statistics.median(train_ms["dsa"]),
            "dense_forward_ms": statistics.median(forward_ms["dense"]),
            "dsa_forward_ms": statistics.median(forward_ms["dsa"]),
            "dense_train_peak_mb": peaks["dense_train"], "dsa_train_peak_mb": peaks["dsa_train"],
            "dense_forward_peak_mb": peaks["dense_forward"], "dsa_forward_peak_mb": peaks["dsa_forward"],
            "dense_train_saved_mb": _mb(saved_tensor_bytes(losses["dense"])[1]),
            "dsa_train_saved_mb": _mb(saved_tensor_bytes(losses["dsa"])[1]),
            "samples_ms": {"train": train_ms, "forward": forward_ms},
        }
        row["train_time_ratio"] = _ratio(row["dense_train_ms"], row["dsa_train_ms"])
        row["forward_time_ratio"] = _ratio(row["dense_forward_ms"], row["dsa_forward_ms"])
        row["train_memory_ratio"] = _ratio(row["dense_train_peak_mb"], row["dsa_train_peak_mb"])
        row["forward_memory_ratio"] = _ratio(row["dense_forward_peak_mb"], row["dsa_forward_peak_mb"])
        if phases:
            row["phases"] = _phases_with_rest(config, row, device, repeats)
        if ops:
            row["ops"] = op_times({"dense": calls["dense_train"], "dsa": calls["dsa_train"]}, device)
        rows.append(row)
    return {
        "machine": machine_with_kernel(device),
        "config": config.to_dict(),
        "settings": {"seq_lengths": lengths, "batch_size": batch_size, "repeats": repeats,
                     "top_k_fraction": top_k_fraction, "max_top_k": max_top_k, "vocab_size": vocab, "device": str(device),
                     "dtype": config.train.dtype, "precision": config.train.precision,
                     "precision_note": precision_note, "memory_unavailable": peak_memory_unavailable(device),
                     "timing": "median of interleaved single-call samples after one warm-up call each",
                     "memory": "peak: one call after one warm-up call each, " + (
                         "in a fresh process per length with glibc's mmap threshold fixed at 64 KiB from its start"
                         if device.type == "cpu" else "in this process (the device allocator's statistics)")
                     + "; saved: bytes autograd saves for the backward, exact"},
        "rows": rows,
        "dispatch": dispatch_record(),
    }


def write_profile(document: dict, json_path: str | Path) -> tuple[Path, Path]:
    """Write the JSON and ``profile.png`` next to it; returns both paths."""
    json_path = Path(json_path)
    write_json(json_path, document)
    png = json_path.with_name("profile.png")
    plot_profile(document, png)
    return json_path, png


def plot_profile(document: dict, path: str | Path) -> Path:
    """Train-step time, forward time, peak memory and the dense/DSA ratios against ``N``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...report.style import save, style

    path = Path(path)
    rows = document["rows"]
    ns = [r["seq_len"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for ax, key, title in ((axes[0], "train_ms", "training step (ms)"), (axes[1], "forward_ms", "forward (ms)"),
                           (axes[2], "train_peak_mb", "extra peak memory, training step (MB)")):
        for method in ("dense", "dsa"):
            points = [(n, r[f"{method}_{key}"]) for n, r in zip(ns, rows) if r[f"{method}_{key}"] is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], **style(method))
        ax.set_title(title)
    for key, label, line in (("train_time_ratio", "training step time", "-"),
                             ("forward_time_ratio", "forward time", "--"),
                             ("train_memory_ratio", "training peak memory", ":")):
        points = [(n, r[key]) for n, r in zip(ns, rows) if r[key] is not None]
        if points:
            axes[3].plot([p[0] for p in points], [p[1] for p in points], linestyle=line, marker="o", label=label)
    axes[3].axhline(1.0, color="tab:gray", linewidth=1)
    axes[3].set_title("dense / DSA (> 1: DSA better)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length N")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    s = document["settings"]
    cap = f" (at most {s['max_top_k']})" if s.get("max_top_k") else ""
    top_k = (f"top_k = {s['top_k_fraction']} N{cap}" if s["top_k_fraction"] is not None
             else f"top_k = {document['config']['model']['top_k']}")
    fig.suptitle(f"dense vs DSA LM, batch {s['batch_size']}, {top_k}, {document['machine']['device_name']}",
                 fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path.parent, path.name)
    return path


def format_table(document: dict) -> str:
    """The rows as a plain-text table."""
    def f(value, spec):
        return "n/a" if value is None else format(value, spec)

    header = (f"{'N':>6} {'top_k':>6} {'backend':>9} {'dense ms':>9} {'dsa ms':>9} {'ratio':>6} {'fwd d ms':>9}"
              f" {'fwd s ms':>9} {'ratio':>6} {'mem d MB':>9} {'mem s MB':>9} {'ratio':>6}")
    lines = [header]
    for r in document["rows"]:
        lines.append(
            f"{r['seq_len']:>6} {r['top_k']:>6} {r['backend']:>9} {r['dense_train_ms']:>9.2f} {r['dsa_train_ms']:>9.2f}"
            f" {f(r['train_time_ratio'], '.2f'):>6} {r['dense_forward_ms']:>9.2f} {r['dsa_forward_ms']:>9.2f}"
            f" {f(r['forward_time_ratio'], '.2f'):>6} {f(r['dense_train_peak_mb'], '.1f'):>9}"
            f" {f(r['dsa_train_peak_mb'], '.1f'):>9} {f(r['train_memory_ratio'], '.2f'):>6}")
    return "\n".join(lines)
