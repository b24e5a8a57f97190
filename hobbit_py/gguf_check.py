"""Cheap validation of a GGUF file before llama.cpp sees it, for one-line errors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hobbit_py._lib import HobbitError

GGUF_MAGIC = b"GGUF"
HI_EXPERT_TENSOR = re.compile(r"blk\.\d+\.ffn_(gate|up|down)_exps\.weight")


@dataclass(frozen=True)
class ModelSummary:
    """What hobbit needs to know about a model file before loading it."""

    path: Path
    arch: str
    n_layer: int
    n_expert: int
    n_expert_used: int
    expert_types: tuple[str, ...]  # hobbit.expert_types, or () for a plain GGUF
    hi_expert_bytes: int  # bytes of the routed experts at the file's first (highest) level


def _field_value(reader, key: str):  # noqa: ANN001, ANN202
    field = reader.fields.get(key)
    if field is None:
        return None
    return field.contents()


def inspect_model(path: Path) -> ModelSummary:
    """Check that `path` is a complete MoE GGUF and summarise it; raise HobbitError if not."""
    import gguf  # noqa: PLC0415

    if not path.exists():
        raise HobbitError(f"model file not found: {path}")
    if not path.is_file():
        raise HobbitError(f"not a file: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise HobbitError(f"cannot read {path}: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise HobbitError(f"not a GGUF file: {path}")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # noqa: BLE001  (gguf-py raises many kinds on bad input)
        raise HobbitError(f"corrupt or truncated GGUF: {path} ({exc})") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise HobbitError(
                f"truncated GGUF: {path} (tensor {tensor.name} ends at byte {end}, file has {size})"
            )
    arch = _field_value(reader, "general.architecture")
    if not arch:
        raise HobbitError(f"GGUF has no general.architecture: {path}")
    n_expert = _field_value(reader, f"{arch}.expert_count") or 0
    if not n_expert:
        raise HobbitError(f"not a Mixture-of-Experts model: {path} ({arch} has no experts)")
    types = _field_value(reader, "hobbit.expert_types") or []
    hi_expert_bytes = sum(int(t.n_bytes) for t in reader.tensors if HI_EXPERT_TENSOR.fullmatch(t.name))
    return ModelSummary(
        path=path,
        arch=str(arch),
        n_layer=int(_field_value(reader, f"{arch}.block_count") or 0),
        n_expert=int(n_expert),
        n_expert_used=int(_field_value(reader, f"{arch}.expert_used_count") or 0),
        expert_types=tuple(str(t) for t in types),
        hi_expert_bytes=hi_expert_bytes,
    )
