"""HOBBIT's Python driver: `Model` (a llama_cpp.Llama with an expert cache) and `Policy`.

`Model` binds the patched llama.cpp when first used, so `import hobbit_py` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HobbitError", "Llama", "Model", "Policy"]


def __getattr__(name: str) -> Any:
    if name in ("Model", "Llama"):
        from hobbit_py.model import Model  # noqa: PLC0415  (binds the library)

        return Model
    if name == "Policy":
        from hobbit_py.policy import Policy  # noqa: PLC0415

        return Policy
    if name == "HobbitError":
        from hobbit_py._lib import HobbitError  # noqa: PLC0415

        return HobbitError
    raise AttributeError(f"module 'hobbit_py' has no attribute {name!r}")
