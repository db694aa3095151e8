"""`neurenix.Tensor`: a device buffer with a dtype, a shape and autograd metadata.

This module holds the storage and the metadata (dtype, device, autograd and tracing fields)
and what reads them; it imports no operation.  Device tensors that share memory (views,
`detach()`es) share a `Storage` cell through their `Alias`es, so that they alias as NumPy views
do on the CPU (see `Storage`; `neurenix.device_ops` re-derives stale views on the device).
The operations (`x + y`, `x.sum(1)`, `x[i]`, `x.to(...)`, `x.backward()`) are installed onto
`Tensor` from one table, `neurenix.tensor_methods`, when the package is imported.
"""
from __future__ import annotations

import copy
import numbers
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from neurenix import runtime
from neurenix.compiler.types import DType, bool_, dtype_from_numpy, float32, int64

from . import state
from .call_site import refuse
from .device import CPU, Device, as_device
from .state import EPOCH


class HostConstant(np.ndarray):
    """A host array the frontend made for itself (a fill, a ramp of indices, a random mask or
    seed drawn without a device): its tensor is on the CPU, but an operation with a tensor on
    a device takes it along (uploaded), as it takes a Python scalar.  Operations on host
    constants alone give host constants; anything else gives a plain array."""


def storage_on(array: np.ndarray, device: Device) -> Any:
    """`array`'s values as the storage of a tensor on `device`: the array itself on the CPU,
    a new buffer of the device's runtime elsewhere."""
    if device.type.value == "cpu":
        return array
    buffer = runtime.backend_module(device.type.value).Buffer
    return buffer.from_host(np.asarray(array, order="C"), device.type.value)


class Storage:
    """The memory that device tensors aliasing each other share (a base, its `detach()`es,
    its views): the current buffer and a version bumped by every write through any alias.
    Buffers are never written; a write replaces the storage's buffer.  The tensors holding the
    whole storage are kept (weakly): a write reaches them at once, and a buffer assigned to
    one of them directly (`t._data = ...`, as a compiled program's write-back does) is taken
    up by `sync()`."""

    __slots__ = ("buffer", "version", "holders")

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self.version = 0
        self.holders: list[weakref.ref] = []

    def hold(self, t: Tensor) -> None:
        """Register t, a tensor holding the whole storage."""
        self.holders = [h for h in self.holders if h() is not None]
        self.holders.append(weakref.ref(t))

    def sync(self) -> None:
        """Take up a buffer a holder was given directly as a write to the storage."""
        for ref in self.holders:
            t = ref()
            alias = None if t is None else alias_of(t)
            if alias is not None and alias.storage is self and alias.seen == self.version \
                    and t._data is not self.buffer and t._data is not None:
                _replace(alias, t._data)


class Alias:
    """How a device tensor aliases a `Storage`: the view primitives (`recipe`, (Primitive,
    attrs) pairs) that derive its values from the storage's buffer (none for the whole
    storage), the storage version its own `_data` was derived at (`seen`) and the one it was
    made at (`start`, from which `version_of` counts)."""

    __slots__ = ("storage", "recipe", "seen", "start", "_positions")

    def __init__(self, storage: Storage, recipe: tuple = (), seen: int | None = None) -> None:
        self.storage = storage
        self.recipe = recipe
        self.start = storage.version
        self.seen = self.start if seen is None else seen
        self._positions: np.ndarray | None = None

    def positions(self) -> np.ndarray:
        """The flat index into the storage's buffer of each of this view's elements (the
        recipe run by the NumPy references on a ramp, as the CPU would run it)."""
        if self._positions is None:
            shape = self.storage.buffer.shape
            pos = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
            for prim, attrs in self.recipe:
                pos = prim.impl(pos, **attrs)
            self._positions = pos
        return self._positions

    def writable_positions(self) -> np.ndarray:
        """`positions()` flattened; a RuntimeError, as in PyTorch, when elements overlap (an
        expanded view), since a write to them is ambiguous."""
        pos = np.ascontiguousarray(self.positions()).reshape(-1)
        if any(prim.name in _OVERLAPPING for prim, _ in self.recipe) and \
                np.unique(pos).size != pos.size:
            raise RuntimeError("unsupported operation: more than one element of the written-to "
                               "tensor refers to a single memory location (an expanded view); "
                               "clone() it before the in-place operation")
        return pos


