"""The one dispatch function every tensor operation goes through.

`apply(op, *tensors, **attrs)` checks the op's type rule, runs it on the tensors' device (on the
CPU: the registry's NumPy reference; elsewhere: a one-op program, `neurenix.device_ops`), wraps
the result and, under grad mode, records it on the autograd tape.  While a trace is active
(`neurenix.compile`), the trace `neurenix.state` holds gets the operation instead
(`trace.process_primitive`, JAX's `bind`) and appends a graph node.

An operation without inputs (a `full`, an `iota`) gives a `HostConstant`: a value the frontend
made for itself, which an operation on a device takes along as it takes a Python scalar.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from neurenix.compiler.graph.builder import Builder
from neurenix.compiler.ops import REGISTRY, Primitive
from neurenix.compiler.ops.registry import non_differentiable
from neurenix.compiler.types import DType, TensorType

from . import device_ops, view_writes
from .autograd import TapeNode
from .device import CPU, Device
from .state import current_trace, is_grad_enabled
from .tensor import HostConstant, Tensor, alias_of, version_of


def apply(op: str, *inputs: Tensor, **attrs: Any) -> Tensor:
    """Apply primitive `op` to tensors eagerly, recording it for autograd when needed."""
    prim = REGISTRY[op]
    trace = current_trace()
    if trace is not None:
        return trace.process_primitive(op, inputs, attrs)
    arrays = [t._data for t in inputs]
    for a in arrays:
        if type(a) is not np.ndarray:  # a device buffer, a host constant, a symbolic value
            return _apply_elsewhere(prim, inputs, arrays, attrs)
    out_type = prim.infer(tuple(TensorType(a.shape, t._dtype) for a, t in zip(arrays, inputs)),
                          attrs)
    out = _run_host(prim, arrays, attrs, out_type.dtype)
    if not inputs:
        out = out.view(HostConstant)
    result = Tensor._wrap(out, out_type.dtype)
    if prim.name in view_writes.TRACKED and np.may_share_memory(out, arrays[0]):
        view_writes.mark(result, prim, inputs[0], attrs)
    return _record(prim, inputs, attrs, result)


def _run_host(prim: Primitive, arrays: Sequence[np.ndarray], attrs: dict[str, Any],
              dtype: DType) -> np.ndarray:
    """The NumPy reference on host arrays, as an array of `dtype`."""
    with np.errstate(all="ignore"):
        out = prim.impl(*arrays, **attrs)
    want = dtype.np_type
    if not isinstance(out, np.ndarray) or out.dtype != want:
        out = np.asarray(out, dtype=want)
    return out


def _apply_elsewhere(prim: Primitive, inputs: Sequence[Tensor], arrays: list[Any],
                     attrs: dict[str, Any]) -> Tensor:
    """An operation with an input that is not a plain host array: on the device of its
    device inputs, else on the host (a CPU tensor's storage that is not an array read
    through `_host()`).  Host constants with scalars give a host constant."""
    for t in inputs:
        t._concrete(f"the operation {prim.name}")
    out_type = prim.infer(tuple(TensorType(t.shape, t._dtype) for t in inputs), attrs)
    if all(t._device == CPU for t in inputs):
        plain = [np.asarray(t._host()) for t in inputs]
        out = _run_host(prim, plain, attrs, out_type.dtype)
        if all(isinstance(a, np.ndarray) and device_ops.travels(prim.name, i, t)
               for i, (a, t) in enumerate(zip(arrays, inputs))):
            out = out.view(HostConstant)
        return _record(prim, inputs, attrs, Tensor._wrap(out, out_type.dtype))
    buffer, device = device_ops.run(prim, inputs, attrs, out_type)
    out = Tensor._wrap(buffer, out_type.dtype, device)
    if prim.name in device_ops.VIEWS:
        device_ops.mark_view(out, prim, inputs[0], attrs)
        if prim.name in view_writes.TRACKED and alias_of(out) is not None:
            view_writes.mark(out, prim, inputs[0], attrs)
    return _record(prim, inputs, attrs, out)


def _record(prim: Primitive, inputs: Sequence[Tensor], attrs: dict[str, Any],
            result: Tensor) -> Tensor:
    """`result`, recorded on the tape when grad mode is on and an input requires grad (with
    the inputs' versions, `tensor.version_of`: writes through their views and aliases count)."""
    if is_grad_enabled() and result._dtype.is_floating and prim.vjp is not None \
            and prim.vjp is not non_differentiable:
        for t in inputs:
            if t._view is not None:
                view_writes.refresh(t, apply)  # a view of a base written since: from its new value
        for t in inputs:
            if t.requires_grad:
                result.requires_grad = True
                result._node = TapeNode(prim, tuple(inputs), attrs,
                                        Tensor._wrap(result._data, result._dtype,
                                                     result._device),
                                        tuple(version_of(t) for t in inputs))
                break
    return result


class EagerBuilder(Builder):
    """The builder VJP rules and compositions use on concrete tensors."""

    def apply(self, op: str, *inputs: Tensor, **attrs: Any) -> Tensor:
        return apply(op, *inputs, **attrs)

    def type_of(self, value: Tensor) -> TensorType:
        return TensorType(value.shape, value._dtype)

    def full_like(self, value: Tensor, fill: float) -> Tensor:
        """`fill` in `value`'s shape and dtype: a host array on the CPU; for a device tensor a
        broadcast host constant, which the operation using it uploads as one element."""
        dtype = value._dtype
        if value._data is None:
            return super().full_like(value, fill)
        if type(value._data) is np.ndarray:
            return Tensor._wrap(np.full(value.shape, fill, dtype.np_type), dtype)
        one = np.asarray(fill, dtype.np_type)
        return Tensor._wrap(np.broadcast_to(one, value.shape).view(HostConstant), dtype)


EAGER = EagerBuilder()


def ones_array(shape: tuple[int, ...], dtype: DType) -> np.ndarray:
    """The seed gradient of a backward: ones of the root's shape and dtype."""
    return np.ones(shape, dtype=dtype.np_type)


def ones(shape: tuple[int, ...], dtype: DType, device: Device) -> Tensor:
    """Ones of `shape` and `dtype` on `device` (the seed of a backward from a device tensor)."""
    return Tensor(ones_array(shape, dtype), dtype=dtype, device=device)
