"""The ctypes mirrors of the C API's structs (hobbit_py/capi.py) match the header field by field.

The structs cross the boundary by value, so a field added on one side only would make the
library write past the Python struct's end; this reads the header itself, independently of the
library, and compares names, types and array lengths in order.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from hobbit_py import capi

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "include" / "llama-hobbit.h"

C_TYPES = {
    "uint64_t": ctypes.c_uint64,
    "int64_t": ctypes.c_int64,
    "int32_t": ctypes.c_int32,
    "uint32_t": ctypes.c_uint32,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "bool": ctypes.c_bool,
}


def header_fields(struct: str) -> list[tuple[str, type, int]]:
    """(name, ctypes type, array length or 0) of each field of `struct NAME { ... };` in the header."""
    text = HEADER.read_text()
    defines = {m[1]: int(m[2]) for m in re.finditer(r"#define\s+(\w+)\s+\(?(-?\d+)\)?", text)}
    body = re.search(r"struct\s+" + struct + r"\s*\{(.*?)\n\};", text, re.S)
    assert body, f"struct {struct} not found in {HEADER}"
    code = re.sub(r"//[^\n]*", "", body[1])
    fields = []
    for decl in code.split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        m = re.fullmatch(r"(\w+) (\w+)(?:\[([\w +-]+)\])?", decl)
        assert m, f"unparsed field of {struct}: {decl!r}"
        length = 0
        if m[3]:
            length = sum(defines[t] if t in defines else int(t) for t in re.split(r"\s*\+\s*", m[3].strip()))
        fields.append((m[2], C_TYPES[m[1]], length))
    return fields


def mirror_fields(cls: type[ctypes.Structure]) -> list[tuple[str, type, int]]:
    out = []
    for name, ctype in cls._fields_:
        if issubclass(ctype, ctypes.Array):
            out.append((name, ctype._type_, ctype._length_))
        else:
            out.append((name, ctype, 0))
    return out


@pytest.mark.parametrize(
    ("struct", "cls"),
    [
        ("llama_hobbit_policy", capi.PolicyStruct),
        ("llama_hobbit_stats", capi.StatsStruct),
        ("llama_hobbit_route_event", capi.RouteEventStruct),
    ],
)
def test_mirror_matches_header(struct: str, cls: type[ctypes.Structure]) -> None:
    assert mirror_fields(cls) == header_fields(struct)


def test_parser_sees_the_arrays() -> None:
    # the parser itself: the stats have per-depth arrays of the header's lengths
    fields = {name: length for name, _, length in header_fields("llama_hobbit_stats")}
    assert fields["predicted"] == capi.PREFETCH_MAX
    assert fields["passes_at_depth"] == capi.PREFETCH_MAX + 1
    assert fields["n_calls"] == 0
