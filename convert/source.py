"""Resolve and check what `hobbit convert` is given: an HF directory, a hub repo id, or a GGUF.

Every check here runs before any heavy work and turns bad input into one line: missing
paths, dense or unsupported models, corrupt or truncated safetensors and GGUF files.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFReader

from hobbit_py._lib import HobbitError

from .plan import is_routed_expert

GGUF_MAGIC = b"GGUF"
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "*.tiktoken", "vocab.txt", "merges.txt"]

# bytes per element of safetensors dtypes (sub-byte and exotic ones are only range-checked)
_ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
             "F8_E8M0": 1}


@dataclass
class HFCheckpoint:
    """A local HF checkpoint that passed the checks."""

    path: Path
    name: str
    architecture: str
    outtype: str  # f32, f16 or bf16: the lossless intermediate for its weights


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def resolve(src: str, hf_token: str | None) -> Path:
    """A local path for SRC, downloading a hub repo id when it is not a local path."""
    p = Path(src).expanduser()
    if p.exists():
        return p
    if REPO_ID_RE.match(src) and not src.startswith(("./", "../")):
        return download(src, hf_token)
    raise HobbitError(f"no such file or directory: {src}")


def download(repo_id: str, token: str | None) -> Path:
    """snapshot_download of only the files a conversion needs (works offline from the cache)."""
    from huggingface_hub import snapshot_download  # noqa: PLC0415
    from huggingface_hub.errors import (  # noqa: PLC0415
        GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, token=token))
    except GatedRepoError:
        raise HobbitError(f"{repo_id} is gated: accept its terms on huggingface.co and pass "
                          "--hf-token (or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise HobbitError(f"no such path, and no Hugging Face repo {repo_id} "
                          "(private repos need --hf-token)") from None
    except LocalEntryNotFoundError:
        raise HobbitError(f"{repo_id} is not a local path and not in the Hugging Face cache, and the "
                          "hub cannot be reached (HF_HUB_OFFLINE set or no network)") from None
    except Exception as e:  # network errors come in many types
        raise HobbitError(f"cannot download {repo_id}: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _find_expert_count(cfg: Any, depth: int = 0) -> int:
    """Largest integer under a config key that names experts (num_experts, n_routed_experts...)."""
    best = 0
    if isinstance(cfg, dict) and depth <= 3:
        for k, v in cfg.items():
            if isinstance(v, bool):
                continue
            if isinstance(v, int) and "expert" in k.lower() and "per_tok" not in k.lower():
                best = max(best, v)
            elif isinstance(v, dict):
                best = max(best, _find_expert_count(v, depth + 1))
    return best


def _architecture(cfg: dict[str, Any]) -> str | None:
    archs = cfg.get("architectures") or []
    text = cfg.get("text_config") or {}
    if isinstance(text, dict) and text.get("architectures"):
        archs = text["architectures"]
    return archs[0] if archs else None


def check_hf_dir(path: Path, supported: set[str]) -> HFCheckpoint:
    """Check an HF checkpoint directory and pick the lossless intermediate type."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise HobbitError(f"not a Hugging Face checkpoint (no config.json): {path}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HobbitError(f"cannot read {cfg_path}: {_first_line(e)}") from None
    if not isinstance(cfg, dict):
        raise HobbitError(f"{cfg_path} is not a JSON object")
    arch = _architecture(cfg)
    if arch is None:
        raise HobbitError(f"{cfg_path} names no architecture ('architectures' is missing)")
    n_experts = _find_expert_count(cfg)
    if arch not in supported:
        raise HobbitError(f"unsupported architecture: {arch} (the pinned convert_hf_to_gguf.py cannot "
                          "convert it)")
    if n_experts <= 1:
        raise HobbitError(f"not a Mixture-of-Experts model: {arch} (config.json sets no expert count)")
    dtypes = check_safetensors(path)
    if "BF16" in dtypes:
        outtype = "bf16"
    elif "F16" in dtypes:
        outtype = "f16"
    else:
        outtype = "f32"
    return HFCheckpoint(path, path.name, arch, outtype)


def check_safetensors(path: Path) -> set[str]:
    """Validate every safetensors part (header, index, sizes); the dtypes of its matrices."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            parts = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise HobbitError(f"corrupt {index.name}: {_first_line(e)}") from None
        for part in parts:
            if not (path / part).is_file():
                raise HobbitError(f"missing weights file {part} (listed in {index.name}) in {path}")
    else:
        parts = sorted(p.name for p in path.glob("*.safetensors"))
    if not parts:
        if any(path.glob("pytorch_model*.bin")):
            raise HobbitError(f"{path} has only PyTorch .bin weights; hobbit convert reads safetensors")
        raise HobbitError(f"no weights (*.safetensors) in {path}")
    dtypes: set[str] = set()
    for part in parts:
        dtypes |= _check_part(path / part)
    return dtypes


def _check_part(file: Path) -> set[str]:
    size = file.stat().st_size
    bad = f"corrupt or truncated safetensors file {file}"
    if size < 8:
        raise HobbitError(f"{bad}: {size} bytes")
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, 100 << 20):
            raise HobbitError(f"{bad}: header length {n} exceeds the file")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise HobbitError(f"{bad}: header is not valid JSON") from None
    if not isinstance(header, dict):
        raise HobbitError(f"{bad}: header is not a JSON object")
    data_len = size - 8 - n
    dtypes: set[str] = set()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise HobbitError(f"{bad}: bad entry for tensor {name}") from None
        if end > data_len or begin > end:
            raise HobbitError(f"{bad}: tensor {name} needs bytes up to {end}, the file holds {data_len}")
        n_el = 1
        for d in shape:
            n_el *= d
        if dtype in _ST_SIZES and end - begin != n_el * _ST_SIZES[dtype]:
            raise HobbitError(f"{bad}: tensor {name} has {end - begin} bytes for {n_el} {dtype} values")
        if len(shape) >= 2:
            dtypes.add(dtype)
    return dtypes


def open_gguf(path: Path) -> GGUFReader:
    """Open and check a GGUF: readable, complete, little-endian, not split."""
    if not is_gguf(path):
        raise HobbitError(f"not a GGUF file or a Hugging Face checkpoint directory: {path}")
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, struct.error, OverflowError, TypeError) as e:
        raise HobbitError(f"corrupt or truncated GGUF file {path}: {_first_line(e)}") from None
    except OSError as e:
        raise HobbitError(f"cannot read {path}: {e.strerror or e}") from None
    size = os.path.getsize(path)
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise HobbitError(f"corrupt or truncated GGUF file {path}: tensor {t.name} ends past the end")
    if reader.byte_order != "I":
        raise HobbitError(f"{path} is a big-endian GGUF; convert it to little-endian first")
    count = reader.get_field("split.count")
    if count is not None and int(count.contents()) > 1:
        raise HobbitError(f"{path} is one part of a split GGUF; merge it first with "
                          "'llama-gguf-split --merge'")
    return reader


def gguf_arch(reader: GGUFReader, path: Path) -> str:
    f = reader.get_field("general.architecture")
    if f is None:
        raise HobbitError(f"{path} has no general.architecture")
    return str(f.contents())


def require_experts(reader: GGUFReader, arch: str, what: str) -> None:
    """Refuse files without routed expert tensors."""
    if not any(is_routed_expert(t.name, len(t.shape)) for t in reader.tensors):
        raise HobbitError(f"not a Mixture-of-Experts model: {what} ({arch}) has no routed expert "
                          "tensors (blk.N.ffn_*_exps.weight)")
