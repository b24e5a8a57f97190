"""The default thread count: one per physical core (threads.py), used by Model and the CLI."""

from __future__ import annotations

from pathlib import Path

from hobbit_py.threads import default_threads, physical_cores, usable_cpus


def fake_topology(root: Path, cores: list[tuple[int, int]]) -> Path:
    """A /sys/devices/system/cpu with one (package, core) pair per logical CPU."""
    for cpu, (package, core) in enumerate(cores):
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_hyper_threads_of_a_core_count_once(tmp_path: Path) -> None:
    # two packages of two cores, two hardware threads each: 8 logical CPUs, 4 cores
    sys_cpu = fake_topology(tmp_path, [(0, 0), (0, 1), (1, 0), (1, 1)] * 2)
    assert physical_cores(set(range(8)), sys_cpu) == 4
    assert physical_cores({0, 4}, sys_cpu) == 1  # the two threads of one core
    assert physical_cores({0, 1, 2}, sys_cpu) == 3


def test_without_a_topology_each_cpu_is_a_core(tmp_path: Path) -> None:
    assert physical_cores({0, 1, 2}, tmp_path) == 3
    assert physical_cores(set(), tmp_path) == 1


def test_model_defaults_to_the_physical_cores(mixtral_gguf: Path) -> None:
    from hobbit_py.model import Model

    expected = physical_cores(usable_cpus())
    assert default_threads() == expected
    with Model(mixtral_gguf, n_ctx=64) as model:
        assert model.n_threads == expected
        assert model.n_threads_batch == expected
    with Model(mixtral_gguf, n_ctx=64, n_threads=1) as model:
        assert model.n_threads == 1
        assert model.n_threads_batch == expected
