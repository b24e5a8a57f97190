"""`hobbit eval`: KL and agreement against the all-hi reference, on llama.cpp's logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hobbit_py.evaluate import evaluate
from hobbit_py.fixtures import write_fixture
from hobbit_py.model import Model
from hobbit_py.policy import Policy
from tests.conftest import run_hobbit

TEXT = ("The printing press spread quickly across Europe. Within fifty years, presses "
        "were working in more than two hundred cities, and the price of books fell. ") * 6


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("eval") / "mixed.gguf", "mixtral",
                         expert_types=("q8_0", "q4_0"))


FORCE_LO = Policy(expert_budget="100%", hi_threshold=2.0, upgrade_threshold=2.0)


def test_all_hi_against_itself_is_exact(mixed: Path) -> None:
    policy = Policy(expert_budget="100%", hi_threshold=0.0, upgrade_threshold=0.0)
    result = evaluate(mixed, policy, TEXT, n_ctx=64, threads=2)
    assert result.tokens_scored > 100
    assert result.kl_mean == 0.0
    assert result.top1_agreement == 1.0
    assert result.perplexity == result.reference_perplexity


def _logits(path: Path, policy: Policy, window: list[int]) -> np.ndarray:
    with Model(path, policy=policy, n_ctx=64, n_threads=2, logits_all=True, n_batch=1) as model:
        model.eval(window)
        return np.array(model.scores[: len(window)], dtype=np.float64)


def test_figures_match_an_independent_computation(mixed: Path) -> None:
    """KL, perplexity and top-1 recomputed with numpy from the raw logits of two runs, on
    windows of n_ctx tokens that each start with BOS (the definition in evaluate.py)."""
    n_ctx, max_tokens = 64, 100
    result = evaluate(mixed, FORCE_LO, TEXT, n_ctx=n_ctx, threads=2, max_tokens=max_tokens)

    with Model(mixed, n_ctx=n_ctx, n_threads=2) as model:
        tokens = model.tokenize(TEXT.encode(), add_bos=False, special=False)[:max_tokens]
        bos = model.token_bos()
    windows = [[bos, *tokens[:n_ctx - 1]], [bos, *tokens[n_ctx - 1:]]]
    kl, nll, nll_ref, agree, n = [], [], [], [], 0
    for window in windows:
        ref = _logits(mixed, Policy(expert_budget=None), window)[:-1]
        ours = _logits(mixed, FORCE_LO, window)[:-1]
        p = np.exp(ref - ref.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        q = np.exp(ours - ours.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
        targets = np.array(window[1:])
        kl += list((p * np.log(p / q)).sum(1))
        nll += list(-np.log(q[np.arange(len(targets)), targets]))
        nll_ref += list(-np.log(p[np.arange(len(targets)), targets]))
        agree += list(ref.argmax(1) == ours.argmax(1))
        n += len(targets)

    assert result.tokens_scored == n == max_tokens
    assert result.kl_mean == pytest.approx(np.mean(kl), rel=1e-6)
    assert result.perplexity == pytest.approx(np.exp(np.mean(nll)), rel=1e-9)
    assert result.reference_perplexity == pytest.approx(np.exp(np.mean(nll_ref)), rel=1e-9)
    assert result.top1_agreement == np.mean(agree)
    # the case is not degenerate: lo experts change the distribution and some top-1 picks
    assert result.kl_mean > 1e-3 and result.perplexity != result.reference_perplexity
    assert result.top1_agreement < 1.0


def test_uniform_lo_precision_diverges(mixed: Path) -> None:
    result = evaluate(mixed, FORCE_LO, TEXT, n_ctx=64, threads=2)
    assert result.kl_mean > 1e-3
    assert result.cache["loads_lo"] > 0 and result.cache["loads_hi"] == 0


def test_eval_cli_json(mixed: Path, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    # prefetch off: with it, which copies are in when a layer is served depends on timing, and
    # the two runs could differ by a route's precision
    proc = run_hobbit("eval", str(mixed), "--text", str(text), "--ctx-size", "64", "-t", "2",
                      "--expert-budget", "40%", "--prefetch-depth", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    expected = evaluate(mixed, Policy(expert_budget="40%", prefetch_depth=0), TEXT, n_ctx=64, threads=2)
    for key in ("tokens_scored", "perplexity", "reference_perplexity", "kl_mean", "top1_agreement"):
        assert printed[key] == pytest.approx(getattr(expected, key), rel=1e-9), key
    assert printed["policy"] == "hobbit"


def test_eval_without_budget_is_refused(mixed: Path) -> None:
    proc = run_hobbit("eval", str(mixed), "--max-tokens", "32")
    assert proc.returncode != 0
    assert "expert-budget" in proc.stderr and "Traceback" not in proc.stderr


def test_ngl_reaches_the_reference_and_the_candidate(mixed: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`hobbit eval -ngl N` loads both models with N layers offloaded (on a CPU build llama.cpp
    keeps them on the CPU, so the figures stay those of an all-hi policy against itself)."""
    import hobbit_py.cli as cli
    import hobbit_py.evaluate as ev

    seen: list[tuple[bool, int]] = []
    real = ev.Model

    def spy(path: Path, **kwargs):  # noqa: ANN003, ANN202
        model = real(path, **kwargs)
        seen.append((kwargs["policy"].is_off, model.model_params.n_gpu_layers))
        return model

    monkeypatch.setattr(ev, "Model", spy)
    monkeypatch.chdir(Path(mixed).parent)
    Path("text.txt").write_text(TEXT)
    cli.run_app(["eval", str(mixed), "--text", "text.txt", "-c", "64", "-t", "2", "-ngl", "7",
                 "--expert-budget", "100%", "--hi-threshold", "0", "--upgrade-threshold", "0"])
    assert seen == [(True, 7), (False, 7)]
