"""Run a function in a new Python process whose glibc heap never holds large free blocks.

CPU peak-memory measurements (:mod:`~sparse_attention.utils.memory`) count resident pages. In a
process that has run large work under glibc's dynamic mmap threshold, the heap holds free blocks
of up to 32 MiB; a measured call reuses them, and every one it touches stays resident after it is
freed, so the peak counts freed memory as if it were live. A process started with the threshold
fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) gives every large block a mapping of its own from
the start, returned to the kernel when freed.

The child is ``python -m sparse_attention.utils.fresh_process``: it imports nothing of the
caller's main module (a script without a ``__main__`` guard is fine), reads the pickled call
from stdin and writes the pickled result (or the exception) to a file.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .memory import MMAP_THRESHOLD_BYTES, MMAP_THRESHOLD_ENV


def run_in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new process with glibc's mmap threshold fixed at 64 KiB from its start.

    Every allocation above the threshold is a mapping of its own there, also outside a
    measurement: work in that process runs slower (fresh page faults), so time nothing there.
    The process inherits the environment (kernel build, ISA limits) and gets this process's
    PyTorch thread count; its stderr (progress, warnings) goes to this process's stderr.

    Args:
        fn: a module-level function (pickled by reference).
        args: its picklable arguments.
    Returns:
        ``fn(*args)``, pickled back. An exception in ``fn`` is raised here again; a child that
        dies without a result raises RuntimeError with its exit status.
    """
    env = dict(os.environ, **{MMAP_THRESHOLD_ENV: str(MMAP_THRESHOLD_BYTES)})
    with tempfile.TemporaryDirectory(prefix="sa-fresh-") as folder:
        result_path = Path(folder) / "result.pickle"
        completed = subprocess.run([sys.executable, "-m", __name__, str(result_path)],
                                   input=pickle.dumps((torch.get_num_threads(), fn, args)), env=env,
                                   stdout=subprocess.DEVNULL, check=False)
        if not result_path.exists():
            raise RuntimeError(f"the fresh process running {getattr(fn, '__qualname__', fn)!r} exited with status "
                               f"{completed.returncode} and no result (its stderr is above)")
        ok, value = pickle.loads(result_path.read_bytes())
    if not ok:
        raise value
    return value


def _main(result_path: str) -> None:
    threads, fn, args = pickle.loads(sys.stdin.buffer.read())
    torch.set_num_threads(threads)
    try:
        outcome = (True, fn(*args))
    except Exception as error:  # handed back to the caller, raised there
        outcome = (False, error)
    Path(result_path).write_bytes(pickle.dumps(outcome))


if __name__ == "__main__":
    _main(sys.argv[1])
