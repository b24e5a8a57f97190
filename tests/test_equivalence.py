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
    with Model(moe_gguf, n_ctx=512, threads=2) as model:
        ours = model.generate(PROMPT, max_tokens=N_TOKENS).tokens
    assert len(ours) == N_TOKENS
    assert ours == stock_tokens(moe_gguf, PROMPT, N_TOKENS)


def completion(build: str, model: Path) -> bytes:
    binary = REPO_ROOT / build / "bin" / "llama-completion"
    proc = subprocess.run([str(binary), "-m", str(model), "-p", PROMPT, "-n", str(N_TOKENS),
                           "--temp", "0", "--seed", "1", "-t", "2", "-no-cnv", "--no-warmup",
                           "--simple-io"],
                          capture_output=True, check=True, timeout=300)
    return proc.stdout


def test_llama_completion_of_both_builds_agrees(moe_gguf: Path) -> None:
    ours = completion("build", moe_gguf)
    assert ours.startswith(PROMPT.encode())
    assert len(ours) > len(PROMPT)
    assert ours == completion("build-stock", moe_gguf)
