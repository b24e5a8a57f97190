"""The `hobbit` command line."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import importlib

import typer

from hobbit_py._lib import HobbitError
from hobbit_py.errors import EXIT_ERROR, EXIT_INTERRUPTED, one_line, print_error
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


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file, so no half-written file remains."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise HobbitError(f"cannot write {path}: {exc.strerror}") from None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `path` through a temp file, so no half-written file remains."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


BudgetOpt = Annotated[str | None, typer.Option(
    "--expert-budget",
    help="Expert cache size: bytes with a unit (512MiB, 2GB) or a percentage of the hi expert "
         "bytes (25%). Routed experts are then read from the file on demand. Default: off, all "
         "weights resident as in stock llama.cpp.")]
PolicyOpt = Annotated[str, typer.Option(
    "--policy",
    help="hobbit: mixed-precision loading (HOBBIT eviction; plain LRU for now); lru: mixed "
         "precision, plain LRU; hi-only: hi copies only, plain LRU.")]
HiOpt = Annotated[float, typer.Option(
    "--hi-threshold", min=0.0,
    help="A missed expert with gating weight >= this loads at hi precision, below it at lo.")]
SkipOpt = Annotated[float, typer.Option(
    "--skip-threshold", min=0.0, help="A missed route with gating weight < this is skipped.")]
UpgradeOpt = Annotated[float, typer.Option(
    "--upgrade-threshold", min=0.0,
    help="A lo-cached expert with weight >= this is reloaded at hi (> 1: never).")]
DirectOpt = Annotated[bool, typer.Option(
    "--direct-io/--buffered-io",
    help="Read experts with O_DIRECT (bypassing the page cache) or through it.")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", "-t", min=1, help="CPU threads (default: all cores).")]
ModelArg = Annotated[Path, typer.Argument(help="A MoE model in GGUF (plain or multi-precision).")]


def make_policy(expert_budget: str | None, policy: str, hi_threshold: float,
                skip_threshold: float, upgrade_threshold: float, direct_io: bool = False) -> Policy:
    """The Policy the shared CLI flags describe."""
    pol = Policy(expert_budget=expert_budget, policy=policy,  # type: ignore[arg-type]
                 hi_threshold=hi_threshold, skip_threshold=skip_threshold,
                 upgrade_threshold=upgrade_threshold, direct_io=direct_io)
    pol.validate()
    return pol


@app.command()
def run(
    model: ModelArg,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue.")],
    n_predict: Annotated[int, typer.Option("-n", "--n-predict", min=1,
                                           help="Maximum number of tokens to generate.")] = 128,
    temp: Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 is greedy.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for sampling when --temp > 0.")] = 0,
    threads: ThreadsOpt = None,
    n_ctx: Annotated[int, typer.Option("--ctx-size", "-c", min=0,
                                       help="Context length in tokens (0: the model's own).")] = 0,
    stats_json: Annotated[Path | None, typer.Option(
        help="Also write the run's statistics as JSON to this file.")] = None,
    expert_budget: BudgetOpt = None,
    policy: PolicyOpt = "hobbit",
    hi_threshold: HiOpt = Policy.hi_threshold,
    skip_threshold: SkipOpt = Policy.skip_threshold,
    upgrade_threshold: UpgradeOpt = Policy.upgrade_threshold,
    direct_io: DirectOpt = Policy.direct_io,
) -> None:
    """Generate text from MODEL, streaming it to stdout, with speed statistics on stderr.

    With --expert-budget the routed experts live in the file and an expert cache of that
    size serves them: hits use the cached copy, misses load a hi or lo copy by gating weight.

    Example: hobbit run model.gguf -p "The cache holds" -n 64 --expert-budget 25% --stats-json s.json
    """
    from hobbit_py.model import Model  # noqa: PLC0415  (keeps --help fast)

    pol = make_policy(expert_budget, policy, hi_threshold, skip_threshold, upgrade_threshold,
                      direct_io)
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


@app.command("eval")
def eval_cmd(
    model: ModelArg,
    text: Annotated[Path | None, typer.Option(
        help="Plain-text file to score (default: the held-out slice in data/heldout.txt).")] = None,
    n_ctx: Annotated[int, typer.Option("--ctx-size", "-c", min=16,
                                       help="Tokens per scored window.")] = 256,
    max_tokens: Annotated[int | None, typer.Option(
        min=16, help="Score at most this many tokens of the text.")] = None,
    batch: Annotated[int, typer.Option(
        min=1, help="Tokens per llama.cpp batch: 1 scores decoding (the policy decides per "
                    "token), larger scores prefill.")] = 1,
    threads: ThreadsOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    expert_budget: BudgetOpt = None,
    policy: PolicyOpt = "hobbit",
    hi_threshold: HiOpt = Policy.hi_threshold,
    skip_threshold: SkipOpt = Policy.skip_threshold,
    upgrade_threshold: UpgradeOpt = Policy.upgrade_threshold,
) -> None:
    """Score a policy against the all-hi reference of the same file.

    Reports perplexity, mean KL divergence of the next-token distributions against the
    reference (HOBBIT off: every expert at the file's highest level), and top-1 agreement.

    Example: hobbit eval model.gguf --expert-budget 25% --json
    """
    from hobbit_py.evaluate import DEFAULT_TEXT, evaluate  # noqa: PLC0415

    pol = make_policy(expert_budget, policy, hi_threshold, skip_threshold, upgrade_threshold)
    text_path = text or DEFAULT_TEXT
    if not text_path.is_file():
        raise HobbitError(f"text file not found: {text_path}")
    result = evaluate(model, pol, text_path.read_text(errors="replace"), n_ctx=n_ctx,
                      threads=threads, max_tokens=max_tokens, batch=batch)
    if json_out:
        typer.echo(json.dumps({"model": str(model), "text": str(text_path), "policy": pol.policy,
                               **result.as_dict()}, indent=2, sort_keys=True))
        return
    typer.echo(f"tokens scored       {result.tokens_scored}")
    typer.echo(f"perplexity          {result.perplexity:.4f} (all-hi {result.reference_perplexity:.4f})")
    typer.echo(f"KL vs all-hi        {result.kl_mean:.6f}")
    typer.echo(f"top-1 agreement     {result.top1_agreement:.4f}")


@app.command()
def bench(
    model: ModelArg,
    plain_hi: Annotated[Path, typer.Option(
        "--plain-hi", help="The same model as a plain GGUF at the hi precision (hobbit convert "
                           "--bits with the hi type only), for the stock llama.cpp baselines.")],
    expert_budget: BudgetOpt = "25%",
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt before the decode.")] = (
        "The documentation explains how the database server stores tables on disk, and"),
    n_predict: Annotated[int, typer.Option("-n", min=8, help="Tokens to decode per run.")] = 128,
    runs: Annotated[int, typer.Option(min=1, help="Runs per variant (median reported).")] = 3,
    threads: Annotated[int, typer.Option("--threads", "-t", min=1, help="CPU threads.")] = 2,
    eval_tokens: Annotated[int, typer.Option(
        min=64, help="Held-out tokens scored for the quality columns.")] = 1024,
    text: Annotated[Path | None, typer.Option(help="Held-out text (default data/heldout.txt).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Markdown report to write (replaced if it exists). Default: a new file "
             "hobbit-bench-YYYYMMDD-HHMMSS.md in the current directory.")] = None,
    policy: PolicyOpt = "hobbit",
    hi_threshold: HiOpt = Policy.hi_threshold,
    skip_threshold: SkipOpt = Policy.skip_threshold,
    upgrade_threshold: UpgradeOpt = Policy.upgrade_threshold,
    direct_io: DirectOpt = Policy.direct_io,
) -> None:
    """Benchmark HOBBIT against stock llama.cpp and a hi-only LRU cache, side by side.

    Variants, each a fresh process, interleaved, median of --runs: B-resident (stock, all in
    RAM), B-mmap (stock, mmap, memory cgroup capped to non-expert bytes + budget + overhead),
    B-lru (our cache, hi only, LRU) and HOBBIT (mixed precision), both under the same cap.
    The cap is a cgroup v2 child, a systemd scope (systemd-run --scope -p MemoryMax) or a
    cgroup v1, whichever the machine allows; with none the variants run uncapped and the
    report says so. The page cache is dropped before each run where allowed (root).
    Quality (perplexity, KL and top-1 vs all-hi) comes from the held-out text.
    """
    import shlex  # noqa: PLC0415

    from hobbit_py.bench import bench as run_bench  # noqa: PLC0415
    from hobbit_py.bench import to_markdown  # noqa: PLC0415
    from hobbit_py.evaluate import DEFAULT_TEXT  # noqa: PLC0415

    pol = make_policy(expert_budget, policy, hi_threshold, skip_threshold, upgrade_threshold,
                      direct_io)
    text_path = text or DEFAULT_TEXT
    if not text_path.is_file():
        raise HobbitError(f"text file not found: {text_path}")
    command = "hobbit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_bench(model, plain_hi, pol, prompt=prompt, n_predict=n_predict, runs=runs,
                       threads=threads, text=text_path.read_text(errors="replace"),
                       eval_tokens=eval_tokens, command=command,
                       progress=lambda msg: typer.echo(msg, err=True))
    section = to_markdown(result)
    path = write_report(out, section)
    typer.echo(section)
    typer.echo(f"report: {path}", err=True)


def write_report(out: Path | None, text: str) -> Path:
    """Write `text` to `out`, or to a new dated file in the current directory."""
    if out is not None:
        write_text_atomic(out, text)
        return out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 100):
        path = Path(f"hobbit-bench-{stamp}{'' if n == 1 else f'-{n}'}.md")
        try:
            with path.open("x") as f:
                f.write(text)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise HobbitError(f"cannot write {path}: {exc.strerror}") from None
    raise HobbitError("cannot find a free report name in the current directory")


def _register_plugins() -> None:
    """Add the commands that live in other packages (the converter)."""
    from hobbit_convert.cli import register  # noqa: PLC0415

    register(app)


def _guarded(fn: Callable[[], Any]) -> None:
    """Run the CLI turning expected failures into one-line errors."""
    try:
        fn()
    except HobbitError as exc:
        print_error(str(exc))
        raise SystemExit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        print_error("interrupted")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # noqa: BLE001  (last resort: no tracebacks for users)
        if os.environ.get("HOBBIT_DEBUG"):
            raise
        print_error(f"internal error: {type(exc).__name__}: {exc} (set HOBBIT_DEBUG=1 for a traceback)")
        raise SystemExit(EXIT_ERROR) from None


# typer raises click's exception classes; recent typers carry their own copy of click
_click_errors = importlib.import_module(typer.BadParameter.__module__)
_NoArgsIsHelp: type[Exception] = getattr(_click_errors, "NoArgsIsHelpError", type("_Never", (Exception,), {}))


def usage_error_message(exc: Any) -> str:
    """click's usage error as one line, with where to read the usage."""
    where = exc.ctx.command_path if exc.ctx is not None else "hobbit"
    return f"{one_line(exc.format_message())} (see '{where} --help')"


def run_app(args: list[str]) -> None:
    """Run the typer app on `args` with click's errors turned into HobbitError (one line)."""
    try:
        code = app(args=args, prog_name="hobbit", standalone_mode=False)
    except _NoArgsIsHelp as exc:
        ctx = getattr(exc, "ctx", None)
        typer.echo(ctx.get_help() if ctx is not None else str(exc))
        return
    except _click_errors.UsageError as exc:
        raise HobbitError(usage_error_message(exc)) from None
    except typer.Abort:
        raise KeyboardInterrupt from None
    except _click_errors.ClickException as exc:
        raise HobbitError(one_line(exc.format_message())) from None
    if isinstance(code, int) and code != 0:
        raise SystemExit(code)


def main() -> None:
    """Entry point of the `hobbit` console script."""
    _register_plugins()
    _guarded(lambda: run_app(sys.argv[1:]))


if __name__ == "__main__":
    main()
