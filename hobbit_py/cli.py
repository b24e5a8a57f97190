"""The `hobbit` command line.

Flags follow llama.cpp's where they overlap (-m, -p, -n, -t, -c, -ngl, -s, --temp); every
failure, usage errors included, is one line `hobbit: error: ...` on stderr and exit code 1.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hobbit_py._lib import HobbitError
from hobbit_py.errors import EXIT_ERROR, EXIT_INTERRUPTED, one_line, print_error
from hobbit_py.policy import Policy

if TYPE_CHECKING:
    from hobbit_py.model import Model

app = typer.Typer(
    name="hobbit",
    help=(
        "HOBBIT runs Mixture-of-Experts LLMs larger than fast memory by offloading experts at "
        "mixed precision, on a patched llama.cpp.\n\n"
        "Typical use: 'hobbit convert' an HF checkpoint or GGUF into a multi-precision GGUF, "
        "then 'hobbit run', 'hobbit chat' or 'hobbit serve' it; the expert budget sizes itself "
        "from free memory unless --expert-budget says otherwise."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs re-wrap to the terminal
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


# --- options shared by the commands that load a model --------------------------------------

ModelArg = Annotated[Path | None, typer.Argument(
    help="A MoE model in GGUF (plain or multi-precision); or give it with -m.", show_default=False)]
ModelOpt = Annotated[Path | None, typer.Option(
    "-m", "--model", help="The model, as in llama.cpp (instead of the MODEL argument).",
    show_default=False)]
BudgetOpt = Annotated[str, typer.Option(
    "--expert-budget",
    help="Expert cache size: auto (from free memory: the model stays fully resident when its "
         "experts fit, otherwise the cache gets what is left after the resident weights, KV "
         "cache and a headroom), bytes with a unit (512MiB, 2GB), a percentage of the hi "
         "expert bytes (25%), or off (all weights resident, stock llama.cpp).")]
PolicyOpt = Annotated[str, typer.Option(
    "--policy",
    help="hobbit: mixed-precision loading, eviction by a blend of recency, frequency, "
         "hi-precision needs and layer distance; lru, lfu, fld, least-stale: mixed precision "
         "with one eviction rule (ablations); hi-only: hi copies only, LRU (the classic cache).")]
PrefetchOpt = Annotated[str, typer.Option(
    "--prefetch-depth",
    help="Predict the next layers' experts with their routers and read them ahead: auto "
         "(adapts from prediction accuracy and load vs compute time; with -ngl, by timing each "
         "depth), 0 (off), or 1-3 layers.")]
PrefetchWidthOpt = Annotated[int, typer.Option(
    "--prefetch-width", min=0,
    help="Predicted candidates beyond the router's top-k also prefetched (at lo).")]
IoThreadsOpt = Annotated[int, typer.Option(
    "--io-threads", min=1, max=64, help="I/O threads reading experts (several reads in flight).")]
CpuComputeOpt = Annotated[bool, typer.Option(
    "--cpu-compute/--no-cpu-compute",
    help="GPU tier: compute some of a decode's missed experts on the CPU from pinned RAM while "
         "the others are copied to VRAM (a planner picks from measured rates).")]
EvictWeightsOpt = Annotated[str | None, typer.Option(
    "--evict-weights",
    help="Weights of the hobbit eviction blend: recency,frequency,hi-need,distance "
         "(default 1,0.5,0.5,2).", show_default=False)]
HiOpt = Annotated[float, typer.Option(
    "--hi-threshold", min=0.0,
    help="A missed expert with gating weight >= this loads at hi precision, below it at lo.")]
SkipOpt = Annotated[float, typer.Option(
    "--skip-threshold", min=0.0, help="A missed route with gating weight < this is skipped.")]
UpgradeOpt = Annotated[float, typer.Option(
    "--upgrade-threshold", min=0.0,
    help="A lo-cached expert with weight >= this is reloaded at hi (> 1: never).")]
HiTypeOpt = Annotated[str | None, typer.Option(
    "--hi-type", help="Expert level of the file to use as hi (e.g. q8_0; default its highest).",
    show_default=False)]
LoTypeOpt = Annotated[str | None, typer.Option(
    "--lo-type", help="Expert level of the file to use as lo (e.g. q4_k; default its lowest).",
    show_default=False)]
DirectOpt = Annotated[bool, typer.Option(
    "--direct-io/--buffered-io",
    help="Read experts with O_DIRECT (bypassing the page cache) or through it.")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", "-t", min=1, help="CPU threads (default: one per physical core, as llama.cpp).", show_default=False)]
CtxOpt = Annotated[int | None, typer.Option(
    "--ctx-size", "-c", min=0,
    help="Context length in tokens (default: the model's, at most 4096; 0: the model's).",
    show_default=False)]
GpuLayersOpt = Annotated[int, typer.Option(
    "-ngl", "--n-gpu-layers", "--gpu-layers", min=-1,
    help="Layers to offload to the GPU, as in llama.cpp (-1: all; no effect on a CPU build).")]
SeedOpt = Annotated[int, typer.Option("--seed", "-s", help="Seed for sampling when --temp > 0.")]
TempOpt = Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 is greedy.")]


def resolve_model(argument: Path | None, option: Path | None) -> Path:
    """The model path from the MODEL argument or -m, exactly one of them."""
    if argument is not None and option is not None and argument != option:
        raise HobbitError(f"two models given ({argument} and -m {option}); give one")
    path = argument or option
    if path is None:
        raise HobbitError("no model given: hobbit COMMAND MODEL.gguf, or -m MODEL.gguf")
    return path


def make_policy(expert_budget: str | None, policy: str, hi_threshold: float,
                skip_threshold: float, upgrade_threshold: float, direct_io: bool = True,
                hi_type: str | None = None, lo_type: str | None = None, *,
                prefetch_depth: str = "auto", prefetch_width: int = 0, io_threads: int = 4,
                evict_weights: str | None = None, cpu_compute: bool = True) -> Policy:
    """The Policy the shared CLI flags describe."""
    depth: int | str = prefetch_depth.strip().lower()
    if depth != "auto":
        try:
            depth = int(depth)
        except ValueError:
            raise HobbitError(f"bad --prefetch-depth {prefetch_depth!r}; use auto, 0, 1, 2 or 3") from None
    weights: dict[str, float] = {}
    if evict_weights is not None:
        try:
            values = [float(v) for v in evict_weights.split(",")]
        except ValueError:
            values = []
        if len(values) != 4:
            raise HobbitError(f"bad --evict-weights {evict_weights!r}; use four numbers: "
                              "recency,frequency,hi-need,distance")
        weights = dict(zip(("w_recency", "w_frequency", "w_hi_need", "w_distance"), values))
    pol = Policy(expert_budget=expert_budget, policy=policy,  # type: ignore[arg-type]
                 hi_threshold=hi_threshold, skip_threshold=skip_threshold,
                 upgrade_threshold=upgrade_threshold, direct_io=direct_io,
                 hi_type=hi_type, lo_type=lo_type, prefetch_depth=depth,
                 prefetch_width=prefetch_width, io_threads=io_threads, cpu_compute=cpu_compute,
                 **weights)
    pol.validate()
    return pol


def load_model(path: Path, policy: Policy, *, threads: int | None, n_ctx: int | None,
               n_gpu_layers: int = 0, seed: int = 0, **kwargs: Any) -> Model:
    """Load `path` as the CLI does, saying on stderr what `--expert-budget auto` chose."""
    from hobbit_py.model import Model  # noqa: PLC0415  (keeps --help fast)

    # no -t: Model's default (a thread per physical core)
    model = Model(path, policy=policy, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                  n_gpu_layers=n_gpu_layers, seed=seed, **kwargs)
    if model.budget_decision is not None:
        typer.echo(f"hobbit: {model.budget_decision.reason}", err=True)
    return model


def expert_summary(report: dict[str, Any]) -> str:
    """The one-line human summary of the expert cache counters (on the GPU tier, hits are VRAM
    hits and loads are copies from the host tier)."""
    gpu = report.get("tier") == 1
    moved = "copied to VRAM" if gpu else "loaded"
    line = (f"experts: {report['routes_total']} routes | hits hi {report['hits_hi']} "
            f"lo {report['hits_lo']} | loads hi {report['loads_hi']} lo {report['loads_lo']} | "
            f"skipped {report['skipped']} | {report['bytes_loaded'] / 2**20:.1f} MiB {moved}, "
            f"{report['load_stall_ms']:.0f} ms stalled | cache peak "
            f"{report['expert_cache_peak_bytes'] / 2**20:.1f} of "
            f"{report['expert_budget_bytes'] / 2**20:.1f} MiB")
    if gpu:
        line += (f" VRAM | host tier {report['host_tier_bytes'] / 2**20:.1f} MiB pinned, "
                 f"{report['bytes_read'] / 2**20:.1f} MiB read from the file | computed on the CPU: "
                 f"hi {report['cpu_hi']} lo {report['cpu_lo']}")
        if report.get("unified_memory"):
            line += " | unified memory (the GPU reads the slots in host RAM)"
        if report.get("experts_resident"):
            line += " | every expert resident in VRAM (placed once at load)"
    return line


def write_route_trace(model: Model, path: Path, out: Path) -> None:
    """Drain the engine's route record into a trace file (written whole or not at all)."""
    from hobbit_py import capi  # noqa: PLC0415
    from hobbit_py.trace import from_engine, write_trace  # noqa: PLC0415

    records, dropped = capi.trace_read(model.model)
    capi.trace_enable(model.model, False)
    summary = model.summary
    events = from_engine(records, model.generation_stats.prompt_tokens)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        write_trace(tmp, events, {"model": path.name, "n_layer": summary.n_layer,
                                  "n_expert": summary.n_expert, "n_expert_used": summary.n_expert_used,
                                  "dropped": dropped})
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise HobbitError(f"cannot write {out}: {exc.strerror}") from None
    typer.echo(f"hobbit: trace of {len(events)} routes written to {out}", err=True)


