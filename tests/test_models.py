"""Several HOBBIT models in one process: at once, interleaved, from two threads, and created and
freed many times, without state shared between them or leaked."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from pathlib import Path

import pytest

from hobbit_py.fixtures import write_fixture
from hobbit_py.model import Model
from hobbit_py.policy import Policy

PROMPTS = ("The quick brown fox jumps over the lazy dog, and", "Once the package is installed, the server")
N = 16
# every served expert at hi, so the cache's contents change only speed, never tokens
FORCED_HI = dict(hi_threshold=0.0, upgrade_threshold=0.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "a": write_fixture(d / "a.gguf", "mixtral", expert_types=("q8_0", "q4_0")),
        "b": write_fixture(d / "b.gguf", "qwen3moe", expert_types=("q8_0", "q4_0")),
    }


def open_model(path: Path) -> Model:
    return Model(path, policy=Policy(expert_budget="20%", **FORCED_HI), n_ctx=256, n_threads=1)


def alone(path: Path, prompt: str) -> list[int]:
    with open_model(path) as m:
        return m.generate_text(prompt, max_tokens=N).tokens


@pytest.mark.parametrize("pair", [("a", "a"), ("a", "b")], ids=["same-file", "different-files"])
def test_two_models_interleaved_equal_each_alone(files: dict[str, Path], pair: tuple[str, str]) -> None:
    paths = [files[pair[0]], files[pair[1]]]
    expected = [alone(p, prompt) for p, prompt in zip(paths, PROMPTS)]
    with open_model(paths[0]) as m0, open_model(paths[1]) as m1:
        streams = [m0.stream_token_ids(PROMPTS[0], max_tokens=N), m1.stream_token_ids(PROMPTS[1], max_tokens=N)]
        got: list[list[int]] = [[], []]
        for _ in range(N):  # one token of each in turn
            for i, stream in enumerate(streams):
                got[i].append(next(stream))
    assert got == expected


@pytest.mark.parametrize("pair", [("a", "a"), ("a", "b")], ids=["same-file", "different-files"])
def test_two_models_from_two_threads_equal_each_alone(files: dict[str, Path], pair: tuple[str, str]) -> None:
    paths = [files[pair[0]], files[pair[1]]]
    expected = [alone(p, prompt) for p, prompt in zip(paths, PROMPTS)]
    got: list[list[int] | BaseException] = [[], []]
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            barrier.wait()  # create both models at the same moment, then generate at once
            with open_model(paths[i]) as m:
                got[i] = m.generate_text(PROMPTS[i], max_tokens=N).tokens
        except BaseException as exc:  # noqa: BLE001  (reported by the assertion below)
            got[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert got == expected


def rss_kib() -> int:
    """The resident set in KiB, after glibc hands its free heap pages back (less allocator noise)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_create_and_free_thirty_times_leaks_nothing(files: dict[str, Path]) -> None:
    def cycle() -> None:
        with open_model(files["a"]) as m:
            m.generate_text(PROMPTS[0], max_tokens=4)

    for _ in range(3):  # warm up allocator pools and lazy imports
        cycle()
    gc.collect()
    fds, rss = open_fds(), rss_kib()
    for _ in range(30):
        cycle()
    gc.collect()
    assert open_fds() == fds
    # a leaked expert cache or model would add megabytes per cycle; allow allocator noise
    assert rss_kib() - rss < 8 * 1024, (rss, rss_kib())
