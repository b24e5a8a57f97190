"""`hobbit eval`: KL and agreement against the all-hi reference, on llama.cpp's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hobbit_py.evaluate import evaluate
from hobbit_py.fixtures import write_fixture
from hobbit_py.policy import Policy
from tests.conftest import run_hobbit

TEXT = ("The printing press spread quickly across Europe. Within fifty years, presses "
        "were working in more than two hundred cities, and the price of books fell. ") * 6


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("eval") / "mixed.gguf", "mixtral",
                         expert_types=("q8_0", "q4_0"))


def test_all_hi_against_itself_is_exact(mixed: Path) -> None:
    policy = Policy(expert_budget="100%", hi_threshold=0.0, upgrade_threshold=0.0)
    result = evaluate(mixed, policy, TEXT, n_ctx=64, threads=2)
    assert result.tokens_scored > 100
    assert result.kl_mean == 0.0
    assert result.top1_agreement == 1.0
    assert result.perplexity == result.reference_perplexity


def test_uniform_lo_precision_diverges(mixed: Path) -> None:
    policy = Policy(expert_budget="100%", hi_threshold=2.0, upgrade_threshold=2.0)
    result = evaluate(mixed, policy, TEXT, n_ctx=64, threads=2)
    assert result.kl_mean > 0.0
    assert result.top1_agreement < 1.0 or result.kl_mean > 1e-6
    assert result.cache["loads_lo"] > 0 and result.cache["loads_hi"] == 0


def test_eval_cli_json(mixed: Path, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    proc = run_hobbit("eval", str(mixed), "--text", str(text), "--ctx-size", "64", "-t", "2",
                      "--expert-budget", "40%", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert 0.0 <= result["top1_agreement"] <= 1.0
    assert result["kl_mean"] >= 0.0
    assert result["perplexity"] > 1.0


def test_eval_without_budget_is_refused(mixed: Path) -> None:
    proc = run_hobbit("eval", str(mixed), "--max-tokens", "32")
    assert proc.returncode != 0
    assert "expert-budget" in proc.stderr and "Traceback" not in proc.stderr
