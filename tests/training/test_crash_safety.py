"""A run killed with SIGKILL at any moment (mid-step, mid-checkpoint, mid-log-line) resumes to the
loss sequence of an uninterrupted run, and never leaves a half-written file it would read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")

OVERRIDES = ["train.warmup.steps=3", "train.main.steps=6", "train.checkpoint_every=2", "train.eval_every=3"]

#: Runs the tiny DSA preset in this process; ``KILL`` names where it kills itself with SIGKILL:
#: ``weights`` (model.safetensors.tmp written, not renamed), ``swap`` (the old checkpoint renamed
#: away, the new one not yet in), ``metrics`` (half a metrics line written), each at its Nth time.
DRIVER = textwrap.dedent("""
    import json, os, signal, sys
    from sparse_attention.training import checkpoint, trainer
    from sparse_attention.training.config import apply_overrides, preset

    run_dir, cache, kill, nth, resume = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
    count = [0]

    def due():
        count[0] += 1
        return count[0] == nth

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_replace = os.replace

    class Os:
        def __getattr__(self, name):
            return getattr(os, name)

        def replace(self, src, dst):
            if kill == "weights" and str(src).endswith("model.safetensors.tmp") and due():
                die()
            real_replace(src, dst)
            if kill == "swap" and str(dst).endswith("checkpoint.old") and due():
                die()

    checkpoint.os = Os()
    real_write = trainer.MetricsLog.write

    def write(self, record):
        if kill == "metrics" and due():
            with self.path.open("a") as f:
                f.write(json.dumps(record)[:25])
                f.flush()
            die()
        real_write(self, record)

    trainer.MetricsLog.write = write
    config = apply_overrides(preset("tiny", "dsa"), [f"data.cache_dir={json.dumps(cache)}", *sys.argv[6:]])
    trainer.train(config, run_dir, resume=resume, progress=False)
""")


def run(tmp_path, run_dir, kill="none", nth=0, resume=False, wait=True):
    command = [sys.executable, "-c", DRIVER, str(run_dir), str(tmp_path / "cache"), kill, str(nth),
               "1" if resume else "0", *OVERRIDES]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def losses(run_dir):
    results = json.loads((run_dir / "training_results.json").read_text())
    return [(r["position"], r["loss"]) for r in results["train_losses"]]


def finish(tmp_path, run_dir):
    """Resume until the run is done (each resume starts from the last complete checkpoint)."""
    for _ in range(5):
        done = run(tmp_path, run_dir, resume=(run_dir / "checkpoint").exists() or (run_dir / "checkpoint.old").exists())
        assert done.returncode == 0, done.stderr[-2000:]
        if (run_dir / "training_results.json").exists():
            return
    raise AssertionError("the run did not finish")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("crash")
    done = run(tmp_path, tmp_path / "uninterrupted")
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp_path, losses(tmp_path / "uninterrupted")


@pytest.mark.parametrize("kill,nth", [("weights", 2), ("swap", 2), ("metrics", 4), ("metrics", 9)])
def test_sigkill_inside_a_write_resumes_to_the_same_losses(reference, kill, nth):
    tmp_path, expected = reference
    run_dir = tmp_path / f"{kill}-{nth}"
    killed = run(tmp_path, run_dir, kill, nth)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    finish(tmp_path, run_dir)
    assert losses(run_dir) == expected
    assert not list(run_dir.glob("checkpoint/*.tmp"))


def test_sigkill_at_random_moments_resumes_to_the_same_losses(reference):
    tmp_path, expected = reference
    run_dir = tmp_path / "random"
    for delay in (4.0, 5.0, 6.5):  # after start-up (~3-4 s): mid-training, somewhere
        process = run(tmp_path, run_dir, resume=(run_dir / "checkpoint").exists(), wait=False)
        time.sleep(delay)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        if (run_dir / "training_results.json").exists():
            break
    if not (run_dir / "training_results.json").exists():
        finish(tmp_path, run_dir)
    assert losses(run_dir) == expected
