"""time_interleaved: one call of each function per round, every round, after a warm-up."""

from sparse_attention.utils.timing import time_interleaved


def test_calls_alternate_and_every_function_gets_its_repeats():
    calls = []
    fns = [lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c")]
    results = time_interleaved(fns, "cpu", repeats=3, warmup=1)
    assert calls == ["a", "b", "c"] * 4  # one warm-up round, then three timed rounds
    assert len(results) == 3
    for r in results:
        assert r["repeats"] == 3 and 0 <= r["min_ms"] <= r["median_ms"]
