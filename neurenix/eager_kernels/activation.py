"""ReLU as an eager kernel: one NumPy pass forward and one masked blend backward, instead of
the comparisons and selects its primitive composition dispatches."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from neurenix.compiler.ops import REGISTRY

from ..tensor import Tensor
from . import workspace
from .record import Arrays, record

_SELECT = REGISTRY["where"].impl
_SIGNED = {4: np.int32, 8: np.int64}


def relu(x: Tensor, composite: Callable[..., Sequence[Tensor]]) -> Tensor:
    """max(0, x) with PyTorch's rules, as the composition gives them: -0.0 stays -0.0 and nan
    passes (NumPy's maximum returns its second operand on a tie and a nan operand); the
    gradient is 0 where x <= 0 and g elsewhere, nan included."""
    a = np.asarray(x._data)
    zero = np.zeros((), a.dtype)

    def backward(grads: Arrays) -> Arrays:
        return [relu_grad(a, grads[0])]

    y = workspace.empty(a.shape, a.dtype)
    np.maximum(zero, a, out=y)
    return record("Relu", (x,), (y,), backward, composite)[0]


def relu_grad(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """where(a <= 0, +0.0, g), bit for bit, in one pass over g: g's bits and-ed with a mask
    that is all ones where a > 0 or a is NaN (a byte per element, sign-extended by the
    bitwise and), so that no wider mask is allocated, written and freed."""
    signed = _SIGNED.get(a.dtype.itemsize)
    if signed is None or g.dtype != a.dtype or g.shape != a.shape or a.size < 256:
        return _SELECT(a <= np.zeros((), a.dtype), np.zeros((), a.dtype), g)
    mask = workspace.empty(a.shape, np.int8)
    np.less_equal(a, 0, out=mask.view(np.bool_))
    np.subtract(mask, 1, out=mask)  # 0 where a <= 0, -1 (every bit set) elsewhere
    out = workspace.empty(a.shape, a.dtype)
    np.bitwise_and(g.view(signed), mask, out=out.view(signed))
    return out
