"""Every script in examples/ runs as documented (small sizes where it takes them)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: Arguments that keep each run to a few seconds on 2 CPU cores.
SMALL = {"attention_api.py": ["--length", "256"], "attention_layer.py": ["--length", "128"],
         "custom_method.py": ["--length", "256", "--top-k", "16"]}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted([*SMALL, "train_tiny_lm.py"])


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs(name, tmp_path):
    args = SMALL.get(name, ["--out", str(tmp_path / "run")])
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()
    if name == "custom_method.py":
        assert "strided at full coverage equals dense: True" in done.stdout
