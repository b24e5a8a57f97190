"""The `convert` and `info` commands; `register(app)` adds them to hobbit's typer app."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from hobbit_py._lib import HobbitError
from hobbit_py.errors import EXIT_ERROR, EXIT_INTERRUPTED, one_line, print_error

F = TypeVar("F", bound=Callable[..., Any])

CONVERT_HELP = """\
Convert a MoE model into one multi-precision GGUF for HOBBIT.

SRC is a local Hugging Face checkpoint directory (config.json + safetensors, sharded or
not), a Hugging Face hub repo id such as Qwen/Qwen1.5-MoE-A2.7B (only *.safetensors, *.json
and tokenizer files are downloaded; with HF_HUB_OFFLINE=1 the local cache is used), or a
GGUF file (F32/F16/BF16 preferred; an already-quantised GGUF is requantised, with a warning,
which adds a second rounding error).

Every routed expert (`blk.N.ffn_{gate,up,down}_exps`) is stored once per precision in --bits.
The highest precision keeps the standard tensor names, so the file is also a plain model at
that precision; each lower one is stored as `blk.N.ffn_X_exps.<type>.weight`. All other
tensors (attention, embeddings, shared experts, routers, norms) are stored once, at the
highest precision or --base-type, following llama-quantize's rules: norms, routers
(ffn_gate_inp) and 1-D tensors stay as in the source, and output.weight is kept at q6_k
when the base type is a quantisation below q8_0. With a single precision the result is a
plain GGUF that stock llama.cpp loads.

HF checkpoints go through the pinned llama.cpp's convert_hf_to_gguf.py (an unquantised
F32/F16/BF16 intermediate, matching the checkpoint's dtype, is written next to the output
and deleted afterwards; it needs as much disk space as the checkpoint). Quantisation uses
ggml's own quantisers, so a tensor comes out byte for byte as llama-quantize writes it.

Examples:

  hobbit convert ./Mixtral-8x7B-v0.1 --bits 8,4

  hobbit convert Qwen/Qwen1.5-MoE-A2.7B --bits q8_0,q4_k,q2_k -o qwen-moe.gguf

  hobbit convert olmoe-f16.gguf --bits 4,2 --base-type q8_0
"""

INFO_HELP = """\
Show what a MoE GGUF holds: architecture, layers, experts per layer and per token, the
expert precisions present (with the ggml type each tensor really has, fallbacks included),
bytes of one expert (gate+up+down of one layer) at each precision, and the bytes that stay
resident (non-expert tensors) versus the bytes that can be offloaded (experts) per precision.

Works on HOBBIT multi-precision files and on plain MoE GGUFs (one precision: the file's
expert type).
"""

BITS_HELP = ("Comma-separated precisions for the routed experts: bit widths 2,3,4,5,6,8,16 "
             "(2=q2_k 3=q3_k 4=q4_k 5=q5_k 6=q6_k 8=q8_0 16=f16) or ggml type names (q4_k, q4_0, "
             "q5_0, q8_0, iq4_nl, iq4_xs, f16, bf16, ...). Types that need an importance matrix "
             "(iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq1_s, iq1_m) are refused. Where a tensor's row "
             "length does not fit a type's block (K-quants: multiples of 256; q4_0/q8_0/iq4_nl: "
             "32), llama-quantize's fallback is used (q4_k->q5_0, q5_k->q5_1, q6_k->q8_0, "
             "q2_k/q3_k->q4_0, iq*->iq4_nl; f16 if even that does not fit) and reported.")


def _one_line_errors(fn: F) -> F:
    """User errors become `hobbit: error: ...` on stderr and exit 1; no tracebacks unless HOBBIT_DEBUG."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(os.environ.get("HOBBIT_DEBUG"))
        try:
            return fn(*args, **kwargs)
        except HobbitError as e:
            if debug:
                raise
            print_error(str(e))
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except typer.Exit:
            raise
        except Exception as e:  # an internal error: still one line, the traceback on request
            if debug:
                raise
            msg = one_line(str(e))
            print_error(f"internal error: {type(e).__name__}{': ' + msg if msg else ''} "
                        "(set HOBBIT_DEBUG=1 for the traceback)")
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _terminate_as_exit(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # runs the cleanup that removes temp files


def convert_cmd(
    src: Annotated[str, typer.Argument(metavar="SRC", help="HF checkpoint directory, hub repo id, or GGUF file.",
                                       show_default=False)],
    bits: Annotated[str, typer.Option("--bits", "-b", help=BITS_HELP, show_default=False)],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output .gguf file. Default: <src name>-hobbit-<types joined by '-'>.gguf "
        "in the current directory, e.g. Mixtral-8x7B-v0.1-hobbit-q8_0-q4_k.gguf.",
        show_default=False)] = None,
    base_type: Annotated[str | None, typer.Option(
        "--base-type", help="Type of the non-expert tensors (a width or type name as in --bits). "
        "Default: the highest precision in --bits.", show_default=False)] = None,
    hf_token: Annotated[str | None, typer.Option(
        "--hf-token", envvar="HF_TOKEN", help="Hugging Face token for gated or private repos.",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite the output file if it exists.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", "-t", min=1,
                                                help="Quantisation threads. Default: all CPUs.",
                                                show_default=False)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show convert_hf_to_gguf.py's log.")] = False,
) -> None:
    from .convert import convert  # noqa: PLC0415
    from .info import human  # noqa: PLC0415
    from .ui import ConsoleUI  # noqa: PLC0415

    signal.signal(signal.SIGTERM, _terminate_as_exit)
    ui = ConsoleUI()
    r = convert(src, bits, output, base_type=base_type, hf_token=hf_token, force=force,
                threads=threads, verbose=verbose, ui=ui)
    print(f"wrote {r.output} ({human(r.file_bytes)}) in {r.seconds:.1f} s")
    for note in r.width_notes:
        print(f"  --bits        {note}")
    levels = ", ".join(f"{t.name} ({'standard names' if i == 0 else f'suffix .{t.name}.weight'})"
                       for i, t in enumerate(r.levels))
    print(f"  experts       {levels}")
    print(f"  non-expert    {r.base.name}: {human(r.resident_bytes)} resident")
    print("  offloadable   " + ", ".join(f"{t.name} {human(b)}" for t, b in zip(r.levels, r.level_bytes)))
    for line in r.fallbacks:
        print(f"  fallback      {line}")
    for note in r.notes:
        print(f"  note          {note}")


def info_cmd(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A .gguf file.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    from .info import read_info, render  # noqa: PLC0415

    info = read_info(file)
    print(json.dumps(info.to_json(), indent=2) if as_json else render(info))


def register(app: typer.Typer) -> None:
    """Add `convert` and `info` to hobbit's typer app."""
    app.command("convert", help=CONVERT_HELP, no_args_is_help=True)(_one_line_errors(convert_cmd))
    app.command("info", help=INFO_HELP, no_args_is_help=True)(_one_line_errors(info_cmd))


def main() -> None:
    """Stand-alone entry (python -m hobbit_convert) until hobbit_py.cli wires these in."""
    app = typer.Typer(add_completion=False, rich_markup_mode=None)
    register(app)
    app()


if __name__ == "__main__":
    main()
