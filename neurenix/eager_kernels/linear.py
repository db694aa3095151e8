"""The fully connected layer as one eager kernel: y = x W^T + b (PyTorch's addmm).

As primitives a Linear layer is a transpose, a product, and a reshape, expand and add for the
bias, five tape nodes whose backward gives the weight gradient as a transposed view (copied
into C order when a leaf takes it).  Here it is one node: the same product and add forward,
and a backward of three products that each give an array of its own: dx = g W,
dW = g^T x (row-major, as the weight), db = the sum of g over the rows.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .. import state
from ..tensor import Tensor
from .record import Arrays, record


def linear(x: Tensor, weight: Tensor, bias: Tensor | None,
           composite: Callable[..., Sequence[Tensor]]) -> Tensor:
    """x (*, in) @ weight (out, in)^T + bias (out,), checked by the caller; `composite(x,
    weight, bias)` is the same as primitives."""
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
    on = state.is_grad_enabled()
    wanted = [on and t is not None and t.requires_grad for t in (x, weight, bias)]

    def backward(grads: Arrays) -> Arrays:
        g = grads[0]
        if g is None:
            return [None, None, None]
        g = g.reshape(-1, g.shape[-1]) if g.ndim != 2 else g
        dx = (g @ w).reshape(a.shape) if wanted[0] else None
        dw = g.T @ rows if wanted[1] else None
        db = np.add.reduce(g, axis=0) if wanted[2] else None
        return [dx, dw, db]

    out = y.reshape(a.shape[:-1] + (w.shape[0],))
    return record("Linear", (x, weight, bias), (out,), backward, composite)[0]


def _few_rows(rows: int, weight: tuple[int, ...]) -> bool:
    """Whether to compute x W^T as (W x^T)^T: OpenBLAS runs a product with a few rows
    (a batch of 2 to 64) against a bigger weight 1.1-2.2x faster with the weight as the left
    operand (measured on 2 threads: (8, 1568) x (128, 1568) 98 -> 57 µs, (16, 4096) x
    (256, 4096) 631 -> 282 µs, (64, 784) x (512, 784) 355-669 -> 324-463 µs; at 256 rows
    and for small weights the usual order is as fast or faster)."""
    out, inner = weight
    return 2 <= rows <= 64 and rows < out and out * inner >= 1 << 15
