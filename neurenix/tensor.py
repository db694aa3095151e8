"""`neurenix.Tensor`: a device buffer with a dtype, a shape and autograd metadata.

Every operation on a tensor is a composition of registry primitives applied through
`neurenix.dispatch.apply`; the methods here only parse PyTorch-style arguments and forward to
the functional modules (`elementwise`, `reductions`, `shapes`, `indexing`).
"""
from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

from neurenix.compiler.types import DType, bool_, dtype_from_numpy, float32, float64, int32, int64

from .device import CPU, Device, as_device


def _array_from(data: Any, dtype: DType | None) -> tuple[np.ndarray, DType]:
    """A fresh NumPy array (and its DType) for `Tensor(data)`, with PyTorch's defaults."""
    if isinstance(data, Tensor):
        arr = data._data
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


# which trace a tensor was made in: a trace bumps it at its start and at its end, so a tensor
# whose `_born` equals the trace's epoch was made inside that trace (a constant of the traced
# function) and any other eager tensor it meets existed before (captured: an input)
TRACE_EPOCH = [0]


class Tensor:
    """A multi-dimensional array that can record the operations applied to it."""

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
        self._born = TRACE_EPOCH[0]

    @classmethod
    def _wrap(cls, array: np.ndarray, dtype: DType | None = None) -> Tensor:
        """Wrap an array without copying (internal: the array must not be shared mutably)."""
        t = object.__new__(cls)
        t._data = array
        t._dtype = dtype if dtype is not None else dtype_from_numpy(array.dtype)
        t._device = CPU
        t._fresh_state()
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
        if dispatch._ACTIVE.state is not None:
            from .trace_effects import read_grad
            return read_grad(self)
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        if dispatch._ACTIVE.state is not None:
            from .trace_effects import write_grad
            write_grad(self, value)
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

    @property
    def T(self) -> Tensor:
        return shapes.permute(self, tuple(reversed(range(self.ndim))))

    def size(self, dim: int | None = None):
        if dim is None:
            return self.shape
        return self.shape[shapes.normalize_dim(dim, self.ndim, "size")]

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
        if self._data.size != 1:
            raise ValueError(f"item: only a tensor with one element can be converted to a "
                             f"Python number, got shape {tuple(self.shape)} "
                             f"({self._data.size} elements)")
        return self._data.reshape(()).item()

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (sharing memory on the CPU, as PyTorch does)."""
        self._concrete("numpy()")
        if self.requires_grad:
            raise RuntimeError("numpy: can't call numpy() on a tensor that requires grad; "
                               "use tensor.detach().numpy()")
        return self._data

    def tolist(self) -> Any:
        self._concrete("tolist()")
        return self._data.tolist()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        self._concrete("conversion to a NumPy array")
        return self._data if dtype is None else self._data.astype(dtype)

    def _concrete(self, what: str) -> None:
        """Refuse to read values out of a symbolic (traced) tensor, naming the user's line."""
        if self._data is None:
            from .tracing import refuse
            raise refuse(self, what)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        self._concrete("bool()")
        if self._data.size != 1:
            raise ValueError(f"the truth value of a tensor with {self._data.size} elements is "
                             "ambiguous; use .any() or .all()")
        return bool(self._data.reshape(()).item())

    def __index__(self) -> int:
        self._concrete("use as an index")
        if not self._dtype.is_integer or self._data.size != 1:
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
        body = np.array2string(self._data, precision=4, separator=", ", prefix="tensor(",
                               threshold=200, edgeitems=3)
        extras = []
        if self._dtype not in (float32, int64, bool_) or self._data.size == 0:
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

    def backward(self, gradient: Tensor | None = None, retain_graph: bool | None = None,
                 create_graph: bool = False) -> None:
        """Accumulate the gradient of this tensor into `.grad` of the leaves it depends on."""
        autograd.backward(self, gradient, create_graph)

    def retain_grad(self) -> None:
        """Also store `.grad` on this non-leaf tensor during backward."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad: the tensor does not require grad")
        self._retains_grad = True

    def detach(self) -> Tensor:
        """The same values, cut from the autograd graph (storage is shared)."""
        if self._data is None:
            return elementwise.stop_gradient(self)
        return Tensor._wrap(self._data, self._dtype)

    def detach_(self) -> Tensor:
        self._node = None
        self.requires_grad = False
        return self

    def clone(self) -> Tensor:
        """A copy that stays connected to the autograd graph."""
        return elementwise.clone(self)

    def contiguous(self) -> Tensor:
        return self

    # ---- in-place updates (data only, refused where autograd would be wrong) -----------------

    def _check_inplace(self, op: str) -> None:
        if self.requires_grad and self._node is None and autograd.is_grad_enabled():
            raise RuntimeError(f"{op}: a leaf tensor that requires grad cannot be modified in "
                               "place; wrap the update in neurenix.no_grad()")

    def copy_(self, src: Tensor | Any) -> Tensor:
        """Overwrite this tensor's values with src's (broadcast and cast to this dtype)."""
        self._check_inplace("copy_")
        self._version += 1
        if dispatch._ACTIVE.state is not None and tracing_write(self, src):
            return self
        value = src._data if isinstance(src, Tensor) else np.asarray(src)
        try:
            np.copyto(self._data, np.broadcast_to(value, self.shape), casting="unsafe")
        except ValueError:
            raise ValueError(f"copy_: cannot copy a tensor of shape {tuple(np.shape(value))} "
                             f"into one of shape {tuple(self.shape)}") from None
        except TypeError:
            self._data = np.array(self._data)  # a read-only view: take a private copy first
            np.copyto(self._data, np.broadcast_to(value, self.shape), casting="unsafe")
        return self

    def fill_(self, value: float) -> Tensor:
        return self.copy_(np.asarray(value))

    def zero_(self) -> Tensor:
        return self.copy_(np.asarray(0))

    def to(self, *args: Any, inplace: bool = False, **kwargs: Any) -> Tensor:
        """Move to a device and/or convert to a dtype: `to(device)`, `to(dtype)`, or both.

        With `inplace=True` the tensor itself is moved (used on parameters), else a new
        tensor is returned (or this one, when nothing changes).
        """
        device, dtype = None, kwargs.pop("dtype", None)
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
        target = self._device if device is None else as_device(device, check=True)
        out = self if dtype is None or dtype == self._dtype else elementwise.cast(self, dtype)
        if inplace:
            if out is not self:
                self._data, self._dtype = out._data, out._dtype
            self._device = target
            return self
        if target != self._device:
            if out is self:
                out = Tensor._wrap(self._data, self._dtype)
                out.requires_grad, out._node = self.requires_grad, self._node
            out._device = target
        return out

    def cpu(self) -> Tensor:
        return self.to(CPU)

    def float(self) -> Tensor:
        return self.to(float32)

    def double(self) -> Tensor:
        return self.to(float64)

    def long(self) -> Tensor:
        return self.to(int64)

    def int(self) -> Tensor:
        return self.to(int32)

    def bool(self) -> Tensor:
        return self.to(bool_)

    def type_as(self, other: Tensor) -> Tensor:
        return self.to(other.dtype)

    # ---- operators --------------------------------------------------------------------------

    def __add__(self, other): return elementwise.add(self, other)
    def __radd__(self, other): return elementwise.add(other, self)
    def __sub__(self, other): return elementwise.sub(self, other)
    def __rsub__(self, other): return elementwise.sub(other, self)
    def __mul__(self, other): return elementwise.mul(self, other)
    def __rmul__(self, other): return elementwise.mul(other, self)
    def __truediv__(self, other): return elementwise.div(self, other)
    def __rtruediv__(self, other): return elementwise.div(other, self)
    def __floordiv__(self, other): return elementwise.floor_divide(self, other)
    def __rfloordiv__(self, other): return elementwise.floor_divide(other, self)
    def __mod__(self, other): return elementwise.remainder(self, other)
    def __rmod__(self, other): return elementwise.remainder(other, self)
    def __pow__(self, other): return elementwise.pow(self, other)
    def __rpow__(self, other): return elementwise.pow(other, self)
    def __matmul__(self, other): return linalg.matmul(self, other)
    def __rmatmul__(self, other): return linalg.matmul(other, self)
    def __neg__(self): return elementwise.neg(self)
    def __pos__(self): return self
    def __abs__(self): return elementwise.abs(self)
    def __eq__(self, other): return elementwise.eq(self, other)  # type: ignore[override]
    def __ne__(self, other): return elementwise.ne(self, other)  # type: ignore[override]
    def __lt__(self, other): return elementwise.lt(self, other)
    def __le__(self, other): return elementwise.le(self, other)
    def __gt__(self, other): return elementwise.gt(self, other)
    def __ge__(self, other): return elementwise.ge(self, other)
    def __and__(self, other): return elementwise.logical_and(self, other)
    def __rand__(self, other): return elementwise.logical_and(other, self)
    def __or__(self, other): return elementwise.logical_or(self, other)
    def __ror__(self, other): return elementwise.logical_or(other, self)
    def __invert__(self): return elementwise.logical_not(self)

    def __iadd__(self, other): return inplace.apply_inplace(self, elementwise.add, other, "+=")
    def __isub__(self, other): return inplace.apply_inplace(self, elementwise.sub, other, "-=")
    def __imul__(self, other): return inplace.apply_inplace(self, elementwise.mul, other, "*=")
    def __itruediv__(self, other):
        return inplace.apply_inplace(self, elementwise.div, other, "/=")
    def __ifloordiv__(self, other):
        return inplace.apply_inplace(self, elementwise.floor_divide, other, "//=")
    def __imod__(self, other):
        return inplace.apply_inplace(self, elementwise.remainder, other, "%=")
    def __ipow__(self, other): return inplace.apply_inplace(self, elementwise.pow, other, "**=")

    def __getitem__(self, index): return indexing.getitem(self, index)

    def __setitem__(self, index, value) -> None:
        indexing.setitem(self, index, value)


def is_tensor(obj: Any) -> bool:
    return isinstance(obj, Tensor)


def is_scalar(obj: Any) -> bool:
    return isinstance(obj, (numbers.Number, np.generic)) and not isinstance(obj, Tensor)


from . import autograd, dispatch, elementwise, indexing, inplace, linalg, shapes  # noqa: E402


def tracing_write(target: Tensor, src: Any) -> bool:
    """An in-place write made while tracing (see neurenix.tracing.write)."""
    from .tracing import write
    return write(target, src)
from .tensor_methods import install_methods  # noqa: E402

install_methods(Tensor)
