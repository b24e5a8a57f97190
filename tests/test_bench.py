"""hobbit bench end to end on tiny models: budgets, B-static, quality, report, JSON and plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hobbit_py._lib import REPO_ROOT
from hobbit_py.fixtures import write_fixture
from tests.conftest import require_module, run_hobbit
from tests.test_eval import TEXT


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bench")
    return {"mixed": write_fixture(d / "mixed.gguf", "mixtral", expert_types=("q8_0", "q4_0")),
            "hi": write_fixture(d / "hi.gguf", "mixtral", expert_types=("q8_0",)),
            "q4": write_fixture(d / "q4.gguf", "mixtral", expert_types=("q4_0",))}


def test_bench_sweeps_budgets_with_a_static_baseline(models: dict[str, Path], tmp_path: Path) -> None:
    require_module("matplotlib")
    text = tmp_path / "heldout.txt"
    text.write_text(TEXT)
    proc = run_hobbit("bench", str(models["mixed"]), "--plain-hi", str(models["hi"]),
                      "--static", str(models["q4"]), "--budgets", "25%,100%", "-n", "8",
                      "--runs", "1", "--eval-tokens", "64", "-t", "2", "--text", str(text),
                      "--out", str(tmp_path / "report.md"), timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "report.md").read_text()
    result = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "![decode speed against KL divergence" in report and "(report.png)" in report

    rows = {(r["variant"], r["budget"]): r for r in result["rows"]}
    assert set(rows) == {("B-resident", None), ("B-static q4", None)} | {
        (v, b) for v in ("B-mmap", "B-lru", "B-lru + prefetch", "HOBBIT no prefetch", "HOBBIT")
        for b in ("25%", "100%")}
    for (variant, budget), r in rows.items():
        assert r["decode_tok_s"] > 0, (variant, budget)
        assert r["perplexity"] > 1 and 0 <= r["top1_agreement"] <= 1
    # hi-only caching computes with hi copies: the all-hi distribution exactly
    for budget in ("25%", "100%"):
        assert rows[("B-lru", budget)]["kl_mean"] == 0.0
        assert rows[("B-lru", budget)]["perplexity"] == pytest.approx(result["reference_perplexity"])
        assert rows[("HOBBIT", budget)]["cache"]["bytes_loaded"] > 0
        # the prefetch rows differ from their twins by prefetch alone
        assert rows[("B-lru + prefetch", budget)]["kl_mean"] == 0.0
        assert rows[("B-lru", budget)]["cache"]["prefetch_issued"] == 0
        assert rows[("HOBBIT no prefetch", budget)]["cache"]["prefetch_issued"] == 0
        assert rows[("B-lru", budget)]["cache"]["lo_share"] == 0.0
    # the uniform low-bit model differs from all-hi, and its memory decides where it fits
    static = rows[("B-static q4", None)]
    assert static["kl_mean"] > 1e-4 and static["top1_agreement"] < 1
    size, non_expert = models["q4"].stat().st_size, result["non_expert_bytes"]
    budgets = {"25%": int(result["hi_expert_bytes"] * 0.25), "100%": result["hi_expert_bytes"]}
    assert static["fits"] == {b: size <= non_expert + n for b, n in budgets.items()}
    assert "### expert budget 25%" in report and "### expert budget 100%" in report
    # where the time goes: the I/O bound against the measured read bandwidth, per cache row
    assert report.count("Decode time per token at") == 2 and result["read_bandwidth"] > 0


def test_default_report_is_a_new_dated_file(models: dict[str, Path], tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    (tmp_path / "BENCHMARKS.md").write_text("untouched\n")
    args = ("bench", str(models["mixed"]), "--plain-hi", str(models["hi"]), "--budgets", "50%",
            "-n", "8", "--runs", "1", "--eval-tokens", "64", "-t", "2", "--text", str(text),
            "--no-plot")
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "hobbit_py.cli", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert proc.returncode == 0, proc.stderr
    reports = sorted(tmp_path.glob("hobbit-bench-*.md"))
    assert len(reports) == 2  # a second run never overwrites or appends to the first
    assert (tmp_path / "BENCHMARKS.md").read_text() == "untouched\n"


def test_bench_ngl_runs_the_gpu_benchmark(models: dict[str, Path], tmp_path: Path) -> None:
    """`hobbit bench -ngl 99` runs hobbit-gpu bench per budget and writes its table (on this
    CPU build every row runs on the CPU, and it says so)."""
    out = tmp_path / "gpu.md"
    proc = run_hobbit("bench", str(models["mixed"]), "-ngl", "99", "--budgets", "25%,50%", "-n", "8",
                      "--runs", "2", "-t", "2", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = out.read_text()
    assert report.strip() == proc.stdout.strip()
    assert "hobbit bench" in report and "-ngl 99" in report
    sections = report.split("### expert budget ")[1:]
    assert [s.split(" ", 1)[0] for s in sections] == ["25%", "50%"]
    for section, pct in zip(sections, (25, 50)):
        assert f"budget {pct}% = " in section
        rows = {line.split("|")[1].strip(): line.split("|")[2:9] for line in section.splitlines()
                if line.startswith("| B-") or line.startswith("| HOBBIT")}
        # the reference against itself; every other row scored against it
        assert rows["B-resident (-ngl 99)"][5:7] == [" 1.0000 ", " 0.00000 "]
        assert any(name.startswith("HOBBIT-gpu, planner, auto prefetch") for name in rows)
        for name, cols in rows.items():
            assert float(cols[0]) > 0, name
            assert 0.0 <= float(cols[5]) <= 1.0 and float(cols[6]) >= 0.0, name
    from hobbit_py import capi

    assert ("no GPU here" in proc.stderr) == (capi.gpu_memory() is None)


@pytest.mark.parametrize(("args", "needle"), [
    (["-ngl", "1"], "offloads every layer"),
    (["-ngl", "99", "--budgets", "64MiB"], "percentages"),
    (["-ngl", "99", "--ablations"], "do not apply"),
])
def test_bench_ngl_bad_input_is_one_line(models: dict[str, Path], tmp_path: Path, args: list[str],
                                        needle: str) -> None:
    from tests.conftest import assert_one_line_error

    proc = run_hobbit("bench", str(models["mixed"]), *args, "--out", str(tmp_path / "x.md"))
    assert_one_line_error(proc, "hobbit: error: ", needle)
    assert not (tmp_path / "x.md").exists()
