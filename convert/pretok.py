"""Guess llama.cpp's `tokenizer.ggml.pre` from tokenizer.json when the hash is unknown.

convert_hf_to_gguf.py identifies a BPE pre-tokenizer by hashing how it splits a test string
and raises NotImplementedError for any hash it does not list, which is every custom or
retrained tokenizer. We read the pre-tokenizer's split regex from tokenizer.json instead and
map the regexes llama.cpp implements (src/llama-vocab.cpp, "original regex from
tokenizer.json") to their names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULT = "default"

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

#: regexes as they appear in tokenizer.json -> llama.cpp pre-tokenizer name
KNOWN_REGEXES: dict[str, str] = {
    GPT2_REGEX: "gpt-2",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)": "gpt-2",
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
     r"|\s*[\r\n]+|\s+(?!\S)|\s+"): "llama-bpe",
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
     r"|\s*[\r\n]+|\s+(?!\S)|\s+"): "qwen2",
    (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
     r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
     r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
     r"|\s*[\r\n]+|\s+(?!\S)|\s+"): "gpt-4o",
}


def _walk(pre: Any) -> list[dict[str, Any]]:
    """Flatten a (possibly nested Sequence) pre_tokenizer into its steps."""
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in _walk(p)]
    return [pre]


def detect(tokenizer_json: Path) -> tuple[str, str]:
    """Return (pre-tokenizer name, how it was found) for a tokenizer.json."""
    try:
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return DEFAULT, f"{tokenizer_json.name} unreadable ({e})"
    steps = _walk(data.get("pre_tokenizer"))
    regexes: list[str] = []
    for s in steps:
        if s.get("type") == "Split":
            pattern = s.get("pattern", {})
            regexes.append(pattern.get("Regex") or pattern.get("String") or "")
        elif s.get("type") == "ByteLevel" and s.get("use_regex", True):
            regexes.append(GPT2_REGEX)
    others = [s.get("type", "?") for s in steps if s.get("type") not in ("Split", "ByteLevel")]
    if len(regexes) == 1 and regexes[0] in KNOWN_REGEXES and not others:
        name = KNOWN_REGEXES[regexes[0]]
        return name, f"its split regex is {name}'s"
    if not steps:
        return DEFAULT, "tokenizer.json has no pre_tokenizer"
    kinds = "+".join(s.get("type", "?") for s in steps)
    return DEFAULT, f"its pre-tokenizer ({kinds}) matches no regex llama.cpp implements"
