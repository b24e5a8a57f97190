"""The expert cache on checkpoints of each supported routing style, converted by `hobbit convert`:
Mixtral (normalised top-k weights), Qwen2-MoE and OLMoE (unnormalised), DeepSeek-V2 (scaled,
with a dense first layer and shared experts). Thresholds act on each route's share of its
token's weight, so one default splits hi and lo loads alike on all of them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hobbit_py.model import Model
from hobbit_py.policy import Policy

sys.path.insert(0, str(Path(__file__).parent))
import hf_fixtures as F  # noqa: E402

ARCHS = ["mixtral", "qwen2_moe", "olmoe", "deepseek_v2"]
PROMPT = "Once upon a time the quick brown fox"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("archs")


@pytest.fixture(scope="module", params=ARCHS)
def mixed(request: pytest.FixtureRequest, base: Path) -> Path:
    """A q8_0 + q4_0 GGUF of a random checkpoint of the architecture."""
    out = base / f"{request.param}.q8_0-q4_0.gguf"
    if not out.exists():
        proc = F.run_cli("convert", str(F.checkpoint(base, request.param)), "--bits", "q8_0,q4_0",
                         "-o", str(out))
        assert proc.returncode == 0, proc.stderr
    return out


def run(path: Path, policy: Policy, n: int = 12) -> tuple[list[int], np.ndarray, dict]:
    with Model(path, policy=policy, n_ctx=256, n_threads=2, logits_all=True) as m:
        tokens = m.tokenize_text(PROMPT)
        m.eval(tokens)
        logits = np.array(m.scores[: len(tokens)], dtype=np.float32)
        return m.generate_text(PROMPT, max_tokens=n).tokens, logits, m.hobbit_stats()


def test_forced_hi_with_full_budget_equals_the_cache_off(mixed: Path) -> None:
    off = run(mixed, Policy(expert_budget="off"))
    hi = run(mixed, Policy(expert_budget="100%", hi_threshold=0.0, upgrade_threshold=0.0))
    assert hi[0] == off[0]
    np.testing.assert_array_equal(hi[1], off[1])
    assert hi[2]["loads_hi"] > 0 and hi[2]["loads_lo"] == 0


def test_default_threshold_splits_loads_alike(mixed: Path) -> None:
    """Decoding with top-2 routing at a small budget: most tokens miss both experts, and the
    leading one (share >= 0.5) loads at hi, the other at lo, whatever the weights' scale."""
    tokens, _, s = run(mixed, Policy(expert_budget="30%"), n=24)
    assert len(tokens) > 0
    loads = s["loads_hi"] + s["loads_lo"]
    assert loads > 20
    assert 0.3 <= s["loads_hi"] / loads <= 0.7, s
    assert s["routes_total"] == s["hits_hi"] + s["hits_lo"] + s["loads_hi"] + s["loads_lo"] + s["skipped"]
    assert s["skipped"] == 0
