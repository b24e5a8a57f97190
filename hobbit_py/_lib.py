"""Locate the patched llama.cpp build and point llama-cpp-python at it.

`llama_cpp` is imported only after `LLAMA_CPP_LIB_PATH` is set, so the bindings never load a
library of their own. Import `llama_cpp` through `load_llama_cpp()` everywhere in hobbit_py.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent


class HobbitError(Exception):
    """An error with a one-line message meant for the user."""


def lib_dir() -> Path:
    """Directory holding the patched libllama and libggml* (`HOBBIT_LIB_DIR` overrides)."""
    override = os.environ.get("HOBBIT_LIB_DIR")
    return Path(override) if override else REPO_ROOT / "build" / "bin"


def stock_lib_dir() -> Path:
    """Directory of the unpatched reference build of the same pinned tree."""
    return REPO_ROOT / "build-stock" / "bin"


def _require_library(directory: Path) -> Path:
    lib = directory / "libllama.so"
    if not lib.exists():
        raise HobbitError(f"llama.cpp library not found at {lib}; run 'make build' first")
    return lib


@lru_cache(maxsize=1)
def load_llama_cpp() -> ModuleType:
    """Import llama_cpp bound to our build, after checking both come from one llama.cpp."""
    directory = lib_dir()
    lib_path = _require_library(directory)
    os.environ["LLAMA_CPP_LIB_PATH"] = str(directory)
    import llama_cpp  # noqa: PLC0415  (must follow LLAMA_CPP_LIB_PATH)

    source_id = hobbit_source_id(lib_path)
    expected = f"llama-cpp-python-{llama_cpp.__version__}"
    if source_id != expected:
        raise HobbitError(
            f"{lib_path} was built from {source_id or 'an unpatched llama.cpp'}, but the Python "
            f"bindings are {expected}; rebuild with 'make build venv'"
        )
    return llama_cpp


def hobbit_source_id(lib_path: Path) -> str | None:
    """The pinned source the library was built from, or None if it lacks the HOBBIT API."""
    lib = ctypes.CDLL(str(lib_path))
    fn = getattr(lib, "llama_hobbit_source_id", None)
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    return fn().decode()
