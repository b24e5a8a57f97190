"""ctypes bindings for the `llama_hobbit_*` C API of the patched libllama."""

from __future__ import annotations

import ctypes
from functools import lru_cache

from hobbit_py._lib import HobbitError, load_llama_cpp

API_VERSION = 9  # LLAMA_HOBBIT_API_VERSION these bindings are written for
PREFETCH_MAX = 3  # LLAMA_HOBBIT_PREFETCH_MAX
PREFETCH_AUTO = -1

# enum llama_hobbit_outcome
OUTCOMES = ("hit_hi", "hit_lo", "load_hi", "load_lo", "skip", "cpu_hi", "cpu_lo")

# enum llama_hobbit_eviction
EVICTION = {"lru": 0, "lfu": 1, "fld": 2, "least-stale": 3, "blend": 4}


class PolicyStruct(ctypes.Structure):
    """struct llama_hobbit_policy"""

    _fields_ = [
        ("hi_threshold", ctypes.c_float),
        ("skip_threshold", ctypes.c_float),
        ("upgrade_threshold", ctypes.c_float),
        ("eviction", ctypes.c_int32),
        ("w_recency", ctypes.c_float),
        ("w_frequency", ctypes.c_float),
        ("w_hi_need", ctypes.c_float),
        ("w_distance", ctypes.c_float),
        ("prefetch_depth", ctypes.c_int32),
        ("prefetch_width", ctypes.c_int32),
        ("cpu_compute", ctypes.c_int32),
    ]


class StatsStruct(ctypes.Structure):
    """struct llama_hobbit_stats"""

    _fields_ = [
        ("n_calls", ctypes.c_uint64),
        ("n_waves", ctypes.c_uint64),
        ("routes_total", ctypes.c_uint64),
        ("hits_hi", ctypes.c_uint64),
        ("hits_lo", ctypes.c_uint64),
        ("loads_hi", ctypes.c_uint64),
        ("loads_lo", ctypes.c_uint64),
        ("skipped", ctypes.c_uint64),
        ("upgrades", ctypes.c_uint64),
        ("demotions", ctypes.c_uint64),
        ("failed_loads", ctypes.c_uint64),
        ("bytes_loaded", ctypes.c_uint64),
        ("bytes_prefetched", ctypes.c_uint64),
        ("load_stall_ms", ctypes.c_double),
        ("read_ms", ctypes.c_double),
        ("prefetch_issued", ctypes.c_uint64),
        ("prefetch_used", ctypes.c_uint64),
        ("prefetch_wasted", ctypes.c_uint64),
        ("predicted", ctypes.c_uint64 * PREFETCH_MAX),
        ("predicted_right", ctypes.c_uint64 * PREFETCH_MAX),
        ("prefetch_depth", ctypes.c_int32),
        ("io_threads", ctypes.c_int32),
        ("bytes_in_flight_peak", ctypes.c_uint64),
        ("budget_bytes", ctypes.c_uint64),
        ("cache_capacity_bytes", ctypes.c_uint64),
        ("cache_bytes", ctypes.c_uint64),
        ("cache_peak_bytes", ctypes.c_uint64),
        ("n_slots_hi", ctypes.c_int32),
        ("n_slots_lo", ctypes.c_int32),
        ("tier", ctypes.c_int32),
        ("host_tier_bytes", ctypes.c_uint64),
        ("bytes_read", ctypes.c_uint64),
        ("unified", ctypes.c_int32),
        ("bytes_over_bus", ctypes.c_uint64),
        ("host_hits", ctypes.c_uint64),
        ("cpu_hi", ctypes.c_uint64),
        ("cpu_lo", ctypes.c_uint64),
        ("cpu_bytes", ctypes.c_uint64),
        ("cpu_ms", ctypes.c_double),
        ("copy_gbps", ctypes.c_double),
        ("cpu_gbps", ctypes.c_double),
        ("between_ms", ctypes.c_double),
        ("resident", ctypes.c_int32),
        ("passes_at_depth", ctypes.c_uint64 * (PREFETCH_MAX + 1)),
        ("cpu_threads_min", ctypes.c_int32),
        ("cpu_split", ctypes.c_uint64),
        ("gpu_gap_ms", ctypes.c_double),
        ("warm_posted", ctypes.c_uint64),
        ("warm_used", ctypes.c_uint64),
    ]


class RouteEventStruct(ctypes.Structure):
    """struct llama_hobbit_route_event"""

    _fields_ = [
        ("ubatch", ctypes.c_uint64),
        ("layer", ctypes.c_int32),
        ("token", ctypes.c_int32),
        ("expert", ctypes.c_int32),
        ("share", ctypes.c_float),
        ("outcome", ctypes.c_int32),
        ("prefetched", ctypes.c_int32),
    ]


@lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    """The patched libllama that llama_cpp loaded, with the hobbit signatures declared."""
    llama_cpp = load_llama_cpp()
    handle: ctypes.CDLL = llama_cpp.llama_cpp._lib
    model_p = ctypes.c_void_p
    signatures = {
        "llama_hobbit_api_version": ([], ctypes.c_int32),
        "llama_hobbit_source_id": ([], ctypes.c_char_p),
        "llama_hobbit_active": ([model_p], ctypes.c_bool),
        "llama_hobbit_policy_default": ([], PolicyStruct),
        "llama_hobbit_set_policy": ([model_p, PolicyStruct], ctypes.c_int32),
        "llama_hobbit_get_policy": ([model_p], PolicyStruct),
        "llama_hobbit_get_stats": ([model_p], StatsStruct),
        "llama_hobbit_reset_stats": ([model_p], None),
        "llama_hobbit_min_budget": ([model_p], ctypes.c_uint64),
        "llama_hobbit_trace_enable": ([model_p, ctypes.c_bool, ctypes.c_uint64], ctypes.c_int32),
        "llama_hobbit_trace_read": ([model_p, ctypes.POINTER(RouteEventStruct), ctypes.c_size_t,
                                     ctypes.POINTER(ctypes.c_uint64)], ctypes.c_size_t),
        "llama_hobbit_last_error": ([], ctypes.c_char_p),
        "llama_hobbit_gpu_memory": ([ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t),
                                     ctypes.POINTER(ctypes.c_bool)], ctypes.c_bool),
    }
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(handle, name, None)
        if fn is None:
            raise HobbitError(f"the llama.cpp library lacks {name}; rebuild with 'make build'")
        fn.argtypes = argtypes
        fn.restype = restype
    if handle.llama_hobbit_api_version() != API_VERSION:
        raise HobbitError(f"the llama.cpp library has HOBBIT API {handle.llama_hobbit_api_version()}, "
                          f"hobbit_py needs {API_VERSION}; rebuild with 'make build'")
    return handle


def api_version() -> int:
    """LLAMA_HOBBIT_API_VERSION the library was built with."""
    return int(lib().llama_hobbit_api_version())


def source_id() -> str:
    """The pinned llama.cpp source the library was built from."""
    return lib().llama_hobbit_source_id().decode()


def last_error() -> str:
    """The last HOBBIT error message of this thread, or ""."""
    return lib().llama_hobbit_last_error().decode()


def active(model: int) -> bool:
    return bool(lib().llama_hobbit_active(model))


def set_policy(model: int, **fields: float | int) -> None:
    """Set the policy: the library's defaults, with `fields` (PolicyStruct's names) changed."""
    policy = lib().llama_hobbit_policy_default()
    for name, value in fields.items():
        if name not in dict(PolicyStruct._fields_):
            raise HobbitError(f"unknown policy field {name}")
        setattr(policy, name, value)
    if lib().llama_hobbit_set_policy(model, policy) != 0:
        raise HobbitError(last_error())


def get_policy(model: int) -> dict[str, float | int]:
    p = lib().llama_hobbit_get_policy(model)
    return {name: getattr(p, name) for name, _ in PolicyStruct._fields_}


def get_stats(model: int) -> dict[str, float | int]:
    """The stats as a dict; the per-depth arrays become predicted_d1.., predicted_right_d1..
    and passes_at_depth_d0.."""
    s = lib().llama_hobbit_get_stats(model)
    out: dict[str, float | int] = {}
    for name, _ in StatsStruct._fields_:
        value = getattr(s, name)
        if name.startswith("predicted"):
            for d in range(PREFETCH_MAX):
                out[f"{name}_d{d + 1}"] = int(value[d])
        elif name == "passes_at_depth":
            for d in range(PREFETCH_MAX + 1):
                out[f"{name}_d{d}"] = int(value[d])
        else:
            out[name] = value
    return out


def gpu_memory() -> tuple[int, int, bool] | None:
    """(free, total, integrated) of the GPU the GPU tier would use, or None without one."""
    free, total, integrated = ctypes.c_size_t(0), ctypes.c_size_t(0), ctypes.c_bool(False)
    if not lib().llama_hobbit_gpu_memory(ctypes.byref(free), ctypes.byref(total), ctypes.byref(integrated)):
        return None
    return int(free.value), int(total.value), bool(integrated.value)


def reset_stats(model: int) -> None:
    lib().llama_hobbit_reset_stats(model)


def min_budget(model: int) -> int:
    """The smallest expert budget the model's cache accepts (0 when not in HOBBIT mode)."""
    return int(lib().llama_hobbit_min_budget(model))


def trace_enable(model: int, enable: bool, capacity: int = 1 << 22) -> None:
    """Start (clearing the record) or stop recording what every route got."""
    if lib().llama_hobbit_trace_enable(model, enable, capacity) != 0:
        raise HobbitError(last_error())


def trace_read(model: int, chunk: int = 1 << 16) -> tuple[list[dict[str, float | int | str]], int]:
    """Drain the recorded route events (oldest first) and the number dropped for lack of room."""
    buf = (RouteEventStruct * chunk)()
    dropped = ctypes.c_uint64(0)
    events: list[dict[str, float | int | str]] = []
    while True:
        n = lib().llama_hobbit_trace_read(model, buf, chunk, ctypes.byref(dropped))
        for ev in buf[:n]:
            events.append({"ubatch": ev.ubatch, "layer": ev.layer, "token": ev.token, "expert": ev.expert,
                           "share": ev.share, "outcome": OUTCOMES[ev.outcome], "prefetched": ev.prefetched})
        if n < chunk:
            return events, int(dropped.value)
