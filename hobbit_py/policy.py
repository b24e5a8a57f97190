"""`Policy`: every knob of the expert cache, and how it reaches the patched llama.cpp."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

from hobbit_py._lib import HobbitError

PolicyName = Literal["hobbit", "lru", "lfu", "fld", "least-stale", "hi-only"]
POLICY_NAMES: tuple[str, ...] = ("hobbit", "lru", "lfu", "fld", "least-stale", "hi-only")
# the engine's eviction rule behind each policy name (hi-only: the classic LRU expert cache)
EVICTION_OF = {"hobbit": "blend", "lru": "lru", "lfu": "lfu", "fld": "fld", "least-stale": "least-stale",
               "hi-only": "lru"}
PREFETCH_MAX = 3
AUTO = "auto"
OFF_VALUES = ("off", "none")
INT64_MAX = 2**63 - 1
# the only `hobbit.*` load-time keys the engine reads (it refuses others)
KV_KEYS = ("hobbit.budget_bytes", "hobbit.direct_io", "hobbit.hi_type", "hobbit.lo_type",
           "hobbit.io_threads", "hobbit.host_tier")

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}


@dataclass(frozen=True)
class Policy:
    """How HOBBIT serves routed experts.

    - expert_budget: bytes of expert cache: an int, "512MiB"/"2GB", "25%" of the hi experts,
      "auto" (the default: from free memory, off when every expert fits; see autobudget.py),
      or None / "off" (HOBBIT off, all weights resident: the stock path).
    - policy: "hobbit" (mixed precision, the multidimensional eviction: a weighted blend of
      recency, frequency, hi-precision needs and layer distance); "lru", "lfu", "fld" and
      "least-stale" (mixed precision, one eviction rule each, for ablations); "hi-only" (hi
      copies only, plain LRU: the classic expert cache).
    - hi_threshold: a missed expert whose gating weight is >= this loads at hi precision,
      otherwise at lo. 0.5 with top-2 routing: the leading expert at hi, the other at lo
      (measured on hobbit-mixtral-tiny at a 30% budget: top-1 agreement 0.971 with all-hi).
    - skip_threshold: a missed route whose gating weight is < this is skipped (0: never).
    - upgrade_threshold: a lo-cached expert whose weight is >= this is reloaded at hi
      (> 1: never upgrade).
    - hi_type / lo_type: which expert levels of the file act as hi and lo (default: its
      highest and lowest).
    - direct_io: read experts with O_DIRECT, bypassing the page cache (default: measured
      1.8x faster decode than buffered reads under a memory cap, see BENCHMARKS.md).
    - prefetch_depth: "auto" (adapts between 0 and 3 layers ahead: on the CPU tier from the
      measured stalls, on the GPU tier by timing each depth), 0 (off) or 1..3: predict the
      next layers' experts with their routers and read them while this layer computes.
    - prefetch_width: predicted candidates beyond the router's top-k also prefetched (at lo).
    - w_recency, w_frequency, w_hi_need, w_distance: weights of the "hobbit" eviction blend.
    - io_threads: I/O threads reading experts (several reads in flight).
    - cpu_compute: GPU tier: a decode's misses may be computed on the CPU from pinned host RAM
      while the others are copied into VRAM (a planner picks from measured rates); False
      copies every miss.
    """

    expert_budget: int | str | None = AUTO
    policy: PolicyName = "hobbit"
    hi_threshold: float = 0.5
    skip_threshold: float = 0.0
    upgrade_threshold: float = 0.9
    hi_type: str | None = None
    lo_type: str | None = None
    direct_io: bool = True
    prefetch_depth: int | str = "auto"
    prefetch_width: int = 0
    w_recency: float = 1.0
    w_frequency: float = 0.5
    w_hi_need: float = 0.5
    w_distance: float = 2.0
    io_threads: int = 4
    cpu_compute: bool = True

    def validate(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise HobbitError(f"unknown policy {self.policy!r}; choose from {', '.join(POLICY_NAMES)}")
        if not 0.0 <= self.skip_threshold <= self.hi_threshold:
            raise HobbitError("thresholds must satisfy 0 <= skip_threshold <= hi_threshold")
        if self.upgrade_threshold < 0.0:
            raise HobbitError("upgrade_threshold must be >= 0")
        if self.prefetch_depth != "auto" and (not isinstance(self.prefetch_depth, int)
                                              or not 0 <= self.prefetch_depth <= PREFETCH_MAX):
            raise HobbitError(f"prefetch depth must be auto or 0..{PREFETCH_MAX}, got {self.prefetch_depth!r}")
        if self.prefetch_width < 0:
            raise HobbitError("prefetch width must be >= 0")
        if min(self.w_recency, self.w_frequency, self.w_hi_need, self.w_distance) < 0.0:
            raise HobbitError("eviction weights must be >= 0")
        if not 1 <= self.io_threads <= 64:
            raise HobbitError(f"io threads must be 1..64, got {self.io_threads}")

    def engine_policy(self) -> dict[str, float | int]:
        """The run-time policy as the engine takes it (llama_hobbit_policy's fields)."""
        from hobbit_py import capi  # noqa: PLC0415  (loads the library)

        return {
            "hi_threshold": self.hi_threshold, "skip_threshold": self.skip_threshold,
            "upgrade_threshold": self.upgrade_threshold,
            "eviction": capi.EVICTION[EVICTION_OF[self.policy]],
            "w_recency": self.w_recency, "w_frequency": self.w_frequency,
            "w_hi_need": self.w_hi_need, "w_distance": self.w_distance,
            "prefetch_depth": capi.PREFETCH_AUTO if self.prefetch_depth == "auto" else int(self.prefetch_depth),
            "prefetch_width": self.prefetch_width,
            "cpu_compute": int(self.cpu_compute),
        }

    @property
    def is_auto(self) -> bool:
        return isinstance(self.expert_budget, str) and self.expert_budget.strip().lower() == AUTO

    @property
    def is_off(self) -> bool:
        return self.expert_budget is None or (
            isinstance(self.expert_budget, str) and self.expert_budget.strip().lower() in OFF_VALUES)

    def budget_bytes(self, hi_expert_bytes: int) -> int | None:
        """The budget in bytes, given the model's total hi expert bytes (for percentages);
        None when off. `auto` needs the model and the machine: see `autobudget.auto_budget`."""
        if self.is_off:
            return None
        if self.is_auto:
            raise HobbitError("the 'auto' expert budget is resolved when a model is loaded")
        return parse_budget(self.expert_budget, hi_expert_bytes)  # type: ignore[arg-type]

    def kv_overrides(self, budget_bytes: int | None, host_tier: bool = True) -> dict[str, int | str]:
        """Load-time settings for a resolved budget, as GGUF kv overrides (only `KV_KEYS`);
        `host_tier` False: on the GPU tier each copy reads the file (the experts do not fit RAM)."""
        if budget_bytes is None:
            return {}
        overrides: dict[str, int | str] = {"hobbit.budget_bytes": budget_bytes,
                                           "hobbit.direct_io": int(self.direct_io),
                                           "hobbit.io_threads": self.io_threads}
        if not host_tier:
            overrides["hobbit.host_tier"] = 0
        if self.hi_type:
            overrides["hobbit.hi_type"] = self.hi_type
        if self.policy == "hi-only":
            overrides["hobbit.lo_type"] = "none"
        elif self.lo_type:
            overrides["hobbit.lo_type"] = self.lo_type
        assert set(overrides) <= set(KV_KEYS), overrides
        return overrides


def parse_budget(value: int | str, hi_expert_bytes: int) -> int:
    """Bytes from 1234, "512MiB", "1.5GB" or "25%" (of `hi_expert_bytes`); at most int64 max."""
    if isinstance(value, bool):
        raise HobbitError(f"bad expert budget {value!r}")
    if isinstance(value, int):
        budget = value
    else:
        text = value.strip().lower().replace(" ", "")
        if text.endswith("%"):
            try:
                pct = Decimal(text[:-1])
            except InvalidOperation:
                raise HobbitError(f"bad expert budget {value!r}") from None
            if not 0 < pct <= 100:
                raise HobbitError(f"expert budget percentage must be in (0, 100], got {value!r}")
            budget = int(hi_expert_bytes * pct / 100)
        else:
            match = re.fullmatch(r"([0-9]*\.?[0-9]+)([a-z]*)", text)
            if not match or match.group(2) not in _UNITS:
                raise HobbitError(
                    f"bad expert budget {value!r}; use bytes with a unit (512MiB, 2GB), a "
                    "percentage (25%), auto or off")
            budget = int(Decimal(match.group(1)) * _UNITS[match.group(2)])
    if budget <= 0:
        raise HobbitError(f"expert budget must be positive, got {value!r}")
    if budget > INT64_MAX:
        raise HobbitError(f"expert budget {value!r} is too large (at most {INT64_MAX} bytes)")
    return budget
