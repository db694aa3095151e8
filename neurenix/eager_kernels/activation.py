"""ReLU as an eager kernel: one NumPy pass forward and one masked blend backward, instead of
the comparisons and selects its primitive composition dispatches."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from neurenix.compiler.ops import REGISTRY

from ..state import is_grad_enabled
from ..tensor import Tensor
from . import workspace
from .record import Arrays, record

_SELECT = REGISTRY["where"].impl
_SIGNED = {4: np.int32, 8: np.int64}


def relu(x: Tensor, composite: Callable[..., Sequence[Tensor]]) -> Tensor:
    """max(0, x) with PyTorch's rules, as the composition gives them: -0.0 stays -0.0 and nan
    passes (NumPy's maximum returns its second operand on a tie and a nan operand); the
    gradient is 0 where x <= 0 and g elsewhere, nan included.  Where x <= 0 is found in the
    forward (as the composition's comparison is), so the backward reads nothing of x: a later
    write into x, even one no version counter sees, cannot change the gradient."""
    a = np.asarray(x._data)
    zero = np.zeros((), a.dtype)
    y = workspace.empty(a.shape, a.dtype)
    _maximum_with_zero(a, y)
    drop = None  # (record keeps no backward without grad)
    if is_grad_enabled() and x.requires_grad:
        drop = workspace.empty(a.shape, np.bool_)
        np.less_equal(a, zero, out=drop)

    def backward(grads: Arrays) -> Arrays:
        return [relu_grad(drop, grads[0])]

    return record("Relu", (x,), (y,), backward, composite, reads=(False,))[0]


_CHUNK = 1 << 16
"""Elements per `np.maximum` call against a zero array (256 KiB of float32)."""
_ZEROS: dict[np.dtype, np.ndarray] = {}


def _maximum_with_zero(a: np.ndarray, y: np.ndarray) -> None:
    """y = np.maximum(0, a), bit for bit, faster: NumPy's maximum of an array and a scalar
    runs an unvectorised loop (2.6x slower on the spec CNN's activations than two arrays),
    so a contiguous a is taken in chunks against a cached zero array of a chunk's length."""
    if a.size < 4096 or not a.flags.c_contiguous or a.dtype.kind != "f":
        np.maximum(np.zeros((), a.dtype), a, out=y)
        return
    zeros = _ZEROS.get(a.dtype)
    if zeros is None:
        zeros = _ZEROS[a.dtype] = np.zeros(_CHUNK, a.dtype)
        zeros.flags.writeable = False
    flat, out = a.reshape(-1), y.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        end = min(flat.size, start + _CHUNK)
        np.maximum(zeros[:end - start], flat[start:end], out=out[start:end])


def relu_grad(drop: np.ndarray, g: np.ndarray) -> np.ndarray:
    """where(drop, +0.0, g), bit for bit, in one pass over g: g's bits and-ed with a mask
    that is all ones where `drop` (x <= 0) is false (a byte per element, sign-extended by
    the bitwise and), so that no wider mask is allocated, written and freed."""
    signed = _SIGNED.get(g.dtype.itemsize)
    if signed is None or g.shape != drop.shape or g.size < 256:
        return _SELECT(drop, np.zeros((), g.dtype), g)
    mask = workspace.empty(drop.shape, np.int8)
    np.subtract(drop.view(np.int8), 1, out=mask)  # 0 where dropped, -1 (every bit) elsewhere
    out = workspace.empty(g.shape, g.dtype)
    np.bitwise_and(g.view(signed), mask, out=out.view(signed))
    return out
