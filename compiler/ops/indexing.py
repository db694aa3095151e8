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


def check_bounds(name: str, idx, size: int, axis: int) -> None:
    """Raise a clear error when an index is outside [0, size)."""
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise IndexError(f"{name}: index {bad} is out of range for axis {axis} of size {size}")


def _gather_impl(x, idx, *, axis):
    check_bounds("gather", idx, x.shape[axis], axis)
    return np.take(x, idx, axis=axis)


def _scatter_rule(base: TensorType, idx: TensorType, src: TensorType, *, axis) -> TensorType:
    _check_index("scatter_add", idx)
    want = _gathered_shape(base.shape, idx.shape, axis) if 0 <= axis < base.ndim else None
    if want != src.shape or base.dtype != src.dtype:
        raise OpError(f"scatter_add: expected updates of type "
                      f"{TensorType(want, base.dtype) if want else '?'} for base {base} and "
                      f"index {idx} on axis {axis}, got {src}")
    return base


def _scatter_impl(base, idx, src, *, axis):
    check_bounds("scatter_add", idx, base.shape[axis], axis)
    out = np.array(base, copy=True)
    np.add.at(out, (slice(None),) * axis + (idx,), src)
    return out


register("gather", INDEXING, 2, _gather_rule, _gather_impl,
         per_input(lambda b, g, out, x, idx, *, axis:
                   b.scatter_add(b.zeros_like(x), idx, g, axis=axis), None),
         "take x's slices at positions idx along attrs.axis (numpy.take)")
register("scatter_add", INDEXING, 3, _scatter_rule, _scatter_impl,
         per_input(lambda b, g, out, base, idx, src, *, axis: g,
                   None,
                   lambda b, g, out, base, idx, src, *, axis: b.gather(g, idx, axis=axis)),
         "base with src added at positions idx along attrs.axis (repeats accumulate)")
