"""`neurenix.Tensor`: a device buffer with a dtype, a shape and autograd metadata.

This module holds the storage and the metadata (dtype, device, autograd and tracing fields)
and what reads them; it imports no operation.  The operations (`x + y`, `x.sum(1)`, `x[i]`,
`x.to(...)`, `x.backward()`) are installed onto `Tensor` from one table,
`neurenix.tensor_methods`, when the package is imported.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

from neurenix.compiler.types import DType, bool_, dtype_from_numpy, float32, int64

from . import state
from .call_site import refuse
from .device import CPU, Device, as_device
from .state import EPOCH


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
    are read through `_host()` and replaced through `_set_host()`.
    """

    __slots__ = ("_data", "_dtype", "_device", "requires_grad", "_grad", "_node",
                 "_retains_grad", "_version", "_value", "_born", "__weakref__")
    __array_priority__ = 1000  # NumPy defers `ndarray op Tensor` to Tensor's reflected method

    def __init__(self, data: Any, dtype: DType | None = None, device: Any = None,
                 requires_grad: bool = False) -> None:
        if dtype is not None and not isinstance(dtype, DType):
            raise TypeError(f"Tensor: dtype must be a neurenix dtype such as neurenix.float32, "
                            f"got {dtype!r}")
        self._data, self._dtype = _array_from(data, dtype)
        self._device = CPU if device is None else as_device(device, check=True)
        self._fresh_state()
        if requires_grad:
            self.requires_grad_(True)

    def _fresh_state(self) -> None:
        """A new leaf's autograd and tracing fields (one place for every constructor)."""
        self.requires_grad = False
        self._grad: Tensor | None = None
        self._node = None
        self._retains_grad = False
        self._version = 0
        self._value = None
        self._born = EPOCH[0]  # see state.use_trace: made in a trace or not

    @classmethod
    def _wrap(cls, array: np.ndarray, dtype: DType | None = None) -> Tensor:
        """Wrap an array without copying (internal: the array must not be shared mutably)."""
        t = object.__new__(cls)
        t._data = array
        t._dtype = dtype if dtype is not None else dtype_from_numpy(array.dtype)
        t._device = CPU
        t._fresh_state()
        return t

    # ---- storage: read and replaced only here (see neurenix.runtime.buffer) ------------------

    def _host(self) -> np.ndarray:
        """The values as a host array: the storage itself on the CPU (writes to it are
        writes to the tensor), a copy of a device buffer's values elsewhere."""
        data = self._data
        return data if isinstance(data, np.ndarray) else data.to_host()

    def _set_host(self, array: np.ndarray) -> None:
        """Replace the values with the host `array`, kept on the device the storage is on."""
        data = self._data
        if not isinstance(data, np.ndarray):
            array = type(data).from_host(array, data.device)
        self._data = array

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
        return len(self.shape)

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
        """A tensor sharing this one's storage, detached from autograd."""
        return self.detach()

    @data.setter
    def data(self, value: Tensor) -> None:
        if not isinstance(value, Tensor):
            value = Tensor(value, dtype=self._dtype)
        self._data = value._data
        self._dtype = value._dtype

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
        """The values as a NumPy array (sharing memory on the CPU, as PyTorch does)."""
        self._concrete("numpy()")
        if self.requires_grad:
            raise RuntimeError("numpy: can't call numpy() on a tensor that requires grad; "
                               "use tensor.detach().numpy()")
        return self._host()

    def tolist(self) -> Any:
        self._concrete("tolist()")
        return self._host().tolist()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        self._concrete("conversion to a NumPy array")
        values = self._host()
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

    def __repr__(self) -> str:
        if self._data is None:
            return f"tensor(<traced {self._value.type}>)"
        body = np.array2string(self._host(), precision=4, separator=", ", prefix="tensor(",
                               threshold=200, edgeitems=3)
        extras = []
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

    # ---- in-place updates (data only, refused where autograd would be wrong) -----------------

    def _check_inplace(self, op: str) -> None:
        if self.requires_grad and self._node is None and state.is_grad_enabled():
            raise RuntimeError(f"{op}: a leaf tensor that requires grad cannot be modified in "
                               "place; wrap the update in neurenix.no_grad()")

    def copy_(self, src: Tensor | Any) -> Tensor:
        """Overwrite this tensor's values with src's (broadcast and cast to this dtype)."""
        self._check_inplace("copy_")
        self._version += 1
        trace = state.current_trace()
        if trace is not None and trace.write(self, src):
            return self
        value = src._host() if isinstance(src, Tensor) else np.asarray(src)
        values = self._host()
        try:
            np.copyto(values, np.broadcast_to(value, self.shape), casting="unsafe")
        except ValueError:
            raise ValueError(f"copy_: cannot copy a tensor of shape {tuple(np.shape(value))} "
                             f"into one of shape {tuple(self.shape)}") from None
        except TypeError:
            values = np.array(values)  # a read-only view: take a private copy first
            np.copyto(values, np.broadcast_to(value, self.shape), casting="unsafe")
        self._set_host(values)
        return self

    def fill_(self, value: float) -> Tensor:
        return self.copy_(np.asarray(value))

    def zero_(self) -> Tensor:
        return self.copy_(np.asarray(0))


def is_tensor(obj: Any) -> bool:
    return isinstance(obj, Tensor)


def is_scalar(obj: Any) -> bool:
    return isinstance(obj, (numbers.Number, np.generic)) and not isinstance(obj, Tensor)
