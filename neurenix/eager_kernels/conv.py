"""Convolution and max pooling as eager kernels: a whole layer in a few NumPy calls.

Convolution is im2col + one GEMM over the whole batch: the (zero-)padded input's windows are
copied tap-major into a (C * taps, N * windows) column matrix (one `as_strided` copy), and
W (O, C * taps) @ columns gives every output at once; groups are a GEMM per group.  Its
backward is dW = g @ columns^T, the column gradient W^T @ g summed back onto the input with
one strided add per tap (col2im, as the `fold` primitive does it) and db = the sum of g.

Max pooling takes the maximum over the taps' strided views of the -inf-padded input, and its
gradient goes to the first tap holding the maximum (or the first NaN), as the primitive
composition's `argmax` picks it; the forward records that tap per window (a byte each), so
the backward is a scatter; see `max_pool`.

Any number of spatial axes; callers check the arguments first (`nn.functional.conv`,
`nn.functional.pooling`), so the errors stay theirs.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from .. import state
from ..tensor import Tensor
from .record import Arrays, record

Ints = tuple[int, ...]


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Ints, dilation: Ints,
         lo: Ints, hi: Ints, groups: int,
         composite: Callable[..., Sequence[Tensor]]) -> Tensor:
    """The convolution of batched x (N, C, *S) with weight (O, C / groups, *kernel), zero
    padding lo before and hi after each spatial axis; `composite(x, weight, bias)` is the same
    as primitives."""
    wanted = _wanted(x, weight, bias)
    with np.errstate(all="ignore"):  # inf and nan as the primitives give them, silently
        out, backward = _conv(np.asarray(x._data), np.asarray(weight._data),
                              None if bias is None else np.asarray(bias._data),
                              stride, dilation, lo, hi, groups, wanted)
    name = f"Conv{weight.ndim - 2}d"
    return record(name, (x, weight, bias), (out,), backward, composite)[0]


def max_pool(x: Tensor, kernel: Ints, stride: Ints, dilation: Ints, lo: Ints, hi: Ints,
             composite: Callable[..., Sequence[Tensor]]) -> Tensor:
    """Max pooling of batched x (N, C, *S) padded with -inf (lo before, hi after each spatial
    axis); `composite(x)` is the same as primitives."""
    with np.errstate(all="ignore"):
        out, backward = _max_pool(np.asarray(x._data), kernel, stride, dilation, lo, hi,
                                  _wanted(x)[0])
    name = f"MaxPool{len(kernel)}d"
    return record(name, (x,), (out,), backward, composite)[0]


def _wanted(*tensors: Tensor | None) -> list[bool]:
    """Which inputs a backward may be asked a gradient for (none outside grad mode), so the
    forward keeps only what those need."""
    on = state.is_grad_enabled()
    return [on and t is not None and t.requires_grad for t in tensors]


# ---- shared window arithmetic ----------------------------------------------------------------


def _padded(a: np.ndarray, lo: Ints, hi: Ints, fill: float) -> np.ndarray:
    """a (N, C, *S) with `fill` lo before and hi after each spatial axis (a itself if none)."""
    if not any(lo) and not any(hi):
        return a
    shape = a.shape[:2] + tuple(s + b + e for s, b, e in zip(a.shape[2:], lo, hi))
    out = np.zeros(shape, a.dtype) if fill == 0 else np.full(shape, fill, a.dtype)
    out[_inner(a.shape[2:], lo)] = a
    return out


def _inner(spatial: Sequence[int], lo: Ints) -> tuple[slice, ...]:
    """The index of the unpadded input inside the padded one."""
    return (slice(None), slice(None)) + tuple(slice(b, b + s) for s, b in zip(spatial, lo))


def _out_size(padded: Sequence[int], kernel: Ints, stride: Ints, dilation: Ints) -> Ints:
    return tuple((p - d * (k - 1) - 1) // s + 1
                 for p, k, s, d in zip(padded, kernel, stride, dilation))


def _taps(kernel: Ints, stride: Ints, dilation: Ints,
          out: Ints) -> list[tuple[Ints, tuple[slice, ...]]]:
    """Every tap, in the row-major order of `unfold`'s kernel axes, with the (N, C, ...) index
    of the input positions it reads in each window."""
    taps = []
    for tap in itertools.product(*(range(k) for k in kernel)):
        index = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                      for t, d, o, s in zip(tap, dilation, out, stride))
        taps.append((tap, (slice(None), slice(None)) + index))
    return taps


# ---- convolution -----------------------------------------------------------------------------


def _conv(xa: np.ndarray, wa: np.ndarray, ba: np.ndarray | None, stride: Ints,
          dilation: Ints, lo: Ints, hi: Ints, groups: int, wanted: list[bool]):
    """(output, backward) of the convolution on arrays.

    The columns are copied from one strided view of the padded input, (C, *kernel, N, *out):
    rows (channel, tap), a column per output position of the whole batch, so that one GEMM
    (per group) W (O, C * taps) @ columns gives every output, (O, N, *out).  The backward keeps
    the columns for dW = g @ columns^T and adds the column gradient W^T @ g back onto the input
    one tap at a time (col2im, as the `fold` primitive sums them).
    """
    batch, channels = xa.shape[:2]
    out_channels, kernel = wa.shape[0], tuple(wa.shape[2:])
    xp = _padded(xa, lo, hi, 0.0)
    out = _out_size(xp.shape[2:], kernel, stride, dilation)
    taps = wa.shape[1] * math.prod(kernel)
    cols = _columns(xp, kernel, stride, dilation, out).reshape(groups, taps, -1)
    w = wa.reshape(groups, out_channels // groups, taps)
    prod = w[0] @ cols[0] if groups == 1 else np.matmul(w, cols)
    y = np.empty((batch, out_channels) + out, xa.dtype)
    by_channel = prod.reshape((out_channels, batch) + out).swapaxes(0, 1)
    if ba is None:
        np.copyto(y, by_channel)
    else:
        np.add(by_channel, ba.reshape((1, out_channels) + (1,) * len(out)), out=y)
    if not wanted[1]:
        cols = None  # only dW reads the columns
    padded = xp.shape
    del xp

    def backward(grads: Arrays) -> Arrays:
        g = grads[0]
        if g is None:
            return [None, None, None]
        # (N, O, *out) -> (groups, O / groups, N * out), as the GEMM's output was
        gt = np.ascontiguousarray(g.swapaxes(0, 1)).reshape(groups, out_channels // groups, -1)
        dx = dw = db = None
        if wanted[2]:
            db = gt.reshape(out_channels, -1).sum(1)
        if wanted[1]:
            dw = _weight_gradient(cols, gt).reshape(wa.shape)
        if wanted[0]:
            dcols = w[0].T @ gt[0] if groups == 1 else np.matmul(w.swapaxes(1, 2), gt)
            dxp = _col2im(dcols.reshape((channels,) + kernel + (batch,) + out), padded,
                          kernel, stride, dilation, out)
            dx = dxp[_inner(xa.shape[2:], lo)].swapaxes(0, 1)
        return [dx, dw, db]

    return y, backward


def _weight_gradient(cols: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """dW (groups, O / groups, C / groups * taps) = g @ columns^T, computed as
    (columns @ g^T)^T: OpenBLAS runs these long, thin products faster that way round."""
    if len(cols) == 1:
        return (cols[0] @ gt[0].T).T
    return np.matmul(cols, gt.swapaxes(1, 2)).swapaxes(1, 2)


def _columns(xp: np.ndarray, kernel: Ints, stride: Ints, dilation: Ints,
             out: Ints) -> np.ndarray:
    """The column matrix as (C, *kernel, N, *out), contiguous: one copy of a strided view
    of the padded input xp (N, C, *padded)."""
    sn, sc = xp.strides[:2]
    spatial = xp.strides[2:]
    shape = (xp.shape[1],) + kernel + (xp.shape[0],) + out
    strides = ((sc,) + tuple(s * d for s, d in zip(spatial, dilation)) + (sn,)
               + tuple(s * st for s, st in zip(spatial, stride)))
    view = np.lib.stride_tricks.as_strided(xp, shape, strides, writeable=False)
    return np.ascontiguousarray(view)


def _col2im(dcols: np.ndarray, padded_shape: Sequence[int], kernel: Ints, stride: Ints,
            dilation: Ints, out: Ints) -> np.ndarray:
    """Column gradients (C, *kernel, N, *out) summed onto the padded input as (C, N, *padded):
    one strided add per tap, in `fold`'s order."""
    channels, batch = padded_shape[1], padded_shape[0]
    dxp = np.zeros((channels, batch) + tuple(padded_shape[2:]), dcols.dtype)
    for tap, index in _taps(kernel, stride, dilation, out):
        dxp[index] += dcols[(slice(None),) + tap]
    return dxp


