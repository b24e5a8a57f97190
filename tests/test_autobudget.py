"""--expert-budget auto: free memory from /proc/meminfo and the memory cgroup, and the budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hobbit_py import autobudget
from hobbit_py._lib import HobbitError
from hobbit_py.autobudget import FreeMemory, auto_budget, auto_budget_gpu, free_memory
from hobbit_py.fixtures import FixtureShape, write_fixture
from hobbit_py.gguf_check import inspect_model
from hobbit_py.memcap import cap_memory
from tests.conftest import require

MiB, GiB = 2**20, 2**30


def meminfo(tmp_path: Path, available: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       25000000 kB\nMemFree:        1000 kB\n"
                    f"MemAvailable:   {available // 1024} kB\n")
    return path


def test_v1_cgroup_room_counts_back_inactive_page_cache(tmp_path: Path) -> None:
    d = tmp_path / "cg" / "memory" / "job"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(str(1 * GiB))
    (d / "memory.usage_in_bytes").write_text(str(300 * MiB))
    (d / "memory.stat").write_text(f"cache 150\ntotal_inactive_file {100 * MiB}\n"
                                   f"hierarchical_memory_limit {2 * GiB}\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/job\n3:cpuset:/\n0::/\n")
    free = free_memory(meminfo(tmp_path, 20 * GiB), proc, tmp_path / "cg")
    assert free.bytes == 1 * GiB - 300 * MiB + 100 * MiB
    assert "cgroup v1" in free.source


def test_v2_takes_the_tightest_ancestor(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    leaf = root / "a" / "b"
    leaf.mkdir(parents=True)
    (root / "a" / "memory.max").write_text(str(2 * GiB))
    (root / "a" / "memory.current").write_text(str(1536 * MiB))
    (root / "a" / "memory.stat").write_text(f"anon 1\ninactive_file {64 * MiB}\n")
    (leaf / "memory.max").write_text("max\n")
    (leaf / "memory.current").write_text(str(100 * MiB))
    proc = tmp_path / "cgroup"
    proc.write_text("0::/a/b\n")
    free = free_memory(meminfo(tmp_path, 20 * GiB), proc, root)
    assert free.bytes == 2 * GiB - 1536 * MiB + 64 * MiB and "cgroup v2" in free.source


def test_memavailable_when_no_limit(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    free = free_memory(meminfo(tmp_path, 3 * GiB), proc, tmp_path / "none")
    assert free == FreeMemory(3 * GiB, "MemAvailable")


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    shape = FixtureShape(n_layer=4, n_embd=512, n_ff_exp=1024, n_head=8, n_head_kv=4)
    path = write_fixture(tmp_path_factory.mktemp("auto") / "m.gguf", "mixtral", shape,
                         expert_types=("q8_0", "q4_0"))
    return inspect_model(path)


def test_budget_is_free_memory_minus_the_rest(summary) -> None:  # noqa: ANN001
    s = summary
    kv = 4096 * s.n_layer * s.n_head_kv * (s.key_length + s.value_length) * 2
    assert s.kv_cache_bytes(4096) == kv
    runtime = autobudget.RUNTIME_BYTES + autobudget.compute_buffer_bytes(s)
    free = FreeMemory(400 * MiB, "test")
    fixed = s.non_expert_bytes + kv + runtime + int(free.bytes * autobudget.HEADROOM_FRACTION)
    if free.bytes - fixed >= s.hi_expert_bytes:  # make the experts not fit
        free = FreeMemory(fixed + s.hi_expert_bytes // 2, "test")
        fixed = s.non_expert_bytes + kv + runtime + int(free.bytes * autobudget.HEADROOM_FRACTION)
    decision = auto_budget(s, 4096, free)
    assert decision.budget_bytes == free.bytes - fixed
    assert 0 < decision.budget_bytes < s.hi_expert_bytes
    assert decision.reason.startswith("expert budget auto: ") and "KV cache" in decision.reason


def test_a_model_that_fits_stays_resident(summary) -> None:  # noqa: ANN001
    decision = auto_budget(summary, 4096, FreeMemory(64 * GiB, "test"))
    assert decision.budget_bytes is None and "fit" in decision.reason


def test_no_room_is_a_clear_error(summary) -> None:  # noqa: ANN001
    with pytest.raises(HobbitError, match="no memory left for experts"):
        auto_budget(summary, 4096, FreeMemory(autobudget.RUNTIME_BYTES, "test"))  # less than the runtime alone


def test_gpu_budget_is_free_vram_minus_the_rest_shared_with_the_packed_copy(summary) -> None:  # noqa: ANN001
    s = summary
    kv = s.kv_cache_bytes(4096)
    buffers = autobudget.compute_buffer_bytes(s)
    vram = FreeMemory(s.non_expert_bytes + kv + buffers + s.hi_expert_bytes // 2, "the GPU")
    room = vram.bytes - s.non_expert_bytes - kv - buffers - int(vram.bytes * autobudget.GPU_HEADROOM_FRACTION)
    decision = auto_budget_gpu(s, 4096, vram, FreeMemory(64 * GiB, "test"))
    # the slots and a prompt's packed copy of the largest pool (a third of it) share the room
    assert decision.budget_bytes == int(room / (1 + 1 / 3))
    assert 0 < decision.budget_bytes < s.hi_expert_bytes // 2
    assert decision.host_tier and "pinned RAM" in decision.reason and "VRAM" in decision.reason
    # experts that do not fit the free RAM: no host tier, and it says so
    small_ram = FreeMemory(s.all_expert_bytes, "test")
    no_host = auto_budget_gpu(s, 4096, vram, small_ram)
    assert not no_host.host_tier and no_host.budget_bytes == decision.budget_bytes
    assert "each copy reads the file" in no_host.reason
    # every hi expert fits in VRAM: off, as stock llama.cpp with -ngl
    fits = auto_budget_gpu(s, 4096, FreeMemory(64 * GiB, "the GPU"), FreeMemory(64 * GiB, "test"))
    assert fits.budget_bytes is None and "fit in VRAM" in fits.reason
    with pytest.raises(HobbitError, match="no VRAM left"):
        auto_budget_gpu(s, 4096, FreeMemory(s.non_expert_bytes, "the GPU"), FreeMemory(64 * GiB, "test"))
    # the GPU tier's host tier is every level of the file
    assert s.all_expert_bytes > s.hi_expert_bytes


def test_auto_under_a_real_memory_cgroup(summary) -> None:  # noqa: ANN001
    """Inside a memory cgroup the CLI sizes the cache from the cgroup's limit, says so on
    stderr, and the engine gets exactly that budget."""
    s = summary
    limit = s.non_expert_bytes + s.hi_expert_bytes // 2 + autobudget.RUNTIME_BYTES + 64 * MiB
    cap = cap_memory(limit)
    require(cap.capped, f"a memory cgroup ({cap.reason})")
    stats = Path(str(s.path) + ".stats.json")
    try:
        argv = cap.wrap([sys.executable, "-m", "hobbit_py.cli", "run", str(s.path), "-p", "Hello",
                         "-n", "4", "-t", "2", "-c", "512", "--stats-json", str(stats)])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    finally:
        cap.close()
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("hobbit: expert budget auto:"))
    assert "cgroup" in line, line
    report = json.loads(stats.read_text())
    assert report["policy"] == "hobbit"
    assert 0 < report["expert_budget_bytes"] < s.hi_expert_bytes
    assert report["expert_budget_bytes"] < limit - s.non_expert_bytes
