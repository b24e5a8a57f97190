"""Locate the patched llama.cpp build and point llama-cpp-python at it.

`llama_cpp` is imported only after `LLAMA_CPP_LIB_PATH` is set, so the bindings never load a
library of their own. Import `llama_cpp` through `load_llama_cpp()` everywhere in hobbit_py.

The library is looked for in `$HOBBIT_LIB_DIR`, then in `build/bin` of the checkout when
hobbit runs from one (an editable install or `python -m` in the repo). A non-editable install
(`pip install .`) has no checkout: it needs `HOBBIT_LIB_DIR`, and its errors say so.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent
LIB_ENV = "HOBBIT_LIB_DIR"
STOCK_LIB_ENV = "HOBBIT_STOCK_LIB_DIR"


class HobbitError(Exception):
    """An error with a one-line message meant for the user."""


def is_checkout(root: Path = REPO_ROOT) -> bool:
    """True when hobbit_py runs from a HOBBIT source checkout (not an installed copy)."""
    return (root / "vendor" / "pin.mk").is_file() and (root / "hobbit_py" / "_lib.py").is_file()


def lib_dir() -> Path:
    """Directory holding the patched libllama and libggml*: `$HOBBIT_LIB_DIR`, else the
    checkout's build/bin."""
    override = os.environ.get(LIB_ENV)
    if override:
        return Path(override)
    if is_checkout():
        return REPO_ROOT / "build" / "bin"
    raise HobbitError(f"HOBBIT's patched llama.cpp library was not found: set {LIB_ENV} to the "
                      "directory holding its libllama.so (build/bin of a HOBBIT checkout after "
                      "'make build')")


def stock_lib_dir() -> Path:
    """Directory of the unpatched reference build of the same pinned tree
    (`$HOBBIT_STOCK_LIB_DIR`, else the checkout's build-stock/bin)."""
    override = os.environ.get(STOCK_LIB_ENV)
    if override:
        return Path(override)
    if is_checkout():
        return REPO_ROOT / "build-stock" / "bin"
    raise HobbitError(f"the stock llama.cpp build was not found: set {STOCK_LIB_ENV} to the "
                      "directory holding its libllama.so (build-stock/bin of a HOBBIT checkout)")


def _require_library(directory: Path) -> Path:
    lib = directory / "libllama.so"
    if not lib.exists():
        where = f"{LIB_ENV}={directory}" if os.environ.get(LIB_ENV) else str(directory)
        raise HobbitError(f"llama.cpp library not found at {lib} ({where}); run 'make build' "
                          f"first, or set {LIB_ENV} to the directory holding libllama.so")
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
