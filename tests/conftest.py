"""Shared fixtures: tiny random MoE GGUFs and helpers to run the CLI."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from hobbit_py._lib import REPO_ROOT
from hobbit_py.fixtures import write_fixture

FIXTURE_ARCHES = ("mixtral", "qwen3moe")


def in_ci() -> bool:
    """True under CI (`CI=true`, set by .ci/run and `make test`)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip when `what` is missing on a developer's machine; fail in CI, where it is a broken
    install step and a skip would turn it into a green run."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI lacks {what}", pytrace=False)
    pytest.skip(f"needs {what}", allow_module_level=True)


def require_module(name: str) -> ModuleType:
    """Import `name`, or `require` it (skip locally, fail in CI)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        require(False, f"the Python module {name!r}")
        raise  # unreachable: require skipped or failed


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="session", params=FIXTURE_ARCHES)
def moe_gguf(request: pytest.FixtureRequest, fixture_dir: Path) -> Path:
    """A tiny random-weight MoE GGUF, one per fixture architecture."""
    path = fixture_dir / f"{request.param}.gguf"
    if not path.exists():
        write_fixture(path, request.param)
    return path


@pytest.fixture(scope="session")
def mixtral_gguf(fixture_dir: Path) -> Path:
    path = fixture_dir / "mixtral.gguf"
    if not path.exists():
        write_fixture(path, "mixtral")
    return path


def run_hobbit(*args: str, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m hobbit_py.cli ARGS` and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "hobbit_py.cli", *args], cwd=REPO_ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A failed run: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
