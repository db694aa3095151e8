"""Indexing primitives: `gather` along one axis and its transpose `scatter_add`."""
from __future__ import annotations

import numpy as np

from ..types import TensorType
from .registry import INDEXING, OpError, per_input, register


def _check_index(name: str, idx: TensorType) -> None:
    if not idx.dtype.is_integer:
        raise OpError(f"{name}: expected an integer index tensor, got {idx}")


def _gathered_shape(x_shape, idx_shape, axis):
    return tuple(x_shape[:axis]) + tuple(idx_shape) + tuple(x_shape[axis + 1:])


def _gather_rule(x: TensorType, idx: TensorType, *, axis: int) -> TensorType:
    _check_index("gather", idx)
    if not 0 <= axis < x.ndim:
        raise OpError(f"gather: axis {axis} out of range for {x}")
    return TensorType(_gathered_shape(x.shape, idx.shape, axis), x.dtype)


def _in_range(idx: np.ndarray, size: int) -> np.ndarray:
    return (idx >= 0) & (idx < size)


def _gather_impl(x, idx, *, axis):
    # total, as generated code runs it: an index outside [0, size) reads 0 (the frontend
    # raises the user's error for such indices before, or after a compiled call)
    size = x.shape[axis]
    ok = _in_range(idx, size)
    if ok.all():
        return np.take(x, idx, axis=axis)
    out = np.take(x, np.where(ok, idx, 0), axis=axis)
    mask = ok.reshape((1,) * axis + ok.shape + (1,) * (x.ndim - axis - 1))
    return np.where(mask, out, np.zeros((), x.dtype))


def _scatter_rule(base: TensorType, idx: TensorType, src: TensorType, *, axis) -> TensorType:
    _check_index("scatter_add", idx)
    want = _gathered_shape(base.shape, idx.shape, axis) if 0 <= axis < base.ndim else None
    if want != src.shape or base.dtype != src.dtype:
        raise OpError(f"scatter_add: expected updates of type "
                      f"{TensorType(want, base.dtype) if want else '?'} for base {base} and "
                      f"index {idx} on axis {axis}, got {src}")
    return base


def _scatter_impl(base, idx, src, *, axis):
    # total, as generated code runs it: an update at an index outside [0, size) is dropped
    out = np.array(base, copy=True)
    ok = _in_range(idx, base.shape[axis])
    if not ok.all():
        mask = ok.reshape((1,) * axis + ok.shape + (1,) * (src.ndim - axis - ok.ndim))
        src = np.where(mask, src, np.zeros((), src.dtype))
        idx = np.where(ok, idx, 0)
    np.add.at(out, (slice(None),) * axis + (idx,), src)
    return out


register("gather", INDEXING, 2, _gather_rule, _gather_impl,
         per_input(lambda b, g, out, x, idx, *, axis:
                   b.scatter_add(b.zeros_like(x), idx, g, axis=axis), None),
         "take x's slices at positions idx along attrs.axis (numpy.take; outside the axis: 0)")
register("scatter_add", INDEXING, 3, _scatter_rule, _scatter_impl,
         per_input(lambda b, g, out, base, idx, src, *, axis: g,
                   None,
                   lambda b, g, out, base, idx, src, *, axis: b.gather(g, idx, axis=axis)),
         "base with src added at positions idx along attrs.axis (repeats accumulate; "
         "positions outside the axis are dropped)")
