"""hobbit bench's memory cap: the cgroup v2 file protocol, systemd-run, v1 for real, fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hobbit_py.memcap import cap_memory
from tests.conftest import require

PRINT_PID = [sys.executable, "-c", "import os; print(os.getpid())"]


def fake_v2(root: Path, *, delegated: bool) -> tuple[Path, Path]:
    """A cgroup2 root as files: memory available, enabled for children when `delegated`."""
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("memory pids\n" if delegated else "pids\n")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text("0::/\n")
    return root, proc


def test_cgroup_v2_child_gets_the_limit_and_the_worker(tmp_path: Path) -> None:
    root, proc = fake_v2(tmp_path / "cg2", delegated=True)
    cap = cap_memory(123_456_789, v2_root=root, v1_root=tmp_path / "none", proc_cgroup=proc,
                     systemd_run=None, name="bench")
    assert cap.kind == "cgroup v2" and cap.cgroup == root / "bench"
    assert (root / "bench" / "memory.max").read_text() == "123456789"
    out = subprocess.run(cap.wrap(PRINT_PID), capture_output=True, text=True, check=True)
    assert (root / "bench" / "cgroup.procs").read_text().strip() == out.stdout.strip()
    assert "123456789" not in cap.describe() and "118 MiB, cgroup v2" in cap.describe()


def test_systemd_scope_when_v2_does_not_delegate_memory(tmp_path: Path) -> None:
    root, proc = fake_v2(tmp_path / "cg2", delegated=False)
    log = tmp_path / "systemd-run.log"
    fake = tmp_path / "bin" / "systemd-run"
    fake.parent.mkdir()
    # records its arguments, then runs the command after `--`, as a scope would
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\nwhile [ "$1" != "--" ]; do shift; done\n'
                    'shift\nexec "$@"\n')
    fake.chmod(0o755)
    cap = cap_memory(64 * 2**20, v2_root=root, v1_root=tmp_path / "none", proc_cgroup=proc,
                     systemd_run=str(fake))
    assert cap.kind == "systemd scope"
    out = subprocess.run(cap.wrap(PRINT_PID), capture_output=True, text=True, check=True)
    assert out.stdout.strip().isdigit()
    calls = log.read_text().splitlines()
    assert len(calls) == 2  # the probe, then the worker
    for call in calls:
        assert "--scope" in call and f"MemoryMax={64 * 2**20}" in call and "MemorySwapMax=0" in call
        assert ("--user" in call) == (os.geteuid() != 0)


def test_no_cap_says_why_and_runs_uncapped(tmp_path: Path) -> None:
    root, proc = fake_v2(tmp_path / "cg2", delegated=False)
    cap = cap_memory(2**30, v2_root=root, v1_root=tmp_path / "none", proc_cgroup=proc,
                     systemd_run=None)
    assert cap.kind == "none" and not cap.capped
    assert "does not delegate memory" in cap.reason and "no systemd-run" in cap.reason
    assert "no cgroup v1 memory hierarchy" in cap.reason
    assert cap.wrap(PRINT_PID) == PRINT_PID
    assert cap.describe().startswith("none (")


def test_real_cap_kills_a_worker_over_the_limit() -> None:
    """On this machine (cgroup v1 as root here; v2 or systemd elsewhere) the cap really holds."""
    cap = cap_memory(64 * 2**20)
    require(cap.capped, f"a memory cgroup ({cap.reason})")
    try:
        def allocate(mib: int) -> int:
            argv = [sys.executable, "-c", f"b = bytearray({mib} * 2**20); b[::4096] = b'x' * len(b[::4096])"]
            return subprocess.run(cap.wrap(argv), capture_output=True, timeout=120).returncode

        assert allocate(8) == 0
        assert allocate(256) != 0  # the kernel's OOM killer ends it inside the cap
    finally:
        cap.close()
    if cap.cgroup is not None:
        assert not cap.cgroup.exists()


@pytest.mark.parametrize("bad", [0, -1])
def test_limit_must_be_positive(bad: int, tmp_path: Path) -> None:
    root, proc = fake_v2(tmp_path / "cg2", delegated=True)
    with pytest.raises(ValueError):
        cap_memory(bad, v2_root=root, proc_cgroup=proc, systemd_run=None)
