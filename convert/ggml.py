"""ctypes bindings to ggml's own type table and quantisers in libggml-base.so.

Only what the converter needs: type names and sizes, `ggml_quantize_chunk` (every ggml
quantiser, bit-identical to llama-quantize), and each type's `to_float` for reading F16,
BF16 or already-quantised sources. No numpy port of any quantiser lives here.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from hobbit_py._lib import HobbitError, lib_dir

F32, F16, BF16 = 0, 1, 30

_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class _TypeTraits(ctypes.Structure):
    """`struct ggml_type_traits` (ggml.h)."""

    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


class Ggml:
    """The loaded library plus a typed view of the calls the converter makes."""

    def __init__(self, path: Path) -> None:
        try:
            self.lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise HobbitError(f"cannot load {path}: {e}") from None
        lib = self.lib
        lib.ggml_type_name.restype = ctypes.c_char_p
        lib.ggml_type_name.argtypes = [ctypes.c_int]
        lib.ggml_blck_size.restype = ctypes.c_int64
        lib.ggml_blck_size.argtypes = [ctypes.c_int]
        lib.ggml_type_size.restype = ctypes.c_size_t
        lib.ggml_type_size.argtypes = [ctypes.c_int]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ggml_is_quantized.restype = ctypes.c_bool
        lib.ggml_is_quantized.argtypes = [ctypes.c_int]
        lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        lib.ggml_quantize_init.restype = None
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
        ]
        lib.ggml_validate_row_data.restype = ctypes.c_bool
        lib.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
        lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        self._to_float: dict[int, ctypes._CFuncPtr] = {}
        self.names: dict[str, int] = {}
        # the ids come from gguf-py of the same pinned tree (ggml does not export its count)
        for t in GGMLQuantizationType:
            traits = lib.ggml_get_type_traits(int(t)).contents
            if traits.type_name and traits.blck_size > 0:
                self.names[traits.type_name.decode()] = int(t)

    def type_name(self, t: int) -> str:
        """ggml's name of a type id, e.g. 12 -> 'q4_K' (lower-cased by callers when shown)."""
        return self.lib.ggml_type_name(t).decode()

    def blck_size(self, t: int) -> int:
        return int(self.lib.ggml_blck_size(t))

    def type_size(self, t: int) -> int:
        return int(self.lib.ggml_type_size(t))

    def row_size(self, t: int, n: int) -> int:
        return int(self.lib.ggml_row_size(t, n))

    def bits_per_weight(self, t: int) -> float:
        return self.type_size(t) * 8.0 / self.blck_size(t)

    def is_quantized(self, t: int) -> bool:
        return bool(self.lib.ggml_is_quantized(t))

    def requires_imatrix(self, t: int) -> bool:
        return bool(self.lib.ggml_quantize_requires_imatrix(t))

    def can_dequantize(self, t: int) -> bool:
        """True when ggml can turn this type into F32 (F32 itself included)."""
        return t == F32 or bool(self.lib.ggml_get_type_traits(t).contents.to_float)

    def to_f32(self, t: int, src: np.ndarray, n: int, out: np.ndarray) -> None:
        """Convert `n` elements of type `t` from the bytes `src` into the float32 array `out`."""
        if t == F32:
            out[:n] = src[: n * 4].view(np.float32)
            return
        fn = self._to_float.get(t)
        if fn is None:
            ptr = self.lib.ggml_get_type_traits(t).contents.to_float
            if not ptr:
                raise HobbitError(f"ggml cannot dequantise tensors of type {self.type_name(t)}")
            fn = self._to_float[t] = _TO_FLOAT(ptr)
        fn(src.ctypes.data, out.ctypes.data, n)

    def quantize(self, t: int, src: np.ndarray, nrows: int, n_per_row: int, out: np.ndarray) -> int:
        """Quantise `nrows` rows of float32 `src` into `out` with ggml's quantiser; returns bytes."""
        n = int(self.lib.ggml_quantize_chunk(t, src.ctypes.data, out.ctypes.data, 0, nrows, n_per_row, None))
        if self.is_quantized(t) and not self.lib.ggml_validate_row_data(t, out.ctypes.data, n):
            raise HobbitError(f"ggml produced invalid {self.type_name(t)} data (NaN or Inf in the source?)")
        return n


@lru_cache(maxsize=1)
def load() -> Ggml:
    """The ggml of the HOBBIT build (`hobbit_py._lib.lib_dir()`, `HOBBIT_LIB_DIR` overrides)."""
    path = lib_dir() / "libggml-base.so"
    if not path.exists():
        raise HobbitError(f"ggml library not found at {path}; run 'make build' (or set HOBBIT_LIB_DIR)")
    return Ggml(path)
