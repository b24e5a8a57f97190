"""`hobbit bench -ngl N`: the GPU tier's benchmark, run by `hobbit-gpu bench`.

hobbit-gpu (csrc/tools/hobbit-gpu.cpp, built next to the library) runs every row in one process
with every layer offloaded: B-resident, B-cpu-moe, B-n-cpu-moe, B-lru-gpu and HOBBIT-gpu with
and without the planner and prefetch, each with its top-1 agreement and KL against B-resident.
Its runs are interleaved: a round over all the rows per run, so that drift hits every row alike.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from hobbit_py._lib import HobbitError, lib_dir


def hobbit_gpu_path() -> Path:
    """The hobbit-gpu tool of the library in use."""
    exe = lib_dir() / "hobbit-gpu"
    if not exe.is_file():
        raise HobbitError(f"hobbit bench -ngl needs hobbit-gpu next to the library, in {exe.parent} "
                          "('make build GPU=cuda' builds it)")
    return exe


def budget_fraction(budget: str) -> float:
    """A --budgets entry as the fraction of the hi expert bytes hobbit-gpu takes."""
    text = budget.strip()
    try:
        value = float(text[:-1]) if text.endswith("%") else float("nan")
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 400.0:
        raise HobbitError(f"with -ngl, --budgets are percentages of the hi expert bytes, "
                          f"above 0 and at most 400%: got {budget!r}")
    return value / 100.0


def offloads_every_layer(n_gpu_layers: int, n_layer: int) -> bool:
    """Whether -ngl puts every layer on the GPU, as the GPU benchmark's rows all do."""
    return n_gpu_layers < 0 or n_gpu_layers >= n_layer


def run_gpu_bench(model: Path, plain_hi: Path, budgets: list[tuple[str, float]], *, n_predict: int,
                  runs: int, threads: int, progress: Callable[[str], None]) -> tuple[str, str]:
    """Run hobbit-gpu bench once per (budget as given, its budget_fraction); returns the markdown
    sections, one per budget, and the GPU the backend found (as ggml reports it), or that there
    was none."""
    exe = hobbit_gpu_path()
    env = dict(os.environ, HOBBIT_BENCH_INTERLEAVE="1",
               LD_LIBRARY_PATH=os.pathsep.join(p for p in (str(exe.parent),
                                                           os.environ.get("LD_LIBRARY_PATH")) if p))
    sections = []
    device = "no GPU (a CPU build, or no device): every row ran on the CPU"
    for budget, fraction in budgets:
        progress(f"hobbit-gpu bench at {budget}: {runs} run(s) of {n_predict} tokens a row")
        with tempfile.TemporaryFile(mode="w+") as log:
            proc = subprocess.run([str(exe), "bench", str(model), str(plain_hi), repr(fraction),
                                   str(n_predict), str(runs), str(threads)],
                                  env=env, stdout=subprocess.PIPE, stderr=log, text=True, check=False)
            log.seek(0)
            lines = [ln.strip(". \n") for ln in log.read().splitlines() if ln.strip(". \n")]
            if proc.returncode != 0 or "| configuration |" not in proc.stdout:
                last = lines[-1] if lines else f"exit status {proc.returncode}"
                raise HobbitError(f"hobbit-gpu bench failed at {budget}: {last}")
            device = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Device 0:")), device)
        sections.append(f"### expert budget {budget} (VRAM)\n\n{proc.stdout.strip()}\n")
    return "\n".join(sections), device
