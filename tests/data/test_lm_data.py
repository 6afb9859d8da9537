"""The LM data layer: deterministic batches, rank splits, splits, tokenizers, cache, sources, tasks."""

import sys
import types

import pytest
import torch

from sparse_attention.data.lm import token_data
from sparse_attention.training.config import DataConfig
from sparse_attention.data.lm import IGNORE_INDEX, load_data
from sparse_attention.data.lm.tokenizer import ByteTokenizer, split_text

N = 32


@pytest.fixture(scope="module")
def stdlib_bytes(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_data(DataConfig(tokenizer="bytes", max_chars=100_000, cache_dir=str(cache)), N, seed=3)


def _config(source, tmp_path, **kwargs):
    kwargs.setdefault("tokenizer", "bytes")
    return DataConfig(source=str(source), cache_dir=str(tmp_path / "cache"), **kwargs)


# ---------------------------------------------------------------- batches


def test_train_batch_is_a_pure_function_of_seed_and_step(stdlib_bytes):
    inputs, targets = stdlib_bytes.train_batch(7, 4)
    assert inputs.shape == targets.shape == (4, N) and inputs.dtype == targets.dtype == torch.int64
    again = stdlib_bytes.train_batch(7, 4)
    assert torch.equal(inputs, again[0]) and torch.equal(targets, again[1])
    assert not torch.equal(inputs, stdlib_bytes.train_batch(8, 4)[0])
    reseeded = token_data.TextData(tokens=_stream(stdlib_bytes), val_fraction=0.05, tokenizer=ByteTokenizer(),
                                seq_len=N, seed=4, description="")
    assert not torch.equal(inputs, reseeded.train_batch(7, 4)[0])


def _stream(data):
    return torch.cat([data.train_tokens, data.val_tokens]).numpy()


def test_windows_come_from_the_train_stream_and_targets_are_shifted_inputs(stdlib_bytes):
    inputs, targets = stdlib_bytes.train_batch(0, 8)
    assert torch.equal(targets[:, :-1], inputs[:, 1:])
    windows = stdlib_bytes.train_tokens.long().unfold(0, N + 1, 1)  # every window of the train split
    for row in torch.cat([inputs, targets[:, -1:]], dim=1):
        assert (windows == row).all(dim=1).any()


@pytest.mark.parametrize("source", ["text", "mqar", "needle"])
def test_ranks_split_the_global_batch(source, stdlib_bytes):
    data = stdlib_bytes if source == "text" else load_data(DataConfig(source=source), N)
    world, batch = 3, 2
    whole_inputs, whole_targets = data.train_batch(5, batch * world)
    parts = [data.train_batch(5, batch, rank=r, world_size=world) for r in range(world)]
    for r, (inputs, targets) in enumerate(parts):
        assert inputs.shape == (batch, N)
        assert torch.equal(inputs, whole_inputs[r::world]) and torch.equal(targets, whole_targets[r::world])


def test_validation_is_fixed_from_the_tail_and_never_in_training(tmp_path):
    # 900 train bytes from one alphabet, 100 validation bytes from another.
    path = tmp_path / "corpus.txt"
    path.write_text("abc " * 225 + "xyz." * 25)
    data = load_data(_config(path, tmp_path, val_fraction=0.1), 16)
    assert (data.n_train_tokens, data.n_val_tokens) == (900, 100)
    val_alphabet = set(b"xyz.")
    for step in range(50):
        inputs, targets = data.train_batch(step, 4)
        assert not set(inputs.flatten().tolist()) & val_alphabet
        assert not set(targets.flatten().tolist()) & val_alphabet
    batches = data.val_batches(2, 3)
    assert all(torch.equal(a, b) for batch, again in zip(batches, data.val_batches(2, 3)) for a, b in zip(batch, again))
    inputs = torch.cat([b[0] for b in batches])
    targets = torch.cat([b[1] for b in batches])
    assert set(inputs.flatten().tolist()) <= val_alphabet and torch.equal(targets[:, :-1], inputs[:, 1:])
    # Stride N: window i starts at i * N of the val split; scored tokens never repeat.
    for i in range(6):
        assert torch.equal(inputs[i], data.val_tokens[i * 16:(i + 1) * 16].long())
    # Not enough room for 20 disjoint windows: evenly spread overlapping ones, still inside the split.
    many = data.val_batches(5, 4)
    assert len(many) == 5 and torch.equal(many[0][0][0], data.val_tokens[:16].long())
    assert torch.equal(many[-1][1][-1], data.val_tokens[-16:].long())


def test_too_short_splits_raise(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("0123456789" * 20)
    with pytest.raises(ValueError, match="validation split has 10 tokens.*seq_len"):
        load_data(_config(path, tmp_path, val_fraction=0.05), 16)
    with pytest.raises(ValueError, match="train split"):
        load_data(_config(path, tmp_path, val_fraction=0.5), 128)
    load_data(_config(path, tmp_path, val_fraction=0.05), 9)  # 10 tokens = seq_len + 1 is enough


@pytest.mark.parametrize(("call", "match", "error"), [
    (lambda d: d.train_batch(-1, 2), "step", ValueError),
    (lambda d: d.train_batch(1.0, 2), "step", TypeError),
    (lambda d: d.train_batch(0, 0), "batch_size", ValueError),
    (lambda d: d.train_batch(0, True), "batch_size", TypeError),
    (lambda d: d.train_batch(0, 2, world_size=0), "world_size", ValueError),
    (lambda d: d.train_batch(0, 2, rank=2, world_size=2), "rank", ValueError),
    (lambda d: d.train_batch(0, 2, rank=-1, world_size=2), "rank", ValueError),
    (lambda d: d.val_batches(0, 2), "n_batches", ValueError),
    (lambda d: d.val_batches(1, "2"), "batch_size", TypeError),
])
def test_bad_batch_arguments(stdlib_bytes, call, match, error):
    with pytest.raises(error, match=match):
        call(stdlib_bytes)


def test_bad_load_arguments(tmp_path):
    with pytest.raises(ValueError, match="seq_len"):
        load_data(DataConfig(source="mqar"), 0)
    with pytest.raises(TypeError, match="seq_len"):
        load_data(DataConfig(source="mqar"), 32.0)
    with pytest.raises(ValueError, match="seed"):
        load_data(DataConfig(source="mqar"), 32, seed=-1)
    with pytest.raises(TypeError, match="DataConfig"):
        load_data({"source": "mqar"}, 32)
    with pytest.raises(ValueError, match="seq_len must be >= 7 for the needle"):
        load_data(DataConfig(source="needle"), 6)
    with pytest.raises(ValueError, match="seq_len must be >= 4 for the mqar"):
        load_data(DataConfig(source="mqar"), 3)


# ---------------------------------------------------------------- tokenizers and cache


def test_bytes_round_trip():
    tok = ByteTokenizer()
    text = "Größe: 5 µm\n\tdone 🎉"
    ids = tok.encode(text)
    assert tok.vocab_size == 256 and max(ids) < 256 and len(ids) == len(text.encode())
    assert tok.decode(ids) == text and tok.decode(torch.tensor(ids)) == text
    assert tok.decode(ids[:-1]).endswith("\ufffd")  # a cut character is replaced, not an error


def test_split_text_keeps_everything():
    text = "line one\nline two\n\nthree\nfour"
    for size in (1, 5, 100):
        pieces = split_text(text, size)
        assert "".join(pieces) == text and all(p.endswith("\n") for p in pieces[:-1])


def test_bpe_is_trained_cached_and_round_trips(tmp_path, monkeypatch, capfd):
    config = DataConfig(tokenizer="bpe", bpe_vocab_size=400, max_chars=100_000, cache_dir=str(tmp_path))
    calls = []
    real_train = token_data.train_bpe
    monkeypatch.setattr(token_data, "train_bpe", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    data = load_data(config, N)
    assert capfd.readouterr() == ("", "")  # no progress bar (Python or Rust side) unless asked for
    assert calls == [1] and data.vocab_size == data.tokenizer.vocab_size == 400
    stream = _stream(data)
    assert stream.max() < 400 and len(stream) < 70_000  # merges compress ~100k bytes of English
    text = "The quick brown fox, 3 × 7 = 21;\n  indented\tcode() # ünïcode 🎉"
    assert data.tokenizer.decode(data.tokenizer.encode(text)) == text
    assert data.tokenizer.decode(stream) == token_data.corpus.stdlib_text(100_000)
    entries = list((tmp_path / "tokenizers").iterdir())
    assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {"meta.json", "tokenizer.json",
                                                                            "tokens.npy"}
    # Second load: no training, no text read, same stream and tokenizer.
    monkeypatch.setattr(token_data, "_read_text", lambda *a: pytest.fail("the cache should be used"))
    again = load_data(config, N)
    assert calls == [1] and (_stream(again) == stream).all()
    assert again.tokenizer.encode(text) == data.tokenizer.encode(text)
    assert torch.equal(again.train_batch(4, 2)[0], data.train_batch(4, 2)[0])
    # Another vocabulary is another cache entry.
    monkeypatch.setattr(token_data, "_read_text", lambda *a: "some other text " * 100)
    small = load_data(DataConfig(tokenizer="bpe", bpe_vocab_size=300, max_chars=100_000, cache_dir=str(tmp_path)), 8)
    assert calls == [1, 1] and small.vocab_size <= 300 and len(list((tmp_path / "tokenizers").iterdir())) == 2


# ---------------------------------------------------------------- sources


def test_directory_source_reads_text_files_in_order(tmp_path):
    root = tmp_path / "docs"
    files = {"b.md": "# B\n", "a.txt": "alpha\n", "sub/c.py": "x = 'c'\n", "sub/d.rst": "Delta\n=====\n",
             "skip.json": "{}", ".hidden/e.txt": "hidden", "sub/.f.txt": "hidden"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    config = _config(root, tmp_path, val_fraction=0.2)
    data = load_data(config, 4)
    expected = "\n\n".join(files[name] for name in ("a.txt", "b.md", "sub/c.py", "sub/d.rst"))
    assert data.tokenizer.decode(_stream(data)) == expected
    assert data.n_train_tokens + data.n_val_tokens == len(expected) and str(root) in data.description
    limited = load_data(_config(root, tmp_path, val_fraction=0.2, max_chars=30), 4)
    assert limited.tokenizer.decode(_stream(limited)) == expected[:30]
    # An edited file changes the cache key: the new text is read.
    (root / "a.txt").write_text("ALPHA, longer now\n")
    assert load_data(config, 4).tokenizer.decode(_stream(load_data(config, 4))).startswith("ALPHA, longer")


def test_file_source_and_path_errors(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("hello world, " * 20)
    data = load_data(_config(path, tmp_path), 8)
    assert data.tokenizer.decode(_stream(data)) == "hello world, " * 20
    with pytest.raises(ValueError, match="data.source: no such file or directory: .*missing"):
        load_data(_config(tmp_path / "missing", tmp_path), 8)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="no text"):
        load_data(_config(tmp_path / "empty.txt", tmp_path), 8)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="holds no"):
        load_data(_config(tmp_path / "nothing", tmp_path), 8)


def test_hf_without_datasets_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail, touches no network
    with pytest.raises(ValueError, match=r"'some/corpus'.*pip install datasets.*local"):
        load_data(_config("hf:some/corpus", tmp_path), 8)


def test_hf_unreachable_is_a_clear_error(tmp_path, monkeypatch):
    def load_dataset(name, config, split, streaming):
        raise ConnectionError("no route to host")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(ValueError, match=r"'wikitext'.*config 'wikitext-2-raw-v1'.*ConnectionError: no route"):
        load_data(_config("hf:wikitext:wikitext-2-raw-v1", tmp_path), 8)
    with pytest.raises(ValueError, match="hf:NAME"):
        load_data(_config("hf:", tmp_path), 8)


def test_hf_rows_use_the_first_text_column(tmp_path, monkeypatch):
    seen = {}

    def load_dataset(name, config, split, streaming):
        seen.update(name=name, config=config, split=split, streaming=streaming)
        return [{"id": i, "text": f"row {i} text", "title": "t"} for i in range(40)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = load_data(_config("hf:toy", tmp_path, max_chars=200), 8)
    assert seen == {"name": "toy", "config": None, "split": "train", "streaming": True}
    assert data.tokenizer.decode(_stream(data)) == "\n\n".join(f"row {i} text" for i in range(40))[:200]


# ---------------------------------------------------------------- synthetic tasks


def _solve_mqar(inputs, tokenizer):
    """Expected targets from the inputs alone: a repeated key asks for the value that followed it first."""
    names = tokenizer.names
    expected = torch.full_like(inputs, IGNORE_INDEX)
    for b, row in enumerate(inputs.tolist()):
        memory = {}
        for t, token in enumerate(row):
            if not names[token].startswith("k"):
                continue
            if token in memory:
                expected[b, t] = memory[token]
            else:
                memory[token] = row[t + 1]
    return expected


def _solve_needle(inputs, marker):
    expected = torch.full_like(inputs, IGNORE_INDEX)
    for b, row in enumerate(inputs.tolist()):
        first, last = [t for t, token in enumerate(row) if token == marker]
        length = len(row) - last  # value tokens after the last marker, the final one is the last target
        expected[b, last:] = torch.tensor(row[first + 1:first + 1 + length])
    return expected


@pytest.mark.parametrize("seq_len", [7, 32, 101])
@pytest.mark.parametrize("source", ["mqar", "needle"])
def test_tasks_score_only_answers_that_the_inputs_determine(source, seq_len):
    if source == "mqar" and seq_len == 7:
        seq_len = 4
    data = load_data(DataConfig(source=source, tokenizer="bpe"), seq_len, seed=1)
    assert data.n_train_tokens is None and "tokenizer ignored" in data.description
    batches = [data.train_batch(step, 8) for step in range(3)] + data.val_batches(2, 8)
    for inputs, targets in batches:
        assert inputs.shape == targets.shape == (8, seq_len) and inputs.max() < data.vocab_size
        if source == "mqar":
            expected = _solve_mqar(inputs, data.tokenizer)
            per_row = data.task.num_pairs
        else:
            expected = _solve_needle(inputs, data.task.marker)
            per_row = data.task.value_len
        assert torch.equal(targets, expected)
        assert ((targets != IGNORE_INDEX).sum(dim=1) == per_row).all()
        scored = targets[:, :-1] != IGNORE_INDEX  # where visible, a scored target is the next input
        assert torch.equal(targets[:, :-1][scored], inputs[:, 1:][scored])
    assert not torch.equal(batches[0][0], batches[1][0])


@pytest.mark.parametrize("source", ["mqar", "needle"])
def test_task_batches_are_deterministic_and_validation_is_seed_independent(source):
    one, other = load_data(DataConfig(source=source), N, seed=0), load_data(DataConfig(source=source), N, seed=1)
    assert torch.equal(one.train_batch(3, 4)[0], one.train_batch(3, 4)[0])
    assert not torch.equal(one.train_batch(3, 4)[0], other.train_batch(3, 4)[0])
    val = one.val_batches(3, 4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(val, other.val_batches(2, 4)))  # prefix-stable too
    assert not torch.equal(val[0][0], val[1][0])
    assert one.tokenizer.encode(one.tokenizer.decode(val[0][0][0])) == val[0][0][0].tolist()