# --- commands --------------------------------------------------------------------------------

@app.command()
def run(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Text to continue.",
                                               show_default=False)] = None,
    n_predict: Annotated[int, typer.Option("-n", "--n-predict", min=1,
                                           help="Maximum number of tokens to generate.")] = 128,
    temp: TempOpt = 0.0,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    n_ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    trace: Annotated[Path | None, typer.Option(
        "--trace", help="Record what every route got (hit or load at hi or lo, skip, "
                        "prefetched) to this file, JSON lines; draw it with 'hobbit plot'.",
        show_default=False)] = None,
    stats_json: Annotated[Path | None, typer.Option(
        help="Also write the run's statistics as JSON to this file.", show_default=False)] = None,
    expert_budget: BudgetOpt = "auto",
    policy: PolicyOpt = "hobbit",
    hi_threshold: HiOpt = Policy.hi_threshold,
    skip_threshold: SkipOpt = Policy.skip_threshold,
    upgrade_threshold: UpgradeOpt = Policy.upgrade_threshold,
    hi_type: HiTypeOpt = None,
    lo_type: LoTypeOpt = None,
    direct_io: DirectOpt = Policy.direct_io,
    prefetch_depth: PrefetchOpt = "auto",
    prefetch_width: PrefetchWidthOpt = 0,
    io_threads: IoThreadsOpt = 4,
    cpu_compute: CpuComputeOpt = True,
    evict_weights: EvictWeightsOpt = None,
) -> None:
    """Generate text from MODEL, streaming it to stdout, with speed statistics on stderr.

    With an expert budget the routed experts live in the file and an expert cache of that
    size serves them: hits use the cached copy, misses load a hi or lo copy by gating weight.

    Example: hobbit run -m model.gguf -p "The cache holds" -n 64 --expert-budget 25%
    """
    path = resolve_model(model, model_opt)
    if prompt is None:
        raise HobbitError("no prompt given: -p TEXT")
    pol = make_policy(expert_budget, policy, hi_threshold, skip_threshold, upgrade_threshold,
                      direct_io, hi_type, lo_type, prefetch_depth=prefetch_depth, prefetch_width=prefetch_width,
                      io_threads=io_threads, evict_weights=evict_weights, cpu_compute=cpu_compute)
    with load_model(path, pol, threads=threads, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                    seed=seed) as m:
        if trace is not None:
            if not m.hobbit_active:
                raise HobbitError("--trace records the expert cache, which is off for this run "
                                  "(the model fits in memory, or --expert-budget off)")
            from hobbit_py import capi  # noqa: PLC0415

            capi.trace_enable(m.model, True)
        typer.echo(prompt, nl=False)
        for piece in m.stream_text(prompt, max_tokens=n_predict, temp=temp):
            typer.echo(piece, nl=False)
            sys.stdout.flush()
        typer.echo()
        if trace is not None:
            write_route_trace(m, path, trace)
        stats = m.generation_stats
        typer.echo(
            f"prefill: {stats.prompt_tokens} tokens, {stats.prefill_tokens_per_s:.1f} tok/s | "
            f"decode: {stats.tokens_generated} tokens, {stats.decode_tokens_per_s:.1f} tok/s",
            err=True,
        )
        report = m.hobbit_stats()
        active = m.hobbit_active
        if active:
            typer.echo(expert_summary(report), err=True)
        if stats_json is not None:
            write_json_atomic(stats_json, {"model": str(path), "policy": pol.policy
                                           if active else "off", **report})


