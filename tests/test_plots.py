"""Pictures: the Pareto front, the bench plot, the trace format and its heat map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hobbit_py.bench import BenchResult, Row
from hobbit_py.plots import OUTCOME_COLOURS, pareto_front, pareto_plot
from hobbit_py.trace import RouteEvent, read_trace, write_trace
from tests.conftest import assert_one_line_error, require_module, run_hobbit


def test_pareto_front_keeps_the_undominated_points() -> None:
    # (KL, tok/s): lower KL and higher speed are better
    points = [(0.0, 10.0), (0.01, 30.0), (0.02, 20.0), (0.05, 40.0), (0.0, 5.0), (0.1, 40.0)]
    assert pareto_front(points) == [0, 1, 3]


def rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])


def colour_share(png: Path, hex_colour: str) -> float:
    image = require_module("matplotlib.image").imread(png)[..., :3]
    return float(np.all(np.abs(image - rgb(hex_colour)) < 0.02, axis=-1).mean())


def row(variant: str, budget: str | None, kl: float, speed: float, **kw: object) -> Row:
    return Row(variant=variant, budget=budget, budget_bytes=None, memory_bytes=2**20,
               decode_tok_s=speed, decode_min=speed, decode_max=speed, prefill_tok_s=1.0,
               peak_rss_bytes=1.0, major_faults=0.0, same_tokens_as_resident=1.0,
               perplexity=10.0, kl_mean=kl, top1_agreement=1.0, **kw)  # type: ignore[arg-type]


def test_bench_plot_is_written(tmp_path: Path) -> None:
    require_module("matplotlib")
    rows = [row("B-resident", None, 0.0, 50.0),
            row("B-static q3_k", None, 0.08, 40.0, fits={"10%": False, "50%": True})]
    for budget, speed in (("10%", 1.0), ("50%", 2.0)):
        rows += [row("B-mmap", budget, 0.0, speed), row("B-lru", budget, 0.0, 3 * speed),
                 row("HOBBIT", budget, 0.002, 5 * speed)]
    result = BenchResult(command="hobbit bench", machine="test: cpu", model="m.gguf",
                         date="2026-01-01 00:00", hi_expert_bytes=1, non_expert_bytes=1, runs=1,
                         n_predict=8, eval_tokens=64, page_cache_dropped=True, read_bandwidth=1e9,
                         caps={"10%": "1 MiB, cgroup v1", "50%": "2 MiB, cgroup v1"},
                         reference_perplexity=10.0, rows=rows)
    png = pareto_plot(result, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert colour_share(png, "#2ca02c") > 0  # HOBBIT's stars are drawn
    assert colour_share(png, "#d62728") > 0  # and the static quant where it fits


def test_trace_round_trip(tmp_path: Path) -> None:
    events = [RouteEvent(0, 0, 3, 0.7, "load_hi", "prefill"), RouteEvent(0, 0, 5, 0.3, "load_lo"),
              RouteEvent(1, 1, 2, 0.9, "prefetch_hi", "decode")]
    path = tmp_path / "t.jsonl"
    write_trace(path, events, {"n_layer": 2, "n_expert": 8, "n_expert_used": 2})
    trace = read_trace(path)
    assert trace.events == events
    assert (trace.n_layer, trace.n_expert, trace.n_tokens) == (2, 8, 2)


@pytest.mark.parametrize("line, message", [
    ('{"token": 0, "layer": 0, "expert": 1, "weight": 0.5, "outcome": "miss"}', "unknown outcome 'miss'"),
    ('{"token": 0, "layer": 0, "weight": 0.5, "outcome": "skip"}', "lacks 'expert'"),
    ("{not json", "not JSON"),
])
def test_bad_trace_lines_are_one_line_errors(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"token": 0, "layer": 0, "expert": 0, "weight": 1.0, "outcome": "hit_hi"}\n'
                    + line + "\n")
    proc = run_hobbit("plot", str(path))
    assert_one_line_error(proc, f"{path}:2", message)
    assert not path.with_suffix(".png").exists()


def test_plot_command_colours_each_outcome(tmp_path: Path) -> None:
    require_module("matplotlib")
    # every route of the first 10 tokens skipped, of the next 10 loaded at hi
    events = [RouteEvent(t, layer, e, 0.5, "skip" if t < 10 else "load_hi")
              for t in range(20) for layer in range(3) for e in (t % 8, (t + 3) % 8)]
    path = tmp_path / "trace.jsonl"
    write_trace(path, events, {"n_layer": 3, "n_expert": 8})
    proc = run_hobbit("plot", str(path), "-o", str(tmp_path / "heat.png"))
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "heat.png"
    skip, load_hi, hit_hi = (colour_share(png, OUTCOME_COLOURS[o]) for o in ("skip", "load_hi", "hit_hi"))
    assert skip > 0.01 and load_hi > 0.01
    assert abs(skip - load_hi) / max(skip, load_hi) < 0.25  # equal counts, about equal areas
    legend_only = colour_share(png, OUTCOME_COLOURS["prefetch_lo"])
    assert hit_hi < 0.002 and legend_only < 0.002  # present only as legend swatches
