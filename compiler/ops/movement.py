"""Movement primitives: reshape, permute, expand, slice, pad, concat.

Each VJP is another movement (or a reduction for `expand`), so gradients of layout changes never
materialise anything the forward did not.
"""
from __future__ import annotations

import numpy as np

from ..types import TensorType
from .registry import MOVEMENT, OpError, per_input, register


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _reshape_rule(x: TensorType, *, shape: tuple[int, ...]) -> TensorType:
    if any(d < 0 for d in shape) or _numel(shape) != x.numel:
        raise OpError(f"reshape: cannot view {x} as shape {tuple(shape)} "
                      f"({x.numel} elements vs {_numel(shape)})")
    return TensorType(tuple(shape), x.dtype)


register("reshape", MOVEMENT, 1, _reshape_rule,
         lambda x, *, shape: np.reshape(x, shape),
         per_input(lambda b, g, out, x, *, shape: b.reshape(g, shape=b.type_of(x).shape)),
         "same elements in row-major order, new shape")


def _permute_rule(x: TensorType, *, perm: tuple[int, ...]) -> TensorType:
    if sorted(perm) != list(range(x.ndim)):
        raise OpError(f"permute: {tuple(perm)} is not a permutation of the {x.ndim} axes of {x}")
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


def inverse_permutation(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


register("permute", MOVEMENT, 1, _permute_rule,
         lambda x, *, perm: np.transpose(x, perm),
         per_input(lambda b, g, out, x, *, perm: b.permute(g, perm=inverse_permutation(perm))),
         "reorder axes: out.shape[i] = x.shape[perm[i]]")


def _expand_rule(x: TensorType, *, shape: tuple[int, ...]) -> TensorType:
    if len(shape) != x.ndim or any(s != 1 and s != d for s, d in zip(x.shape, shape)):
        raise OpError(f"expand: cannot broadcast {x} to shape {tuple(shape)} "
                      "(same rank, only size-1 axes grow)")
    return TensorType(tuple(shape), x.dtype)


def _expand_vjp(b, g, out, x, *, shape):
    src = b.type_of(x).shape
    axes = tuple(i for i, (s, d) in enumerate(zip(src, shape)) if s != d)
    if not axes:
        return g
    return b.reshape(b.reduce_sum(g, axes=axes), shape=src)


register("expand", MOVEMENT, 1, _expand_rule,
         lambda x, *, shape: np.broadcast_to(x, shape), per_input(_expand_vjp),
         "broadcast size-1 axes to attrs.shape (same rank)")


def slice_length(start: int, stop: int, step: int) -> int:
    return max(0, (stop - start + step - 1) // step)


def _slice_rule(x: TensorType, *, starts, stops, steps) -> TensorType:
    if not len(starts) == len(stops) == len(steps) == x.ndim:
        raise OpError(f"slice: expected {x.ndim} starts/stops/steps for {x}")
    out = []
    for d, lo, hi, st in zip(x.shape, starts, stops, steps):
        if st < 1 or not 0 <= lo <= d or not lo <= hi <= d:
            raise OpError(f"slice: [{lo}:{hi}:{st}] is not a normalised slice of an axis of "
                          f"size {d} in {x}")
        out.append(slice_length(lo, hi, st))
    return TensorType(tuple(out), x.dtype)


def _slice_impl(x, *, starts, stops, steps):
    return x[tuple(slice(a, b, c) for a, b, c in zip(starts, stops, steps))]


def _slice_vjp(b, g, out, x, *, starts, stops, steps):
    # the transpose of a strided slice is a pad with interior padding
    lo, hi, interior = [], [], []
    for d, n, a, st in zip(b.type_of(x).shape, b.type_of(out).shape, starts, steps):
        last = a + (n - 1) * st + 1 if n else a
        lo.append(a)
        hi.append(d - last)
        interior.append(st - 1 if n else 0)
    return b.pad(g, lo=tuple(lo), hi=tuple(hi), interior=tuple(interior), value=0.0)


register("slice", MOVEMENT, 1, _slice_rule, _slice_impl, per_input(_slice_vjp),
         "x[starts:stops:steps] per axis, with 0 <= start <= stop <= size and step >= 1")


def _pad_rule(x: TensorType, *, lo, hi, interior, value) -> TensorType:
    if not len(lo) == len(hi) == len(interior) == x.ndim:
        raise OpError(f"pad: expected {x.ndim} lo/hi/interior entries for {x}")
    if any(v < 0 for v in (*lo, *hi, *interior)):
        raise OpError(f"pad: widths must be non-negative, got lo={lo} hi={hi} "
                      f"interior={interior}")
    shape = tuple(a + d + max(d - 1, 0) * i + c
                  for d, a, c, i in zip(x.shape, lo, hi, interior))
    return TensorType(shape, x.dtype)


def _pad_impl(x, *, lo, hi, interior, value):
    shape = tuple(a + d + max(d - 1, 0) * i + c
                  for d, a, c, i in zip(x.shape, lo, hi, interior))
    out = np.full(shape, value, dtype=x.dtype)
    out[tuple(slice(a, a + max(d - 1, 0) * (i + 1) + 1 if d else a, i + 1)
              for d, a, i in zip(x.shape, lo, interior))] = x
    return out


def _pad_vjp(b, g, out, x, *, lo, hi, interior, value):
    shape = b.type_of(x).shape
    stops = tuple(a + max(d - 1, 0) * (i + 1) + 1 if d else a
                  for d, a, i in zip(shape, lo, interior))
    return b.slice(g, starts=tuple(lo), stops=stops, steps=tuple(i + 1 for i in interior))


register("pad", MOVEMENT, 1, _pad_rule, _pad_impl, per_input(_pad_vjp),
         "pad each axis with attrs.value: lo before, hi after, interior between elements")


def _concat_rule(*xs: TensorType, axis: int) -> TensorType:
    first = xs[0]
    if not 0 <= axis < first.ndim:
        raise OpError(f"concat: axis {axis} out of range for {first}")
    for x in xs[1:]:
        same = all(d == e for i, (d, e) in enumerate(zip(x.shape, first.shape)) if i != axis)
        if x.ndim != first.ndim or x.dtype != first.dtype or not same:
            raise OpError(f"concat: tensors must match except along axis {axis}, "
                          f"got {first} and {x}")
    size = sum(x.shape[axis] for x in xs)
    return TensorType(first.shape[:axis] + (size,) + first.shape[axis + 1:], first.dtype)


def _concat_vjp(b, g, out, inputs, attrs, index):
    axis = attrs["axis"]
    offset = sum(b.type_of(x).shape[axis] for x in inputs[:index])
    shape = b.type_of(g).shape
    size = b.type_of(inputs[index]).shape[axis]
    starts = tuple(offset if i == axis else 0 for i in range(len(shape)))
    stops = tuple(offset + size if i == axis else d for i, d in enumerate(shape))
    return b.slice(g, starts=starts, stops=stops, steps=(1,) * len(shape))


register("concat", MOVEMENT, -1, _concat_rule,
         lambda *xs, axis: np.concatenate(xs, axis=axis), _concat_vjp,
         "join inputs along attrs.axis")
