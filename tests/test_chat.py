"""hobbit chat: the model's template, the whole conversation kept, replies streamed."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from hobbit_py._lib import REPO_ROOT
from hobbit_py.chat import chat_loop
from hobbit_py.fixtures import write_fixture
from hobbit_py.model import Model
from tests.test_model_api import CHATML

TURNS = ["Hello there", "What is the cache for?"]


@pytest.fixture(scope="module")
def templated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("chat") / "chat.gguf", "mixtral", chat_template=CHATML)


def expected_replies(path: Path, turns: list[str]) -> list[str]:
    """Each reply computed from the full conversation so far, in one call each."""
    replies: list[str] = []
    with Model(path, n_threads=2, n_ctx=512) as model:
        messages: list[dict[str, str]] = []
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            reply = model.create_chat_completion(messages, max_tokens=12, temperature=0.0)
            replies.append(reply["choices"][0]["message"]["content"])
            messages.append({"role": "assistant", "content": replies[-1]})
    return replies


def run_chat(path: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hobbit_py.cli", "chat", str(path), "-n", "12",
                           "-t", "2", "-c", "512"], input=stdin, capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)


def test_cli_chat_keeps_the_conversation(templated: Path) -> None:
    proc = run_chat(templated, "\n".join(TURNS) + "\n")
    assert proc.returncode == 0, proc.stderr
    replies = expected_replies(templated, TURNS)
    assert proc.stdout == "".join(r + "\n" for r in replies)
    # the second reply depends on the first turn: without it, it differs
    assert expected_replies(templated, TURNS[1:])[0] != replies[1]
    assert "no chat template" not in proc.stderr


def test_chat_without_template_says_so(mixtral_gguf: Path) -> None:
    proc = run_chat(mixtral_gguf, "Hi\n/exit\nnot read\n")
    assert proc.returncode == 0, proc.stderr
    assert "the model has no chat template" in proc.stderr
    assert proc.stdout.count("\n") == 1


def test_chat_loop_streams_and_returns_messages(templated: Path) -> None:
    class Spy(io.StringIO):
        writes = 0

        def write(self, s: str) -> int:
            Spy.writes += 1
            return super().write(s)

    out = Spy()
    with Model(templated, n_threads=2, n_ctx=512) as model:
        messages = chat_loop(model, io.StringIO("\n".join(TURNS) + "\n"), out, system="Be brief.",
                             max_tokens=12)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert out.getvalue() == messages[2]["content"] + "\n" + messages[4]["content"] + "\n"
    assert Spy.writes > 4  # piece by piece, not one write per reply
