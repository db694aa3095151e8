"""Recycled storage for the eager kernels' big arrays, so a training loop stops faulting pages.

A kernel's big arrays (im2col columns, padded inputs, products, outputs, gradients) are
allocated and freed once per step, and glibc gives freed blocks over its mmap threshold back
to the OS: the next step's array of the same size faults in every page again.  On the
development machine (a VM) a fault costs about 5 µs, so the spec CNN's step spent a third
of its time faulting (about 2,000 faults a step).  A process-wide `mallopt` would fix that
for everything, but is not a library's to set.

Here the kernels take such arrays from a small pool of buffers instead (`empty`, `zeros`,
`full`).  A buffer is handed out as a view of a private 1-d byte array that the pool keeps;
every view of it, and every view of those views, holds a reference to that byte array, so
its reference count says whether anything still uses it: a buffer whose count is the
pool's own is free, and `empty` hands it out again.  Nothing is returned by hand, so an
array taken from the pool is an ordinary array for whoever holds it (a tensor's data, a
gradient a leaf adopted, a backward's saved columns) and lives as long as they hold it.

The pool is bounded: buffers only for arrays of at least `MIN_BYTES`, at most `MAX_BYTES`
held in all (free buffers are dropped, least recently used first, to make room; when every
buffer is in use, a new array is an ordinary allocation).  `clear()` drops the free ones.
"""
from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np

MIN_BYTES = 1 << 16
"""Smaller arrays come from malloc's heap, which keeps them (well under the mmap threshold)."""
MAX_BYTES = 512 << 20
"""The most the pool holds, in use or free.  Past it a step's arrays fault in again (the
wider CNN of the benchmarks, batch 64 on 32x32 images, holds 125 MiB and ran 1.4x slower
under a 128 MiB cap); `clear()` gives the free ones back."""
_PAGE = 4096

_lock = threading.Lock()
_pools: OrderedDict[int, list[np.ndarray]] = OrderedDict()  # size class -> buffers (LRU)
_held = [0]  # bytes held in all buffers
_FREE_COUNT = 2  # a buffer's reference count when only the pool's list refers to it
                 # (as seen through sys.getrefcount: the list's reference and the argument)


def empty(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-contiguous array, from a free buffer of the pool when one fits."""
    dtype = np.dtype(dtype)
    count = 1
    for n in shape:
        count *= n
    nbytes = count * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    size = -(-nbytes // _PAGE) * _PAGE
    with _lock:
        buffers = _pools.get(size)
        if buffers is not None:
            _pools.move_to_end(size)
            for buf in buffers:
                if sys.getrefcount(buf) == _FREE_COUNT + 1:  # + 1: the loop's variable
                    return buf[:nbytes].view(dtype).reshape(shape)
        if _held[0] + size > MAX_BYTES and not _evict(size):
            return np.empty(shape, dtype)
        buf = np.empty(size, np.uint8)
        _pools.setdefault(size, []).append(buf)
        _held[0] += size
        return buf[:nbytes].view(dtype).reshape(shape)


def zeros(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """`empty` filled with zeros."""
    out = empty(shape, dtype)
    out.fill(0)
    return out


def full(shape: tuple[int, ...], fill: float, dtype: np.dtype | type) -> np.ndarray:
    """`empty` filled with `fill`."""
    out = empty(shape, dtype)
    out.fill(fill)
    return out


def clear() -> None:
    """Drop every free buffer (the ones in use stay until their holders let go)."""
    with _lock:
        for size in list(_pools):
            _drop_free(size, _held[0])


def held_bytes() -> int:
    """Bytes the pool holds now, in use or free."""
    return _held[0]


def _evict(size: int) -> bool:
    """Drop free buffers, least recently used size first, until `size` more bytes fit
    under MAX_BYTES; whether they do."""
    for key in list(_pools):
        if _held[0] + size <= MAX_BYTES:
            break
        _drop_free(key, _held[0] + size - MAX_BYTES)
    return _held[0] + size <= MAX_BYTES


def _drop_free(size: int, wanted: int) -> None:
    """Drop free buffers of one size class until `wanted` bytes are freed (or none is left)."""
    buffers = _pools[size]
    kept = []
    for buf in buffers:
        # free: the pool's list, `buffers`' loop variable and the argument
        if wanted > 0 and sys.getrefcount(buf) == _FREE_COUNT + 1:
            wanted -= size
            _held[0] -= size
            continue
        kept.append(buf)
    if kept:
        buffers[:] = kept
    else:
        del _pools[size]
