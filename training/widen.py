"""Make a benchmark-size MoE from a trained HF checkpoint by zero-padding the expert FFN width.

Each routed expert computes down(silu(gate(x)) * up(x)). Growing the intermediate width with zero
rows in gate/up (w1/w3) and zero columns in down (w2) adds units whose output is
silu(0) * 0 = 0 and whose down-projection weights are 0, so the function, the logits and the
routing are unchanged, while every expert's bytes (the cost of loading it) grow by the same
factor. Attention, router, norms, embeddings and shared experts are copied unchanged.

Streams tensor by tensor (one output shard in memory at a time) and writes sharded safetensors
with an index, the updated config and the tokenizer files.

    python -m training.widen SRC_DIR OUT_DIR --factor 16
    python -m training.widen SRC_DIR OUT_DIR --expert-ffn 14336 [--max-shard-size 2GB]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

# per-expert 2-D weights: rows (gate/up: [I, H]) or columns (down: [H, I]) are the FFN width
_ROWS = re.compile(r"\.experts\.\d+\.(w1|w3|gate_proj|up_proj)\.weight$")
_COLS = re.compile(r"\.experts\.\d+\.(w2|down_proj)\.weight$")
# transformers v5 fused 3-D layout: gate_up_proj [E, 2I, H] (gate then up), down_proj [E, H, I]
_FUSED_GATE_UP = re.compile(r"\.experts\.gate_up_proj$")
_FUSED_DOWN = re.compile(r"\.experts\.down_proj$")
COPY_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
              "generation_config.json", "chat_template.jinja")


def _pad(t: torch.Tensor, dim: int, new: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = new - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def widen_tensor(name: str, t: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """Zero-pad one tensor of an expert FFN from width `old` to `new`; other tensors pass through."""
    if _ROWS.search(name):
        assert t.shape[0] == old, (name, t.shape)
        return _pad(t, 0, new)
    if _COLS.search(name):
        assert t.shape[1] == old, (name, t.shape)
        return _pad(t, 1, new)
    if _FUSED_GATE_UP.search(name):
        assert t.shape[1] == 2 * old, (name, t.shape)
        gate, up = t.split(old, dim=1)
        return torch.cat([_pad(gate, 1, new), _pad(up, 1, new)], dim=1)
    if _FUSED_DOWN.search(name):
        assert t.shape[2] == old, (name, t.shape)
        return _pad(t, 2, new)
    return t


def _parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)B?", s.strip().upper())
    if not m:
        raise ValueError(f"bad size {s!r}")
    return int(float(m.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[m.group(2)])


def widen(src: Path, out: Path, *, factor: int | None = None, expert_ffn: int | None = None,
          max_shard_bytes: int = 2 * 10**9) -> dict[str, int]:
    """Write the widened checkpoint to `out`; returns {"old": width, "new": width, "tensors": n, "bytes": n}."""
    config = json.loads((src / "config.json").read_text())
    key = "moe_intermediate_size" if "moe_intermediate_size" in config else "intermediate_size"
    old = int(config[key])
    if (factor is None) == (expert_ffn is None):
        raise ValueError("give exactly one of factor and expert_ffn")
    new = old * factor if factor is not None else int(expert_ffn)  # type: ignore[operator]
    if new < old:
        raise ValueError(f"new expert width {new} is smaller than the current {old}")

    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {src}")
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("*.safetensors"):
        f.unlink()
    shards: list[list[str]] = []  # tensor names per written shard
    weight_map: dict[str, str] = {}
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = total = widened = 0
    metadata = {"format": "pt"}

    def flush() -> None:
        nonlocal pending, pending_bytes
        if pending:
            tmp = out / f"shard-{len(shards):05d}.tmp"
            save_file(pending, str(tmp), metadata=metadata)
            shards.append(list(pending))
            pending, pending_bytes = {}, 0

    for f in files:
        with safe_open(str(f), framework="pt") as g:
            for name in g.keys():
                t = g.get_tensor(name)
                w = widen_tensor(name, t, old, new)
                widened += int(w is not t)
                nbytes = w.numel() * w.element_size()
                if pending and pending_bytes + nbytes > max_shard_bytes:
                    flush()
                pending[name] = w.contiguous()
                pending_bytes += nbytes
                total += nbytes
    flush()
    if widened == 0 and new != old:
        raise ValueError("no expert FFN tensors found to widen")

    n = len(shards)
    for i, names in enumerate(shards):
        fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        (out / f"shard-{i:05d}.tmp").rename(out / fname)
        weight_map.update({k: fname for k in names})
    index = out / "model.safetensors.index.json"
    if n > 1:
        index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    elif index.exists():
        index.unlink()

    config[key] = new
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in COPY_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    info = {"old": old, "new": new, "tensors": widened, "bytes": total}
    (out / "widened_from.json").write_text(json.dumps({"source": str(src), "config_key": key, **info}, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--factor", type=int, help="multiply the expert FFN width by N")
    g.add_argument("--expert-ffn", type=int, help="new expert FFN width")
    ap.add_argument("--max-shard-size", default="2GB", help="e.g. 15MB, 2GB (decimal units)")
    a = ap.parse_args()
    info = widen(a.src, a.out, factor=a.factor, expert_ffn=a.expert_ffn, max_shard_bytes=_parse_size(a.max_shard_size))
    print(f"expert FFN width {info['old']} -> {info['new']}: {info['tensors']} tensors padded, "
          f"{info['bytes'] / 2**20:.1f} MiB written to {a.out}")


if __name__ == "__main__":
    main()
