"""The `hobbit` command line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from hobbit_py._lib import HobbitError
from hobbit_py.policy import Policy

app = typer.Typer(
    name="hobbit",
    help=(
        "HOBBIT runs Mixture-of-Experts LLMs larger than fast memory by offloading experts at "
        "mixed precision, on a patched llama.cpp.\n\n"
        "Typical use: 'hobbit convert' an HF checkpoint or GGUF into a multi-precision GGUF, "
        "then 'hobbit run' it with an expert budget."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """HOBBIT: mixed-precision expert offloading for MoE LLMs on llama.cpp."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise."""
    typer.echo(f"hobbit: error: {message}", err=True)
    return typer.Exit(code)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `path` through a temp file, so no half-written file remains."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise HobbitError(f"cannot write {path}: {exc.strerror}") from None


@app.command()
def run(
    model: Annotated[Path, typer.Argument(help="A MoE model in GGUF (plain or multi-precision).")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue.")],
    n_predict: Annotated[int, typer.Option("-n", "--n-predict", min=1,
                                           help="Maximum number of tokens to generate.")] = 128,
    temp: Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 is greedy.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for sampling when --temp > 0.")] = 0,
    threads: Annotated[int | None, typer.Option(
        "--threads", "-t", min=1, help="CPU threads (default: all cores).")] = None,
    n_ctx: Annotated[int, typer.Option("--ctx-size", "-c", min=16,
                                       help="Context length in tokens.")] = 2048,
    stats_json: Annotated[Path | None, typer.Option(
        help="Also write the run's statistics as JSON to this file.")] = None,
    expert_budget: Annotated[str | None, typer.Option(
        help="Expert cache size: bytes with a unit (512MiB, 2GB) or a percentage of the hi "
             "expert bytes (25%). Routed experts are then read from the file on demand. "
             "Default: off, all weights resident as in stock llama.cpp.")] = None,
    policy: Annotated[str, typer.Option(
        help="hobbit: mixed-precision loading (HOBBIT eviction; plain LRU for now); "
             "lru: mixed precision, plain LRU; hi-only: hi copies only, plain LRU.")] = "hobbit",
    hi_threshold: Annotated[float, typer.Option(
        min=0.0, help="A missed expert with gating weight >= this loads at hi precision, "
                      "below it at lo.")] = Policy.hi_threshold,
    skip_threshold: Annotated[float, typer.Option(
        min=0.0, help="A missed route with gating weight < this is skipped.")] = Policy.skip_threshold,
    upgrade_threshold: Annotated[float, typer.Option(
        min=0.0, help="A lo-cached expert with weight >= this is reloaded at hi "
                      "(> 1: never).")] = Policy.upgrade_threshold,
) -> None:
    """Generate text from MODEL, streaming it to stdout, with speed statistics on stderr.

    With --expert-budget the routed experts live in the file and an expert cache of that
    size serves them: hits use the cached copy, misses load a hi or lo copy by gating weight.

    Example: hobbit run model.gguf -p "The cache holds" -n 64 --expert-budget 25% --stats-json s.json
    """
    from hobbit_py.model import Model  # noqa: PLC0415  (keeps --help fast)

    pol = Policy(expert_budget=expert_budget, policy=policy, hi_threshold=hi_threshold,  # type: ignore[arg-type]
                 skip_threshold=skip_threshold, upgrade_threshold=upgrade_threshold)
    with Model(model, policy=pol, n_ctx=n_ctx, threads=threads, seed=seed) as m:
        typer.echo(prompt, nl=False)
        for piece in m.stream(prompt, max_tokens=n_predict, temp=temp):
            typer.echo(piece, nl=False)
            sys.stdout.flush()
        typer.echo()
        stats = m.last_stats
        typer.echo(
            f"prefill: {stats.prompt_tokens} tokens, {stats.prefill_tokens_per_s:.1f} tok/s | "
            f"decode: {stats.tokens_generated} tokens, {stats.decode_tokens_per_s:.1f} tok/s",
            err=True,
        )
        report = m.stats()
        if m.hobbit_active:
            typer.echo(
                f"experts: {report['routes_total']} routes | hits hi {report['hits_hi']} "
                f"lo {report['hits_lo']} | loads hi {report['loads_hi']} lo {report['loads_lo']} | "
                f"skipped {report['skipped']} | {report['bytes_loaded'] / 2**20:.1f} MiB loaded, "
                f"{report['load_stall_ms']:.0f} ms stalled | cache peak "
                f"{report['expert_cache_peak_bytes'] / 2**20:.1f} of "
                f"{report['expert_budget_bytes'] / 2**20:.1f} MiB",
                err=True,
            )
        if stats_json is not None:
            write_json_atomic(stats_json, {"model": str(model), "policy": pol.policy
                                           if pol.expert_budget else "off", **report})


def _register_plugins() -> None:
    """Add the commands that live in other packages (the converter)."""
    try:
        from hobbit_convert.cli import register  # noqa: PLC0415
    except ImportError:
        return
    register(app)


def _guarded(fn: Callable[[], Any]) -> None:
    """Run the CLI turning expected failures into one-line errors."""
    try:
        fn()
    except HobbitError as exc:
        raise SystemExit(fail(str(exc)).exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(fail("interrupted", 130).exit_code) from None
    except Exception as exc:  # noqa: BLE001  (last resort: no tracebacks for users)
        if os.environ.get("HOBBIT_DEBUG"):
            raise
        raise SystemExit(fail(
            f"{type(exc).__name__}: {exc} (set HOBBIT_DEBUG=1 for a traceback)").exit_code) from None


def main() -> None:
    """Entry point of the `hobbit` console script."""
    _register_plugins()
    _guarded(lambda: app(standalone_mode=True))


if __name__ == "__main__":
    main()
