"""build/bin/hobbit-gpu, the GPU tier's check and benchmark program (scripts/test-cuda.sh,
scripts/bench-gpu.sh), on the CPU tier that CI has: it must tell a right run from a wrong one."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hobbit_py._lib import REPO_ROOT
from hobbit_py.fixtures import write_fixture

TOOL = REPO_ROOT / "build" / "bin" / "hobbit-gpu"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("gputool") / "mixed.gguf", "mixtral", expert_types=("q8_0", "q4_0"))


def check(model: Path, *args: str) -> tuple[int, dict[str, list[int] | str], str]:
    assert TOOL.is_file(), "make build builds hobbit-gpu"
    proc = subprocess.run([str(TOOL), "check", str(model), *args], capture_output=True, text=True, timeout=120)
    gens: dict[str, list[int] | str] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"gen (\d+) (short|long) (ok|error): ?(.*)$", line)
        if m:
            key = f"{m[1]} {m[2]}"
            gens[key] = [int(t) for t in m[4].split()] if m[3] == "ok" else m[4]
    stats = next((ln for ln in proc.stdout.splitlines() if ln.startswith("stats:")), "")
    return proc.returncode, gens, stats


def test_full_hi_budget_generates_what_the_plain_model_does(mixed: Path) -> None:
    rc, plain, _ = check(mixed, "0", "0")
    assert rc == 0 and set(plain) == {"0 short", "0 long"}
    assert all(isinstance(t, list) and len(t) == 16 for t in plain.values())
    rc, full, stats = check(mixed, "0", "100%", "1", "hobbit.lo_type=none", "hobbit.prefetch_depth=0")
    assert rc == 0 and full == plain
    assert stats.startswith("stats: tier 0,")


def test_counters_and_tier_are_checked(mixed: Path) -> None:
    rc, gens, stats = check(mixed, "0", "25%", "2", "hobbit.policy=lru")
    assert rc == 0 and len(gens) == 4 and all(isinstance(t, list) for t in gens.values())
    routes, *parts = map(int, re.search(r"routes (\d+) = hits (\d+)/(\d+) \+ loads (\d+)/(\d+) \+ skipped (\d+)",
                                        stats).groups())
    assert routes == sum(parts) > 0
    # asking for the GPU tier where there is none is a failure the tool reports
    rc, _, _ = check(mixed, "99", "25%")
    assert rc == 1


def test_a_bad_setting_fails_the_load(mixed: Path) -> None:
    rc, gens, _ = check(mixed, "0", "25%", "1", "hobbit.policy=fifo")
    assert rc == 1 and gens == {}


def test_bench_rows_run_at_the_threads_they_name(mixed: Path) -> None:
    # HOBBIT_BENCH_EXTRA's fields stand by their place: "name||2" is a row at 2 threads with no
    # overrides, not a row at THREADS (1 here) with an override named "2"
    env = {"HOBBIT_BENCH_ROWS": "-", "HOBBIT_BENCH_EXTRA": "at three|hobbit.prefetch_depth=0|3;at two||2;at THREADS"}
    assert TOOL.is_file(), "make build builds hobbit-gpu"
    proc = subprocess.run([str(TOOL), "bench", str(mixed), str(mixed), "0.5", "4", "1", "1"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    threads = dict(re.findall(r"<!-- (.+?) runs at -t (\d+):", proc.stdout))
    assert threads == {"B-resident (-ngl 99)": "1", "at three": "3", "at two": "2", "at THREADS": "1"}
    rows = [ln.split("|")[1].strip() for ln in proc.stdout.splitlines() if ln.startswith("| at ")]
    assert rows == ["at three", "at two", "at THREADS"]
    assert "FAILED" not in proc.stdout


def test_bench_interleaves_its_rows_over_rounds(mixed: Path) -> None:
    # HOBBIT_BENCH_INTERLEAVE=1 with RUNS 2: two rounds over the rows, one timed run of each row
    # a round, and the table (one line per row, with both runs) only after the last round
    env = {"HOBBIT_BENCH_ROWS": "-", "HOBBIT_BENCH_EXTRA": "lru|hobbit.policy=lru|1;hobbit", "HOBBIT_BENCH_INTERLEAVE": "1"}
    proc = subprocess.run([str(TOOL), "bench", str(mixed), str(mixed), "0.5", "4", "2", "1"], capture_output=True,
                          text=True, timeout=180, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = re.findall(r"<!-- (.+?) runs at -t 1, one a round: decode ([0-9. ]+), prefill ([0-9. ]+) -->", proc.stdout)
    assert [name for name, _, _ in runs] == ["B-resident (-ngl 99)", "lru", "hobbit"]
    assert all(len(d.split()) == 2 and len(p.split()) == 2 for _, d, p in runs)
    rows = [ln.split("|") for ln in proc.stdout.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert [r[1].strip() for r in rows[1:]] == ["B-resident (-ngl 99)", "lru", "hobbit"]
    # each row's figure is the median of its runs (of two: their mean), top-1 of a row against itself 1
    for (name, d, _), r in zip(runs, rows[1:]):
        values = [float(v) for v in d.split()]
        assert abs(float(r[2]) - sum(values)/2) < 0.11, (name, r[2], values)
    assert float(rows[1][7]) == 1.0
    assert "FAILED" not in proc.stdout
