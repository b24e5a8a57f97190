"""Stream a source GGUF into a multi-precision GGUF, one bounded chunk of rows at a time.

Layout: GGUFWriter writes header, key/values and tensor infos; the data section is then
preallocated (a full disk fails here, before any work) and every chunk of every output tensor
is `pwrite`n at its final offset. Each chunk of source rows is converted to F32 once and
quantised to every level, so peak memory is a few chunks per worker thread, whatever the
model size. Rows are independent in every ggml quantiser used without an importance matrix,
so chunking yields the very bytes llama-quantize writes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from hobbit_py._lib import HobbitError

from .ggml import BF16, F16, F32, Ggml
from .plan import TensorPlan

ALIGNMENT = 4096
CHUNK_FLOATS = 1 << 22  # 16 MiB of F32 per chunk of rows
FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@dataclass
class Placed:
    """An output tensor with its place in the data section."""

    name: str
    type_id: int
    shape: tuple[int, ...]  # ggml order
    nbytes: int
    offset: int = 0  # from the start of the data section


def output_error(e: OSError, path: Path) -> HobbitError:
    """A one-line error for a failed write to the output location."""
    if e.errno in FULL_ERRNOS:
        return HobbitError(f"output location is full: cannot write {path} ({e.strerror})")
    return HobbitError(f"cannot write {path}: {e.strerror or e}")


def copy_kv(reader: GGUFReader, writer: GGUFWriter, skip: Iterable[str]) -> None:
    """Copy every key/value of `reader` except `skip`, GGUF.* and general.architecture."""
    skipped = set(skip) | {"general.architecture"}
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name in skipped:
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        if vtype == GGUFValueType.ARRAY and len(f.types) > 2:
            raise HobbitError(f"cannot copy nested array metadata {f.name!r}")
        writer.add_key_value(f.name, f.contents(), vtype, sub_type=sub)


class StreamWriter:
    """Writes the planned tensors of one GGUF to `path` (a fresh temp file; truncated)."""

    def __init__(self, g: Ggml, reader: GGUFReader, plans: list[TensorPlan], path: Path,
                 threads: int) -> None:
        self.g, self.reader, self.plans, self.path = g, reader, plans, path
        self.threads = max(1, threads)
        self.placed: dict[str, Placed] = {}
        self.data_start = 0
        self.total_bytes = 0
        self._src = {t.name: t for t in reader.tensors}

    def layout(self) -> list[Placed]:
        """Place every output tensor, in plan order, each aligned to ALIGNMENT."""
        out: list[Placed] = []
        off = 0
        for p in self.plans:
            for name, _req, t in p.outs:
                nbytes = self.g.row_size(t.id, p.shape[0]) * p.nrows
                pl = Placed(name, t.id, p.shape, nbytes, off)
                off += GGUFWriter.ggml_pad(nbytes, ALIGNMENT)
                out.append(pl)
                self.placed[name] = pl
        self.total_bytes = sum(pl.nbytes for pl in out)
        return out

    def write(self, arch: str, set_kv: Callable[[GGUFWriter], None],
              on_bytes: Callable[[int], None], on_tensor: Callable[[str], None]) -> None:
        """Write the file; `set_kv` adds the metadata, the callbacks report progress."""
        placed = self.layout()
        w = GGUFWriter(None, arch)
        w.add_custom_alignment(ALIGNMENT)  # general.alignment: data section and tensors page-aligned
        set_kv(w)
        for pl in placed:
            w.add_tensor_info(pl.name, tuple(reversed(pl.shape)), np.dtype(np.float32), pl.nbytes,
                              raw_dtype=GGMLQuantizationType(pl.type_id))
        try:
            w.write_header_to_file(path=self.path)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            assert w.fout is not None
            fout = w.fout[0]
            fout.flush()
            self.data_start = GGUFWriter.ggml_pad(fout.tell(), ALIGNMENT)
            end = self.data_start + (placed[-1].offset + GGUFWriter.ggml_pad(placed[-1].nbytes, ALIGNMENT)
                                     if placed else 0)
            fd = fout.fileno()
            _preallocate(fd, end)
            self._write_data(fd, on_bytes, on_tensor)
            fout.flush()
            os.fsync(fd)
        except OSError as e:
            raise output_error(e, self.path) from None
        finally:
            w.close()

    def _src_bytes(self, p: TensorPlan) -> np.ndarray:
        """The source tensor's bytes (a view of the memory-mapped source file)."""
        t = self._src[p.name]
        return self.reader.data[t.data_offset: t.data_offset + t.n_bytes]

    def _write_data(self, fd: int, on_bytes: Callable[[int], None],
                    on_tensor: Callable[[str], None]) -> None:
        pending: list[Future[int]] = []
        with ThreadPoolExecutor(self.threads) as pool:
            for p in self.plans:
                src = self._src_bytes(p)
                if all(t.id == p.src_type.id for _, _, t in p.outs):
                    self._copy(fd, p, src, on_bytes)
                else:
                    ncols = p.shape[0]
                    rows = max(1, CHUNK_FLOATS // ncols)
                    for r0 in range(0, p.nrows, rows):
                        r1 = min(p.nrows, r0 + rows)
                        pending.append(pool.submit(self._convert_rows, fd, p, src, r0, r1))
                        # bound the memory in flight
                        while len(pending) > 2 * self.threads:
                            on_bytes(pending.pop(0).result())
                    for f in pending:
                        on_bytes(f.result())
                    pending.clear()
                on_tensor(p.name)

    def _copy(self, fd: int, p: TensorPlan, src: np.ndarray, on_bytes: Callable[[int], None]) -> None:
        """Tensors whose every output keeps the source type: plain byte copies (checked)."""
        step = CHUNK_FLOATS * 4
        whole = self.g.is_quantized(p.src_type.id)  # blocks must not be cut
        for o in range(0, len(src), len(src) if whole else step):
            require_finite_bytes(self.g, p.src_type.id, src[o: len(src) if whole else o + step], p.name)
        for name, _, _ in p.outs:
            base = self.data_start + self.placed[name].offset
            for o in range(0, len(src), step):
                chunk = src[o: o + step]
                _pwrite_all(fd, memoryview(chunk), base + o)
                on_bytes(len(chunk))

    def _convert_rows(self, fd: int, p: TensorPlan, src: np.ndarray, r0: int, r1: int) -> int:
        """Rows [r0, r1) of one tensor: to F32 once, then to every output type."""
        g, ncols, n = self.g, p.shape[0], (r1 - r0) * p.shape[0]
        srs = g.row_size(p.src_type.id, ncols)
        raw = src[r0 * srs: r1 * srs]
        if p.src_type.id == F32:
            f32 = raw.view(np.float32)
        else:
            f32 = np.empty(n, dtype=np.float32)
            g.to_f32(p.src_type.id, np.ascontiguousarray(raw), n, f32)
        require_finite(f32, p.name)
        written = 0
        for name, _, t in p.outs:
            drs = g.row_size(t.id, ncols)
            pos = self.data_start + self.placed[name].offset + r0 * drs
            if t.id == p.src_type.id:
                out = raw
            else:
                out = np.empty((r1 - r0) * drs, dtype=np.uint8)
                g.quantize(t.id, f32, r1 - r0, ncols, out)
            _pwrite_all(fd, memoryview(out), pos)
            written += len(out)
        return written


def require_finite(values: np.ndarray, name: str) -> None:
    """Refuse NaN or Inf weights, whatever the output type (F16/BF16/F32 would keep them)."""
    if not np.isfinite(values).all():
        raise HobbitError(f"tensor {name} has NaN or Inf values; refusing to convert it")


def require_finite_bytes(g: Ggml, type_id: int, raw: np.ndarray, name: str) -> None:
    """`require_finite` on raw bytes of a tensor of ggml type `type_id` that is copied as is."""
    if type_id == F32:
        require_finite(raw.view(np.float32), name)
    elif type_id == F16:
        require_finite(raw.view(np.float16), name)
    elif type_id == BF16:
        if ((raw.view(np.uint16) & 0x7F80) == 0x7F80).any():  # exponent all ones: Inf or NaN
            raise HobbitError(f"tensor {name} has NaN or Inf values; refusing to convert it")
    elif g.is_quantized(type_id):
        data = np.ascontiguousarray(raw)
        if not g.lib.ggml_validate_row_data(type_id, data.ctypes.data, len(data)):
            raise HobbitError(f"tensor {name} has invalid {g.type_name(type_id)} data (NaN or Inf?); "
                              "refusing to convert it")


def _preallocate(fd: int, size: int) -> None:
    """Reserve the whole file up front so a full disk fails now, not after an hour."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in FULL_ERRNOS:
            raise
        os.ftruncate(fd, size)  # filesystems without fallocate


def _pwrite_all(fd: int, buf: memoryview, pos: int) -> None:
    buf = buf.cast("B")
    while len(buf):
        n = os.pwrite(fd, buf, pos)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        buf, pos = buf[n:], pos + n
