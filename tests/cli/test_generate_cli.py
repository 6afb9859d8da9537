"""``sparse-attention generate`` on run folders made by ``sparse-attention lm train --preset tiny``."""

import pytest

from sparse_attention.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["dense", "dsa"])
def run_dir(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"tiny-{request.param}")
    assert main(["lm", "train", "--preset", "tiny", "--attention", request.param, "--out", str(out), "--quiet"]) == 0
    return out


def test_generate_continues_the_prompt_with_and_without_the_cache(run_dir, capsys):
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", "def ", "--max-new-tokens", "12"]) == 0
    cached = capsys.readouterr().out
    assert cached.startswith("def ") and len(cached.rstrip("\n")) > len("def ")
    assert main(["generate", str(run_dir), "--prompt", "def ", "--max-new-tokens", "12", "--no-cache"]) == 0
    assert capsys.readouterr().out == cached  # greedy: the cache changes nothing
    assert main(["generate", str(run_dir), "--prompt", "def ", "--max-new-tokens", "5", "--temperature", "0.8",
                 "--top-p", "0.9", "--seed", "3"]) == 0


def test_generate_errors(run_dir, tmp_path, capsys):
    for argv, text in ((["generate", str(tmp_path), "--prompt", "x"], "not a run folder"),
                       (["generate", str(run_dir), "--prompt", "x", "--top-p", "2"], "top_p")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and text in capsys.readouterr().err


def test_export_writes_a_graph_that_onnxruntime_runs(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.exists() and "max abs error" in text
    errors = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if "max abs error" in line]
    assert len(errors) == 2 and max(errors) <= 1e-4
