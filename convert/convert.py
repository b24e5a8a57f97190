"""`hobbit convert`: HF checkpoint, hub repo or GGUF in; multi-precision GGUF out.

Output format (what the runtime reads):
- `hobbit.format_version` (uint32 1), `hobbit.expert_types` (requested type names, highest
  precision first), `general.alignment` 4096;
- level 0 of each routed expert tensor keeps its standard name, so the standard tensors form
  a plain model at the highest precision; level i >= 1 is `blk.N.ffn_X_exps.<type>.weight`
  with the same shape (its ggml type may be a shape fallback, reported by the converter);
- with one precision the file is a plain GGUF that stock llama.cpp loads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gguf
from gguf import GGUFReader, GGUFWriter

from hobbit_py._lib import HobbitError

from . import ggml, hf, source
from .plan import TensorPlan, plan_tensor
from .qtypes import QType, parse_bits, parse_type, qtype
from .ui import UI, QuietUI
from .write import FULL_ERRNOS, StreamWriter, copy_kv, output_error

FORMAT_VERSION = 1
#: keys of the source that the output sets itself (or must not carry over)
_OWN_KEYS = ("general.alignment", "general.file_type", "general.quantization_version")


@dataclass
class Report:
    """What a conversion did, for the summary the CLI prints."""

    output: Path
    levels: list[QType]
    width_notes: list[str]
    base: QType
    file_bytes: int = 0
    resident_bytes: int = 0
    level_bytes: list[int] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def default_output(name: str, levels: list[QType], directory: Path | None = None) -> Path:
    """`<src name>-hobbit-<types>.gguf` in `directory` (the current directory by default)."""
    return (directory or Path.cwd()) / f"{name}-hobbit-{'-'.join(t.name for t in levels)}.gguf"


def file_type_for(t: QType) -> int | None:
    """general.file_type for a file whose bulk is of type `t` (None when there is no such ftype)."""
    members = gguf.LlamaFileType.__members__
    for cand in ("ALL_" + t.name.upper(), "MOSTLY_" + t.name.upper(), "MOSTLY_" + t.name.upper() + "_S",
                 "MOSTLY_" + t.name.upper() + "_MOE"):
        if cand in members:
            return int(members[cand])
    return None


def _check_output(out: Path, force: bool) -> None:
    if out.suffix.lower() != ".gguf":
        raise HobbitError(f"output file must end in .gguf: {out}")
    if out.is_dir():
        raise HobbitError(f"output is a directory: {out}")
    if out.exists() and not force:
        raise HobbitError(f"{out} exists; pass --force to overwrite it")
    parent = out.parent
    if not parent.is_dir():
        raise HobbitError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HobbitError(f"cannot write to {parent}: permission denied")


@contextlib.contextmanager
def _temp_file(directory: Path, prefix: str, suffix: str) -> Iterator[Path]:
    """A temp file in `directory`, removed on exit unless it was renamed away."""
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    except OSError as e:
        raise output_error(e, directory / (prefix + "*" + suffix)) from None
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished file into place; without --force never replace an existing file."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    try:
        if force:
            os.replace(tmp, out)
        else:
            os.link(tmp, out)  # fails if `out` appeared meanwhile
            tmp.unlink()
    except FileExistsError:
        raise HobbitError(f"{out} exists; pass --force to overwrite it") from None
    except OSError as e:
        if e.errno in (1, 38, 95):  # EPERM/ENOSYS/EOPNOTSUPP: no hard links here
            if out.exists():
                raise HobbitError(f"{out} exists; pass --force to overwrite it") from None
            os.replace(tmp, out)
        else:
            raise output_error(e, out) from None


def convert(src: str, bits: str, output: Path | None = None, *, base_type: str | None = None,
            hf_token: str | None = None, force: bool = False, threads: int | None = None,
            verbose: bool = False, ui: UI | None = None) -> Report:
    """Convert SRC into a multi-precision GGUF; see the module docstring for the format."""
    ui = ui or QuietUI()
    started = time.monotonic()
    g = ggml.load()
    levels, notes = parse_bits(g, bits)
    base = parse_type(g, base_type, "--base-type")[0] if base_type else levels[0]
    path = source.resolve(src, hf_token)
    with contextlib.ExitStack() as stack:
        if path.is_dir():
            ck: source.HFCheckpoint | None = source.check_hf_dir(path, hf.supported_architectures())
            name = path.name if Path(src).expanduser().exists() else src.rstrip("/").split("/")[-1]
        else:
            ck = None
            reader = source.open_gguf(path)
            stack.callback(_close_reader, reader)
            name = path.stem
        out = (output.expanduser() if output else default_output(name, levels)).absolute()
        _check_output(out, force)
        report = Report(out, levels, notes, base)

        tmp = stack.enter_context(_temp_file(out.parent, f".{out.name}.", ".tmp"))
        if ck is not None:
            inter = stack.enter_context(_temp_file(out.parent, f".{out.name}.", f".{ck.outtype}.gguf"))
            ui.step(f"converting {path} ({ck.architecture}) to {ck.outtype} with convert_hf_to_gguf.py")
            with ui.task(f"HF -> GGUF {ck.outtype}", 0, None) as t:
                _run_hf(ck, inter, ui, t, verbose)
            reader = source.open_gguf(inter)
            stack.callback(_close_reader, reader)
        arch = source.gguf_arch(reader, path)
        source.require_experts(reader, arch, name if ck else str(path))
        if reader.get_field("hobbit.format_version") is not None:
            raise HobbitError(f"{path} is already a HOBBIT multi-precision file; convert from the original")

        plans = _plan(g, reader, levels, base, arch)
        _check_sources(g, plans, ui)
        report.fallbacks = _fallbacks(plans)
        report.notes += _notes(plans, base)
        w = StreamWriter(g, reader, plans, tmp, threads or os.cpu_count() or 1)
        w.layout()
        ui.step(f"writing {sum(len(p.outs) for p in plans)} tensors "
                f"({', '.join(t.name for t in levels)}) to {out}")
        with ui.task("quantising", w.total_bytes, len(plans)) as t:
            w.write(arch, lambda wr: _set_kv(reader, wr, levels), t.advance, lambda _n: t.tensor_done())
        _publish(tmp, out, force)

    report.file_bytes = out.stat().st_size
    report.resident_bytes = sum(w.placed[p.name].nbytes for p in plans if not p.expert)
    report.level_bytes = [sum(w.placed[p.outs[i][0]].nbytes for p in plans if p.expert)
                          for i in range(len(levels))]
    report.seconds = time.monotonic() - started
    return report


def _notes(plans: list[TensorPlan], base: QType) -> list[str]:
    """Where llama-quantize's output-tensor rule put a tensor above the base type."""
    return [f"{p.name} at {p.outs[0][1].name}, not {base.name} (llama-quantize's rule for the "
            "output tensor)" for p in plans
            if not p.expert and p.outs[0][1].id not in (base.id, p.src_type.id)]