# ---- max pooling -----------------------------------------------------------------------------

_SIGNED = {4: np.int32, 8: np.int64}


def _max_pool(xa: np.ndarray, kernel: Ints, stride: Ints, dilation: Ints, lo: Ints,
              hi: Ints, wanted: bool):
    """(output, backward) of max pooling on arrays.

    The primitives pick each window's value as the sum of a one-hot selection at the first
    maximum (`argmax`: the first NaN when there is one); that is the window's maximum with
    NaN propagated, plus 0.0 (so -0.0 comes out as 0.0 unless the window has one tap).  The
    gradient goes to that same first tap; taps outside the input (the -inf padding) drop it.
    The forward finds that tap's number per window (`_first_max`), so the backward only
    scatters the gradient, without reading the input again.
    """
    xp = _padded(xa, lo, hi, -np.inf)
    out = _out_size(xp.shape[2:], kernel, stride, dilation)
    m = _window_max(xp, kernel, stride, dilation, out)
    if math.prod(kernel) > 1:
        m += 0.0
    taps = [index for _, index in _taps(kernel, stride, dilation, out)]
    first = _first_max(xp, m, taps) if wanted else None
    padded, dtype = xp.shape, xp.dtype
    del xp

    def backward(grads: Arrays) -> Arrays:
        g = grads[0]
        if g is None:
            return [None]
        # + 0.0: the primitives add g to zeros, which makes a -0.0 gradient 0.0
        dxp = _route(first, np.add(g, 0.0, dtype=dtype), padded, kernel, stride, dilation,
                     out, taps)
        return [dxp[_inner(xa.shape[2:], lo)]]

    return m, backward


