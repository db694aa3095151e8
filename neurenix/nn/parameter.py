"""`Parameter`: a tensor that a Module registers as learnable."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..device import CPU
from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor that requires grad by default and that Modules collect in parameters().

    Built from a Tensor it shares that tensor's storage, as torch.nn.Parameter does.
    """

    __slots__ = ()

    def __init__(self, data: Any = None, requires_grad: bool = True) -> None:
        if data is None:
            data = np.zeros((0,), np.float32)
        if isinstance(data, Tensor):
            self._data, self._dtype, self._device = data._data, data._dtype, data._device
        else:
            base = Tensor(data)
            self._data, self._dtype, self._device = base._data, base._dtype, CPU
        self._fresh_state()
        if requires_grad:
            self.requires_grad_(True)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + Tensor.__repr__(self.detach()) + \
            ("" if self.requires_grad else " (requires_grad=False)")