def _run_hf(ck: source.HFCheckpoint, inter: Path, ui: UI, task: object, verbose: bool) -> None:
    try:
        hf.convert_hf(ck.path, inter, ck.outtype, warn=ui.warn, on_total=task.total,  # type: ignore[attr-defined]
                      on_bytes=task.advance, verbose=verbose)  # type: ignore[attr-defined]
    except HobbitError:
        raise
    except OSError as e:
        if e.errno in FULL_ERRNOS or (e.filename and Path(e.filename) == inter):
            raise output_error(e, inter) from None
        if e.errno is None and re.fullmatch(r"\d+ requested and \d+ written", str(e)):
            # numpy's tofile() reports a short write without errno: the disk filled up
            raise output_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), inter) from None
        raise HobbitError(f"convert_hf_to_gguf.py failed on {ck.path}: {e}") from None
    except (Exception, SystemExit) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise HobbitError(f"convert_hf_to_gguf.py failed on {ck.path}: {type(e).__name__}"
                          + (f": {msg}" if msg else "")) from None


def _close_reader(reader: GGUFReader) -> None:
    mm = getattr(reader.data, "_mmap", None)
    with contextlib.suppress(Exception):
        if mm is not None:
            mm.close()


def _plan(g: ggml.Ggml, reader: GGUFReader, levels: list[QType], base: QType, arch: str) -> list[TensorPlan]:
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    plans = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in t.shape)
        plans.append(plan_tensor(g, t.name, shape, int(t.tensor_type), levels, base, arch, tied))
    return plans


def _check_sources(g: ggml.Ggml, plans: list[TensorPlan], ui: UI) -> None:
    """Refuse sources ggml cannot read; warn where an already-quantised source is requantised."""
    requant: dict[str, set[str]] = defaultdict(set)
    for p in plans:
        converts = [t for _, _, t in p.outs if t.id != p.src_type.id]
        if not converts:
            continue
        if not g.can_dequantize(p.src_type.id):
            raise HobbitError(f"cannot convert {p.name}: ggml cannot read its type {p.src_type.name}")
        if g.is_quantized(p.src_type.id):
            for t in converts:
                requant[p.src_type.name].add(t.name)
    for src_t, dst in sorted(requant.items()):
        up = sorted(d for d in dst if qtype(g, d).bpw >= qtype(g, src_t).bpw)
        msg = (f"the source is already quantised ({src_t}); requantising it to {', '.join(sorted(dst))} "
               "adds a second rounding error on top of the first")
        if up:
            msg += f", and {', '.join(up)} copies cost more bytes without restoring any precision"
        ui.warn(msg + "; convert from an F16/BF16/F32 source for best quality")


def _fallbacks(plans: list[TensorPlan]) -> list[str]:
    """One line per (requested, written, tensor kind) where a shape forced another type."""
    groups: dict[tuple[str, str, str, int], int] = defaultdict(int)
    for p in plans:
        for i, (_, req, got) in enumerate(p.outs):
            if req.id != got.id:
                kind = re.sub(r"^blk\.\d+\.", "blk.*.", p.name)
                role = f"expert level {i}" if p.expert else "non-expert"
                groups[(f"{role} {req.name}", got.name, kind, p.shape[0])] += 1
    return [f"{role}: {kind} ({n} tensor{'s' if n > 1 else ''}) written as {got} because rows of {cols} "
            f"values do not split into {role.split()[-1]} blocks"
            for (role, got, kind, cols), n in sorted(groups.items())]


def _set_kv(reader: GGUFReader, w: GGUFWriter, levels: list[QType]) -> None:
    skip = [f.name for f in reader.fields.values() if f.name.startswith("hobbit.")]
    copy_kv(reader, w, [*_OWN_KEYS, *skip])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    ft = file_type_for(levels[0])
    if ft is not None:
        w.add_file_type(ft)
    w.add_uint32("hobbit.format_version", FORMAT_VERSION)
    w.add_array("hobbit.expert_types", [t.name for t in levels])
