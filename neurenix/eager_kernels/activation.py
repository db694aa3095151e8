"""ReLU as an eager kernel: one NumPy pass forward and one masked blend backward, instead of
the comparisons and selects its primitive composition dispatches."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from neurenix.compiler.ops import REGISTRY

from ..tensor import Tensor
from .record import Arrays, record

_SELECT = REGISTRY["where"].impl


def relu(x: Tensor, composite: Callable[..., Sequence[Tensor]]) -> Tensor:
    """max(0, x) with PyTorch's rules, as the composition gives them: -0.0 stays -0.0 and nan
    passes (NumPy's maximum returns its second operand on a tie and a nan operand); the
    gradient is 0 where x <= 0 and g elsewhere, nan included."""
    a = np.asarray(x._data)
    zero = np.zeros((), a.dtype)

    def backward(grads: Arrays) -> Arrays:
        return [_SELECT(a <= zero, zero, grads[0])]

    return record("Relu", (x,), (np.maximum(zero, a),), backward, composite)[0]
