"""hobbit serve against the real openai client: start, chat, stream, bad request, stop."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hobbit_py._lib import REPO_ROOT
from tests.conftest import require_module

STARTUP_S = 120


def start_server(model: Path, env: dict[str, str] | None = None,
                 extra: tuple[str, ...] = ()) -> tuple[str, subprocess.Popen, list[str]]:
    """`hobbit serve MODEL` on a free port: its URL, the process, and its stderr lines so far
    (a thread keeps draining stderr so the server never blocks on a full pipe)."""
    proc = subprocess.Popen([sys.executable, "-m", "hobbit_py.cli", "serve", str(model), "--port",
                             "0", "-t", "2", "-c", "512", "--expert-budget", "40%", *extra],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    lines: list[str] = []
    url = None
    deadline = time.monotonic() + STARTUP_S
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"serving \S+ on (http://127\.0\.0\.1:\d+)", line)
        url = match.group(1) if match else None
    if url is None:
        proc.kill()
        pytest.fail(f"server did not start: {''.join(lines)}{proc.stderr.read()}")
    threading.Thread(target=lambda: [lines.append(x) for x in proc.stderr], daemon=True).start()
    return url, proc, lines


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hobbit_py.fixtures import write_fixture

    return write_fixture(tmp_path_factory.mktemp("serve") / "served.gguf", "mixtral",
                         expert_types=("q8_0", "q4_0"))


@pytest.fixture(scope="module")
def server(served_model: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    url, proc, _ = start_server(served_model)
    try:
        yield url, proc
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def client(server: tuple[str, subprocess.Popen]):  # noqa: ANN201
    openai = require_module("openai")
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", timeout=120, max_retries=0)


def test_models_lists_the_served_model(client) -> None:  # noqa: ANN001
    assert [m.id for m in client.models.list().data] == ["served.gguf"]


def test_chat_completion(client) -> None:  # noqa: ANN001
    reply = client.chat.completions.create(model="served.gguf", max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Hello"}])
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0


def test_streaming_chat_equals_the_whole_reply(client) -> None:  # noqa: ANN001
    messages = [{"role": "user", "content": "Tell me about the cache"}]
    whole = client.chat.completions.create(model="served.gguf", max_tokens=10, temperature=0,
                                           messages=messages).choices[0].message.content
    stream = client.chat.completions.create(model="served.gguf", max_tokens=10, temperature=0,
                                            messages=messages, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2
    assert "".join(pieces) == whole


def test_completion_streaming_and_not(client) -> None:  # noqa: ANN001
    whole = client.completions.create(model="served.gguf", prompt="Once upon a time", max_tokens=6,
                                      temperature=0).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="served.gguf", prompt="Once upon a time", max_tokens=6, temperature=0, stream=True))
    assert whole and streamed == whole


def test_bad_requests_get_4xx_and_the_server_goes_on(client, server) -> None:  # noqa: ANN001
    openai = require_module("openai")
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        client.chat.completions.create(model="served.gguf", messages="not a list")  # type: ignore[arg-type]
    assert "messages" in str(bad.value)
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model="served.gguf", prompt="word " * 2000, max_tokens=4)
    assert "context" in str(long.value)
    request = urllib.request.Request(server[0] + "/v1/chat/completions", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(request, timeout=60)
    assert raw.value.code == 422
    # and it still answers
    assert client.completions.create(model="served.gguf", prompt="Hi", max_tokens=2).choices


def test_concurrent_requests_run_one_at_a_time_and_do_not_mix(client) -> None:  # noqa: ANN001
    prompts = ["The cache holds", "Experts are loaded", "Once upon a time"]
    alone = {p: client.completions.create(model="served.gguf", prompt=p, max_tokens=8,
                                          temperature=0).choices[0].text for p in prompts}
    together: dict[str, str] = {}

    def ask(p: str) -> None:
        together[p] = client.completions.create(model="served.gguf", prompt=p, max_tokens=8,
                                                temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert together == alone


def test_stats_endpoint_reports_the_cache(server) -> None:  # noqa: ANN001
    with urllib.request.urlopen(server[0] + "/hobbit/stats", timeout=30) as response:
        stats = json.loads(response.read())
    assert stats["model"] == "served.gguf" and stats["active"] is True
    assert stats["routes_total"] > 0
    outcomes = ("hits_hi", "hits_lo", "loads_hi", "loads_lo", "skipped")
    assert sum(stats[k] for k in outcomes) == stats["routes_total"]
    assert 0 < stats["expert_cache_peak_bytes"] <= stats["expert_budget_bytes"]


def test_stop_on_sigterm(server) -> None:  # noqa: ANN001
    _, proc = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_a_read_fault_is_a_500_and_the_server_goes_on(served_model: Path, tmp_path: Path) -> None:
    """An expert read that fails (EIO from tests/faultinject.c, once, after the load) fails
    the request that needed it with a 500 naming the file and the cause; the next request of
    the same server is answered."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler (cc or gcc) is needed to build the fault-injection library")
    lib = tmp_path / "libfaultinject.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(REPO_ROOT / "tests" / "faultinject.c"),
                    "-ldl"], check=True, capture_output=True)
    url, proc, lines = start_server(served_model, env={
        "LD_PRELOAD": str(lib), "HOBBIT_FAULT_PATH": served_model.name, "HOBBIT_FAULT_MODE": "eio",
        "HOBBIT_FAULT_AFTER": "2", "HOBBIT_FAULT_COUNT": "1"})
    try:
        body = json.dumps({"prompt": "The cache holds", "max_tokens": 8, "temperature": 0}).encode()

        def post() -> tuple[int, dict]:
            request = urllib.request.Request(url + "/v1/completions", data=body,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        try:
            status, reply = post()
        except urllib.error.URLError:
            pytest.fail(f"no answer from the server: {''.join(lines)}")
        assert status == 500, reply
        message = json.dumps(reply)
        assert "Input/output error" in message and served_model.name in message, message
        status, reply = post()
        assert status == 200 and reply["choices"][0]["text"], reply
        assert proc.poll() is None
    finally:
        stop_server(proc)
