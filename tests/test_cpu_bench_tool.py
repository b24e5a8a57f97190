"""build/bin/hobbit-cpu-bench, the rate of the GPU tier's CPU experts op against a plain read of
the same bytes (BENCHMARKS.md): it must describe what it measured and refuse what it cannot."""

from __future__ import annotations

import re
import subprocess

from hobbit_py._lib import REPO_ROOT

TOOL = REPO_ROOT / "build" / "bin" / "hobbit-cpu-bench"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert TOOL.is_file(), "make build builds hobbit-cpu-bench"
    return subprocess.run([str(TOOL), *args], capture_output=True, text=True, timeout=120)


def test_it_measures_the_experts_it_was_given() -> None:
    proc = run("256", "1024", "q8_0", "4", "2", "5", "2")
    assert proc.returncode == 0, proc.stderr
    head = re.search(r"q8_0 experts \[256 x 1024\], ([\d.]+) MiB each; 2 routes a call on 2 threads", proc.stdout)
    assert head, proc.stdout
    # gate, up and down of one expert at q8_0: 34 bytes a block of 32 weights
    assert abs(float(head[1]) - 3*256*1024*34/32/2**20) < 0.05
    rates = re.search(r"CPU experts op ([\d.]+) GB/s .*plain sum of the same bytes ([\d.]+) GB/s", proc.stdout)
    passes = re.search(r"gate\+up rows ([\d.]+) GB/s, down ([\d.]+) GB/s", proc.stdout)
    assert rates and passes, proc.stdout
    assert all(float(v) > 0.0 for v in (*rates.groups(), *passes.groups()))


def test_bad_arguments_get_one_line_and_no_run() -> None:
    for args in (("256", "1024", "q9_9"), ("256", "1024", "q8_0", "2", "2", "5", "3"), ("256", "1024", "q8_0", "4", "0")):
        proc = run(*args)
        assert proc.returncode == 1, args
        assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)


def test_a_shape_the_cpu_cannot_slice_is_refused() -> None:
    proc = run("100", "1024", "q8_0", "2", "1", "2", "1")  # rows of 100 are not whole q8_0 blocks
    assert proc.returncode == 1
    assert "cannot" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
