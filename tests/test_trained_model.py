"""The embedded model through the real path: convert, run, widen at F16, eval."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_module

require_module("torch")

from hobbit_convert.convert import convert  # noqa: E402
from hobbit_py.evaluate import DEFAULT_TEXT, evaluate  # noqa: E402
from hobbit_py.model import Model  # noqa: E402
from hobbit_py.policy import Policy  # noqa: E402
from training.widen import widen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "models" / "hobbit-mixtral-tiny"
PROMPTS = ("The documentation explains how", "To create a table, use the")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("trained")
    wide_hf = d / "wide-hf"
    widen(TRAINED, wide_hf, factor=4)
    return {
        "f16": convert(str(TRAINED), "f16", d / "tiny-f16.gguf").output,
        "wide_f16": convert(str(wide_hf), "f16", d / "wide-f16.gguf").output,
        "mixed": convert(str(TRAINED), "q8_0,q4_k", d / "tiny-mixed.gguf").output,
    }


def greedy(path: Path, prompt: str) -> list[int]:
    with Model(path, n_threads=2) as model:
        return model.generate_text(prompt, max_tokens=24).tokens


def test_widened_model_gives_identical_greedy_tokens_at_f16(converted: dict[str, Path]) -> None:
    for prompt in PROMPTS:
        assert greedy(converted["wide_f16"], prompt) == greedy(converted["f16"], prompt)


def test_trained_model_writes_english(converted: dict[str, Path]) -> None:
    with Model(converted["mixed"], policy=Policy(expert_budget="30%"), n_threads=2) as model:
        text = model.generate_text("The documentation explains how", max_tokens=24).text
        stats = model.hobbit_stats()
    words = text.split()
    assert len(words) >= 10
    assert sum(w.strip(".,;:()").isalpha() for w in words) >= 0.7 * len(words)
    assert stats["loads_hi"] > 0 and stats["loads_lo"] > 0


def test_eval_on_the_trained_model(converted: dict[str, Path]) -> None:
    text = DEFAULT_TEXT.read_text()
    exact = evaluate(converted["mixed"], Policy(expert_budget="100%", hi_threshold=0.0,
                                                upgrade_threshold=0.0), text, max_tokens=512)
    assert exact.kl_mean == 0.0 and exact.top1_agreement == 1.0
    assert 10.0 < exact.reference_perplexity < 80.0  # the card reports ~30 at 1024-token windows
    budget = evaluate(converted["mixed"], Policy(expert_budget="30%"), text, max_tokens=512)
    assert budget.kl_mean > 0.0
    assert budget.top1_agreement > 0.8
