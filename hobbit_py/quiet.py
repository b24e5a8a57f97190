"""Keep llama.cpp quiet without touching the process's file descriptors.

llama-cpp-python silences a model with `verbose=False` by `dup2`-ing /dev/null over fds 1 and
2 for the duration of a call (`suppress_stdout_stderr`). Two models created at once from two
threads interleave those swaps and can leave stdout/stderr pointing at /dev/null for good. We
silence llama.cpp at its source instead: one log callback for llama and ggml that drops what
they log (or passes it to stderr when asked), and `suppress_stdout_stderr` replaced by a
context manager that does nothing, in the bindings' modules that use it.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from types import ModuleType, TracebackType

_lock = threading.Lock()
_installed = False
_forward = bool(os.environ.get("HOBBIT_DEBUG"))
_callback = None  # the ctypes callback object, kept alive for the library


class _NoRedirect:
    """Stand-in for llama_cpp's suppress_stdout_stderr: leaves every fd alone."""

    def __init__(self, disable: bool = True) -> None:
        self.disable = disable

    def __enter__(self) -> _NoRedirect:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


def forward_logs(enabled: bool) -> None:
    """Pass llama.cpp's log to stderr (a model made with verbose=True), or drop it."""
    global _forward
    _forward = enabled or bool(os.environ.get("HOBBIT_DEBUG"))


def install(llama_cpp: ModuleType) -> None:
    """Install the log callback and the no-op redirect once per process."""
    global _installed, _callback
    with _lock:
        if _installed:
            return

        @llama_cpp.llama_log_callback
        def log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if _forward:
                sys.stderr.write(text.decode(errors="replace"))

        _callback = log
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
        for name in ("llama_cpp.llama", "llama_cpp._internals", "llama_cpp.llama_chat_format"):
            module = sys.modules.get(name)
            if module is not None and hasattr(module, "suppress_stdout_stderr"):
                module.suppress_stdout_stderr = _NoRedirect  # type: ignore[attr-defined]
        _installed = True
