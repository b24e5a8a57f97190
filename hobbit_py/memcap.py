"""A memory cap for benchmark worker processes, on whatever this machine offers.

Tried in order, the first that works is used:

1. cgroup v2, a child cgroup with `memory.max` (and `memory.swap.max` = 0) under a cgroup
   whose `cgroup.subtree_control` enables the memory controller and that this process may
   write to (root, or a delegated subtree);
2. a transient systemd scope, `systemd-run [--user] --scope -p MemoryMax=...` (cgroup v2
   machines where systemd runs: the usual rootless case on current Debian and Ubuntu);
3. cgroup v1, a child of the memory hierarchy with `memory.limit_in_bytes` (root);
4. none: the workers run uncapped and `reason` says why, for the report.

A worker joins a cgroup by writing its own pid to `cgroup.procs` before it execs (`wrap`).
The roots are parameters so tests can run the file protocol on a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

V2_ROOT = Path("/sys/fs/cgroup")
V1_ROOT = Path("/sys/fs/cgroup/memory")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass
class MemoryCap:
    """How workers are capped: `kind` is "cgroup v2", "systemd scope", "cgroup v1" or "none"."""

    kind: str
    limit_bytes: int
    reason: str = ""
    cgroup: Path | None = None              # the cgroup directory we made (v1, v2)
    scope_argv: list[str] = field(default_factory=list)  # systemd-run prefix

    @property
    def capped(self) -> bool:
        return self.kind != "none"

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` made to start inside the cap."""
        if self.cgroup is not None:
            procs = self.cgroup / "cgroup.procs"
            return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *argv]
        if self.scope_argv:
            return [*self.scope_argv, "--", *argv]
        return list(argv)

    def describe(self) -> str:
        mib = self.limit_bytes / 2**20
        if self.kind == "none":
            return f"none ({self.reason})"
        where = f" at {self.cgroup}" if self.cgroup else ""
        return f"{mib:.0f} MiB, {self.kind}{where}"

    def close(self) -> None:
        """Remove the cgroup we made (the kernel refuses while a process is still in it)."""
        if self.cgroup is not None:
            try:
                self.cgroup.rmdir()
            except OSError:
                pass


def _own_v2_cgroup(v2_root: Path, proc_cgroup: Path) -> Path | None:
    try:
        for line in proc_cgroup.read_text().splitlines():
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if hierarchy == "0" and controllers == "":
                return v2_root / path.lstrip("/")
    except OSError:
        pass
    return None


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _try_v2(limit: int, name: str, v2_root: Path, proc_cgroup: Path) -> MemoryCap | str:
    controllers = v2_root / "cgroup.controllers"
    if not controllers.is_file():
        return f"no cgroup v2 hierarchy at {v2_root}"
    if "memory" not in controllers.read_text().split():
        return f"cgroup v2 at {v2_root} has no memory controller"
    own = _own_v2_cgroup(v2_root, proc_cgroup)
    parents = [p for p in (own, v2_root) if p is not None]
    tried: list[str] = []
    for parent in dict.fromkeys(parents):
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
        except OSError:
            continue
        if "memory" not in enabled:
            tried.append(f"{parent} does not delegate memory")
            continue
        child = parent / name
        try:
            child.mkdir(exist_ok=True)
            _write(child / "memory.max", str(limit))
            if (child / "memory.swap.max").exists():
                _write(child / "memory.swap.max", "0")
            if (child / "memory.max").read_text().strip() != str(limit):
                raise OSError("memory.max did not take the limit")
        except OSError as exc:
            tried.append(f"cannot make {child} ({getattr(exc, 'strerror', None) or exc})")
            try:
                child.rmdir()
            except OSError:
                pass
            continue
        return MemoryCap("cgroup v2", limit, cgroup=child)
    return "; ".join(tried) or "no cgroup v2 parent to use"


def _try_systemd(limit: int, v2_root: Path, systemd_run: str | None) -> MemoryCap | str:
    exe = shutil.which(systemd_run) if systemd_run else None
    if exe is None:
        return "no systemd-run"
    if "memory" not in _read_words(v2_root / "cgroup.controllers"):
        return "systemd-run present but no cgroup v2 memory controller"
    user = [] if os.geteuid() == 0 else ["--user"]
    prefix = [exe, *user, "--scope", "--quiet", "--collect",
              "-p", f"MemoryMax={limit}", "-p", "MemorySwapMax=0"]
    try:
        probe = subprocess.run([*prefix, "--", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"systemd-run failed ({exc})"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"systemd-run --scope failed ({last})"
    return MemoryCap("systemd scope", limit, scope_argv=prefix)


def _try_v1(limit: int, name: str, v1_root: Path) -> MemoryCap | str:
    if not (v1_root / "memory.limit_in_bytes").is_file():
        return f"no cgroup v1 memory hierarchy at {v1_root}"
    child = v1_root / name
    try:
        child.mkdir(exist_ok=True)
        _write(child / "memory.limit_in_bytes", str(limit))
        swap = child / "memory.memsw.limit_in_bytes"
        if swap.exists():
            _write(swap, str(limit))
    except OSError as exc:
        try:
            child.rmdir()
        except OSError:
            pass
        return f"cannot make a cgroup v1 under {v1_root} ({exc.strerror or exc}; needs root)"
    return MemoryCap("cgroup v1", limit, cgroup=child)


def _read_words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def cap_memory(limit_bytes: int, *, v2_root: Path = V2_ROOT, v1_root: Path = V1_ROOT,
               proc_cgroup: Path = PROC_CGROUP, systemd_run: str | None = "systemd-run",
               name: str | None = None) -> MemoryCap:
    """The first memory cap of `limit_bytes` this machine allows; kind "none" if none does."""
    if limit_bytes <= 0:
        raise ValueError(f"memory cap must be positive, got {limit_bytes}")
    name = name or f"hobbit-bench-{os.getpid()}"
    reasons = []
    for attempt in (lambda: _try_v2(limit_bytes, name, v2_root, proc_cgroup),
                    lambda: _try_systemd(limit_bytes, v2_root, systemd_run),
                    lambda: _try_v1(limit_bytes, name, v1_root)):
        result = attempt()
        if isinstance(result, MemoryCap):
            return result
        reasons.append(result)
    return MemoryCap("none", limit_bytes, reason="; ".join(reasons))
