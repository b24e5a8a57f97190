"""Which ggml types a user may ask for, and llama-quantize's shape fallbacks.

User-facing type names are ggml's names in lower case (`q4_k`, `q8_0`, `iq4_nl`, `f16`); the
same spelling goes into `hobbit.expert_types` and into level tensor names.
"""

from __future__ import annotations

from dataclasses import dataclass

from hobbit_py._lib import HobbitError

from .ggml import Ggml

#: --bits widths and the type each stands for.
WIDTHS: dict[int, str] = {2: "q2_k", 3: "q3_k", 4: "q4_k", 5: "q5_k", 6: "q6_k", 8: "q8_0", 16: "f16"}

#: Types llama-quantize refuses without an importance matrix (tensor_requires_imatrix in
#: src/llama-quant.cpp); ggml_quantize_requires_imatrix() is checked as well.
IMATRIX_TYPES = {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs"}

#: Types ggml_quantize_chunk() can produce (the switch in ggml.c).
WRITABLE = {
    "f32", "f16", "bf16", "q1_0", "q2_0", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "mxfp4", "nvfp4",
    "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "tq1_0", "tq2_0",
    "iq2_xxs", "iq2_xs", "iq3_xxs", "iq3_s", "iq2_s", "iq1_s", "iq1_m", "iq4_nl", "iq4_xs",
}

#: tensor_type_fallback() in src/llama-quant.cpp: the type used when a tensor's rows do not
#: split into whole blocks of the requested type.
FALLBACK: dict[str, str] = {
    "iq1_s": "iq4_nl", "iq1_m": "iq4_nl", "iq2_xxs": "iq4_nl", "iq2_xs": "iq4_nl",
    "iq2_s": "iq4_nl", "iq3_xxs": "iq4_nl", "iq3_s": "iq4_nl", "iq4_xs": "iq4_nl",
    "q2_0": "q4_0", "q2_k": "q4_0", "q3_k": "q4_0", "tq1_0": "q4_0", "tq2_0": "q4_0",
    "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0",
}


@dataclass(frozen=True)
class QType:
    """A ggml type as the converter uses it."""

    name: str  # lower-case ggml name
    id: int
    blck: int
    bpw: float  # bits per weight

    def __str__(self) -> str:
        return self.name


def qtype(g: Ggml, name: str) -> QType:
    """Look a type up by its (case-insensitive) ggml name."""
    table = {k.lower(): v for k, v in g.names.items()}
    t = table.get(name.lower())
    if t is None:
        raise HobbitError(f"unknown ggml type {name!r}")
    return QType(name.lower(), t, g.blck_size(t), g.bits_per_weight(t))


def by_id(g: Ggml, t: int) -> QType:
    """The QType of a ggml type id."""
    return qtype(g, g.type_name(t))


def parse_type(g: Ggml, spec: str, what: str = "--bits") -> tuple[QType, str | None]:
    """Parse one --bits entry (a width or a type name); returns the type and how a width mapped."""
    s = spec.strip().lower()
    if not s:
        raise HobbitError(f"{what}: empty entry (give bit widths like 4,8 or type names like q4_k,q8_0)")
    note = None
    if s.isdigit():
        if int(s) not in WIDTHS:
            raise HobbitError(f"{what}: no type for {s} bits; widths are {', '.join(map(str, WIDTHS))}")
        note = f"{s} bits -> {WIDTHS[int(s)]}"
        s = WIDTHS[int(s)]
    known = {k.lower() for k in g.names}
    if s not in known:
        raise HobbitError(f"{what}: unknown entry {spec.strip()!r} (widths: {', '.join(map(str, WIDTHS))}; "
                          f"or a ggml type such as q4_k, q4_0, q8_0, iq4_nl, f16, bf16)")
    t = qtype(g, s)
    if s in IMATRIX_TYPES or g.requires_imatrix(t.id):
        raise HobbitError(f"{what}: {s} needs an importance matrix (imatrix), which hobbit convert does not "
                          "use; pick a K-quant (q2_k, q3_k), iq4_nl or iq4_xs instead")
    if s not in WRITABLE:
        raise HobbitError(f"{what}: ggml cannot quantise weights to {s}")
    return t, note


def parse_bits(g: Ggml, spec: str) -> tuple[list[QType], list[str]]:
    """Parse --bits: the distinct types, highest precision first, and notes on width mapping."""
    types: list[QType] = []
    notes: list[str] = []
    for part in spec.split(","):
        t, note = parse_type(g, part)
        if any(x.id == t.id for x in types):
            raise HobbitError(f"--bits: {t.name} is listed twice")
        types.append(t)
        if note:
            notes.append(note)
    types.sort(key=lambda t: -t.bpw)
    for a, b in zip(types, types[1:]):
        if a.bpw == b.bpw:
            raise HobbitError(f"--bits: {a.name} and {b.name} have the same size ({a.bpw:g} bits per "
                              "weight); the precisions must be ordered")
    return types, notes


def fit(g: Ggml, want: QType, ncols: int) -> QType:
    """The type llama-quantize writes for a row of `ncols` when `want` is asked for.

    Types whose block does not divide the row fall back (tensor_type_fallback); when even the
    fallback does not fit, F16 is used, as llama-quantize does.
    """
    if ncols % want.blck == 0:
        return want
    if want.blck <= 32 or want.name in FALLBACK:
        alt = qtype(g, FALLBACK[want.name]) if want.name in FALLBACK else want
        if ncols % alt.blck == 0:
            return alt
        return qtype(g, "f16")
    raise HobbitError(f"no fallback type is defined for {want.name} (row of {ncols} values)")
