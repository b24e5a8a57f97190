"""Page-cache residency of a file's bytes (mincore on a fresh mapping) and dropping them."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

import numpy as np

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
PAGE = mmap.PAGESIZE


def drop_from_page_cache(path: Path) -> None:
    """Write back and evict `path`'s pages (posix_fadvise DONTNEED)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_pages(path: Path) -> np.ndarray:
    """One bool per page of `path`: is it in the page cache now? Mapping a file touches no page."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            n_pages = (size + PAGE - 1) // PAGE
            vec = (ctypes.c_ubyte * n_pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return (np.frombuffer(vec, dtype=np.uint8) & 1).astype(bool)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def resident_fraction(path: Path, ranges: list[tuple[int, int]]) -> float:
    """Fraction of the whole pages inside the byte ranges [start, end) that are resident."""
    pages = resident_pages(path)
    inside = np.zeros(len(pages), dtype=bool)
    for start, end in ranges:
        inside[(start + PAGE - 1) // PAGE: end // PAGE] = True
    return float(pages[inside].mean()) if inside.any() else 0.0
