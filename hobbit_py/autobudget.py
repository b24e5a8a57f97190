"""`--expert-budget auto`: size the expert cache from the memory this process may still use.

free      = min(MemAvailable, what the process's memory cgroup still allows)
budget    = free - resident weights - KV cache - runtime - headroom

The cgroup figure is its limit minus its usage, giving back the inactive page cache the kernel
reclaims first (v1: the hierarchy's smallest limit; v2: the smallest room of any ancestor).
When every hi expert fits as well, the model stays fully resident (HOBBIT off), as stock
llama.cpp would run it. The figures come from the model file (`ModelSummary`), so the choice
is made before llama.cpp allocates anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hobbit_py._lib import HobbitError
from hobbit_py.gguf_check import ModelSummary

MEMINFO = Path("/proc/meminfo")
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 2**62  # cgroup "no limit" values are at or above this

# what a hobbit process still allocates after the decision besides weights, KV cache, compute
# buffers and expert cache: llama.cpp's context and loader state, O_DIRECT bounce buffers, the
# page cache of what it reads. Measured ~11-16 MiB on the widened benchmark model (peak RSS
# minus budget minus the process at decision time); twice that, for margin.
RUNTIME_BYTES = 32 * 2**20
HEADROOM_FRACTION = 0.03  # of the free memory, for the page cache and what else starts


@dataclass(frozen=True)
class FreeMemory:
    """Bytes this process may still use, and where the figure came from."""

    bytes: int
    source: str


@dataclass(frozen=True)
class BudgetDecision:
    """What `auto` chose: a budget in bytes, or None (all resident), and a one-line why; on
    the GPU tier also whether every expert fits in pinned host RAM (the host tier)."""

    budget_bytes: int | None
    reason: str
    host_tier: bool = True


def _mib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.0f} MiB"


def mem_available(meminfo: Path = MEMINFO) -> int:
    """MemAvailable of /proc/meminfo in bytes."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    raise HobbitError(f"cannot read MemAvailable from {meminfo}; give --expert-budget in bytes")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _stat(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                out[key] = int(value)
    except OSError:
        pass
    return out


