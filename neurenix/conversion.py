"""Moving and converting tensors: `x.to(device, dtype)` and `x.detach()`."""
from __future__ import annotations

from typing import Any

from neurenix.compiler.types import DType

from .device import as_device
from .elementwise import cast, stop_gradient
from .tensor import Tensor


def to(x: Tensor, *args: Any, inplace: bool = False, **kwargs: Any) -> Tensor:
    """Move to a device and/or convert to a dtype: `to(device)`, `to(dtype)`, or both.

    With `inplace=True` the tensor itself is moved (used on parameters), else a new
    tensor is returned (or x itself, when nothing changes).
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
    out = x if dtype is None or dtype == x._dtype else cast(x, dtype)
    if inplace:
        if out is not x:
            x._data, x._dtype = out._data, out._dtype
        x._device = target
        return x
    if target != x._device:
        if out is x:
            out = Tensor._wrap(x._data, x._dtype)
            out.requires_grad, out._node = x.requires_grad, x._node
        out._device = target
    return out


def detach(x: Tensor) -> Tensor:
    """The same values, cut from the autograd graph (storage is shared)."""
    if x._data is None:
        return stop_gradient(x)
    return Tensor._wrap(x._data, x._dtype)