def _first_max(xp: np.ndarray, best: np.ndarray, taps: list[tuple[slice, ...]]) -> np.ndarray:
    """Which tap of each window is its first (row-major) equal to its maximum `best`, or
    holding its first NaN, coded as a small signed integer: taps - (that tap's number), the
    largest of taps - t over the taps t that hold the maximum (two small passes a tap)."""
    count = len(taps)
    itype = np.int8 if count <= 127 else np.int16 if count <= 32767 else np.int32
    code = np.zeros(best.shape, itype)
    nan = bool(np.isnan(best).any())
    hit = np.empty(best.shape, np.bool_)
    rank = np.empty(best.shape, itype)
    for t, index in enumerate(taps):
        v = xp[index]
        np.equal(v, best, out=hit)
        if nan:
            np.logical_or(hit, np.isnan(v), out=hit)
        np.multiply(hit, itype(count - t), out=rank)
        np.maximum(code, rank, out=code)
    return code


def _route(first: np.ndarray, g: np.ndarray, padded: Sequence[int], kernel: Ints,
           stride: Ints, dilation: Ints, out: Ints,
           taps: list[tuple[slice, ...]]) -> np.ndarray:
    """The padded input's gradient: each window's g at the tap `first` codes (see
    `_first_max`).  The selection is a bitwise and of g with a mask that is all ones at that
    tap (so an inf or NaN in g reaches only its tap); overlapping windows add, in `fold`'s
    tap order, disjoint ones are written (and when they tile the input, nothing is zeroed
    first)."""
    disjoint = all(k == 1 or s >= d * (k - 1) + 1 for k, s, d in zip(kernel, stride, dilation))
    tiled = all(s == k and (k == 1 or d == 1) and p == o * s
                for k, s, d, p, o in zip(kernel, stride, dilation, padded[2:], out))
    dxp = np.empty(padded, g.dtype) if tiled else np.zeros(padded, g.dtype)
    signed = _SIGNED[g.dtype.itemsize]
    g_bits = g.view(signed)
    hit = np.empty(first.shape, np.bool_)
    for t, index in enumerate(taps):
        np.equal(first, len(taps) - t, out=hit)
        mask = np.negative(hit.view(np.int8))  # -1: all bits set (as a wider int too)
        target = dxp[index]
        if disjoint:
            np.bitwise_and(g_bits, mask, out=target.view(signed))
        else:
            picked = np.bitwise_and(g_bits, mask)
            np.add(target, picked.view(g.dtype), out=target)
    return dxp


def _window_max(xp: np.ndarray, kernel: Ints, stride: Ints, dilation: Ints,
                out: Ints) -> np.ndarray:
    """Each window's maximum (NaN if it holds one), axis by axis from the last: a maximum of
    maxima is the maximum, and the innermost reductions read the fewest strided elements."""
    a = xp
    for axis in range(len(kernel) - 1, -1, -1):
        k, d, s, o = kernel[axis], dilation[axis], stride[axis], out[axis]
        index = [slice(None)] * a.ndim
        views = []
        for t in range(k):
            index[2 + axis] = slice(t * d, t * d + (o - 1) * s + 1, s)
            views.append(a[tuple(index)])
        if k == 1:
            a = views[0]
            continue
        m = np.maximum(views[0], views[1])
        for v in views[2:]:
            np.maximum(m, v, out=m)
        a = m
    return np.array(a, copy=a is xp or not a.flags.c_contiguous)
