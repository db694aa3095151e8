"""Convolution and max pooling as eager kernels: a whole layer in a few NumPy calls.

Convolution is im2col + one GEMM over the whole batch: the (zero-)padded input's windows are
copied tap-major into a (C * taps, N * windows) column matrix (one `as_strided` copy), and
W (O, C * taps) @ columns gives every output at once; groups are a GEMM per group.  Its
backward is dW = g @ columns^T, the column gradient W^T @ g summed back onto the input with
one strided add per tap (col2im, as the `fold` primitive does it) and db = the sum of g.
A 2-d stride-1 convolution runs the same products on rows of the padded width, where the
copies are longer runs (`_wide_conv`, `_wide_col2im`).

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

from ..tensor import Tensor
from . import hot, workspace
from .record import NOT_BIAS, Arrays, record, wanted

Ints = tuple[int, ...]


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Ints, dilation: Ints,
         lo: Ints, hi: Ints, groups: int,
         composite: Callable[..., Sequence[Tensor]]) -> Tensor:
    """The convolution of batched x (N, C, *S) with weight (O, C / groups, *kernel), zero
    padding lo before and hi after each spatial axis; `composite(x, weight, bias)` is the same
    as primitives."""
    wants = wanted(x, weight, bias)
    name = f"Conv{weight.ndim - 2}d"
    ran = hot.run(name, (stride, dilation, lo, hi, groups), (x, weight, bias), wants,
                  composite)
    if ran is not None:
        out, backward = ran
    else:
        with np.errstate(all="ignore"):  # inf and nan as the primitives give them, silently
            out, backward = _conv(np.asarray(x._data), np.asarray(weight._data),
                                  None if bias is None else np.asarray(bias._data),
                                  stride, dilation, lo, hi, groups, wants)
    return record(name, (x, weight, bias), (out,), backward, composite, reads=NOT_BIAS)[0]


def max_pool(x: Tensor, kernel: Ints, stride: Ints, dilation: Ints, lo: Ints, hi: Ints,
             composite: Callable[..., Sequence[Tensor]]) -> Tensor:
    """Max pooling of batched x (N, C, *S) padded with -inf (lo before, hi after each spatial
    axis); `composite(x)` is the same as primitives."""
    with np.errstate(all="ignore"):
        out, backward = _max_pool(np.asarray(x._data), kernel, stride, dilation, lo, hi,
                                  wanted(x)[0])
    name = f"MaxPool{len(kernel)}d"
    return record(name, (x,), (out,), backward, composite)[0]


# ---- shared window arithmetic ----------------------------------------------------------------


def _padded(a: np.ndarray, lo: Ints, hi: Ints, fill: float, tail: int = 0) -> np.ndarray:
    """a (N, C, *S) with `fill` lo before and hi after each spatial axis (a itself if none
    and no tail), in storage of the workspace (only the border is filled); with `tail`, the
    storage goes on for that many elements more, filled too, for views that read past the
    end (`_wide_columns`)."""
    if not any(lo) and not any(hi) and not tail:
        return a
    shape = a.shape[:2] + tuple(s + b + e for s, b, e in zip(a.shape[2:], lo, hi))
    if tail:
        storage = workspace.empty((math.prod(shape) + tail,), a.dtype)
        storage[storage.size - tail:] = fill
        out = storage[:storage.size - tail].reshape(shape)
    else:
        out = workspace.empty(shape, a.dtype)
    for axis, (b, e) in enumerate(zip(lo, hi)):
        index = [slice(None)] * out.ndim
        if b:
            index[2 + axis] = slice(0, b)
            out[tuple(index)] = fill
        if e:
            index[2 + axis] = slice(shape[2 + axis] - e, None)
            out[tuple(index)] = fill
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
    """(output, backward) of the convolution on arrays: `_wide_conv` for a 2-d, stride-1,
    one-group convolution whose column matrix has at least twice the rows of its output
    (C * taps >= 2 * O), `_exact_conv` for any other.

    The wide columns copy faster, but the wide output and output gradient copy slower (over
    rows of the output's width instead of whole planes): worth it where the columns are the
    bigger array.  Measured on the benchmarks' convolutions (2 threads): 3 -> 16 and 3 -> 32
    channels ran 5-25% slower wide, 16 -> 32 and 32 -> 64 ran 5-20% faster.
    """
    if _wide(stride, groups) and wa[0].size >= 2 * wa.shape[0]:
        return _wide_conv(xa, wa, ba, dilation, lo, hi, wanted)
    return _exact_conv(xa, wa, ba, stride, dilation, lo, hi, groups, wanted)


def _wide(stride: Ints, groups: int) -> bool:
    """Whether the convolution can run on rows of the padded width (`_wide_conv`,
    `_wide_col2im`): 2-d, stride 1, one group."""
    return len(stride) == 2 and stride == (1, 1) and groups == 1


def _exact_conv(xa: np.ndarray, wa: np.ndarray, ba: np.ndarray | None, stride: Ints,
                dilation: Ints, lo: Ints, hi: Ints, groups: int, wanted: list[bool]):
    """(output, backward) of any convolution.

    The columns are copied from one strided view of the padded input, (C, *kernel, N, *out):
    rows (channel, tap), a column per output position of the whole batch, so that one GEMM
    (per group) W (O, C * taps) @ columns gives every output, (O, N, *out), copied to the
    output with the bias.  (A GEMM per image would write the output in place, but OpenBLAS
    runs those small products up to 2.5x slower than the one big one.)  The backward keeps
    the columns for dW = g @ columns^T and adds the column gradient W^T @ g back onto the
    input one tap at a time (col2im, as the `fold` primitive sums them).  The big arrays
    live in the workspace (`workspace`), the GEMMs' matrices with rows padded off multiples
    of 1 KiB (`_matrix`).
    """
    batch, channels = xa.shape[:2]
    out_channels, kernel = wa.shape[0], tuple(wa.shape[2:])
    xp = _padded(xa, lo, hi, 0.0)
    out = _out_size(xp.shape[2:], kernel, stride, dilation)
    taps = wa.shape[1] * math.prod(kernel)
    positions = batch * math.prod(out)
    cols = _columns(xp, kernel, stride, dilation, out).reshape(groups, taps, positions)
    w = wa.reshape(groups, out_channels // groups, taps)
    prod = _matrix(out_channels, positions, xa.dtype)
    if groups == 1:
        np.matmul(w[0], cols[0], out=prod)
    else:
        np.matmul(w, cols, out=_split(prod, (groups, out_channels // groups), (positions,)))
    y = workspace.empty((batch, out_channels) + out, xa.dtype)
    _add_bias(y, _split(prod, (out_channels,), (batch,) + out).swapaxes(0, 1), ba)
    del prod
    if not wanted[1]:
        cols = None  # only dW reads the columns
    padded = xp.shape
    del xp

    def backward(grads: Arrays) -> Arrays:
        g = grads[0]
        if g is None:
            return [None, None, None]
        wide = wanted[0] and _wide(stride, groups) and np.isfinite(w).all()
        gt = None  # the compact gradient, for whatever reads it
        if wanted[1] or wanted[2] or (wanted[0] and not wide):
            gt = _compact_gradient(g).reshape(groups, out_channels // groups, positions)
        dx = dw = db = None
        if wanted[2]:
            db = gt.reshape(out_channels, positions).sum(1)
        if wanted[1]:
            dw = _weight_gradient(cols, gt).reshape(wa.shape)
        if wide:
            gw = _wide_gradient(g, padded[3])
            dx = _wide_col2im(xa.shape, w[0], gw, padded, lo, kernel, dilation, out)
        elif wanted[0]:
            dx = _input_gradient(w, gt, xa.shape, padded, lo, kernel, stride, dilation, out)
        return [dx, dw, db]

    return y, backward


def _wide_conv(xa: np.ndarray, wa: np.ndarray, ba: np.ndarray | None, dilation: Ints,
               lo: Ints, hi: Ints, wanted: list[bool]):
    """(output, backward) of a 2-d, stride-1, one-group convolution, computed on rows of
    the padded width Wp.

    `_exact_conv`'s column copy runs over rows of the output's width, too short for NumPy's
    inner loops (the spec CNN's are 28 and 14 wide).  On rows of the padded width, tap
    (i, j) of output position q = y * Wp + x reads the padded input at q + i * dh * Wp +
    j * dw: a row of the columns is one contiguous run of H * Wp of the padded input, so the
    copy is (C, taps, N) long runs (`_wide_columns`).  The GEMMs then also compute the Wp - W
    extra columns of each output row; the forward drops them (copying the rest to the
    output, with the bias), and the backward gives them a zero output gradient, so that
    they add nothing to dW or to the input's gradient (col2im with one contiguous add per
    channel, image and tap: `_wide_col2im`).

    Nothing (NaN * 0) where an extra column reads an inf or NaN: a non-finite dW is
    computed again from the exact columns, and a non-finite weight takes `_exact_conv`'s
    col2im (NaN * 0 would spread it through the extra columns).
    """
    batch, channels = xa.shape[:2]
    out_channels, kernel = wa.shape[0], tuple(wa.shape[2:])
    xw = _padded(xa, lo, hi, 0.0, tail=(kernel[1] - 1) * dilation[1])
    padded = xw.shape
    height, width = out = _out_size(padded[2:], kernel, (1, 1), dilation)
    pw = padded[3]
    run = height * pw
    cols = _wide_columns(xw, kernel, dilation, run)
    w = wa.reshape(out_channels, -1)
    taps = w.shape[1]
    prod = _matrix(out_channels, batch * run, xa.dtype)
    np.matmul(w, cols, out=prod)
    y = workspace.empty((batch, out_channels) + out, xa.dtype)
    rows = _split(prod, (out_channels,), (batch, height, pw))[..., :width]
    _add_bias(y, rows.swapaxes(0, 1), ba)
    del rows, prod, xw
    if not wanted[1]:
        cols = None

    def backward(grads: Arrays) -> Arrays:
        g = grads[0]
        if g is None:
            return [None, None, None]
        gw = _wide_gradient(g, pw)
        dx = dw = db = None
        if wanted[2]:
            db = gw.sum(1)
        if wanted[1]:
            dw = _weight_gradient(cols[None], gw[None])
            if not np.isfinite(dw).all():
                exact = _matrix(taps, batch * height * width, g.dtype)
                np.copyto(_split(exact, (taps,), (batch, height, width)),
                          _split(cols, (taps,), (batch, height, pw))[..., :width])
                dw = _weight_gradient(exact[None], _compact_gradient(g)[None])
            dw = dw.reshape(wa.shape)
        if wanted[0]:
            if np.isfinite(w).all():
                dx = _wide_col2im(xa.shape, w, gw, padded, lo, kernel, dilation, out)
            else:
                dx = _input_gradient(w[None], _compact_gradient(g)[None], xa.shape, padded,
                                     lo, kernel, (1, 1), dilation, out)
        return [dx, dw, db]

    return y, backward


def _add_bias(y: np.ndarray, rows: np.ndarray, ba: np.ndarray | None) -> None:
    """y = rows + the bias (per channel, axis 1), or rows when there is none."""
    if ba is None:
        np.copyto(y, rows)
    else:
        np.add(rows, ba.reshape((1, y.shape[1]) + (1,) * (y.ndim - 2)), out=y)


def _wide_gradient(g: np.ndarray, pw: int) -> np.ndarray:
    """The output gradient (N, O, H, W) on rows of the padded width Wp, zero in the extra
    columns, as a (O, N * H * Wp) `_matrix` (`_wide_conv`, `_wide_col2im`)."""
    batch, out_channels, height, width = g.shape
    gw = _matrix(out_channels, batch * height * pw, g.dtype)
    wide = _split(gw, (out_channels,), (batch, height, pw))
    wide[..., width:] = 0
    np.copyto(wide[..., :width], g.swapaxes(0, 1))
    return gw


def _compact_gradient(g: np.ndarray) -> np.ndarray:
    """The output gradient (N, O, *out) as a (O, N * out) `_matrix`, laid out as the
    columns."""
    batch, out_channels, out = g.shape[0], g.shape[1], g.shape[2:]
    gt = _matrix(out_channels, batch * math.prod(out), g.dtype)
    np.copyto(_split(gt, (out_channels,), (batch,) + out), g.swapaxes(0, 1))
    return gt


def _input_gradient(w: np.ndarray, gt: np.ndarray, shape: Sequence[int],
                    padded: Sequence[int], lo: Ints, kernel: Ints, stride: Ints,
                    dilation: Ints, out: Ints) -> np.ndarray:
    """dx (N, C, *S): the column gradient W^T @ g (per group; w (groups, O / groups, taps),
    gt (groups, O / groups, N * out)) summed onto the padded input by `_col2im`."""
    groups, taps, positions = w.shape[0], w.shape[2], gt.shape[2]
    batch, channels = shape[:2]
    dcols = _matrix(groups * taps, positions, gt.dtype)
    if groups == 1:
        np.matmul(w[0].T, gt[0], out=dcols)
    else:
        np.matmul(w.swapaxes(1, 2), gt, out=_split(dcols, (groups, taps), (positions,)))
    dxp = _col2im(_split(dcols, (channels,) + kernel, (batch,) + out), padded, kernel,
                  stride, dilation, out)
    del dcols
    dx = workspace.empty(tuple(shape), gt.dtype)
    np.copyto(dx, dxp[_inner(shape[2:], lo)].swapaxes(0, 1))
    return dx


def _matrix(rows: int, columns: int, dtype: np.dtype) -> np.ndarray:
    """A (rows, columns) matrix in the workspace for a GEMM operand or result, its rows 64
    bytes longer where `columns` would make them a multiple of 1 KiB: OpenBLAS runs such
    leading dimensions up to 1.8x slower (cache-set aliasing; the spec CNN's first layer has
    25,088 columns, the wide col2im of its second 7,168)."""
    itemsize = np.dtype(dtype).itemsize
    pad = 64 // itemsize if columns > 1 and (columns * itemsize) % 1024 == 0 else 0
    return workspace.empty((rows, columns + pad), dtype)[:, :columns]


def _split(matrix: np.ndarray, rows: Ints, columns: Ints) -> np.ndarray:
    """A view of a `_matrix` with its row index split as `rows` and its column index as
    `columns` (a view even when the rows are padded, so writes reach the matrix)."""
    row_step, item = matrix.strides
    strides = []
    for dims, step in ((rows, row_step), (columns, item)):
        inner = []
        for n in reversed(dims):
            inner.append(step)
            step *= n
        strides += reversed(inner)
    return np.lib.stride_tricks.as_strided(matrix, tuple(rows) + tuple(columns),
                                           tuple(strides))


def _weight_gradient(cols: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """dW (groups, O / groups, C / groups * taps) = g @ columns^T, computed as
    (columns @ g^T)^T: OpenBLAS runs these long, thin products faster that way round."""
    if len(cols) == 1:
        return (cols[0] @ gt[0].T).T
    return np.matmul(cols, gt.swapaxes(1, 2)).swapaxes(1, 2)


def _columns(xp: np.ndarray, kernel: Ints, stride: Ints, dilation: Ints,
             out: Ints) -> np.ndarray:
    """The column matrix (C * taps, N * out) as a `_matrix`: one copy of a strided view of
    the padded input xp (N, C, *padded) as (C, *kernel, N, *out)."""
    sn, sc = xp.strides[:2]
    spatial = xp.strides[2:]
    shape = (xp.shape[1],) + kernel + (xp.shape[0],) + out
    strides = ((sc,) + tuple(s * d for s, d in zip(spatial, dilation)) + (sn,)
               + tuple(s * st for s, st in zip(spatial, stride)))
    view = np.lib.stride_tricks.as_strided(xp, shape, strides, writeable=False)
    cols = _matrix(xp.shape[1] * math.prod(kernel), xp.shape[0] * math.prod(out), xp.dtype)
    np.copyto(_split(cols, shape[:1 + len(kernel)], shape[1 + len(kernel):]), view)
    return cols


def _wide_columns(xw: np.ndarray, kernel: Ints, dilation: Ints, run: int) -> np.ndarray:
    """The wide column matrix (C * taps, N * run) of `_wide_conv` as a `_matrix`: row
    (c, i, j), image n is the run of the padded input xw (N, C, Hp, Wp) from i * dh * Wp +
    j * dw on (past the channel's end for the last taps: `_padded`'s tail)."""
    sn, sc = xw.strides[:2]
    item = xw.itemsize
    pw = xw.shape[3]
    shape = (xw.shape[1],) + kernel + (xw.shape[0], run)
    strides = (sc, dilation[0] * pw * item, dilation[1] * item, sn, item)
    view = np.lib.stride_tricks.as_strided(xw, shape, strides, writeable=False)
    cols = _matrix(xw.shape[1] * math.prod(kernel), xw.shape[0] * run, xw.dtype)
    np.copyto(_split(cols, shape[:3], shape[3:]), view)
    return cols


def _col2im(dcols: np.ndarray, padded_shape: Sequence[int], kernel: Ints, stride: Ints,
            dilation: Ints, out: Ints) -> np.ndarray:
    """Column gradients (C, *kernel, N, *out) summed onto the padded input as (C, N, *padded):
    one strided add per tap, in `fold`'s order."""
    channels, batch = padded_shape[1], padded_shape[0]
    dxp = workspace.zeros((channels, batch) + tuple(padded_shape[2:]), dcols.dtype)
    for tap, index in _taps(kernel, stride, dilation, out):
        dxp[index] += dcols[(slice(None),) + tap]
    return dxp


def _wide_col2im(shape: Sequence[int], w: np.ndarray, gw: np.ndarray, padded: Sequence[int],
                 lo: Ints, kernel: Ints, dilation: Ints, out: Ints) -> np.ndarray:
    """dx (N, C, H, W) of `_wide_conv` from its wide output gradient gw (O, N * H * Wp),
    zero in the extra columns, and a finite weight w (O, C * taps).

    `_col2im`'s per-tap adds run over rows of `out` width, too short for NumPy's inner
    loops.  Here tap (i, j) of output position q = y * Wp + x lands on the padded input's
    position q + i * dh * Wp + j * dw: one add of a contiguous run of H * Wp per (channel,
    image) and tap.  The extra columns' column gradients are W^T @ 0 = 0 (the weight is
    finite: a NaN weight would put NaN * 0 where the primitives put nothing), and adding a
    zero changes no sum that starts from +0.0, so the result is `_col2im`'s, with the same
    additions in the same order.
    """
    batch, channels = shape[:2]
    height, (ph, pw), (dh, dw) = out[0], padded[2:], dilation
    run = height * pw
    dcols = _matrix(w.shape[1], batch * run, gw.dtype)
    np.matmul(w.T, gw, out=dcols)
    dcols = _split(dcols, (channels, kernel[0] * kernel[1]), (batch, run))
    # the padded input's gradient as (C, N, rows): Ph * Pw and the overhang of the last
    # row's extra columns (the last tap's run ends (kw - 1) * dw past the padded input)
    dxp = workspace.zeros((channels, batch, ph * pw + (kernel[1] - 1) * dw), gw.dtype)
    tap = 0
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            start = i * dh * pw + j * dw
            target = dxp[:, :, start:start + run]
            np.add(target, dcols[:, tap], out=target)
            tap += 1
    del dcols
    inner = dxp[:, :, :ph * pw].reshape(channels, batch, ph, pw)
    dx = workspace.empty(tuple(shape), gw.dtype)
    np.copyto(dx, inner[:, :, lo[0]:lo[0] + shape[2], lo[1]:lo[1] + shape[3]].swapaxes(0, 1))
    return dx


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
    taps = [index for _, index in _taps(kernel, stride, dilation, out)]
    if len(taps) > 1 and _tiled(kernel, stride, dilation, xp.shape, out):
        m, first = _tiled_max(xp, kernel, out, wanted)
    else:
        m = _window_max(xp, kernel, stride, dilation, out)
        if len(taps) > 1:
            m += 0.0
        first = _first_max(xp, m, taps) if wanted else None
    padded, dtype = xp.shape, xp.dtype
    del xp

    def backward(grads: Arrays) -> Arrays:
        g = grads[0]
        if g is None:
            return [None]
        # + 0.0: the primitives add g to zeros, which makes a -0.0 gradient 0.0
        plus = workspace.empty(g.shape, dtype)
        np.add(g, 0.0, out=plus, dtype=dtype)
        dxp = _route(first, plus, padded, kernel, stride, dilation, out, taps)
        return [dxp[_inner(xa.shape[2:], lo)]]

    return m, backward


def _tiled(kernel: Ints, stride: Ints, dilation: Ints, padded: Sequence[int], out: Ints) -> bool:
    """Whether the windows tile the padded input: each position in exactly one window."""
    return all(s == k and (k == 1 or d == 1) and p == o * s
               for k, s, d, p, o in zip(kernel, stride, dilation, padded[2:], out))


def _tiled_max(xp: np.ndarray, kernel: Ints, out: Ints,
               wanted: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """`_window_max` + 0.0 and `_first_max` for windows that tile the input (`_tiled`).

    One strided copy puts the input tap-major, (taps, N, C, *out), so that the maxima and
    the first-maximum search run over contiguous arrays (on strided views each NumPy call
    loops over rows of `out[-1]` elements).  The maximum of the same values in another
    order is the same number, NaN if one is NaN, and + 0.0 makes its zeros +0.0 either way;
    the first tap equal to it (or NaN) gets the same code as in `_first_max`.
    """
    batch, channels = xp.shape[:2]
    count = math.prod(kernel)
    split = (batch, channels) + tuple(n for o, k in zip(out, kernel) for n in (o, k))
    rank = len(kernel)
    order = tuple(3 + 2 * i for i in range(rank)) + (0, 1) + tuple(2 + 2 * i
                                                                for i in range(rank))
    xt = workspace.empty((count, batch, channels) + out, xp.dtype)
    np.copyto(xt.reshape(kernel + (batch, channels) + out),
              xp.reshape(split).transpose(order))
    m = workspace.empty((batch, channels) + out, xp.dtype)
    np.maximum(xt[0], xt[1], out=m)
    for t in range(2, count):
        np.maximum(m, xt[t], out=m)
    m += 0.0
    if not wanted:
        return m, None
    itype = np.int8 if count <= 127 else np.int16 if count <= 32767 else np.int32
    code = workspace.zeros(m.shape, itype)
    nan = bool(np.isnan(m).any())
    hit = workspace.empty(m.shape, np.bool_)
    rank = workspace.empty(m.shape, itype)
    for t in range(count):
        np.equal(xt[t], m, out=hit)
        if nan:
            np.logical_or(hit, np.isnan(xt[t]), out=hit)
        np.multiply(hit, itype(count - t), out=rank)
        np.maximum(code, rank, out=code)
    return m, code


def _first_max(xp: np.ndarray, best: np.ndarray, taps: list[tuple[slice, ...]]) -> np.ndarray:
    """Which tap of each window is its first (row-major) equal to its maximum `best`, or
    holding its first NaN, coded as a small signed integer: taps - (that tap's number), the
    largest of taps - t over the taps t that hold the maximum (two small passes a tap)."""
    count = len(taps)
    itype = np.int8 if count <= 127 else np.int16 if count <= 32767 else np.int32
    code = workspace.zeros(best.shape, itype)
    nan = bool(np.isnan(best).any())
    hit = workspace.empty(best.shape, np.bool_)
    rank = workspace.empty(best.shape, itype)
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
    tiled = _tiled(kernel, stride, dilation, padded, out)
    dxp = workspace.empty(padded, g.dtype) if tiled else workspace.zeros(padded, g.dtype)
    signed = _SIGNED[g.dtype.itemsize]
    g_bits = g.view(signed)
    hit = workspace.empty(first.shape, np.bool_)
    mask = workspace.empty(first.shape, np.int8)
    for t, index in enumerate(taps):
        np.equal(first, len(taps) - t, out=hit)
        np.negative(hit.view(np.int8), out=mask)  # -1: all bits set (as a wider int too)
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
        m = workspace.empty(views[0].shape, views[0].dtype)
        np.maximum(views[0], views[1], out=m)
        for v in views[2:]:
            np.maximum(m, v, out=m)
        a = m
    return np.array(a, copy=a is xp or not a.flags.c_contiguous)
