"""Command names: `suite` and `lm ...` are the names; the old ones and the seed project's stay as aliases."""

import pytest

from sparse_attention.cli.main import build_parser


def parse(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("new, old", [
    (["suite", "--quick"], ["experiments", "--quick"]),
    (["lm", "train", "--preset", "tiny"], ["train", "--preset", "tiny"]),
    (["lm", "compare", "--quick"], ["experiment", "dsa", "--quick"]),
    (["lm", "compare", "--quick"], ["run_experiment", "--quick"]),
    (["lm", "table", "x.json"], ["experiment", "table", "x.json"]),
    (["lm", "visualize", "run"], ["visualize", "run"]),
    (["lm", "visualize", "run"], ["visualize_attention", "run"]),
    (["lm", "ablation", "--vary", "indexer_heads", "--values", "2,4,8,16"],
     ["ablation_study", "--vary", "indexer_heads", "--values", "2,4,8,16"]),
    (["lm", "profile", "--seq-lengths", "128,256"], ["profile_efficiency", "--seq_lengths", "128,256"]),
])
def test_old_names_run_the_same_command(new, old):
    a, b = parse(*new), parse(*old)
    assert a.func is b.func
    ignored = {"command", "lm_command", "experiment"}
    assert {k: v for k, v in vars(a).items() if k not in ignored} == {k: v for k, v in vars(b).items() if k not in ignored}


def test_help_says_which_command_an_old_name_is(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    for old, new in (("train", "lm train"), ("visualize", "lm visualize"), ("profile_efficiency", "lm profile")):
        assert f"old name of `sparse-attention {new}`" in text, old
    assert "suite (experiments)" in text