@app.command()
def chat(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    system: Annotated[str | None, typer.Option(
        "--system", help="A system message to start the conversation with.",
        show_default=False)] = None,
    n_predict: Annotated[int, typer.Option("-n", "--n-predict", min=1,
                                           help="Maximum tokens per reply.")] = 256,
    temp: TempOpt = 0.0,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    n_ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    expert_budget: BudgetOpt = "auto",
    policy: PolicyOpt = "hobbit",
    hi_threshold: HiOpt = Policy.hi_threshold,
    skip_threshold: SkipOpt = Policy.skip_threshold,
    upgrade_threshold: UpgradeOpt = Policy.upgrade_threshold,
    hi_type: HiTypeOpt = None,
    lo_type: LoTypeOpt = None,
    direct_io: DirectOpt = Policy.direct_io,
    prefetch_depth: PrefetchOpt = "auto",
    prefetch_width: PrefetchWidthOpt = 0,
    io_threads: IoThreadsOpt = 4,
    cpu_compute: CpuComputeOpt = True,
    evict_weights: EvictWeightsOpt = None,
) -> None:
    """Chat with MODEL: each line you type is a user turn; replies stream as they come.

    The model's own chat template formats the conversation; a model without one gets a plain
    "User: / Assistant:" template (said on stderr). The whole conversation is kept; /exit,
    /quit or the end of input ends it.

    Example: hobbit chat model.gguf --system "You answer in one sentence."
    """
    from hobbit_py.chat import chat_loop  # noqa: PLC0415

    path = resolve_model(model, model_opt)
    pol = make_policy(expert_budget, policy, hi_threshold, skip_threshold, upgrade_threshold,
                      direct_io, hi_type, lo_type, prefetch_depth=prefetch_depth, prefetch_width=prefetch_width,
                      io_threads=io_threads, evict_weights=evict_weights, cpu_compute=cpu_compute)
    with load_model(path, pol, threads=threads, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                    seed=seed) as m:
        if m.plain_chat_template:
            typer.echo("hobbit: the model has no chat template; using a plain "
                       "'User: ... / Assistant: ...' template", err=True)
        chat_loop(m, sys.stdin, sys.stdout, system=system, max_tokens=n_predict, temp=temp,
                  prompt_to=sys.stderr if sys.stdin.isatty() else None)


