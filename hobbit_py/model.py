"""`Model`: a llama.cpp MoE model loaded through llama-cpp-python on our patched library."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from hobbit_py import capi
from hobbit_py._lib import HobbitError, load_llama_cpp
from hobbit_py.gguf_check import ModelSummary, inspect_model
from hobbit_py.policy import Policy


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
    """The result of `Model.generate`."""

    text: str
    tokens: list[int]
    stats: GenerationStats = field(default_factory=GenerationStats)


class Model:
    """A MoE GGUF model on the patched llama.cpp.

    Use as a context manager, or call `close()`:

        with Model("model.gguf") as m:
            print(m.generate("Once upon a time", max_tokens=32).text)
    """

    def __init__(self, path: str | Path, *, policy: Policy | None = None, n_ctx: int = 0,
                 threads: int | None = None, seed: int = 0, logits_all: bool = False,
                 n_batch: int = 512, use_mmap: bool | None = None) -> None:
        self._llm = None
        self.path = Path(path)
        self.policy = policy or Policy()
        self.policy.validate()
        self.summary: ModelSummary = inspect_model(self.path)
        overrides = self.policy.kv_overrides(self.summary.hi_expert_bytes)
        llama_cpp = load_llama_cpp()
        n_threads = threads or max(os.cpu_count() or 1, 1)
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.path), n_ctx=n_ctx, n_threads=n_threads,
                n_threads_batch=n_threads, seed=seed, logits_all=logits_all, verbose=False,
                n_batch=n_batch, n_ubatch=n_batch,
                kv_overrides=overrides or None,
                # by default, in HOBBIT mode the non-expert weights are read into memory, not
                # mapped: they stay resident under memory pressure, and a file changed under us
                # cannot fault the process (the experts are read by HOBBIT, never mapped in)
                use_mmap=(not overrides) if use_mmap is None else use_mmap,
            )
        except ValueError as exc:
            reason = capi.last_error().removeprefix("hobbit: ") or str(exc)
            raise HobbitError(f"cannot load {self.path}: {reason}") from None
        if overrides:
            p = self.policy
            capi.set_policy(self._llm.model, **p.engine_policy())
        self.last_stats = GenerationStats()

    @property
    def hobbit_active(self) -> bool:
        """True when the expert cache serves the routed experts."""
        return capi.active(self.llama.model)

    def stats(self) -> dict[str, float | int]:
        """Statistics of the last generation and of the expert cache since load or reset."""
        cache = capi.get_stats(self.llama.model)
        return {
            **self.last_stats.as_dict(),
            "n_calls": cache["n_calls"],
            "n_waves": cache["n_waves"],
            "routes_total": cache["routes_total"],
            "hits_hi": cache["hits_hi"],
            "hits_lo": cache["hits_lo"],
            "loads_hi": cache["loads_hi"],
            "loads_lo": cache["loads_lo"],
            "skipped": cache["skipped"],
            "upgrades": cache["upgrades"],
            "demotions": cache["demotions"],
            "failed_loads": cache["failed_loads"],
            "bytes_prefetched": cache["bytes_prefetched"],
            "read_ms": cache["read_ms"],
            "prefetch_issued": cache["prefetch_issued"],
            "prefetch_used": cache["prefetch_used"],
            "prefetch_wasted": cache["prefetch_wasted"],
            "prefetch_depth": cache["prefetch_depth"],
            **{f"{k}_d{d}": cache[f"{k}_d{d}"] for k in ("predicted", "predicted_right")
               for d in range(1, capi.PREFETCH_MAX + 1)},
            "io_threads": cache["io_threads"],
            "bytes_in_flight_peak": cache["bytes_in_flight_peak"],
            "bytes_loaded": cache["bytes_loaded"],
            "load_stall_ms": cache["load_stall_ms"],
            "expert_budget_bytes": cache["budget_bytes"],
            "expert_cache_capacity_bytes": cache["cache_capacity_bytes"],
            "expert_cache_peak_bytes": cache["cache_peak_bytes"],
            "expert_slots_hi": cache["n_slots_hi"],
            "expert_slots_lo": cache["n_slots_lo"],
            "peak_rss_bytes": peak_rss_bytes(),
        }

    def reset_stats(self) -> None:
        """Zero the expert cache counters (the cache keeps its contents)."""
        capi.reset_stats(self.llama.model)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Free the model and its context."""
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None

    @property
    def llama(self):  # noqa: ANN201  (llama_cpp.Llama; typed loosely to keep the import lazy)
        """The underlying `llama_cpp.Llama`."""
        if self._llm is None:
            raise HobbitError("model is closed")
        return self._llm

    def tokenize(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode(), add_bos=True, special=False)

    def stream_tokens(self, prompt: str, max_tokens: int = 128, temp: float = 0.0,
                      top_k: int = 40, top_p: float = 0.95) -> Iterator[int]:
        """Yield generated token ids; `last_stats` is filled in as they come."""
        llm = self.llama
        prompt_tokens = self.tokenize(prompt)
        if len(prompt_tokens) + max_tokens > llm.n_ctx():
            raise HobbitError(
                f"prompt ({len(prompt_tokens)} tokens) + {max_tokens} new tokens exceed "
                f"the context of {llm.n_ctx()}"
            )
        self.last_stats = GenerationStats(prompt_tokens=len(prompt_tokens))
        yield from timed_tokens(llm, prompt_tokens, self.last_stats, max_tokens, temp, top_k, top_p)

    def stream(self, prompt: str, max_tokens: int = 128, temp: float = 0.0,
               top_k: int = 40, top_p: float = 0.95) -> Iterator[str]:
        """Yield generated text as it comes, never splitting a UTF-8 character."""
        pending = b""
        for token in self.stream_tokens(prompt, max_tokens, temp, top_k, top_p):
            pending += self.llama.detokenize([token])
            text, pending = _split_utf8(pending)
            if text:
                yield text
        if pending:
            yield pending.decode(errors="replace")

    def generate(self, prompt: str, max_tokens: int = 128, temp: float = 0.0,
                 top_k: int = 40, top_p: float = 0.95) -> Generation:
        """Generate up to `max_tokens` tokens after `prompt` (greedy when temp is 0)."""
        tokens = list(self.stream_tokens(prompt, max_tokens, temp, top_k, top_p))
        text = self.llama.detokenize(tokens).decode(errors="replace")
        return Generation(text=text, tokens=tokens, stats=self.last_stats)


