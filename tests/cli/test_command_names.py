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


#: The commands `sparse-attention --help` lists, each once.
COMMANDS = ["methods", "backends", "demo", "suite", "plot", "report", "bench", "head-approx", "generate", "export",
            "hf-compare", "lm"]
#: Every old name that still works, with the command it runs.
OLD_NAMES = {"experiments": "suite", "train": "lm train", "experiment dsa": "lm compare",
             "experiment table": "lm table", "visualize": "lm visualize", "ablation": "lm ablation",
             "profile": "lm profile", "run_experiment": "lm compare", "visualize_attention": "lm visualize",
             "ablation_study": "lm ablation", "profile_efficiency": "lm profile"}
#: Arguments a command needs before it parses.
REQUIRED_ARGS = {"lm table": ["x.json"], "lm visualize": ["run"], "lm ablation": ["--vary", "k", "--values", "1"],
                 "lm profile": ["--seq-lengths", "8"]}


def test_help_says_which_command_an_old_name_is(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    text = capsys.readouterr().out
    commands_part, rest = text.split("\npositional arguments:\n")[1].split("\noptions:\n")
    choices, *entries = commands_part.splitlines()
    # Usage and the command list name the commands only, each once; no old name is an entry of its own.
    assert choices.strip() == "{" + ",".join(COMMANDS) + "}"
    assert "{" + ",".join(COMMANDS) + "}" in " ".join(text.split("positional arguments:")[0].split())
    listed = [line.split()[0] for line in entries if line.startswith("    ") and not line.startswith("     ")]
    assert listed == COMMANDS
    # One line (an epilog paragraph, however the terminal wraps it) names every old name and its command.
    epilog = " ".join(rest.split("\n\n", 1)[1].split())
    assert epilog.startswith("old names, still accepted: ")
    pairs = {}
    for group in epilog.removeprefix("old names, still accepted: ").split("; "):
        olds, new = group.split(" -> ")
        pairs.update({old: new for old in olds.split(", ")})
    assert pairs == OLD_NAMES
    for old, new in OLD_NAMES.items():  # and each runs the command the line names
        args = REQUIRED_ARGS.get(new, [])
        assert parse(*old.split(), *args).func is parse(*new.split(), *args).func, old
