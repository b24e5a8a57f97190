"""Routed experts are not resident in HOBBIT mode: peak RSS stays near non-expert + budget."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from hobbit_py.fixtures import FixtureShape, write_fixture
from hobbit_py.gguf_check import HI_EXPERT_TENSOR
from tests.conftest import run_hobbit

# What a `hobbit run` process holds besides weights and the expert cache: the Python
# interpreter with numpy and the bindings, llama.cpp's compute buffers and a 2048-token KV cache.
RSS_OVERHEAD = 200 * 2**20
SHAPE = FixtureShape(n_layer=8, n_embd=512, n_ff_exp=2048, n_head=8, n_head_kv=4)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("mem") / "big.gguf", "mixtral", SHAPE,
                         expert_types=("q8_0", "q4_0"))


def peak_rss(model: Path, tmp_path: Path, *extra: str) -> dict:
    stats = tmp_path / f"stats{len(extra)}.json"
    proc = run_hobbit("run", str(model), "-p", "The cache holds the experts", "-n", "24",
                      "-t", "2", "--stats-json", str(stats), *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(stats.read_text())


def test_peak_rss_is_bounded_by_non_expert_bytes_plus_budget(big_model: Path,
                                                             tmp_path: Path) -> None:
    reader = gguf.GGUFReader(big_model)
    hi_expert = sum(int(t.n_bytes) for t in reader.tensors if HI_EXPERT_TENSOR.fullmatch(t.name))
    non_expert = sum(int(t.n_bytes) for t in reader.tensors if "_exps." not in t.name)

    ours = peak_rss(big_model, tmp_path, "--expert-budget", "10%")
    budget = ours["expert_budget_bytes"]
    assert hi_expert >= 4 * budget
    assert ours["loads_hi"] + ours["loads_lo"] > 0
    assert ours["peak_rss_bytes"] <= non_expert + budget + RSS_OVERHEAD

    # with HOBBIT off the same run touches every hi expert: the bound above is not trivial
    stock = peak_rss(big_model, tmp_path)
    assert stock["peak_rss_bytes"] > ours["peak_rss_bytes"] + hi_expert // 2
