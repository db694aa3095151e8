"""Run one primitive on a device: a one-node program per signature, compiled once.

`dispatch.apply` hands an operation here when an input's storage is not a NumPy array.  The
operation runs where its device tensors are: a graph of the one primitive is built
(`GraphBuilder`), compiled for the device's target (`pipeline.build(graph,
backends.target_for(kind))`: "cuda_tf32" on CUDA while `neurenix.backends.allow_tf32`), loaded
once (`backend_module(kind).Executable`) and kept, least recently used out beyond
`CACHE_LIMIT`, under the key (op, target, device, each operand's shape and dtype and how it
arrives, attributes).  A call runs `Executable.run_device` on the operands'
buffers and returns the new output buffer: no value goes through the host.

Host operands an operation on a device accepts, as PyTorch does (anything else raises a
ValueError naming both devices):

- a scalar: a host array holding one value, possibly broadcast (a Python number the
  elementwise functions wrapped and expanded, a 0-d CPU tensor) that needs no gradient;
- a `HostConstant`: a value the frontend made for itself (a fill in a gradient rule, a ramp
  of class indices, a dropout mask drawn without a device);
- the integer index of `gather` / `scatter_add` (CPU indices into a device tensor).

They are uploaded compacted, one element per broadcast axis, and broadcast back by an `expand`
in the program, so a scalar is one element however large the operation, and a new scalar value
reuses the program (values are inputs, never baked into the code).  Single values are kept
uploaded per device (`SCALAR_LIMIT` of them), so a training loop's constants upload once.

Views: the result of a view primitive (`VIEWS`) is made an alias of its input's storage
(`mark_view`, `neurenix.tensor.Alias`); every input is read as its storage holds it now
(`current`: a view whose base was written since is derived again, on the device).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neurenix import runtime
from neurenix.compiler.graph.graph_builder import GraphBuilder
from neurenix.compiler.ops import Primitive
from neurenix.compiler.pipeline import build
from neurenix.compiler.types import TensorType, dtype_from_name

from .backends import target_for
from .device import Device
from .tensor import Alias, HostConstant, Tensor, alias_of, shared

CACHE_LIMIT = 1024
SCALAR_LIMIT = 512
INDEX_OPERANDS = {"gather": 1, "scatter_add": 1}  # position of the integer index operand
# operations that leave a device buffer as it is: the result shares it (buffers are never
# written, only replaced)
_IDENTITIES = {"stop_gradient", "cast", "reshape", "expand"}
# primitives whose NumPy reference returns a view of its input: on a device their result is a
# view too (an `Alias` of the input's storage); a reshape only where NumPy's does not copy
VIEWS = {"slice", "reshape", "permute", "expand", "unfold", "stop_gradient"}


@dataclass(frozen=True)
class Operand:
    """How one input reaches the program: a device buffer of `shape`, or a host array
    uploaded as `stored` (its compact shape) and expanded back to `shape`."""

    shape: tuple[int, ...]
    dtype: str
    stored: tuple[int, ...]
    on_host: bool


class _Cache:
    """Loaded executables by signature (LRU) and uploaded single values, with counters."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.programs: OrderedDict[tuple, Any] = OrderedDict()
        self.scalars: OrderedDict[tuple, Any] = OrderedDict()
        self.compiled = 0
        self.hits = 0


_CACHE = _Cache()


def cache_info() -> dict[str, int]:
    """How the program cache has done: programs `compiled`, calls that found theirs (`hits`),
    programs held (`size`) and single values kept uploaded (`scalars`)."""
    c = _CACHE
    return {"compiled": c.compiled, "hits": c.hits, "size": len(c.programs),
            "scalars": len(c.scalars)}


def clear_cache() -> None:
    """Forget every loaded program and uploaded value (the counters too)."""
    with _CACHE.lock:
        _CACHE.programs.clear()
        _CACHE.scalars.clear()
        _CACHE.compiled = _CACHE.hits = 0


def run(prim: Primitive, inputs: Sequence[Tensor], attrs: dict[str, Any],
        out_type: TensorType) -> tuple[Any, Device]:
    """Run `prim` on the device of its device inputs: (the output buffer, the device)."""
    device = _device_of(prim.name, inputs)
    operands, values = [], []
    for t in inputs:
        data = t._data
        if not isinstance(data, np.ndarray):
            data = current(t)
        if isinstance(data, np.ndarray):
            stored = _compact(data)
            operands.append(Operand(data.shape, t._dtype.name, stored.shape, True))
            values.append(stored)
        else:
            operands.append(Operand(data.shape, t._dtype.name, data.shape, False))
            values.append(data)
    if _is_identity(prim.name, operands, out_type):
        return values[0], device
    executable = _executable(prim.name, device, tuple(operands), attrs)
    buffers = [_upload(v, device) if o.on_host else v for o, v in zip(operands, values)]
    return executable.run_device(buffers)[0], device


def current(t: Tensor) -> Any:
    """Device tensor t's buffer as its storage holds it now: a view whose storage was written
    since it was derived is derived again (its recipe run on the device), a whole alias takes
    the storage's buffer (after `Storage.sync()`, which takes up a buffer assigned to an alias
    directly)."""
    data = t._data
    alias = alias_of(t)
    if alias is None:
        return data
    storage = alias.storage
    storage.sync()
    if alias.seen == storage.version:
        return t._data
    buffer = storage.buffer
    dtype = t._dtype
    for prim, attrs in alias.recipe:
        source = Tensor._wrap(buffer, dtype, t._device)
        out_type = prim.infer((TensorType(buffer.shape, dtype),), attrs)
        buffer, _ = run(prim, (source,), attrs, out_type)
    t._data, alias.seen = buffer, storage.version
    return buffer


