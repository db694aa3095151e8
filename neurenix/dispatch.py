"""The one dispatch function every tensor operation goes through.

`apply(op, *tensors, **attrs)` checks the op's type rule, runs it on the tensors' device (on the
CPU: the registry's NumPy reference; elsewhere: a one-op program, `neurenix.device_ops`), wraps
the result and, under grad mode, records it on the autograd tape.  While a trace is active
(`neurenix.compile`), the trace `neurenix.state` holds gets the operation instead
(`trace.process_primitive`, JAX's `bind`) and appends a graph node.

An operation without inputs (a `full`, an `iota`) gives a `HostConstant`: a value the frontend
made for itself, which an operation on a device takes along as it takes a Python scalar.

The host path is the eager hot path (a few microseconds an operation on small tensors): type
rules are cached (`_TYPES`), NumPy's warnings are silenced by swapping its error state rather
than entering `np.errstate`, and results are made without `Tensor._wrap`'s calls (`wrap`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from neurenix.compiler.graph.builder import Builder
from neurenix.compiler.ops import REGISTRY, Primitive
from neurenix.compiler.ops.registry import non_differentiable
from neurenix.compiler.types import DType, TensorType

from . import device_ops, view_writes
from .autograd import CROSS, VJP_READS, TapeNode
from .device import CPU, Device
from .state import EPOCH, read_grad_mode, read_trace
from .tensor import HostConstant, Tensor, alias_of, version_of

try:  # NumPy 2: the error state is a context variable holding an opaque "extobj"
    from numpy._core.umath import _extobj_contextvar as _NP_ERRORS
    from numpy._core.umath import _make_extobj
except ImportError:  # pragma: no cover - elsewhere `_quietly` enters np.errstate
    _NP_ERRORS = None
_QUIET: dict[Any, Any] = {}
"""The caller's NumPy error state -> the same with every floating-point error ignored."""

_NO_ARITHMETIC = frozenset({"reshape", "permute", "expand", "slice", "concat"})
"""Primitives whose references only move elements, so never raise a floating-point warning."""

_TYPES: dict[Any, TensorType] = {}
"""The type rule's answer per (op, input shapes and dtype names, attributes): rules are pure
functions of these, so a hit skips building `TensorType`s and running the rule.  Only successes
are kept (an error is raised again, with its message, every time) and only for attributes whose
equality is exact (`_attrs_key`)."""
_TYPES_LIMIT = 4096
_EXACT = frozenset({int, float, str, bool, type(None)})

_object_new = object.__new__


def _attrs_key(attrs: dict[str, Any]) -> tuple | None:
    """The attributes as part of a `_TYPES` key, or None when one of them is not a plain
    number, string or tuple of ints (whose equality could mix types: 1 == 1.0 == True)."""
    parts: list[Any] = []
    for name, value in attrs.items():
        kind = type(value)
        if kind is tuple:
            for item in value:
                if type(item) is not int:
                    return None
        elif kind not in _EXACT:
            return None
        parts.append((name, kind, value))
    return tuple(parts)


def apply(op: str, *inputs: Tensor, **attrs: Any) -> Tensor:
    """Apply primitive `op` to tensors eagerly, recording it for autograd when needed."""
    prim = REGISTRY[op]
    trace = read_trace()
    if trace is not None:
        return trace.process_primitive(op, inputs, attrs)
    # the inputs' arrays and their `_TYPES` key, unrolled for up to three inputs (the hot path)
    n = len(inputs)
    if n == 1:
        x = inputs[0]
        a = x._data
        if type(a) is not np.ndarray:  # a device buffer, a host constant, a symbolic value
            return _apply_elsewhere(prim, inputs, [a], attrs)
        arrays: tuple[np.ndarray, ...] = (a,)
        key: Any = (op, a.shape, x._dtype.name)
    elif n == 2:
        x, y = inputs
        a, b = x._data, y._data
        if type(a) is not np.ndarray or type(b) is not np.ndarray:
            return _apply_elsewhere(prim, inputs, [a, b], attrs)
        arrays = (a, b)
        key = (op, a.shape, b.shape, x._dtype.name, y._dtype.name)
    elif n == 3:
        x, y, z = inputs
        a, b, c = x._data, y._data, z._data
        if type(a) is not np.ndarray or type(b) is not np.ndarray or type(c) is not np.ndarray:
            return _apply_elsewhere(prim, inputs, [a, b, c], attrs)
        arrays = (a, b, c)
        key = (op, a.shape, b.shape, c.shape, x._dtype.name, y._dtype.name, z._dtype.name)
    else:
        arrays = tuple(t._data for t in inputs)
        for a in arrays:
            if type(a) is not np.ndarray:
                return _apply_elsewhere(prim, inputs, list(arrays), attrs)
        key = (op, *[a.shape for a in arrays], *[t._dtype.name for t in inputs])
    if attrs:
        akey = _attrs_key(attrs)
        key = None if akey is None else (key, akey)
    out_type = _TYPES.get(key) if key is not None else None
    if out_type is None:
        out_type = prim.infer(tuple(TensorType(a.shape, t._dtype)
                                    for a, t in zip(arrays, inputs)), attrs)
        if key is not None:
            if len(_TYPES) >= _TYPES_LIMIT:
                _TYPES.clear()
            _TYPES[key] = out_type
    dtype = out_type.dtype
    if op in _NO_ARITHMETIC:
        out = prim.impl(*arrays, **attrs)
    else:
        out = _quietly(prim.impl, arrays, attrs)
    if type(out) is not np.ndarray or out.dtype.type is not dtype.np_type:
        out = _as_array(out, dtype.np_type)
    if not inputs:
        out = out.view(HostConstant)
    result = wrap(out, dtype)
    if op in view_writes.SHARING and np.may_share_memory(out, arrays[0]):
        view_writes.mark(result, prim, inputs[0], attrs)
    if read_grad_mode():
        return _record(prim, inputs, attrs, result)
    return result


