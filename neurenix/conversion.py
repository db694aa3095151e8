"""Moving and converting tensors: `x.to(device, dtype)`, `x.cpu()` and `x.detach()`."""
from __future__ import annotations

from typing import Any

import numpy as np

from neurenix.compiler.types import DType

from .autograd import FunctionNode, OutputNode
from .device import CPU, Device, as_device
from .device_ops import current
from .elementwise import cast, stop_gradient
from .state import current_trace, is_grad_enabled
from .tensor import Tensor, move_storage, share, shared
from .view_writes import share_version


def to(x: Tensor, *args: Any, inplace: bool = False, **kwargs: Any) -> Tensor:
    """Move to a device and/or convert to a dtype: `to(device)`, `to(dtype)`, or both.

    With `inplace=True` the tensor itself is moved (used on parameters: the object stays,
    so optimizers holding it keep working), else a new tensor is returned (or x itself, when
    nothing changes); a new tensor on another device passes gradients back to x's.
    """
    dtype = kwargs.pop("dtype", None)
    device = kwargs.pop("device", None)
    if kwargs:
        raise TypeError(f"to: unexpected keyword arguments {sorted(kwargs)}")
    for a in args:
        if isinstance(a, DType):
            dtype = a
        elif isinstance(a, Tensor):
            dtype, device = a.dtype, a.device
        else:
            device = a
    target = x._device if device is None else as_device(device, check=True)
    if inplace:
        if target != x._device:
            x._data = move_storage(_current(x), target)
            x._device = target
            x._alias = None  # new memory: aliases of the old storage stay where they are
            if x._grad is not None and x._grad._data is not None:
                x._grad = to(x._grad.detach(), target)
        if dtype is not None and dtype != x._dtype:
            out = cast(x, dtype)
            x._data, x._dtype, x._alias = out._data, out._dtype, None
        return x
    out = x
    if target != x._device:
        out = _moved(x, target)
    if dtype is not None and dtype != out._dtype:
        out = cast(out, dtype)
    return out


def cpu(x: Tensor) -> Tensor:
    """x on the CPU (x itself when it is there)."""
    return to(x, CPU)


def _moved(x: Tensor, target: Device) -> Tensor:
    """A copy of x on `target`; under grad mode its gradient flows back to x's device."""
    if x._data is None or current_trace() is not None:
        raise RuntimeError(f"to: moving a traced tensor to {target.name} inside a compiled "
                           f"function is not supported; move it before the call")
    out = Tensor._wrap(move_storage(_current(x), target), x._dtype, target)
    if x.requires_grad and is_grad_enabled():
        source = x._device

        def backward(grads: list[Tensor | None]) -> list[Tensor | None]:
            g = grads[0]
            return [None if g is None else to(g, source)]

        out.requires_grad = True
        out._node = OutputNode(FunctionNode("to_backward", (x,), 1, backward), 0)
    return out


def detach(x: Tensor) -> Tensor:
    """The same values, cut from the autograd graph; storage is shared (on a device: an alias
    of x's storage, so in-place updates through either are seen by both), and so is the
    version counter, as PyTorch's `detach()` shares it: a write through the result counts as
    a write into x for autograd (`.data` does not)."""
    data = x._data
    trace = current_trace()
    if trace is not None and (data is None or not trace.made_here(x)):
        return trace.detached(x)
    if data is None:
        return stop_gradient(x)
    if isinstance(data, np.ndarray):
        out = Tensor._wrap(data, x._dtype, x._device)
        share_version(out, x)
        return out
    out = Tensor._wrap(current(x), x._dtype, x._device)
    share(out, shared(x))
    return out


def _current(x: Tensor) -> Any:
    """x's storage as it is now (a device view re-derived from its base if that changed)."""
    data = x._data
    return data if data is None or isinstance(data, np.ndarray) else current(x)
