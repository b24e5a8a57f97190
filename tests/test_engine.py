"""The engine's C++ unit tests and several contexts on one model (test programs built by make)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hobbit_py._lib import lib_dir
from hobbit_py.fixtures import FixtureShape, write_fixture


def engine_program(name: str) -> Path:
    path = lib_dir() / name
    if not path.exists():
        pytest.fail(f"{path} is missing: 'make build' builds HOBBIT's test programs")
    return path


@pytest.mark.parametrize("name", ["test-hobbit-slots", "test-hobbit-policy", "test-hobbit-mmid",
                                  "test-hobbit-cpu-expert", "test-hobbit-workers"])
def test_engine_unit_tests(name: str) -> None:
    proc = subprocess.run([str(engine_program(name))], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in proc.stdout or "OK" in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # six MoE layers: prefetches three layers ahead have layers to take room from
    return write_fixture(tmp_path_factory.mktemp("engine") / "mixed.gguf", "mixtral", FixtureShape(n_layer=6),
                         expert_types=("q8_0", "q4_0"))


@pytest.mark.parametrize("budget", [300_000, 1_000_000], ids=["minimum-ish", "small"])
def test_two_contexts_on_one_model_at_once_equal_each_alone(mixed: Path, budget: int) -> None:
    """Two threads decode on two contexts of one model while a third rewrites the policy; every
    generation equals the same context alone (the program compares them)."""
    proc = subprocess.run([str(engine_program("test-hobbit-mt")), str(mixed), str(budget), "2", "3"],
                          capture_output=True, text=True, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, summary
    assert "0 of 6 concurrent generations differ from alone: OK" in summary
    prefetches = int(re.search(r"(\d+) prefetches", summary).group(1))
    assert prefetches > 0
