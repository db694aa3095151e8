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


def _extreme_rule(name: str):
    """reduce_max/reduce_min's type rule: a reduction over non-empty axes; `masked` (which
    gradient, see `_extreme_vjp`) does not change the type."""
    reduce_rule = _reduce_rule(name, needs_elements=True)

    def rule(x: TensorType, *, axes: tuple[int, ...], masked: bool = False) -> TensorType:
        return reduce_rule(x, axes=axes)
    return rule


def _kept_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def unreduce(b, v, shape: tuple[int, ...], axes: tuple[int, ...]):
    """Broadcast a reduced value back to the input shape it was reduced from."""
    return b.expand(b.reshape(v, shape=_kept_shape(shape, axes)), shape=shape)


def _sum_vjp(b, g, out, x, *, axes):
    return unreduce(b, g, b.type_of(x).shape, axes)


def _extreme_vjp(b, g, out, x, *, axes, masked: bool = False):
    """The gradient of a max (min) over `axes`, shared evenly by the elements equal to it.

    Default, PyTorch's amax/amin: (g / count) * (x == out), so a slice whose extreme is nan
    (x == out nowhere, count 0) gets a nan gradient everywhere, and so does a slice whose
    cotangent is nan (or an element off the extreme under an infinite one: inf * 0).
    `masked`, PyTorch's max()/min() (evenly_distribute_backward): g / count written where
    the elements equal the extreme, or are nan when it is nan, and 0 elsewhere."""
    shape = b.type_of(x).shape
    dtype = b.type_of(g).dtype.name
    wide = unreduce(b, out, shape, axes)
    hit = b.where(b.ne(wide, wide), b.ne(x, x), b.eq(x, wide)) if masked else b.eq(x, wide)
    count = b.reduce_sum(b.cast(hit, dtype=dtype), axes=axes)
    share = unreduce(b, b.div(g, count), shape, axes)
    if masked:
        return b.where(hit, share, b.zeros_like(x))
    return b.mul(share, b.cast(hit, dtype=dtype))


def _extreme_impl(fn):
    """A NumPy max or min over attrs.axes (`masked` only chooses the gradient)."""
    def impl(x, *, axes, masked: bool = False):
        return fn(x, axis=axes)
    return impl


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
         lambda x, *, axes: np.add.reduce(x, axis=axes, dtype=x.dtype), per_input(_sum_vjp),
         "sum over attrs.axes")
register("reduce_max", REDUCE, 1, _extreme_rule("reduce_max"), _extreme_impl(np.max),
         per_input(_extreme_vjp), "max over attrs.axes; attrs.masked: max()'s gradient, "
         "not amax's")
register("reduce_min", REDUCE, 1, _extreme_rule("reduce_min"), _extreme_impl(np.min),
         per_input(_extreme_vjp), "min over attrs.axes; attrs.masked: min()'s gradient, "
         "not amin's")
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
