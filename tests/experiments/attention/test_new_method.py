"""A new method is its selector and its spec: the suite, demo, plots and the LM take it from there.

A toy method is registered for the duration of this module (a strided window: every
``stride``-th key back from the query, ``top_k`` of them) with no cost model and no colour,
the least a new method's author has to write, and the suite's tiny configuration runs with it.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import sparse_attention as sa
from sparse_attention.cli.main import main
from sparse_attention.experiments.attention.demo import DemoConfig, run_demo
from sparse_attention.experiments.attention.suite import EXPERIMENTS
from sparse_attention.models.decoder import SparseLM
from sparse_attention.report.style import style
from sparse_attention.selection._util import query_key_limit
from sparse_attention.selection.base import Param, Selection, register_method, unregister_method
from sparse_attention.training.config import preset

TOY = "toy_strided"
TINY = ["--quick", "--lengths", "64", "96", "--budget", "16"]


def select_strided(q, k, *, causal: bool = True, top_k: int = 8, stride: int = 2) -> Selection:
    b, n_q, n_k = q.shape[0], q.shape[2], k.shape[2]
    limit = query_key_limit(n_q, n_k, causal, q.device)  # [N_q] last visible key
    idx = limit[:, None] - stride * torch.arange(top_k, device=q.device)[None, :]  # [N_q, top_k]
    idx = torch.where(idx >= 0, idx, -1)
    return Selection(idx.expand(b, 1, n_q, top_k), n_k, causal, TOY, {"top_k": top_k, "stride": stride})


@pytest.fixture(scope="module")
def toy_method():
    register_method(TOY, params=[Param("top_k", 8, "keys per query"), Param("stride", 2, "distance between keys")],
                    summary="toy: every stride-th key back from the query", reference="this test",
                    budget_param="top_k")(select_strided)
    yield TOY
    unregister_method(TOY)


@pytest.fixture(scope="module")
def suite_dir(toy_method, tmp_path_factory):
    out = tmp_path_factory.mktemp("suite_with_toy")
    assert main(["suite", *TINY, "--methods", "dense", "local", toy_method, "--output-dir", str(out)]) == 0
    return out


def test_the_suite_runs_every_experiment_with_the_new_method(suite_dir, toy_method):
    results = json.loads((suite_dir / "results.json").read_text())
    assert set(results["experiments"]) == set(EXPERIMENTS)
    sections = results["experiments"]
    for name in ("needle", "sparsity", "scalability", "pareto"):
        assert toy_method in json.dumps(sections[name]["rows"]), name
    # The budget parameter of its spec got the suite budget, and Pareto swept it.
    assert sections["needle"]["settings"]["methods"][toy_method] == {"top_k": 16}
    pareto_rows = [r for r in sections["pareto"]["rows"] if r["method"] == toy_method]
    assert len({r["params"]["top_k"] for r in pareto_rows}) >= 2
    # No cost model in its spec: energy says so and Pareto has no FLOPs for it, nothing breaks.
    assert sections["energy"]["settings"]["not_modelled"] == [toy_method]
    assert all(r["flops"] is None and r["total_ms"] > 0 for r in pareto_rows)
    report = (suite_dir / "report.md").read_text()
    assert toy_method in report and "no cost model" in report
    assert len(list(suite_dir.glob("*.png"))) >= len(EXPERIMENTS)


def test_demo_plots_and_the_lm_take_the_method_from_its_spec(toy_method):
    rows = run_demo(DemoConfig(length=64, heads=2, kv_heads=1, head_dim=16, budget=8, methods=("dense", toy_method)))
    toy = next(r for r in rows if r["method"] == toy_method)
    assert toy["edges_per_query"] <= 8
    assert style(toy_method)["label"] == toy_method and style(toy_method)["color"]
    config = preset("tiny", toy_method).model
    model = SparseLM(dataclasses.replace(config, vocab_size=32))
    out = model(torch.randint(0, 32, (1, 16)))
    assert all(aux.selection.method == toy_method and aux.selection.top_k == config.top_k for aux in out.layers)
    # The public API takes it as any other method.
    q, k, v = torch.randn(1, 2, 20, 8), torch.randn(1, 1, 20, 8), torch.randn(1, 1, 20, 8)
    assert sa.attention(q, k, v, method=toy_method, top_k=4).shape == q.shape
