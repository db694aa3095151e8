"""Reduction primitives over a set of axes (the axes are removed; keepdim is a reshape)."""
from __future__ import annotations

import numpy as np

from ..types import TensorType, bool_, int64
from .registry import REDUCE, OpError, non_differentiable, per_input, register


def _check_axes(name: str, x: TensorType, axes: tuple[int, ...]) -> None:
    if any(not 0 <= a < x.ndim for a in axes) or len(set(axes)) != len(axes):
        raise OpError(f"{name}: axes {axes} are not distinct axes of a tensor of type {x}")
    if tuple(sorted(axes)) != tuple(axes):
        raise OpError(f"{name}: axes must be sorted, got {axes}")


def _reduce_rule(name: str, needs_elements: bool = False):
    def rule(x: TensorType, *, axes: tuple[int, ...]) -> TensorType:
        _check_axes(name, x, axes)
        if x.dtype == bool_:
            raise OpError(f"{name}: expected a numeric tensor, got {x}")
        if needs_elements and any(x.shape[a] == 0 for a in axes):
            raise OpError(f"{name}: cannot reduce over an empty axis of {x}")
        return TensorType(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)
    return rule


def _kept_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def unreduce(b, v, shape: tuple[int, ...], axes: tuple[int, ...]):
    """Broadcast a reduced value back to the input shape it was reduced from."""
    return b.expand(b.reshape(v, shape=_kept_shape(shape, axes)), shape=shape)


def _sum_vjp(b, g, out, x, *, axes):
    return unreduce(b, g, b.type_of(x).shape, axes)


def _extreme_vjp(b, g, out, x, *, axes):
    # PyTorch's evenly_distribute_backward (max()/min()): the gradient is shared evenly among
    # the elements equal to the extreme, or among the nans when the extreme is nan (x == out
    # holds nowhere then).  amax/amin's nan over such a slice is the frontend's business.
    shape = b.type_of(x).shape
    wide = unreduce(b, out, shape, axes)
    hit = b.where(b.ne(wide, wide), b.ne(x, x), b.eq(x, wide))
    count = b.reduce_sum(b.cast(hit, dtype=b.type_of(g).dtype.name), axes=axes)
    return b.where(hit, unreduce(b, b.div(g, count), shape, axes), b.zeros_like(x))


def _prod_vjp(b, g, out, x, *, axes):
    # d prod / dx_i = prod of the others; computed without dividing by zero:
    # no zero in the slice -> out / x; exactly one zero -> product of the non-zeros at that zero.
    shape = b.type_of(x).shape
    zero = b.zeros_like(x)
    one = b.full_like(x, 1.0)
    is_zero = b.eq(x, zero)
    prod_nonzero = b.reduce_prod(b.where(is_zero, one, x), axes=axes)
    zeros_in_slice = unreduce(b, b.reduce_sum(b.cast(is_zero, dtype=b.type_of(x).dtype.name),
                                              axes=axes), shape, axes)
    no_zero = b.div(unreduce(b, out, shape, axes), b.where(is_zero, one, x))
    lone_zero = b.where(b.logical_and(is_zero, b.eq(zeros_in_slice, one)),
                        unreduce(b, prod_nonzero, shape, axes), zero)
    d = b.where(b.eq(zeros_in_slice, zero), no_zero, lone_zero)
    return b.mul(d, unreduce(b, g, shape, axes))


register("reduce_sum", REDUCE, 1, _reduce_rule("reduce_sum"),
         lambda x, *, axes: np.sum(x, axis=axes, dtype=x.dtype), per_input(_sum_vjp),
         "sum over attrs.axes")
register("reduce_max", REDUCE, 1, _reduce_rule("reduce_max", True),
         lambda x, *, axes: np.max(x, axis=axes), per_input(_extreme_vjp), "max over attrs.axes")
register("reduce_min", REDUCE, 1, _reduce_rule("reduce_min", True),
         lambda x, *, axes: np.min(x, axis=axes), per_input(_extreme_vjp), "min over attrs.axes")
register("reduce_prod", REDUCE, 1, _reduce_rule("reduce_prod"),
         lambda x, *, axes: np.prod(x, axis=axes, dtype=x.dtype), per_input(_prod_vjp),
         "product over attrs.axes")


def _arg_rule(name: str):
    def rule(x: TensorType, *, axis: int) -> TensorType:
        _check_axes(name, x, (axis,))
        if x.shape[axis] == 0:
            raise OpError(f"{name}: cannot reduce an empty axis {axis} of {x}")
        return TensorType(tuple(d for i, d in enumerate(x.shape) if i != axis), int64)
    return rule


register("argmax", REDUCE, 1, _arg_rule("argmax"),
         lambda x, *, axis: np.argmax(x, axis=axis), non_differentiable,
         "index of the first maximum along attrs.axis")
register("argmin", REDUCE, 1, _arg_rule("argmin"),
         lambda x, *, axis: np.argmin(x, axis=axis), non_differentiable,
         "index of the first minimum along attrs.axis")
