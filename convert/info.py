"""`hobbit info`: what a (HOBBIT or plain) MoE GGUF holds and what each precision costs."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFReader

from hobbit_py._lib import HobbitError

from . import source
from .plan import EXPERT_RE, level_name


@dataclass
class Level:
    """One precision of the routed experts."""

    name: str  # requested type (HOBBIT) or the dominant type (plain file)
    types: dict[str, int] = field(default_factory=dict)  # actual ggml type -> tensor count
    offloadable_bytes: int = 0
    bytes_per_expert: dict[int, int] = field(default_factory=dict)  # layer -> gate+up+down bytes


@dataclass
class Info:
    """Everything `hobbit info` reports."""

    file: str
    file_bytes: int
    architecture: str
    layers: int | None
    experts_per_layer: int | None
    experts_used_per_token: int | None
    shared_experts: int
    hobbit_format_version: int | None
    expert_layers: list[int]
    resident_bytes: int
    levels: list[Level]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for lv in d["levels"]:
            lv["bytes_per_expert"] = [{"layer": k, "bytes": v} for k, v in sorted(lv["bytes_per_expert"].items())]
        return d


def _int(reader: GGUFReader, key: str) -> int | None:
    f = reader.get_field(key)
    return None if f is None else int(f.contents())


def _shared_experts(reader: GGUFReader, arch: str, tensors: dict[str, Any]) -> int:
    """Shared (always resident) experts per layer: the key if set, else 1 if *_shexp tensors exist."""
    n = _int(reader, f"{arch}.expert_shared_count")
    if n is not None:
        return n
    return 1 if any("_shexp." in name for name in tensors) else 0


def read_info(path: Path) -> Info:
    """Inspect a GGUF file; raises HobbitError for files that are not MoE GGUFs."""
    if not path.exists():
        raise HobbitError(f"no such file: {path}")
    if path.is_dir():
        raise HobbitError(f"{path} is a directory; hobbit info reads a .gguf file")
    reader = source.open_gguf(path)
    arch = source.gguf_arch(reader, path)
    version = _int(reader, "hobbit.format_version")
    tensors = {t.name: t for t in reader.tensors}
    base = {n: t for n, t in tensors.items() if EXPERT_RE.match(n) and len(t.shape) == 3}
    if not base:
        raise HobbitError(f"not a Mixture-of-Experts model: {path} ({arch}) has no routed expert tensors")
    if version is not None:
        f = reader.get_field("hobbit.expert_types")
        if f is None:
            raise HobbitError(f"{path}: hobbit.format_version is set but hobbit.expert_types is missing")
        names = [str(x) for x in f.contents()]
        if version != 1:
            raise HobbitError(f"{path}: unknown HOBBIT format version {version} (this hobbit reads 1)")
    else:
        by_type = Counter(tensors[n].tensor_type.name.lower() for n in base)
        names = [by_type.most_common(1)[0][0]]

    levels = [Level(nm) for nm in names]
    expert_names: set[str] = set()
    layers_seen: set[int] = set()
    for n, t in base.items():
        layer = int(EXPERT_RE.match(n).group(1))  # type: ignore[union-attr]
        layers_seen.add(layer)
        n_expert = int(t.shape[2])
        for i, lv in enumerate(levels):
            ln = n if i == 0 else level_name(n, lv.name)
            lt = tensors.get(ln)
            if lt is None:
                raise HobbitError(f"{path}: level {lv.name} lacks tensor {ln}")
            expert_names.add(ln)
            tname = lt.tensor_type.name.lower()
            lv.types[tname] = lv.types.get(tname, 0) + 1
            lv.offloadable_bytes += int(lt.n_bytes)
            lv.bytes_per_expert[layer] = lv.bytes_per_expert.get(layer, 0) + int(lt.n_bytes) // n_expert
    resident = sum(int(t.n_bytes) for n, t in tensors.items() if n not in expert_names)
    return Info(
        file=str(path), file_bytes=os.path.getsize(path), architecture=arch,
        layers=_int(reader, f"{arch}.block_count"),
        experts_per_layer=_int(reader, f"{arch}.expert_count"),
        experts_used_per_token=_int(reader, f"{arch}.expert_used_count"),
        shared_experts=_shared_experts(reader, arch, tensors),
        hobbit_format_version=version, expert_layers=sorted(layers_seen),
        resident_bytes=resident, levels=levels,
    )


def human(n: float) -> str:
    """Bytes in binary units: 1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _ranges(layers: list[int]) -> str:
    """[0,1,2,5] -> '0-2, 5'."""
    out: list[str] = []
    start = prev = None
    for x in layers + [None]:  # type: ignore[list-item]
        if start is None:
            start = prev = x
        elif x is not None and x == prev + 1:  # type: ignore[operator]
            prev = x
        else:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = x
    return ", ".join(out)


def render(info: Info) -> str:
    """The human-readable report."""
    lines = [
        f"file              {info.file} ({human(info.file_bytes)})",
        f"architecture      {info.architecture}",
        f"layers            {info.layers} ({len(info.expert_layers)} with routed experts)",
        f"experts           {info.experts_per_layer} per layer, {info.experts_used_per_token} used per token"
        + (f", {info.shared_experts} shared (resident)" if info.shared_experts else ""),
        "format            " + (f"HOBBIT v{info.hobbit_format_version}, {len(info.levels)} precision(s)"
                                if info.hobbit_format_version else "plain GGUF (one precision)"),
    ]
    for i, lv in enumerate(info.levels):
        actual = ", ".join(f"{t} x{n}" for t, n in sorted(lv.types.items(), key=lambda kv: -kv[1]))
        lines.append(f"precision {i}       {lv.name}  (tensors: {actual})")
    lines.append(f"resident          {human(info.resident_bytes)}  (non-expert tensors, loaded once)")
    for lv in info.levels:
        lines.append(f"offloadable       {lv.name}: {human(lv.offloadable_bytes)}  (all routed experts)")
    lines.append("bytes per expert  (gate+up+down of one expert in one layer)")
    rows: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for layer in info.expert_layers:
        rows[tuple(lv.bytes_per_expert.get(layer, 0) for lv in info.levels)].append(layer)
    width = max(len(lv.name) for lv in info.levels)
    header = "  layers    " + "  ".join(f"{lv.name:>{max(width, 10)}}" for lv in info.levels)
    lines.append(header)
    for sizes, layers in sorted(rows.items(), key=lambda kv: kv[1][0]):
        cells = "  ".join(f"{human(s):>{max(width, 10)}}" for s in sizes)
        lines.append(f"  {_ranges(layers):<8}  {cells}")
    return "\n".join(lines)