@app.command()
def serve(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
    alias: Annotated[str | None, typer.Option(
        "--alias", help="Model name the API reports (default: the file name).",
        show_default=False)] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="HOBBIT_API_KEY", help="Require this bearer token.",
        show_default=False)] = None,
    threads: ThreadsOpt = None,
    n_ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    seed: SeedOpt = 0,
    expert_budget: BudgetOpt = "auto",
    policy: PolicyOpt = "hobbit",
    hi_threshold: HiOpt = Policy.hi_threshold,
    skip_threshold: SkipOpt = Policy.skip_threshold,
    upgrade_threshold: UpgradeOpt = Policy.upgrade_threshold,
    hi_type: HiTypeOpt = None,
    lo_type: LoTypeOpt = None,
    direct_io: DirectOpt = Policy.direct_io,
    prefetch_depth: PrefetchOpt = "auto",
    prefetch_width: PrefetchWidthOpt = 0,
    io_threads: IoThreadsOpt = 4,
    cpu_compute: CpuComputeOpt = True,
    evict_weights: EvictWeightsOpt = None,
) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API (llama-cpp-python's server).

    Endpoints: /v1/chat/completions and /v1/completions (streaming or not), /v1/models, and
    /hobbit/stats (the expert cache's live counters). Requests run one at a time.

    Example: hobbit serve model.gguf --port 8080 --expert-budget 25%
    """
    from hobbit_py.serve import ServerConfig, serve_forever  # noqa: PLC0415

    path = resolve_model(model, model_opt)
    pol = make_policy(expert_budget, policy, hi_threshold, skip_threshold, upgrade_threshold,
                      direct_io, hi_type, lo_type, prefetch_depth=prefetch_depth, prefetch_width=prefetch_width,
                      io_threads=io_threads, evict_weights=evict_weights, cpu_compute=cpu_compute)
    config = ServerConfig(model=path, policy=pol, alias=alias or path.name, host=host, port=port,
                          api_key=api_key, model_kwargs={
                              "n_ctx": n_ctx, "n_threads": threads, "n_threads_batch": threads,
                              "n_gpu_layers": n_gpu_layers, "seed": seed})
    serve_forever(config, log=lambda msg: typer.echo(f"hobbit: {msg}", err=True))


@app.command("eval")
def eval_cmd(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    text: Annotated[Path | None, typer.Option(
        help="Plain-text file to score (default: the held-out slice in data/heldout.txt).",
        show_default=False)] = None,
    n_ctx: Annotated[int, typer.Option("--ctx-size", "-c", min=16,
                                       help="Tokens per scored window.")] = 256,
    max_tokens: Annotated[int | None, typer.Option(
        min=16, help="Score at most this many tokens of the text.", show_default=False)] = None,
    batch: Annotated[int, typer.Option(
        min=1, help="Tokens per llama.cpp batch: 1 scores decoding (the policy decides per "
                    "token), larger scores prefill.")] = 1,
    threads: ThreadsOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    expert_budget: Annotated[str | None, typer.Option(
        "--expert-budget", help="The budget to score (bytes, a percentage or auto).",
        show_default=False)] = None,
    policy: PolicyOpt = "hobbit",
    hi_threshold: HiOpt = Policy.hi_threshold,
    skip_threshold: SkipOpt = Policy.skip_threshold,
    upgrade_threshold: UpgradeOpt = Policy.upgrade_threshold,
    hi_type: HiTypeOpt = None,
    lo_type: LoTypeOpt = None,
    prefetch_depth: PrefetchOpt = "auto",
    prefetch_width: PrefetchWidthOpt = 0,
    io_threads: IoThreadsOpt = 4,
    cpu_compute: CpuComputeOpt = True,
    evict_weights: EvictWeightsOpt = None,
) -> None:
    """Score a policy against the all-hi reference of the same file.

    Reports perplexity, mean KL divergence of the next-token distributions against the
    reference (HOBBIT off: every expert at the file's highest level), and top-1 agreement.

    With -ngl both run with that many layers on the GPU (the reference is then stock llama.cpp
    there, and the budget is VRAM).

    Example: hobbit eval model.gguf --expert-budget 25% --json
    """
    from hobbit_py.evaluate import default_text, evaluate  # noqa: PLC0415

    path = resolve_model(model, model_opt)
    pol = make_policy(expert_budget, policy, hi_threshold, skip_threshold, upgrade_threshold,
                      hi_type=hi_type, lo_type=lo_type, prefetch_depth=prefetch_depth, prefetch_width=prefetch_width,
                      io_threads=io_threads, evict_weights=evict_weights, cpu_compute=cpu_compute)
    text_path = text or default_text()
    if not text_path.is_file():
        raise HobbitError(f"text file not found: {text_path}")
    result = evaluate(path, pol, text_path.read_text(errors="replace"), n_ctx=n_ctx,
                      threads=threads, max_tokens=max_tokens, batch=batch, n_gpu_layers=n_gpu_layers)
    if json_out:
        typer.echo(json.dumps({"model": str(path), "text": str(text_path), "policy": pol.policy,
                               **result.as_dict()}, indent=2, sort_keys=True))
        return
    typer.echo(f"tokens scored       {result.tokens_scored}")
    typer.echo(f"perplexity          {result.perplexity:.4f} (all-hi {result.reference_perplexity:.4f})")
    typer.echo(f"KL vs all-hi        {result.kl_mean:.6f}")
    typer.echo(f"top-1 agreement     {result.top1_agreement:.4f}")


@app.command()
def bench(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    plain_hi: Annotated[Path | None, typer.Option(
        "--plain-hi", help="The same model as a plain GGUF at the hi precision (hobbit convert "
                           "--bits with the hi type only), for the stock llama.cpp baselines.",
        show_default=False)] = None,
    ablations: Annotated[bool, typer.Option(
        "--ablations", help="Also one row per other eviction rule (lru, lfu, fld, least-stale), "
                            "with the same prefetch.")] = False,
    static: Annotated[list[Path] | None, typer.Option(
        "--static", help="A uniform low-bit GGUF of the same model (hobbit convert --bits q4_k, "
                         "q3_k, q2_k), run on stock llama.cpp as B-static; repeatable.",
        show_default=False)] = None,
    budgets: Annotated[str, typer.Option(
        "--budgets", help="Comma-separated expert budgets to sweep (percentages of the hi "
                          "expert bytes or sizes), e.g. 10%,25%,50%,100%.")] = "25%",
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt before the decode.")] = (
        "The documentation explains how the database server stores tables on disk, and"),
    n_predict: Annotated[int, typer.Option("-n", "--n-predict", min=8,
                                           help="Tokens to decode per run.")] = 128,
    runs: Annotated[int, typer.Option(min=1, help="Runs per variant (median reported).")] = 3,
    threads: Annotated[int, typer.Option("--threads", "-t", min=1, help="CPU threads.")] = 2,
    eval_tokens: Annotated[int, typer.Option(
        min=64, help="Held-out tokens scored for the quality columns.")] = 1024,
    text: Annotated[Path | None, typer.Option(help="Held-out text (default data/heldout.txt).",
                                              show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        help="Markdown report to write (replaced if it exists); its JSON and Pareto plot go "
             "next to it. Default: a new hobbit-bench-YYYYMMDD-HHMMSS.md in the current "
             "directory.", show_default=False)] = None,
    plot: Annotated[bool, typer.Option(
        "--plot/--no-plot", help="Draw the speed/quality Pareto plot (needs matplotlib: "
                                 "pip install 'hobbit[plot]').")] = True,
    policy: PolicyOpt = "hobbit",
    hi_threshold: HiOpt = Policy.hi_threshold,
    skip_threshold: SkipOpt = Policy.skip_threshold,
    upgrade_threshold: UpgradeOpt = Policy.upgrade_threshold,
    hi_type: HiTypeOpt = None,
    lo_type: LoTypeOpt = None,
    direct_io: DirectOpt = Policy.direct_io,
    prefetch_depth: PrefetchOpt = "auto",
    prefetch_width: PrefetchWidthOpt = 0,
    io_threads: IoThreadsOpt = 4,
    cpu_compute: CpuComputeOpt = True,
    evict_weights: EvictWeightsOpt = None,
    n_gpu_layers: Annotated[int, typer.Option(
        "-ngl", "--n-gpu-layers", "--gpu-layers", min=-1,
        help="With every layer offloaded (-1, or at least the model's layers): the GPU tier's "
             "benchmark instead, by hobbit-gpu bench: B-resident, B-cpu-moe, B-n-cpu-moe, B-lru-gpu "
             "and HOBBIT-gpu rows at each of --budgets (percentages of the hi expert bytes, in VRAM), "
             "with the engine's defaults; --plain-hi defaults to the model itself.")] = 0,
) -> None:
    """Benchmark HOBBIT against stock llama.cpp, a hi-only LRU cache and static low-bit quants.

    Per budget, each variant in a fresh process, interleaved, median of --runs: B-mmap
    (stock, mmap, memory capped to non-expert bytes + budget + overhead), B-lru (our cache,
    hi only, LRU) and HOBBIT (mixed precision), under the same cap. Once: B-resident (stock,
    all in RAM, the ceiling) and B-static (stock on each --static file, all in RAM; its row
    says whether it fits each budget's cap). The cap is a cgroup v2 child, a systemd scope
    (systemd-run --scope -p MemoryMax) or a cgroup v1, whichever the machine allows; with none
    the variants run uncapped and the report says so. The page cache is dropped before each
    run where allowed (root). Quality (perplexity, KL and top-1 against the all-hi model) on
    the held-out text, for every variant.

    Example: hobbit bench model.gguf --plain-hi hi.gguf --static q4k.gguf --budgets 10%,25%,50%

    With -ngl 99 (every layer on the GPU), the GPU tier's benchmark (see -ngl).

    Example: hobbit bench wide.gguf -ngl 99 --budgets 25% -t 16
    """
    import shlex  # noqa: PLC0415

    from hobbit_py.bench import BenchSpec, run_bench  # noqa: PLC0415
    from hobbit_py.evaluate import default_text  # noqa: PLC0415

    path = resolve_model(model, model_opt)
    command = "hobbit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if n_gpu_layers != 0:
        bench_gpu_cmd(path, plain_hi or path, budgets, n_predict=n_predict, runs=runs, threads=threads,
                      n_gpu_layers=n_gpu_layers, out=out, command=command,
                      cpu_only_options=bool(static) or ablations)
        return
    if plain_hi is None:
        raise HobbitError("bench needs --plain-hi: the same model as a plain GGUF at the hi "
                          "precision, for the stock llama.cpp baselines")
    pol = make_policy("off", policy, hi_threshold, skip_threshold, upgrade_threshold,
                      direct_io, hi_type, lo_type, prefetch_depth=prefetch_depth, prefetch_width=prefetch_width,
                      io_threads=io_threads, evict_weights=evict_weights, cpu_compute=cpu_compute)
    text_path = text or default_text()
    if not text_path.is_file():
        raise HobbitError(f"text file not found: {text_path}")
    budget_list = parse_budgets(budgets)
    if plot:
        from hobbit_py.plots import require_matplotlib  # noqa: PLC0415

        require_matplotlib()
    report = report_path(out)
    spec = BenchSpec(model=path, plain_hi=plain_hi, static=list(static or []), budgets=budget_list,
                     policy=pol, prompt=prompt, n_predict=n_predict, runs=runs, threads=threads,
                     text=text_path.read_text(errors="replace"), eval_tokens=eval_tokens,
                     command=command,
                     ablations=ablations)
    result = run_bench(spec, progress=lambda msg: typer.echo(msg, err=True))
    from hobbit_py.bench import to_markdown  # noqa: PLC0415

    png = report.with_suffix(".png") if plot else None
    if png is not None:
        from hobbit_py.plots import pareto_plot  # noqa: PLC0415

        pareto_plot(result, png)
    write_json_atomic(report.with_suffix(".json"), result.as_dict())
    section = to_markdown(result, png.name if png else None)
    write_text_atomic(report, section)
    typer.echo(section)
    typer.echo(f"report: {report}" + (f", plot: {png}" if png else ""), err=True)


def parse_budgets(budgets: str) -> list[str]:
    """--budgets as its comma-separated entries (an empty list is an error)."""
    budget_list = [b.strip() for b in budgets.split(",") if b.strip()]
    if not budget_list:
        raise HobbitError("--budgets is empty")
    return budget_list


def bench_gpu_cmd(path: Path, plain_hi: Path, budgets: str, *, n_predict: int, runs: int, threads: int,
                  n_gpu_layers: int, out: Path | None, command: str, cpu_only_options: bool) -> None:
    """`hobbit bench -ngl N`: hobbit-gpu bench at each budget, written to the report."""
    import platform  # noqa: PLC0415

    from hobbit_py import capi  # noqa: PLC0415
    from hobbit_py.bench_gpu import budget_fraction, offloads_every_layer, run_gpu_bench  # noqa: PLC0415
    from hobbit_py.gguf_check import inspect_model  # noqa: PLC0415

    if cpu_only_options:
        raise HobbitError("with -ngl, --static and --ablations do not apply: the GPU benchmark's "
                          "rows are fixed (csrc/tools/hobbit-gpu.cpp)")
    summary = inspect_model(path)
    if not offloads_every_layer(n_gpu_layers, summary.n_layer):
        raise HobbitError(f"the GPU benchmark offloads every layer: -ngl {n_gpu_layers} keeps some of "
                          f"the {summary.n_layer} on the CPU (use -ngl 99 or -1)")
    budget_list = parse_budgets(budgets)
    fractions = [budget_fraction(b) for b in budget_list]  # each one checked before anything runs
    if capi.gpu_memory() is None:
        typer.echo("hobbit: warning: no GPU here: every row of the GPU benchmark runs on the CPU",
                   err=True)
    report = report_path(out)
    sections, device = run_gpu_bench(path, plain_hi, list(zip(budget_list, fractions)), n_predict=n_predict, runs=runs,
                                     threads=threads, progress=lambda msg: typer.echo(msg, err=True))
    text = (f"## GPU tier: {path.name}\n\n    {command}\n\nMachine: {device}; {os.cpu_count()} CPU threads "
            f"({platform.machine()}). Decode {n_predict} tokens by teacher forcing after the bench's "
            f"prompt, medians of {runs} run(s) (more than one: interleaved, a round over all the rows per run), "
            f"quality against B-resident.\n\n{sections}")
    write_text_atomic(report, text)
    typer.echo(text)
    typer.echo(f"report: {report}", err=True)


@app.command("plot")
def plot_cmd(
    trace: Annotated[Path, typer.Argument(help="A trace file (JSON lines) written by "
                                               "'hobbit run --trace'.", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="PNG to write (default: the trace's name with .png).",
        show_default=False)] = None,
) -> None:
    """Draw the expert cache over a generation: a heat map of what each route got.

    One row per (layer, expert), one column per token; the colour says whether the route
    hit a hi or lo copy, loaded one, was skipped, or hit a prefetched copy. Below it, the
    outcome counts per token.
    """
    from hobbit_py.plots import require_matplotlib, trace_heatmap  # noqa: PLC0415
    from hobbit_py.trace import read_trace  # noqa: PLC0415

    require_matplotlib()
    events = read_trace(trace)
    png = out or trace.with_suffix(".png")
    trace_heatmap(events, png, title=trace.name)
    typer.echo(f"wrote {png}")


def report_path(out: Path | None) -> Path:
    """`out`, or a new dated file name in the current directory that nothing holds yet."""
    if out is not None:
        if out.is_dir():
            raise HobbitError(f"--out {out} is a directory; give a file name")
        return out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 100):
        path = Path(f"hobbit-bench-{stamp}{'' if n == 1 else f'-{n}'}.md")
        if not any(path.with_suffix(s).exists() for s in (".md", ".json", ".png")):
            return path
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
