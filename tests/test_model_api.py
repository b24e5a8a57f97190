"""hobbit_py.Model is a llama_cpp.Llama: completion, chat, streaming, EOG, defaults, threads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hobbit_py._lib import load_llama_cpp
from hobbit_py.fixtures import FixtureShape, write_fixture
from hobbit_py.model import DEFAULT_N_CTX, Model
from hobbit_py.policy import KV_KEYS, Policy

llama_cpp = load_llama_cpp()

# a ChatML-style template, as HF tokenizer configs carry them
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def templated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("api") / "chat.gguf", "mixtral",
                         expert_types=("q8_0", "q4_0"), chat_template=CHATML)


def test_model_is_a_llama_with_policy(templated: Path) -> None:
    with Model(templated, policy=Policy(expert_budget="40%"), n_threads=2) as model:
        assert isinstance(model, llama_cpp.Llama)
        assert model.hobbit_active
        out = model.create_completion("Once upon a time", max_tokens=6, temperature=0.0)
        assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] > 0
        stats = model.hobbit_stats()
        assert stats["routes_total"] > 0 and stats["expert_budget_bytes"] > 0
        # the plain Llama API agrees with our own generation at temp 0
        ours = model.generate_text("Once upon a time", max_tokens=6).text
        assert out["choices"][0]["text"] == ours[:len(out["choices"][0]["text"])]


def test_streaming_completion_equals_the_whole(templated: Path) -> None:
    with Model(templated, n_threads=2) as model:
        whole = model.create_completion("The cache", max_tokens=8, temperature=0.0)
        pieces = [c["choices"][0]["text"] for c in
                  model.create_completion("The cache", max_tokens=8, temperature=0.0, stream=True)]
    assert len(pieces) >= 2 and "".join(pieces) == whole["choices"][0]["text"]


def test_chat_uses_the_models_template(templated: Path) -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    with Model(templated, n_threads=2) as model:
        assert not model.plain_chat_template
        reply = model.create_chat_completion(messages, max_tokens=6, temperature=0.0)
        # the prompt the template makes, generated from directly, gives the same reply
        prompt = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
        direct = model.create_completion(prompt, max_tokens=6, temperature=0.0)
    assert reply["choices"][0]["message"]["content"] == direct["choices"][0]["text"]


def test_chat_without_a_template_falls_back_to_plain(mixtral_gguf: Path) -> None:
    with Model(mixtral_gguf, n_threads=2) as model:
        assert model.plain_chat_template
        reply = model.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=5,
                                             temperature=0.0)
        direct = model.create_completion("User: Hi\nAssistant:", max_tokens=5, temperature=0.0,
                                         stop=["\nUser:"])
    assert reply["choices"][0]["message"]["content"] == direct["choices"][0]["text"]


def test_default_context_is_bounded(tmp_path: Path) -> None:
    long = write_fixture(tmp_path / "long.gguf", "mixtral", FixtureShape(n_ctx=32768))
    with Model(long, n_threads=2) as model:
        assert model.n_ctx() == DEFAULT_N_CTX  # not the model's 32768, not llama-cpp-python's 512
    with Model(long, n_threads=2, n_ctx=1024) as model:
        assert model.n_ctx() == 1024


def test_generation_stops_at_any_end_of_generation_token(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    eot = 100  # an end-of-turn token that is not EOS
    path = write_fixture(tmp_path / "eot.gguf", "mixtral", eot_token=eot)
    with Model(path, n_threads=2) as model:
        assert model.token_eos() != eot
        assert model.is_end_of_generation(eot) and model.is_end_of_generation(model.token_eos())
        assert not model.is_end_of_generation(5)
        # the sampler is llama.cpp's; feed a fixed sequence to see where generation stops
        monkeypatch.setattr(model, "generate", lambda *a, **k: iter([5, 6, eot, 7]))
        assert model.generate_text("x", max_tokens=10).tokens == [5, 6]


def test_only_known_hobbit_keys_are_emitted() -> None:
    full = Policy(expert_budget="10%", policy="hobbit", hi_type="q8_0", lo_type="q4_0")
    assert set(full.kv_overrides(1000)) <= set(KV_KEYS)
    assert set(Policy(policy="hi-only").kv_overrides(1000)) <= set(KV_KEYS)
    assert Policy().kv_overrides(None) == {}


def test_two_models_from_two_threads_leave_stdout_and_stderr_alone(mixtral_gguf: Path) -> None:
    """llama-cpp-python's verbose=False swaps fds 1 and 2 with /dev/null and races across
    threads; ours must leave them where they were."""
    script = textwrap.dedent(f"""
        import json, os, sys, threading
        from hobbit_py.model import Model
        def ident(fd):
            st = os.fstat(fd)
            return [st.st_dev, st.st_ino]
        before = [ident(1), ident(2)]
        def load():
            for _ in range(3):
                Model({str(mixtral_gguf)!r}, n_ctx=256, n_threads=1).close()
        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads: t.start()
        for t in threads: t.join()
        after = [ident(1), ident(2)]
        print(json.dumps({{"same": before == after}}), flush=True)
        print("stderr still reaches the pipe", file=sys.stderr, flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"same": True}
    assert "stderr still reaches the pipe" in proc.stderr