_OVERLAPPING = {"expand", "unfold"}  # view primitives whose elements may share a location


def alias_of(t: Tensor) -> Alias | None:
    """t's `Alias` (None for a tensor that shares its storage with no other)."""
    return getattr(t, "_alias", None)


def shared(t: Tensor) -> Alias:
    """t's `Alias`, made (t becomes the whole of a new `Storage`) when it has none."""
    alias = alias_of(t)
    if alias is None:
        alias = t._alias = Alias(Storage(t._data))
        alias.storage.hold(t)
    return alias


def share(t: Tensor, alias: Alias) -> None:
    """Make t (a new tensor on a device) an alias of `alias`'s values: the same storage and
    recipe (`detach()`, `.data`)."""
    t._alias = Alias(alias.storage, alias.recipe, alias.seen)
    if not alias.recipe:
        alias.storage.hold(t)


def _replace(alias: Alias, buffer: Any) -> None:
    """A write through `alias`: its storage holds `buffer` from now on, at a new version, and
    so does every tensor holding the whole storage (they are never stale, even to code that
    reads `_data` directly, such as a compiled program's arguments); views re-derive theirs
    when read."""
    storage = alias.storage
    storage.buffer = buffer
    storage.version += 1
    alias.seen = storage.version
    for ref in storage.holders:
        t = ref()
        held = None if t is None else alias_of(t)
        if held is not None and held.storage is storage:
            t._data, held.seen = buffer, storage.version


