"""With no expert policy, our build must generate exactly what stock llama.cpp generates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hobbit_py._lib import REPO_ROOT
from hobbit_py.model import Model

PROMPT = "The quick brown fox jumps over the lazy dog. Then"
N_TOKENS = 32


def stock_tokens(model: Path, prompt: str, n: int, logits_path: Path | None = None) -> list[int]:
    """Greedy tokens of stock llama.cpp (and the prompt's logits, saved to `logits_path`)."""
    extra = [str(logits_path)] if logits_path else []
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "stock_generate.py"),
                           str(model), prompt, str(n), *extra], capture_output=True, text=True,
                          check=True, timeout=300)
    return json.loads(proc.stdout)


def test_greedy_tokens_equal_stock_llama_cpp_python(moe_gguf: Path) -> None:
    with Model(moe_gguf, n_ctx=512, n_threads=2) as model:
        ours = model.generate_text(PROMPT, max_tokens=N_TOKENS).tokens
    assert len(ours) == N_TOKENS
    assert ours == stock_tokens(moe_gguf, PROMPT, N_TOKENS)
