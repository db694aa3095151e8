"""The fully connected layer as one eager kernel: y = x W^T + b (PyTorch's addmm).

As primitives a Linear layer is a transpose, a product, and a reshape, expand and add for the
bias, five tape nodes whose backward gives the weight gradient as a transposed view (copied
into C order when a leaf takes it).  Here it is one node: the same product and add forward,
and a backward of three products that each give an array of its own: dx = g W,
dW = g^T x (row-major, as the weight), db = the sum of g over the rows.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..tensor import Tensor
from . import hot
from .record import NOT_BIAS, Arrays, record, wanted

THREADED_MNK = 1 << 18
"""Products of at least this many multiply-adds (rows x in x out) run as hot compiled
programs (`hot`); OpenBLAS takes its worker threads from about this size on."""


def linear(x: Tensor, weight: Tensor, bias: Tensor | None,
           composite: Callable[..., Sequence[Tensor]]) -> Tensor:
    """x (*, in) @ weight (out, in)^T + bias (out,), checked by the caller; `composite(x,
    weight, bias)` is the same as primitives."""
    wants = wanted(x, weight, bias)
    if _threaded(x.shape, weight.shape):
        ran = hot.run("Linear", (), (x, weight, bias), wants, composite)
        if ran is not None:
            return record("Linear", (x, weight, bias), (ran[0],), ran[1], composite,
                          reads=NOT_BIAS)[0]
    a, w = np.asarray(x._data), np.asarray(weight._data)
    b = None if bias is None else np.asarray(bias._data)
    rows = a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a
    with np.errstate(all="ignore"):  # inf and nan as the primitives give them, silently
        if _few_rows(rows.shape[0], w.shape):
            y = np.empty((rows.shape[0], w.shape[0]), np.result_type(rows, w))
            product = (w @ rows.T).T
            if b is None:
                np.copyto(y, product)
            else:
                np.add(product, b, out=y)
        else:
            y = rows @ w.T
            if b is not None:
                y += b

    def backward(grads: Arrays) -> Arrays:
        g = grads[0]
        if g is None:
            return [None, None, None]
        g = g.reshape(-1, g.shape[-1]) if g.ndim != 2 else g
        dx = (g @ w).reshape(a.shape) if wants[0] else None
        dw = None
        if wants[1]:  # one row: each entry is one product, exact with its zero's sign
            dw = g.T @ rows if rows.shape[0] != 1 else np.multiply(g.T, rows)
        db = np.add.reduce(g, axis=0) if wants[2] else None
        return [dx, dw, db]

    out = y.reshape(a.shape[:-1] + (w.shape[0],))
    return record("Linear", (x, weight, bias), (out,), backward, composite, reads=NOT_BIAS)[0]


def _few_rows(rows: int, weight: tuple[int, ...]) -> bool:
    """Whether to compute x W^T as (W x^T)^T: OpenBLAS runs a product with a few rows
    (a batch of 2 to 64) against a bigger weight 1.1-2.2x faster with the weight as the left
    operand (measured on 2 threads: (8, 1568) x (128, 1568) 98 -> 57 µs, (16, 4096) x
    (256, 4096) 631 -> 282 µs, (64, 784) x (512, 784) 355-669 -> 324-463 µs; at 256 rows
    and for small weights the usual order is as fast or faster)."""
    out, inner = weight
    return 2 <= rows <= 64 and rows < out and out * inner >= 1 << 15


def _threaded(x_shape: tuple[int, ...], weight: tuple[int, ...]) -> bool:
    """Whether the layer's product is big enough to run on threads (`THREADED_MNK`).

    Such a product then runs on the compiled programs' thread pool rather than OpenBLAS's:
    an OpenBLAS worker spins for a while after each threaded product, and on a machine with
    as many cores as threads it takes the core the pool's worker needs (the spec CNN's
    batch-64 step, its convolutions compiled: 48 ms with the linear layers on OpenBLAS, 33 ms
    with them compiled, 37-41 ms with one BLAS thread).  Smaller products stay on NumPy,
    cheaper than a program call and on OpenBLAS's calling thread, and so does a single row,
    whose weight gradient is an outer product NumPy takes exactly (a compiled sum of one
    term would make its -0.0 entries +0.0)."""
    rows = math.prod(x_shape[:-1])
    return rows > 1 and rows * weight[0] * weight[1] >= THREADED_MNK