def cgroup_room(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> FreeMemory | None:
    """Room left in this process's memory cgroup (v1 or v2), or None without a limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    best: FreeMemory | None = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):  # v1
            d = root / "memory" / path.lstrip("/")
            stat = _stat(d / "memory.stat")
            limit = min(v for v in (_read_int(d / "memory.limit_in_bytes"),
                                    stat.get("hierarchical_memory_limit")) if v is not None) \
                if (d / "memory.limit_in_bytes").exists() else None
            usage = _read_int(d / "memory.usage_in_bytes")
            if limit is None or usage is None or limit >= UNLIMITED:
                continue
            room = limit - usage + stat.get("total_inactive_file", stat.get("inactive_file", 0))
            found = FreeMemory(max(room, 0), f"cgroup v1 limit {_mib(limit)}")
        elif hierarchy == "0" and controllers == "":  # v2: the tightest ancestor
            d = root / path.lstrip("/")
            found = None
            while True:
                limit, usage = _read_int(d / "memory.max"), _read_int(d / "memory.current")
                if limit is not None and usage is not None and limit < UNLIMITED:
                    room = limit - usage + _stat(d / "memory.stat").get("inactive_file", 0)
                    if found is None or room < found.bytes:
                        found = FreeMemory(max(room, 0), f"cgroup v2 limit {_mib(limit)}")
                if d == root or d.parent == d:
                    break
                d = d.parent
            if found is None:
                continue
        else:
            continue
        if best is None or found.bytes < best.bytes:
            best = found
    return best


def free_memory(meminfo: Path = MEMINFO, proc_cgroup: Path = PROC_CGROUP,
                root: Path = CGROUP_ROOT) -> FreeMemory:
    """The smaller of MemAvailable and the room of this process's memory cgroup."""
    available = FreeMemory(mem_available(meminfo), "MemAvailable")
    room = cgroup_room(proc_cgroup, root)
    return room if room is not None and room.bytes < available.bytes else available


def compute_buffer_bytes(summary: ModelSummary, n_batch: int = 512) -> int:
    """A generous estimate of llama.cpp's CPU compute buffer: a batch's logits and activations."""
    return n_batch * (summary.n_vocab + 16 * summary.n_embd) * 4


def auto_budget(summary: ModelSummary, n_ctx: int, free: FreeMemory | None = None) -> BudgetDecision:
    """Pick the expert budget for `summary` at context `n_ctx` from the free memory."""
    free = free or free_memory()
    kv = summary.kv_cache_bytes(n_ctx)
    runtime = RUNTIME_BYTES + compute_buffer_bytes(summary)
    headroom = int(free.bytes * HEADROOM_FRACTION)
    fixed = summary.non_expert_bytes + kv + runtime + headroom
    room = free.bytes - fixed
    why = (f"free {_mib(free.bytes)} ({free.source}) - resident weights "
           f"{_mib(summary.non_expert_bytes)} - KV cache {_mib(kv)} ({n_ctx} tokens) - runtime "
           f"{_mib(runtime)} - headroom {_mib(headroom)}")
    if room >= summary.hi_expert_bytes:
        return BudgetDecision(None, f"expert budget auto: off, all {_mib(summary.hi_expert_bytes)} "
                                    f"of hi experts fit ({why} = {_mib(room)})")
    if room <= 0:
        raise HobbitError(f"expert budget auto: no memory left for experts ({why} = {_mib(room)}); "
                          "free memory, lower --ctx-size, or give --expert-budget")
    return BudgetDecision(room, f"expert budget auto: {_mib(room)} = {why} "
                                f"({100 * room / summary.hi_expert_bytes:.0f}% of the hi experts)")


# GPU tier: a prompt's expert matmul packs its slot pool into a scratch copy of the pool
# (CUDA's batched kernels want the experts back to back): the largest of the three projections'
# pools, about a third of the budget, on top of it
GPU_PACK_FRACTION = 1 / 3
GPU_HEADROOM_FRACTION = 0.05  # of the free VRAM, for CUDA's own pools and what else runs
HOST_TIER_HEADROOM = 0.10  # of the free RAM, left over when the host tier is pinned


def auto_budget_gpu(summary: ModelSummary, n_ctx: int, vram: FreeMemory,
                    ram: FreeMemory | None = None) -> BudgetDecision:
    """Pick the VRAM expert budget with every layer offloaded (-ngl): the free VRAM less the
    non-expert weights, the KV cache, the compute buffers and a headroom, shared between the
    slots and the scratch copy a prompt packs them into. The host tier (every expert of the
    file in pinned RAM, copied from there) is kept when it fits the free RAM with a margin;
    else each copy reads the file."""
    ram = ram or free_memory()
    kv = summary.kv_cache_bytes(n_ctx)
    buffers = compute_buffer_bytes(summary)
    headroom = int(vram.bytes * GPU_HEADROOM_FRACTION)
    room = vram.bytes - summary.non_expert_bytes - kv - buffers - headroom
    why = (f"free VRAM {_mib(vram.bytes)} - resident weights {_mib(summary.non_expert_bytes)} - KV cache "
           f"{_mib(kv)} ({n_ctx} tokens) - compute {_mib(buffers)} - headroom {_mib(headroom)}")
    host_tier = summary.all_expert_bytes <= ram.bytes * (1 - HOST_TIER_HEADROOM)
    host = (f"host tier: every expert ({_mib(summary.all_expert_bytes)}) in pinned RAM" if host_tier else
            f"no host tier: the experts ({_mib(summary.all_expert_bytes)}) do not fit the free RAM "
            f"({_mib(ram.bytes)}, {ram.source}), each copy reads the file")
    if room >= summary.hi_expert_bytes:
        return BudgetDecision(None, f"expert budget auto: off, all {_mib(summary.hi_expert_bytes)} of hi "
                                    f"experts fit in VRAM ({why} = {_mib(room)})")
    budget = int(room / (1 + GPU_PACK_FRACTION))
    if budget <= 0:
        raise HobbitError(f"expert budget auto: no VRAM left for experts ({why} = {_mib(room)}); "
                          "lower --ctx-size or -ngl, or give --expert-budget")
    return BudgetDecision(budget, f"expert budget auto: {_mib(budget)} of VRAM = ({why}) / "
                                  f"{1 + GPU_PACK_FRACTION:.2f} for a prompt's packed copy "
                                  f"({100 * budget / summary.hi_expert_bytes:.0f}% of the hi experts); {host}",
                          host_tier)
