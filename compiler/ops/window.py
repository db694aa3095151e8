"""Window primitives: `unfold` (sliding windows, im2col) and its transpose `fold`.

Convolution and pooling are compositions: pad -> unfold -> matmul or reduce.  Keeping the
window as its own primitive lets the compiler later fuse it into an implicit-GEMM kernel.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..types import TensorType
from .registry import WINDOW, OpError, per_input, register


def window_out_size(size: int, k: int, stride: int, dilation: int) -> int:
    """How many windows of k taps, spaced by dilation, fit along an axis at this stride."""
    span = dilation * (k - 1) + 1
    return (size - span) // stride + 1 if size >= span else 0


def _check(name, x, kernel, stride, dilation, lead):
    d = len(kernel)
    if not (len(stride) == len(dilation) == d and x.ndim == lead + d):
        raise OpError(f"{name}: expected a tensor of rank {lead + d} for {d} window axes, "
                      f"got {x}")
    if min((*kernel, *stride, *dilation), default=1) < 1:
        raise OpError(f"{name}: kernel, stride and dilation must be >= 1, got "
                      f"{kernel}, {stride}, {dilation}")


def _unfold_rule(x: TensorType, *, kernel, stride, dilation) -> TensorType:
    _check("unfold", x, kernel, stride, dilation, 2)
    spatial = x.shape[2:]
    out = tuple(window_out_size(s, k, st, dl)
                for s, k, st, dl in zip(spatial, kernel, stride, dilation))
    if any(o < 1 for o in out):
        raise OpError(f"unfold: window {tuple(kernel)} (dilation {tuple(dilation)}) does not "
                      f"fit in spatial size {spatial} of {x}")
    return TensorType(x.shape[:2] + tuple(kernel) + out, x.dtype)


def _unfold_impl(x, *, kernel, stride, dilation):
    d = len(kernel)
    out = [window_out_size(s, k, st, dl)
           for s, k, st, dl in zip(x.shape[2:], kernel, stride, dilation)]
    sp = x.strides[2:]
    strides = x.strides[:2] + tuple(s * dl for s, dl in zip(sp, dilation)) \
        + tuple(s * st for s, st in zip(sp, stride))
    shape = x.shape[:2] + tuple(kernel) + tuple(out)
    assert len(shape) == 2 + 2 * d
    return np.lib.stride_tricks.as_strided(x, shape, strides, writeable=False)


def _fold_rule(x: TensorType, *, spatial, kernel, stride, dilation) -> TensorType:
    d = len(kernel)
    _check("fold", x, kernel, stride, dilation, 2 + d)
    out = tuple(window_out_size(s, k, st, dl)
                for s, k, st, dl in zip(spatial, kernel, stride, dilation))
    if x.shape[2:] != tuple(kernel) + out:
        raise OpError(f"fold: expected windows of shape {tuple(kernel) + out} for spatial size "
                      f"{tuple(spatial)}, got {x}")
    return TensorType(x.shape[:2] + tuple(spatial), x.dtype)


def _fold_impl(x, *, spatial, kernel, stride, dilation):
    d = len(kernel)
    out_sizes = x.shape[2 + d:]
    res = np.zeros(x.shape[:2] + tuple(spatial), dtype=x.dtype)
    for taps in itertools.product(*(range(k) for k in kernel)):
        dst = tuple(slice(t * dl, t * dl + (o - 1) * st + 1, st)
                    for t, dl, o, st in zip(taps, dilation, out_sizes, stride))
        res[(slice(None), slice(None)) + dst] += x[(slice(None), slice(None)) + taps]
    return res


register("unfold", WINDOW, 1, _unfold_rule, _unfold_impl,
         per_input(lambda b, g, out, x, *, kernel, stride, dilation:
                   b.fold(g, spatial=b.type_of(x).shape[2:], kernel=kernel, stride=stride,
                          dilation=dilation)),
         "(N, C, *S) -> (N, C, *kernel, *windows): every window's taps")
register("fold", WINDOW, 1, _fold_rule, _fold_impl,
         per_input(lambda b, g, out, x, *, spatial, kernel, stride, dilation:
                   b.unfold(g, kernel=kernel, stride=stride, dilation=dilation)),
         "(N, C, *kernel, *windows) -> (N, C, *spatial): sums taps back (unfold's transpose)")