class Version:
    """A version counter that tensors sharing host memory without a view link share (a tensor
    and its `detach()`es, PyTorch's shared counter): it stands in their `_version` slot, so
    that `t._version += 1` (every write does it) counts for all of them.  `source` is the
    tensor the first `detach()` was taken of (weakly: a detached tensor must not keep its
    source's graph alive), through which a write into a detached tensor reaches the autograd
    node that saved that memory (`neurenix.view_writes.protect_saved`)."""

    __slots__ = ("value", "source")

    def __init__(self, value: int, source: Tensor) -> None:
        self.value = value
        self.source = weakref.ref(source)

    def __iadd__(self, n: int) -> Version:
        self.value += n
        return self

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __add__(self, n: int) -> int:
        return self.value + n

    __radd__ = __add__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (int, Version)):
            return self.value == int(other)
        return NotImplemented

    def __lt__(self, other: Any) -> bool:
        return self.value < int(other)

    def __le__(self, other: Any) -> bool:
        return self.value <= int(other)

    def __gt__(self, other: Any) -> bool:
        return self.value > int(other)

    def __ge__(self, other: Any) -> bool:
        return self.value >= int(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Version({self.value})"


def version_of(t: Tensor) -> int:
    """t's version for autograd's "modified after use" check: its own in-place updates and
    those of the tensors it is a view of (`_view`), shared with its `detach()`es (`Version`),
    and, on a device, those through any alias of its storage (PyTorch's shared counter)."""
    version = t._version
    if type(version) is not int:
        version = version.value
    if type(t._data) is np.ndarray:
        view = t._view
        while view is not None:
            base = view[0]
            counted = base._version
            version += counted if type(counted) is int else counted.value
            view = base._view
        return version
    alias = alias_of(t)
    return version if alias is None else version + alias.storage.version - alias.start


def move_storage(data: Any, device: Device) -> Any:
    """A tensor's storage `data` moved to `device` (the storage itself when already there)."""
    on_cpu = isinstance(data, np.ndarray)
    if device.type.value == "cpu":
        return data if on_cpu else data.to_host()
    if not on_cpu and data.device == device.type.value:
        return data
    return storage_on(data if on_cpu else data.to_host(), device)


def _array_from(data: Any, dtype: DType | None) -> tuple[np.ndarray, DType]:
    """A fresh NumPy array (and its DType) for `Tensor(data)`, with PyTorch's defaults."""
    if isinstance(data, Tensor):
        arr = data._host()
    elif isinstance(data, np.ndarray):
        arr = data
    else:
        try:
            arr = np.asarray(data)
        except ValueError as e:
            raise ValueError(f"Tensor: cannot build a tensor from {type(data).__name__}: {e}") \
                from None
        if arr.dtype == object:
            raise TypeError(f"Tensor: expected numbers, nested lists or arrays, got "
                            f"{type(data).__name__} holding non-numeric values")
        if arr.dtype == np.float64 and dtype is None:
            arr = arr.astype(np.float32)  # Python floats default to float32, as in PyTorch
    if dtype is None:
        kind = arr.dtype.kind
        if kind == "f" and arr.dtype.itemsize < 4:
            arr = arr.astype(np.float32)
        elif kind in "iu" and arr.dtype not in (np.int32, np.int64):
            arr = arr.astype(np.int64)
        dtype = dtype_from_numpy(arr.dtype)
    return np.array(arr, dtype=dtype.np_type, copy=True), dtype


class Tensor:
    """A multi-dimensional array that can record the operations applied to it.

    `_data` is the storage: the NumPy array itself on the CPU, a `runtime.buffer.DeviceBuffer`
    elsewhere, None for a symbolic tensor (which holds its graph value in `_value`).  Values
    are read through `_host()` and replaced through `_set_host()` (or, with a device buffer,
    `_set_storage()`).  `_alias` (unset on the CPU and for a device tensor that shares no
    memory) is its `Alias`: read it with `alias_of`.  `_view` is how a view was taken of its
    base, for writes through it (`neurenix.view_writes`).
    """

    __slots__ = ("_data", "_dtype", "_device", "requires_grad", "_grad", "_node",
                 "_retains_grad", "_version", "_value", "_born", "_alias", "_view",
                 "__weakref__")
    __array_priority__ = 1000  # NumPy defers `ndarray op Tensor` to Tensor's reflected method

    def __init__(self, data: Any, dtype: DType | None = None, device: Any = None,
                 requires_grad: bool = False) -> None:
        if dtype is not None and not isinstance(dtype, DType):
            raise TypeError(f"Tensor: dtype must be a neurenix dtype such as neurenix.float32, "
                            f"got {dtype!r}")
        array, self._dtype = _array_from(data, dtype)
        if device is None:
            device = data._device if isinstance(data, Tensor) else CPU
        self._device = CPU if device is CPU else as_device(device, check=True)
        self._data = array if self._device == CPU else storage_on(array, self._device)
        self._fresh_state()
        if requires_grad:
            self.requires_grad_(True)

    def _fresh_state(self) -> None:
        """A new leaf's autograd and tracing fields (one place for every constructor but
        `dispatch.wrap`, the hot path's inlined `_wrap`, which sets the same)."""
        self.requires_grad = False
        self._grad: Tensor | None = None
        self._node = None
        self._retains_grad = False
        self._version = 0
        self._value = None
        self._born = EPOCH[0]  # see state.use_trace: made in a trace or not
        self._view = None  # (base, primitive, attrs, base version): neurenix.view_writes

    @classmethod
    def _wrap(cls, array: Any, dtype: DType | None = None, device: Device = CPU) -> Tensor:
        """Wrap a storage without copying (internal: a host array must not be shared mutably;
        a device buffer is never written, only replaced)."""
        t = object.__new__(cls)
        t._data = array
        t._dtype = dtype if dtype is not None else dtype_from_numpy(array.dtype)
        t._device = device
        t._fresh_state()
        return t

    # ---- storage: read and replaced only here (see neurenix.runtime.buffer) ------------------

    def _host(self) -> np.ndarray:
        """The values as a host array: the storage itself on the CPU (writes to it are
        writes to the tensor), a copy of a device buffer's values elsewhere (as they are now
        in the storage it aliases, see `Alias`)."""
        data = self._data
        if isinstance(data, np.ndarray):
            return data
        alias = alias_of(self)
        if alias is None:
            return data.to_host()
        alias.storage.sync()
        if alias.seen == alias.storage.version:
            return self._data.to_host()
        if not alias.recipe:
            self._data, alias.seen = alias.storage.buffer, alias.storage.version
            return self._data.to_host()
        return alias.storage.buffer.to_host().reshape(-1)[alias.positions()]

    def _set_host(self, array: np.ndarray) -> None:
        """Replace the values with the host `array`, kept on the device the storage is on (a
        view of a device tensor writes them into the storage it aliases)."""
        data = self._data
        if isinstance(data, np.ndarray):
            self._data = array
            return
        buffer = type(data).from_host(array, data.device)
        alias = alias_of(self)
        if alias is not None and alias.recipe:
            self._write_view(alias, array)
            self._data = buffer
        else:
            self._set_storage(buffer)

    def _set_storage(self, buffer: Any) -> None:
        """Make device `buffer` (this tensor's shape and dtype) its values, seen by every alias
        of its storage (a view writes them into the storage, through the host)."""
        alias = alias_of(self)
        if alias is not None and alias.recipe:
            self._write_view(alias, buffer.to_host())
        elif alias is not None:
            _replace(alias, buffer)
        self._data = buffer

    def _write_view(self, alias: Alias, values: np.ndarray) -> None:
        """Write a view's new `values` into the storage it aliases (PyTorch's copy into the
        base's memory): the storage's buffer with the view's elements replaced."""
        pos = alias.writable_positions()
        buffer = alias.storage.buffer
        base = buffer.to_host()
        base.reshape(-1)[pos] = np.broadcast_to(values, self.shape).reshape(-1)
        _replace(alias, type(buffer).from_host(base, buffer.device))

    @classmethod
    def _symbolic(cls, value: Any) -> Tensor:
        """A tensor standing for a graph value (`value.type` holds its shape and dtype)."""
        t = cls._wrap(None, value.type.dtype)  # type: ignore[arg-type]
        t._value = value
        return t

    # ---- properties -------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        data = self._data
        return data.shape if data is not None else self._value.type.shape

    @property
    def ndim(self) -> int:
        data = self._data
        return len(data.shape if data is not None else self._value.type.shape)

    @property
    def dtype(self) -> DType:
        return self._dtype

    @property
    def device(self) -> Device:
        return self._device

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def grad(self) -> Tensor | None:
        """The accumulated gradient (None until a backward reaches this tensor).

        Inside a trace (`neurenix.compile` of a training step) reads and writes go through
        the tracer, so a gradient computed, clipped or consumed in the trace stays symbolic.
        """
        trace = state.current_trace()
        if trace is not None:
            return trace.read_grad(self)
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        trace = state.current_trace()
        if trace is not None:
            trace.write_grad(self, value)
            return
        self._grad = value

    @property
    def grad_fn(self) -> str | None:
        """The name of the backward function that produced this tensor (None for leaves)."""
        return self._node.name if self._node is not None else None

    @property
    def data(self) -> Tensor:
        """A tensor sharing this one's storage, detached from autograd.  Unlike `detach()` it
        does not share the version counter on the CPU (as in PyTorch): a write through it is
        not seen by autograd's "modified in place" check."""
        data = self._data
        trace = state.read_trace()
        if isinstance(data, np.ndarray) and (trace is None or trace.made_here(self)):
            return Tensor._wrap(data, self._dtype, self._device)
        if trace is not None and (data is None or not trace.made_here(self)):
            # a view of the value now; a write through it counts as eager's would (on a
            # device `.data` is a `detach()`)
            return trace.detached(self, counted=self._device != CPU)
        return self.detach()

    @data.setter
    def data(self, value: Tensor) -> None:
        if not isinstance(value, Tensor):
            value = Tensor(value, dtype=self._dtype, device=self._device)
        self._data = value._data
        self._dtype = value._dtype
        self._device = value._device
        self._alias = None
        if not isinstance(value._data, np.ndarray) and value._data is not None:
            share(self, shared(value))

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    # ---- conversion -------------------------------------------------------------------------

    def item(self) -> float | int | bool:
        """The value of a one-element tensor as a Python number."""
        self._concrete("item()")
        if self.numel() != 1:
            raise ValueError(f"item: only a tensor with one element can be converted to a "
                             f"Python number, got shape {tuple(self.shape)} "
                             f"({self.numel()} elements)")
        return self._host().reshape(()).item()

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (sharing memory on the CPU, as PyTorch does; a copy of
        a device tensor's values)."""
        self._concrete("numpy()")
        if self.requires_grad:
            raise RuntimeError("numpy: can't call numpy() on a tensor that requires grad; "
                               "use tensor.detach().numpy()")
        return np.asarray(self._host())

    def tolist(self) -> Any:
        self._concrete("tolist()")
        return self._host().tolist()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        self._concrete("conversion to a NumPy array")
        values = np.asarray(self._host())
        return values if dtype is None else values.astype(dtype)

    def _concrete(self, what: str) -> None:
        """Refuse to read values out of a symbolic (traced) tensor, naming the user's line."""
        if self._data is None:
            raise refuse(self, what)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        self._concrete("bool()")
        if self.numel() != 1:
            raise ValueError(f"the truth value of a tensor with {self.numel()} elements is "
                             "ambiguous; use .any() or .all()")
        return bool(self._host().reshape(()).item())

    def __index__(self) -> int:
        self._concrete("use as an index")
        if not self._dtype.is_integer or self.numel() != 1:
            raise TypeError("only integer tensors of a single element can be used as an index")
        return int(self.item())

    def __iter__(self) -> Iterator[Tensor]:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def __hash__(self) -> int:
        return id(self)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        """Pickled as its values on the host, its device, requires_grad and grad; the autograd
        graph is not kept, so a loaded tensor is a leaf, as in PyTorch."""
        return (_rebuild_tensor, (type(self), self._concrete_host(), self._device.name,
                                  self.requires_grad, self._grad))

    def __deepcopy__(self, memo: dict[int, Any]) -> Tensor:
        """A leaf holding a copy of the values (and of the grad) on the same device."""
        return _rebuild_tensor(type(self), self._concrete_host().copy(),
                               self._device.name, self.requires_grad,
                               copy.deepcopy(self._grad, memo))

    def _concrete_host(self) -> np.ndarray:
        """`_host()`, refused for a traced tensor, which has no values to pickle or copy."""
        if self._data is None:
            raise TypeError("cannot pickle or copy a traced tensor (one inside a function "
                            "neurenix.compile is tracing)")
        return self._host()

    def __repr__(self) -> str:
        if self._data is None:
            return f"tensor(<traced {self._value.type}>)"
        body = np.array2string(self._host(), precision=4, separator=", ", prefix="tensor(",
                               threshold=200, edgeitems=3)
        extras = []
        if self._device != CPU:
            extras.append(f"device='{self._device.name}'")
        if self._dtype not in (float32, int64, bool_) or self.numel() == 0:
            extras.append(f"dtype={self._dtype!r}")
        if self._node is not None:
            extras.append(f"grad_fn=<{self._node.name}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extras) + ")"

    # ---- autograd ---------------------------------------------------------------------------

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and not self._dtype.is_floating:
            raise TypeError(f"requires_grad: only floating-point tensors can require gradients, "
                            f"got {self._dtype!r}")
        if not requires_grad and self._node is not None:
            raise RuntimeError("requires_grad_: you can only change requires_grad of leaf "
                               "tensors; use detach()")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self) -> None:
        """Also store `.grad` on this non-leaf tensor during backward."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad: the tensor does not require grad")
        self._retains_grad = True

    def detach_(self) -> Tensor:
        self._node = None
        self.requires_grad = False
        return self

    def contiguous(self) -> Tensor:
        return self

    # ---- in-place updates (`neurenix.inplace` makes them; refused where autograd would be wrong)

    def _check_inplace(self, op: str) -> None:
        if self.requires_grad and self._node is None and state.is_grad_enabled():
            raise RuntimeError(f"{op}: a leaf tensor that requires grad cannot be modified in "
                               "place; wrap the update in neurenix.no_grad()")


def _rebuild_tensor(cls: type, values: np.ndarray, device: str, requires_grad: bool,
                    grad: Tensor | None) -> Tensor:
    """A pickled tensor again: on its device when that kind is available here, else on the
    CPU (with a warning)."""
    dev = as_device(device)
    if dev != CPU and not dev.is_available():
        warnings.warn(f"a tensor pickled on {dev.name} is loaded on the CPU: {dev.name} is not "
                      f"available here", RuntimeWarning, stacklevel=2)
        dev = CPU
    t = cls._wrap(storage_on(values, dev), dtype_from_numpy(values.dtype),
                  CPU if dev == CPU else dev)
    t.requires_grad = requires_grad
    t._grad = grad
    return t


def is_tensor(obj: Any) -> bool:
    return isinstance(obj, Tensor)


def is_scalar(obj: Any) -> bool:
    return isinstance(obj, (numbers.Number, np.generic)) and not isinstance(obj, Tensor)