def mark_view(out: Tensor, prim: Primitive, x: Tensor, attrs: dict[str, Any]) -> None:
    """Make `out`, the result of view primitive `prim` on device tensor x, a view of x's
    storage when the CPU's NumPy reference would have returned a view (see `VIEWS`)."""
    if isinstance(x._data, np.ndarray):
        return
    base = shared(x)
    alias = Alias(base.storage, base.recipe + ((prim, attrs),))
    if prim.name == "reshape" and base.recipe:
        source = base.positions()
        if not np.may_share_memory(prim.impl(source, **attrs), source):
            return  # NumPy copies: a new tensor, as on the CPU
    out._alias = alias


def _device_of(op: str, inputs: Sequence[Tensor]) -> Device:
    """The one device of the operation's tensors; a ValueError naming two that differ."""
    first = next(i for i, t in enumerate(inputs) if not isinstance(t._data, np.ndarray))
    device = inputs[first]._device
    for i, t in enumerate(inputs):
        data = t._data
        if isinstance(data, np.ndarray):
            if not travels(op, i, t):
                raise _mixed(op, device, t._device) if first < i else \
                    _mixed(op, t._device, device)
        elif t._device != device:
            raise _mixed(op, device, t._device)
    return device


def travels(op: str, index: int, t: Tensor) -> bool:
    """Whether host input `index` of `op`, t, may join an operation on a device (see the
    module docstring)."""
    data = t._data
    if type(data) is HostConstant:
        return True
    if INDEX_OPERANDS.get(op) == index and data.dtype.kind in "iu":
        return True
    return not t.requires_grad and _of_0d(data)


def _of_0d(array: np.ndarray) -> bool:
    """Whether `array` is a 0-d array or a view of one (a scalar the frontend reshaped or
    expanded to broadcast it): a CPU tensor of shape (1,) is not a scalar, as in PyTorch."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array.ndim == 0


def _mixed(op: str, a: Device, b: Device) -> ValueError:
    return ValueError(f"{op}: expected all tensors on one device, got {a.name} and {b.name} "
                      f"(move one with .to({a.name!r}) or .to({b.name!r}))")


def _compact(array: np.ndarray) -> np.ndarray:
    """The host array with each broadcast (zero-stride) axis cut to one element."""
    if not array.ndim or all(array.strides):
        return np.asarray(array)
    cut = tuple(slice(0, 1) if s == 0 and n > 1 else slice(None)
                for s, n in zip(array.strides, array.shape))
    return np.asarray(array[cut])


def _is_identity(op: str, operands: list[Operand], out_type: TensorType) -> bool:
    """Whether the result is the (device) input itself: a no-op cast, reshape or expand."""
    if op not in _IDENTITIES or operands[0].on_host:
        return False
    o = operands[0]
    return o.shape == tuple(out_type.shape) and o.dtype == out_type.dtype.name


def _key(op: str, device: Device, operands: tuple[Operand, ...],
         attrs: dict[str, Any]) -> tuple:
    # repr, not the values: it tells -0.0 from 0.0 and matches nan with nan
    return (op, target_for(device.type.value), device.name, operands,
            repr(sorted(attrs.items())))


def _executable(op: str, device: Device, operands: tuple[Operand, ...],
                attrs: dict[str, Any]) -> Any:
    """The loaded program running `op` on `operands` (compiled on the first call)."""
    key = _key(op, device, operands, attrs)
    cache = _CACHE
    with cache.lock:
        found = cache.programs.get(key)
        if found is not None:
            cache.programs.move_to_end(key)
            cache.hits += 1
            return found
    kind = device.type.value
    program, _ = build(_graph(op, operands, attrs), target_for(kind))
    module = runtime.backend_module(kind)
    module.prepare(program, None)
    executable = module.Executable(program)
    with cache.lock:
        cache.programs[key] = executable
        cache.compiled += 1
        while len(cache.programs) > CACHE_LIMIT:
            cache.programs.popitem(last=False)
    return executable


def _graph(op: str, operands: tuple[Operand, ...], attrs: dict[str, Any]) -> Any:
    """The graph of one primitive on `operands` (host ones expanded from their compact form)."""
    b = GraphBuilder(op)
    nodes = []
    for i, o in enumerate(operands):
        node = b.input(f"x{i}", TensorType(o.stored, dtype_from_name(o.dtype)))
        if o.stored != o.shape:
            node = b.apply("expand", node, shape=o.shape)
        nodes.append(node)
    return b.build([b.apply(op, *nodes, **attrs)])


def _upload(array: np.ndarray, device: Device) -> Any:
    """A host operand as a buffer on `device`; single values are kept uploaded."""
    kind = device.type.value
    buffer_type = runtime.backend_module(kind).Buffer
    if array.size != 1:
        return buffer_type.from_host(np.asarray(array, order="C"), kind)
    key = (device.name, array.shape, array.dtype.str, array.tobytes())
    cache = _CACHE
    with cache.lock:
        found = cache.scalars.get(key)
        if found is not None:
            cache.scalars.move_to_end(key)
            return found
    buffer = buffer_type.from_host(np.asarray(array, order="C"), kind)
    with cache.lock:
        cache.scalars[key] = buffer
        while len(cache.scalars) > SCALAR_LIMIT:
            cache.scalars.popitem(last=False)
    return buffer
