"""Timed generation on any `llama_cpp.Llama` (ours or stock), without binding a library.

bench_worker runs stock llama.cpp through these too, so this module must not import
`hobbit_py.model` (which binds the patched library on import).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GenerationStats:
    """Timings of the last generation; prefill covers the prompt, decode the tokens after."""

    prompt_tokens: int = 0
    tokens_generated: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        # the first generated token comes out of the prefill; each later one costs a decode
        decoded = max(self.tokens_generated - 1, 0)
        return decoded / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "tokens_generated": self.tokens_generated,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
        }


@dataclass
class Generation:
    """The result of `Model.generate_text`."""

    text: str
    tokens: list[int]
    stats: GenerationStats = field(default_factory=GenerationStats)



def timed_tokens(llm: Any, prompt_tokens: list[int], stats: GenerationStats, max_tokens: int,
                 temp: float = 0.0, top_k: int = 40, top_p: float = 0.95) -> Iterator[int]:
    """Generate with a `llama_cpp.Llama` (ours or stock), timing prefill and decode into
    `stats`; stops at any end-of-generation token of the vocabulary."""
    import llama_cpp  # noqa: PLC0415  (whichever library the caller bound)

    llm.reset()
    start = time.perf_counter()
    first_at = start
    vocab = llm._model.vocab
    for token in llm.generate(prompt_tokens, temp=temp, top_k=top_k, top_p=top_p,
                              repeat_penalty=1.0, reset=True):
        now = time.perf_counter()
        if stats.tokens_generated == 0:
            first_at = now
            stats.prefill_seconds = now - start
        else:
            stats.decode_seconds = now - first_at
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        stats.tokens_generated += 1
        yield token
        if stats.tokens_generated >= max_tokens:
            break


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started its program.

    /proc's VmHWM belongs to the process image; getrusage's ru_maxrss would also count the
    parent's memory that a fork copied before exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def split_utf8(data: bytes) -> tuple[str, bytes]:
    """Decode the longest complete UTF-8 prefix of `data`; return it and the rest."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode(), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode(errors="replace"), b""
