"""Faults are inputs: failed, short and interrupted reads, files changed under us, failed
allocations. None may kill the process or produce a token from a partly loaded expert, and the
model stays usable once the fault is gone.

The faults come from tests/faultinject.c, an LD_PRELOAD library built here, which makes reads of
the model file (pread, read) or large aligned allocations fail after N calls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hobbit_py._lib import REPO_ROOT
from hobbit_py.fixtures import write_fixture
from hobbit_py.model import Model
from hobbit_py.policy import Policy
from tests.conftest import assert_one_line_error, run_hobbit

PROMPT = "The cache holds the experts that the router picks most often, and"
N_TOKENS = 12
BUDGET = "20%"
NO_PREFETCH = {"prefetch_depth": 0}


@pytest.fixture(scope="module")
def fault_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/faultinject.c built into a shared library."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler (cc or gcc) is needed to build the fault-injection library")
    out = tmp_path_factory.mktemp("fault") / "libfaultinject.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(REPO_ROOT / "tests" / "faultinject.c"),
                    "-ldl"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("faults") / "mixed.gguf", "mixtral",
                         expert_types=("q8_0", "q4_0"))


def run_worker(model: Path, *, direct_io: bool, attempts: int, fault: dict[str, str] | None = None,
               lib: Path | None = None, tmp_path: Path | None = None, timeout: float = 120,
               policy: dict | None = None) -> dict:
    """Run tests/fault_worker.py (under the fault library when `fault` is given). Without a
    policy, prefetch is off: the auto depth follows timings, and so would the tokens."""
    spec = {"model": str(model), "budget": BUDGET, "direct_io": direct_io, "prompt": PROMPT,
            "n": N_TOKENS, "attempts": attempts, "policy": policy or NO_PREFETCH}
    env = dict(os.environ)
    if fault is not None:
        assert lib is not None and tmp_path is not None
        env.update({"LD_PRELOAD": str(lib), "HOBBIT_FAULT_PATH": model.name,
                    "HOBBIT_FAULT_REPORT": str(tmp_path / "faults.txt"), **fault})
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "fault_worker.py"), json.dumps(spec)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"the process died (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if fault is not None:
        calls, injected = map(int, (tmp_path / "faults.txt").read_text().split())
        report["faults_injected"] = injected
    return report


@pytest.fixture(scope="module")
def reference(model: Path) -> dict[bool, list[int]]:
    """Tokens without faults, with O_DIRECT and buffered reads (they must agree)."""
    ref = {d: run_worker(model, direct_io=d, attempts=1)["attempts"][0] for d in (True, False)}
    for r in ref.values():
        assert r["error"] is None and len(r["tokens"]) == N_TOKENS
    assert ref[True]["tokens"] == ref[False]["tokens"]
    return {d: r["tokens"] for d, r in ref.items()}


def assert_clean_outcomes(report: dict, model: Path, cause: str, ref: list[int]) -> list[dict]:
    """Each generation either equals the fault-free one or fails with one line naming the file
    and the cause, having emitted only a strict prefix of it (tokens from whole experts); the
    model works again afterwards. Returns the failed generations."""
    failed = [a for a in report["attempts"] if a["error"] is not None]
    for attempt in failed:
        error = attempt["error"]
        assert str(model) in error and cause in error and "\n" not in error, error
        assert attempt["tokens"] == ref[: len(attempt["tokens"])] and len(attempt["tokens"]) < N_TOKENS
    for attempt in report["attempts"]:
        if attempt["error"] is None:
            assert attempt["tokens"] == ref
    assert report["attempts"][-1]["error"] is None
    return failed


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("mode,cause", [("eio", "Input/output error"), ("eof", "unexpected end of file")])
@pytest.mark.parametrize("after", [0, 2, 11, 40])
def test_a_failed_read_fails_one_generation_cleanly(model: Path, fault_lib: Path, reference: dict,
                                                    tmp_path: Path, direct_io: bool, mode: str,
                                                    cause: str, after: int) -> None:
    """Without prefetch every read is one a generation waits for: the fault fails exactly it."""
    report = run_worker(model, direct_io=direct_io, attempts=3, lib=fault_lib, tmp_path=tmp_path,
                        policy=NO_PREFETCH, fault={"HOBBIT_FAULT_MODE": mode, "HOBBIT_FAULT_AFTER": str(after),
                                                   "HOBBIT_FAULT_COUNT": "1"})
    assert report["faults_injected"] == 1
    assert len(assert_clean_outcomes(report, model, cause, reference[direct_io])) == 1, report


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("after", [0, 3, 9, 17, 30])
def test_a_failed_read_during_prefetch_is_harmless_or_clean(model: Path, fault_lib: Path, tmp_path: Path,
                                                            direct_io: bool, after: int) -> None:
    """With prefetch three layers ahead, a failed read is a prefetch nobody waited for (no
    harm: the expert is read again when needed) or one a generation needed (a clean error)."""
    # every expert at hi: what a failed prefetch leaves out of the cache changes no token
    policy = {"prefetch_depth": 3, "prefetch_width": 1, "hi_threshold": 0.0, "upgrade_threshold": 0.0}
    ref = run_worker(model, direct_io=direct_io, attempts=1, policy=policy)["attempts"][0]["tokens"]
    report = run_worker(model, direct_io=direct_io, attempts=3, lib=fault_lib, tmp_path=tmp_path,
                        policy=policy, fault={"HOBBIT_FAULT_MODE": "eio", "HOBBIT_FAULT_AFTER": str(after),
                                              "HOBBIT_FAULT_COUNT": "2"})
    assert report["faults_injected"] == 2
    assert len(assert_clean_outcomes(report, model, "Input/output error", ref)) <= 2


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "buffered"])
def test_persistent_eintr_gives_up_instead_of_spinning(model: Path, fault_lib: Path, tmp_path: Path,
                                                      direct_io: bool) -> None:
    report = run_worker(model, direct_io=direct_io, attempts=2, lib=fault_lib, tmp_path=tmp_path,
                        policy=NO_PREFETCH, fault={"HOBBIT_FAULT_MODE": "eintr"}, timeout=60)
    for attempt in report["attempts"]:
        assert attempt["tokens"] == []
        assert "Interrupted system call" in attempt["error"] and str(model) in attempt["error"]
    # bounded retries: each failed expert read tried exactly 1 + 64 times, then gave up
    assert report["faults_injected"] > 0 and report["faults_injected"] % 65 == 0


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("mode", ["eintr", "short"])
def test_transient_interrupts_and_short_reads_are_retried(model: Path, fault_lib: Path, reference: dict,
                                                         tmp_path: Path, direct_io: bool, mode: str) -> None:
    report = run_worker(model, direct_io=direct_io, attempts=2, lib=fault_lib, tmp_path=tmp_path,
                        fault={"HOBBIT_FAULT_MODE": mode, "HOBBIT_FAULT_AFTER": "1",
                               "HOBBIT_FAULT_COUNT": "5"})
    assert report["faults_injected"] == 5
    for attempt in report["attempts"]:
        assert attempt["error"] is None and attempt["tokens"] == reference[direct_io]


def hobbit_allocation_sizes(model: Path) -> dict[str, int]:
    """Bytes of HOBBIT's own large allocations for this model at BUDGET: each slot arena (one
    per projection, equal here) and the O_DIRECT staging buffer."""
    import gguf

    with Model(model, policy=Policy(expert_budget=BUDGET), n_ctx=256, n_threads=2) as m:
        arena = m.hobbit_stats()["expert_cache_capacity_bytes"] // 3
    reader = gguf.GGUFReader(model)
    gate = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate_exps.weight")
    per_expert = int(gate.n_bytes) // int(gate.shape[-1])
    bounce = -(-per_expert // 4096) * 4096 + 2 * 4096
    return {"arena": arena, "bounce": bounce}


def test_failed_cache_allocation_is_a_clean_load_error(model: Path, fault_lib: Path, tmp_path: Path) -> None:
    size = hobbit_allocation_sizes(model)["arena"]
    report = run_worker(model, direct_io=True, attempts=1, lib=fault_lib, tmp_path=tmp_path,
                        fault={"HOBBIT_FAULT_MODE": "alloc", "HOBBIT_FAULT_MIN_BYTES": str(size),
                               "HOBBIT_FAULT_MAX_BYTES": str(size)})
    assert report["faults_injected"] >= 1
    assert report["load_error"] is not None
    assert "cannot allocate" in report["load_error"] and "expert cache" in report["load_error"]


def test_failed_read_buffer_allocation_fails_one_generation(model: Path, fault_lib: Path, reference: dict,
                                                            tmp_path: Path) -> None:
    size = hobbit_allocation_sizes(model)["bounce"]
    report = run_worker(model, direct_io=True, attempts=2, lib=fault_lib, tmp_path=tmp_path,
                        policy=NO_PREFETCH,
                        fault={"HOBBIT_FAULT_MODE": "alloc", "HOBBIT_FAULT_MIN_BYTES": str(size),
                               "HOBBIT_FAULT_MAX_BYTES": str(size), "HOBBIT_FAULT_COUNT": "1"})
    assert report["faults_injected"] == 1
    first, second = report["attempts"]
    assert first["tokens"] == [] and "cannot allocate" in first["error"] and str(model) in first["error"]
    assert second["error"] is None and second["tokens"] == reference[True]


def test_a_failed_read_while_loading_is_a_clean_load_error(model: Path, fault_lib: Path, tmp_path: Path) -> None:
    report = run_worker(model, direct_io=False, attempts=1, lib=fault_lib, tmp_path=tmp_path,
                        fault={"HOBBIT_FAULT_MODE": "eio", "HOBBIT_FAULT_FUNCS": "read"})
    assert report["faults_injected"] >= 1
    assert report["load_error"] is not None and str(model) in report["load_error"]
    assert "\n" not in report["load_error"]


def test_file_truncated_after_load(model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copy(model, copy)
    with Model(copy, policy=Policy(expert_budget=BUDGET), n_ctx=256, n_threads=2) as m:
        with copy.open("r+b") as f:
            f.truncate(copy.stat().st_size // 2)
        with pytest.raises(Exception) as info:
            m.generate_text(PROMPT, max_tokens=N_TOKENS)
        assert type(info.value).__name__ == "HobbitError"
        assert str(copy) in str(info.value) and "changed after it was loaded" in str(info.value)


def test_file_rewritten_in_place_after_load(model: Path, reference: dict, tmp_path: Path) -> None:
    """Rewritten with the same bytes but a new mtime: noticed; a replaced file (a new inode)
    is not our business, the open descriptor still reads the file that was loaded."""
    copy = tmp_path / "copy.gguf"
    shutil.copy(model, copy)
    with Model(copy, policy=Policy(expert_budget=BUDGET), n_ctx=256, n_threads=2) as m:
        replaced = tmp_path / "new.gguf"
        shutil.copy(model, replaced)
        os.replace(replaced, copy)
        assert m.generate_text(PROMPT, max_tokens=N_TOKENS).tokens == reference[True]
    with Model(copy, policy=Policy(expert_budget=BUDGET), n_ctx=256, n_threads=2) as m:
        data = copy.read_bytes()
        copy.write_bytes(data)
        os.utime(copy, ns=(0, 0))
        with pytest.raises(Exception, match="changed after it was loaded"):
            m.generate_text(PROMPT, max_tokens=N_TOKENS)


def test_cli_reports_a_read_fault_in_one_line(model: Path, fault_lib: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    proc = run_hobbit("run", str(model), "-p", PROMPT, "-n", "8", "-t", "2", "--expert-budget", BUDGET,
                      "--stats-json", str(stats),
                      env={"LD_PRELOAD": str(fault_lib), "HOBBIT_FAULT_PATH": model.name,
                           "HOBBIT_FAULT_MODE": "eio", "HOBBIT_FAULT_AFTER": "3"})
    # the prompt was echoed on stdout; the error is one line on stderr
    assert_one_line_error(proc, str(model), "Input/output error")
    assert proc.returncode == 1
    assert not stats.exists()


def test_eval_reports_a_read_fault_in_one_line(model: Path, fault_lib: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("The experts of a layer are read from the file when the router picks them. " * 8)
    proc = run_hobbit("eval", str(model), "--text", str(text), "-c", "32", "--max-tokens", "32", "-t", "2",
                      "--expert-budget", BUDGET,
                      env={"LD_PRELOAD": str(fault_lib), "HOBBIT_FAULT_PATH": model.name,
                           "HOBBIT_FAULT_MODE": "eio", "HOBBIT_FAULT_AFTER": "3"})
    assert_one_line_error(proc, str(model), "Input/output error")
    assert proc.returncode == 1 and proc.stdout == ""


def test_bench_reports_a_read_fault_in_one_line(model: Path, fault_lib: Path, tmp_path: Path) -> None:
    """The fault fails the first variant that reads experts through HOBBIT's cache (B-lru: the
    stock variants map the file and read nothing through pread); bench says which, in one
    line after its progress lines, and writes no report."""
    hi = write_fixture(tmp_path / "hi.gguf", "mixtral", expert_types=("q8_0",))
    text = tmp_path / "text.txt"
    text.write_text("The experts of a layer are read from the file when the router picks them. " * 8)
    out = tmp_path / "report.md"
    proc = run_hobbit("bench", str(model), "--plain-hi", str(hi), "--budgets", "25%", "-n", "8", "--runs", "1",
                      "--eval-tokens", "64", "-t", "2", "--text", str(text), "--out", str(out),
                      env={"LD_PRELOAD": str(fault_lib), "HOBBIT_FAULT_PATH": model.name,
                           "HOBBIT_FAULT_MODE": "eio", "HOBBIT_FAULT_AFTER": "3"}, timeout=600)
    # bench's progress lines, then its error: one line, the last
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert errors == [lines[-1]] and lines[-1].startswith("hobbit: error: "), proc.stderr
    assert "B-lru run" in lines[-1] and "decoding failed" in lines[-1] and "Error:" not in lines[-1], lines[-1]
    assert str(model) in lines[-1] and "Input/output error" in lines[-1], lines[-1]
    assert not out.exists() and not out.with_suffix(".json").exists()