def wrap(array: Any, dtype: DType, device: Device = CPU) -> Tensor:
    """`Tensor._wrap(array, dtype, device)` with its calls inlined, for the hot path (a new
    tensor owning storage `array`, which must not be shared mutably)."""
    t = _object_new(Tensor)
    t._data = array
    t._dtype = dtype
    t._device = device
    t.requires_grad = False
    t._grad = None
    t._node = None
    t._retains_grad = False
    t._version = 0
    t._value = None
    t._born = EPOCH[0]
    t._view = None
    return t


def _run_host(prim: Primitive, arrays: Sequence[np.ndarray], attrs: dict[str, Any],
              dtype: DType) -> np.ndarray:
    """The NumPy reference on host arrays, as an array of `dtype`."""
    out = _quietly(prim.impl, arrays, attrs)
    if type(out) is not np.ndarray or out.dtype.type is not dtype.np_type:
        out = _as_array(out, dtype.np_type)
    return out


def _as_array(out: Any, want: type) -> np.ndarray:
    """A reference's result as an array of NumPy type `want` (itself when it is one)."""
    if not isinstance(out, np.ndarray) or out.dtype != want:
        out = np.asarray(out, dtype=want)
    return out


def _quietly(impl: Callable[..., Any], arrays: Sequence[np.ndarray],
             attrs: dict[str, Any]) -> Any:
    """`impl(*arrays, **attrs)` with NumPy's floating-point warnings off for the call only (an
    overflow or 0 / 0 gives inf or nan, as in PyTorch, silently); the caller's error state is
    set back after it, so nothing leaks into user code."""
    if _NP_ERRORS is None:
        with np.errstate(all="ignore"):
            return impl(*arrays, **attrs)
    caller = _NP_ERRORS.get()
    quiet = _QUIET.get(caller)
    if quiet is None:
        if len(_QUIET) >= 64:
            _QUIET.clear()
        quiet = _QUIET[caller] = _make_extobj(all="ignore")
    token = _NP_ERRORS.set(quiet)
    try:
        return impl(*arrays, **attrs)
    finally:
        _NP_ERRORS.reset(token)


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
    vjp = prim.vjp
    if not read_grad_mode() or result._dtype.category != 2 or vjp is None \
            or vjp is non_differentiable:
        return result
    needed = False
    for t in inputs:
        if t._view is not None:
            view_writes.refresh(t, apply)  # a view of a base written since: from its new value
        if t.requires_grad:
            needed = True
    if needed:
        result.requires_grad = True
        reads = VJP_READS.get(prim.name)
        if reads is None:
            versions = tuple([version_of(t) for t in inputs])
        elif reads is CROSS:  # a product: each factor's gradient reads the other
            x, y = inputs
            versions = (version_of(x) if y.requires_grad else None,
                        version_of(y) if x.requires_grad else None)
        elif not reads:
            versions = (None,) * len(inputs)
        else:
            versions = tuple([version_of(t) if read else None for t, read in zip(inputs, reads)])
        result._node = TapeNode.record(prim, tuple(inputs), attrs,
                                       wrap(result._data, result._dtype, result._device),
                                       versions)
    return result


class EagerBuilder(Builder):
    """The builder VJP rules and compositions use on concrete tensors."""

    def apply(self, op: str, *inputs: Tensor, **attrs: Any) -> Tensor:
        return apply(op, *inputs, **attrs)

    def type_of(self, value: Tensor) -> TensorType:
        return TensorType(value.shape, value._dtype)

    def transposed_layout(self, value: Tensor) -> bool:
        a = value._data
        return type(a) is np.ndarray and a.ndim == 2 and a.flags.f_contiguous \
            and not a.flags.c_contiguous

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
