"""`Model`: a `llama_cpp.Llama` on the patched llama.cpp, with HOBBIT's expert cache.

Everything llama-cpp-python offers works on it (`create_completion`, `create_chat_completion`
with the model's chat template, streaming, `llama_cpp.server`); it adds `policy=` (the expert
cache's knobs, `Policy`) and `hobbit_stats()`. Differences from `llama_cpp.Llama`, on purpose:

- `n_ctx` defaults to min(the model's training context, 4096), not 512 (too small for chat)
  nor 0 (the full training context: gigabytes of KV cache that defeat the memory budget);
- `n_threads` and `n_threads_batch` default to one per physical core (llama.cpp's rule,
  `threads.py`), not half the logical CPUs: the CPU computes experts, bound by memory;
- `verbose=False` silences llama.cpp without redirecting file descriptors (quiet.py), so
  models may be created from several threads at once;
- a failed decode raises `HobbitError` with the engine's reason (`engine_fault`);
- a model without a chat template chats with a plain "User:/Assistant:" template
  (`plain_chat_template` is then True) instead of llama-cpp-python's silent llama-2 guess.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from hobbit_py import capi, quiet
from hobbit_py._lib import HobbitError, load_llama_cpp
from hobbit_py.autobudget import BudgetDecision, FreeMemory, auto_budget, auto_budget_gpu
from hobbit_py.generation import Generation, GenerationStats, peak_rss_bytes, split_utf8, timed_tokens
from hobbit_py.gguf_check import ModelSummary, inspect_model
from hobbit_py.policy import Policy
from hobbit_py.threads import default_threads

llama_cpp = load_llama_cpp()
quiet.install(llama_cpp)

DEFAULT_N_CTX = 4096
PLAIN_CHAT_FORMAT = "hobbit-plain"


@llama_cpp.llama_chat_format.register_chat_format(PLAIN_CHAT_FORMAT)
def _plain_chat(messages: list[dict[str, Any]], **_: Any) -> Any:
    """A template-less conversation: an optional system line, then User:/Assistant: turns."""
    lines = []
    for message in messages:
        content = message.get("content") or ""
        if not isinstance(content, str):  # content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        role = message.get("role")
        lines.append(content if role == "system" else
                     f"{'User' if role == 'user' else 'Assistant'}: {content}")
    prompt = "\n".join(lines) + "\nAssistant:"
    return llama_cpp.llama_chat_format.ChatFormatterResponse(prompt=prompt, stop=["\nUser:"])


class Model(llama_cpp.Llama):
    """A MoE GGUF model on the patched llama.cpp: a `llama_cpp.Llama` plus `policy=`.

        with Model("model.gguf", policy=Policy(expert_budget="25%")) as m:
            print(m.create_completion("Once upon a time", max_tokens=32)["choices"][0]["text"])
            print(m.hobbit_stats())
    """

    def __init__(self, model_path: str | os.PathLike[str], *, policy: Policy | None = None,
                 n_ctx: int | None = None, verbose: bool = False, **kwargs: Any) -> None:
        self._closed = True
        path = Path(model_path)
        self.policy = policy or Policy()
        self.policy.validate()
        self.summary: ModelSummary = inspect_model(path)
        if n_ctx is None:
            n_ctx = min(self.summary.context_length or DEFAULT_N_CTX, DEFAULT_N_CTX)
        self.budget_decision: BudgetDecision | None = None
        host_tier = True
        if self.policy.is_auto:
            gpu = capi.gpu_memory() if kwargs.get("n_gpu_layers", 0) != 0 else None
            ctx_tokens = n_ctx or self.summary.context_length
            self.budget_decision = (auto_budget_gpu(self.summary, ctx_tokens, FreeMemory(gpu[0], "the GPU"))
                                    if gpu is not None and not gpu[2] else auto_budget(self.summary, ctx_tokens))
            budget = self.budget_decision.budget_bytes
            host_tier = self.budget_decision.host_tier
        else:
            budget = self.policy.budget_bytes(self.summary.hi_expert_bytes)
        overrides = {**(kwargs.pop("kv_overrides", None) or {}), **self.policy.kv_overrides(budget, host_tier)}
        self.plain_chat_template = (self.summary.chat_template is None and not kwargs.get("chat_format")
                                    and kwargs.get("chat_handler") is None)
        if self.plain_chat_template:
            kwargs["chat_format"] = PLAIN_CHAT_FORMAT
        if overrides.get("hobbit.budget_bytes"):
            # the non-expert weights are read into memory, not mapped: they stay resident under
            # memory pressure, and a file changed under us cannot fault the process (the
            # experts are read by HOBBIT, never mapped in)
            kwargs.setdefault("use_mmap", False)
        for key in ("n_threads", "n_threads_batch"):
            if kwargs.get(key) is None:
                kwargs[key] = default_threads()
        quiet.forward_logs(verbose)
        try:
            super().__init__(model_path=str(path), n_ctx=n_ctx, verbose=verbose,
                             kv_overrides=overrides or None, **kwargs)
        except ValueError as exc:
            reason = capi.last_error().removeprefix("hobbit: ") or str(exc)
            raise HobbitError(f"cannot load {path}: {reason}") from None
        self._closed = False
        if overrides.get("hobbit.budget_bytes"):
            capi.set_policy(self.model, **self.policy.engine_policy())
        self.generation_stats = GenerationStats()

    # --- llama_cpp.Llama, made safe -------------------------------------------------------

    def eval(self, tokens: Sequence[int]) -> None:
        """`Llama.eval`, with a failed decode reported as the engine's fault."""
        try:
            super().eval(tokens)
        except RuntimeError as exc:
            raise self.engine_fault(exc) from None

    def engine_fault(self, exc: BaseException) -> HobbitError:
        """The one place a failed decode becomes an error: the engine's message, or a generic one."""
        reason = capi.last_error().removeprefix("hobbit: ").strip()
        return HobbitError(f"decoding failed: {reason or f'llama.cpp reported an error ({exc})'}")

    def close(self) -> None:
        """Free the model and its context (idempotent)."""
        self._closed = True
        stack = getattr(self, "_stack", None)
        if stack is not None:
            stack.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- HOBBIT ---------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise HobbitError("model is closed")

    @property
    def hobbit_active(self) -> bool:
        """True when the expert cache serves the routed experts."""
        self._require_open()
        return capi.active(self.model)

    def hobbit_stats(self) -> dict[str, float | int]:
        """Statistics of the last `generate_text` and of the expert cache since load or reset."""
        self._require_open()
        cache = capi.get_stats(self.model)
        return {
            **self.generation_stats.as_dict(),
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
            "bytes_loaded": cache["bytes_loaded"],
            "bytes_prefetched": cache["bytes_prefetched"],
            "load_stall_ms": cache["load_stall_ms"],
            "read_ms": cache["read_ms"],
            "prefetch_issued": cache["prefetch_issued"],
            "prefetch_used": cache["prefetch_used"],
            "prefetch_wasted": cache["prefetch_wasted"],
            "prefetch_depth": cache["prefetch_depth"],
            **{f"{k}_d{d}": cache[f"{k}_d{d}"] for k in ("predicted", "predicted_right")
               for d in range(1, capi.PREFETCH_MAX + 1)},
            "io_threads": cache["io_threads"],
            "bytes_in_flight_peak": cache["bytes_in_flight_peak"],
            "expert_budget_bytes": cache["budget_bytes"],
            "expert_cache_capacity_bytes": cache["cache_capacity_bytes"],
            "expert_cache_peak_bytes": cache["cache_peak_bytes"],
            "expert_slots_hi": cache["n_slots_hi"],
            "expert_slots_lo": cache["n_slots_lo"],
            "tier": cache["tier"],
            "host_tier_bytes": cache["host_tier_bytes"],
            "bytes_read": cache["bytes_read"],
            "unified_memory": cache["unified"],
            "bytes_over_bus": cache["bytes_over_bus"],
            "host_hits": cache["host_hits"],
            "cpu_hi": cache["cpu_hi"],
            "cpu_lo": cache["cpu_lo"],
            "cpu_bytes": cache["cpu_bytes"],
            "cpu_ms": cache["cpu_ms"],
            "copy_gbps": cache["copy_gbps"],
            "cpu_gbps": cache["cpu_gbps"],
            "between_ms": cache["between_ms"],
            "gpu_gap_ms": cache["gpu_gap_ms"],
            "warm_posted": cache["warm_posted"],
            "warm_used": cache["warm_used"],
            "experts_resident": cache["resident"],
            "peak_rss_bytes": peak_rss_bytes(),
        }

    def reset_hobbit_stats(self) -> None:
        """Zero the expert cache counters (the cache keeps its contents)."""
        self._require_open()
        capi.reset_stats(self.model)

    def is_end_of_generation(self, token: int) -> bool:
        """True for every end-of-generation token of the vocabulary (EOS, EOT, ...)."""
        return bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, token))

    def tokenize_text(self, text: str) -> list[int]:
        """Tokens of `text` with the model's BOS, no special-token parsing."""
        return self.tokenize(text.encode(), add_bos=True, special=False)

    def stream_token_ids(self, prompt: str, max_tokens: int = 128, temp: float = 0.0,
                         top_k: int = 40, top_p: float = 0.95) -> Iterator[int]:
        """Yield generated token ids; `generation_stats` is filled in as they come."""
        self._require_open()
        prompt_tokens = self.tokenize_text(prompt)
        if len(prompt_tokens) + max_tokens > self.n_ctx():
            raise HobbitError(
                f"prompt ({len(prompt_tokens)} tokens) + {max_tokens} new tokens exceed "
                f"the context of {self.n_ctx()} (raise --ctx-size)")
        self.generation_stats = GenerationStats(prompt_tokens=len(prompt_tokens))
        yield from timed_tokens(self, prompt_tokens, self.generation_stats, max_tokens, temp,
                                top_k, top_p)

    def stream_text(self, prompt: str, max_tokens: int = 128, temp: float = 0.0,
                    top_k: int = 40, top_p: float = 0.95) -> Iterator[str]:
        """Yield generated text as it comes, never splitting a UTF-8 character."""
        pending = b""
        for token in self.stream_token_ids(prompt, max_tokens, temp, top_k, top_p):
            pending += self.detokenize([token])
            text, pending = split_utf8(pending)
            if text:
                yield text
        if pending:
            yield pending.decode(errors="replace")

    def generate_text(self, prompt: str, max_tokens: int = 128, temp: float = 0.0,
                      top_k: int = 40, top_p: float = 0.95) -> Generation:
        """Generate up to `max_tokens` tokens after `prompt` (greedy when temp is 0)."""
        tokens = list(self.stream_token_ids(prompt, max_tokens, temp, top_k, top_p))
        text = self.detokenize(tokens).decode(errors="replace")
        return Generation(text=text, tokens=tokens, stats=self.generation_stats)


__all__ = ["Generation", "GenerationStats", "Model", "peak_rss_bytes", "timed_tokens"]