def timed_tokens(llm, prompt_tokens: list[int], stats: GenerationStats,  # noqa: ANN001
                 max_tokens: int, temp: float = 0.0, top_k: int = 40,
                 top_p: float = 0.95) -> Iterator[int]:
    """Generate with a `llama_cpp.Llama`, timing prefill and decode into `stats`."""
    llm.reset()
    start = time.perf_counter()
    first_at = start
    eos = llm.token_eos()
    for token in decoding(llm, llm.generate(prompt_tokens, temp=temp, top_k=top_k, top_p=top_p,
                                            repeat_penalty=1.0, reset=True)):
        now = time.perf_counter()
        if stats.tokens_generated == 0:
            first_at = now
            stats.prefill_seconds = now - start
        else:
            stats.decode_seconds = now - first_at
        if token == eos:
            break
        stats.tokens_generated += 1
        yield token
        if stats.tokens_generated >= max_tokens:
            break


def decode_failure(llm, exc: Exception) -> HobbitError:  # noqa: ANN001
    """The one-line error for a failed llama_decode: the engine's reason if it gave one.

    The engine sets it on the thread that decoded: call this from that thread, right away.
    """
    reason = capi.last_error().removeprefix("hobbit: ")
    return HobbitError(f"cannot evaluate {Path(llm.model_path).name}: {reason or exc}")


def decoding(llm, tokens: Iterator[int]) -> Iterator[int]:  # noqa: ANN001
    """Pass `tokens` through, turning a failed llama_decode into a `HobbitError`."""
    try:
        yield from tokens
    except RuntimeError as exc:
        if "llama_decode" not in str(exc):
            raise
        raise decode_failure(llm, exc) from None


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


def _split_utf8(data: bytes) -> tuple[str, bytes]:
    """Decode the longest complete UTF-8 prefix of `data`; return it and the rest."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode(), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode(errors="replace"), b""
