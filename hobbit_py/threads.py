"""The default CPU thread count: one per physical core this process may run on (llama.cpp's rule).

The CPU's share of the work is memory-bound (experts computed on the CPU, the CPU tier's
`mul_mat_id`), so a second hardware thread on a core adds contention, not bandwidth; and on the
GPU tier the CPU computes misses while copies fly, so half the cores (llama-cpp-python's
default) leaves bandwidth unused.
"""

from __future__ import annotations

import os
from pathlib import Path

_SYS_CPU = Path("/sys/devices/system/cpu")


def usable_cpus() -> set[int]:
    """The logical CPUs this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], sys_cpu: Path = _SYS_CPU) -> int:
    """How many physical cores `cpus` span (hyper-threads of one core counted once); where the
    topology cannot be read, each CPU counts as a core."""
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(len(cpus), 1)
        cores.add((package, core))
    return max(len(cores), 1)


def default_threads() -> int:
    """Threads for llama.cpp when none are asked for: one per usable physical core."""
    return physical_cores(usable_cpus())
