"""vendor -> patch -> build -> bind -> call: the whole chain answers."""

from __future__ import annotations

import subprocess

from hobbit_py import capi
from hobbit_py._lib import REPO_ROOT, lib_dir
from tests.conftest import assert_one_line_error, run_hobbit


def test_patched_library_answers_through_ctypes() -> None:
    assert capi.api_version() == capi.API_VERSION
    import llama_cpp

    assert capi.source_id() == f"llama-cpp-python-{llama_cpp.__version__}"


def test_bindings_load_our_library_not_a_bundled_one() -> None:
    import llama_cpp

    loaded = llama_cpp.llama_cpp._lib._name
    assert loaded == str(lib_dir() / "libllama.so")


def test_missing_library_is_a_one_line_error(mixtral_gguf) -> None:
    proc = run_hobbit("run", str(mixtral_gguf), "-p", "hi", "-n", "2",
                      env={"HOBBIT_LIB_DIR": "/nonexistent"})
    assert_one_line_error(proc, "llama.cpp library not found", "make build")


def test_library_from_another_source_is_refused(mixtral_gguf) -> None:
    proc = run_hobbit("run", str(mixtral_gguf), "-p", "hi", "-n", "2",
                      env={"HOBBIT_LIB_DIR": str(REPO_ROOT / "build-stock" / "bin")})
    assert_one_line_error(proc, "unpatched llama.cpp")


def test_patch_queue_export_is_stable(tmp_path) -> None:
    """`make patches` of the unchanged vendor tree (exported elsewhere) equals patches/ byte
    for byte: the queue in git is exactly what the tree holds, and the test writes no tracked file."""
    out = tmp_path / "patches"
    out.mkdir()
    proc = subprocess.run(["make", "-s", "patches", f"PATCHES_OUT={out}"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    exported = {p.name: p.read_bytes() for p in sorted(out.glob("*.patch"))}
    tracked = {p.name: p.read_bytes() for p in sorted((REPO_ROOT / "patches").glob("*.patch"))}
    assert exported.keys() == tracked.keys()
    assert exported, "the queue is empty"
    for name, data in exported.items():
        assert data == tracked[name], name
