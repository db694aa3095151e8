"""Tensor creation: from data, constant fills, ranges, identity, and random draws.

The random creators draw through `neurenix.random` (a fresh seed and the counter-based
`rng_uniform` primitive), so they run the same eagerly and inside `neurenix.compile`."""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from neurenix.compiler.symbolic import Dim, DynamicSizeError
from neurenix.compiler.trace import TraceError
from neurenix.compiler.types import DType, bool_, float32, int64

from . import random
from .call_site import user_source
from .device import CPU, Device, as_device
from .dispatch import apply
from .shapes import shape_args
from .state import is_tracing, read_trace
from .tensor import Tensor, storage_on


def _make(array: np.ndarray, dtype: DType, device: Any, requires_grad: bool) -> Tensor:
    """A new leaf holding `array` as `dtype` on `device` (uploaded there)."""
    # asarray, not ascontiguousarray: the latter turns a 0-d array into shape (1,)
    values = np.asarray(array, dtype=dtype.np_type, order="C")
    place = CPU if device is None else as_device(device, check=True)
    t = Tensor._wrap(values if place == CPU else storage_on(values, place), dtype, place)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _filled(shape: tuple, value: Any, dtype: DType, device: Any, requires_grad: bool,
            op: str) -> Tensor:
    """A new tensor of `shape` filled with `value`: a leaf holding an array, or, for a
    shape with dynamic sizes (only while tracing), a `full` node the program computes."""
    if not any(isinstance(d, Dim) for d in shape):
        return _make(np.full(shape, value), dtype, device, requires_grad)
    if requires_grad:
        raise DynamicSizeError(f"{op}: a leaf requiring grad of the dynamic shape {shape}")
    return apply("full", shape=tuple(shape), value=value, dtype=dtype.name)


def _check_shape(shape: tuple[int, ...], op: str) -> tuple[int, ...]:
    if any(d < 0 for d in shape):
        raise ValueError(f"{op}: sizes must be non-negative, got {shape}")
    return shape


def tensor(data: Any, dtype: DType | None = None, device: Any = None,
           requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of data (lists, scalars, arrays or tensors).  Inside a
    trace, the copy of a traced or captured tensor is a value of the trace (taken from the
    tensor on every call), not a constant of the value it had when traced."""
    trace = read_trace()
    if trace is not None and isinstance(data, Tensor) and not requires_grad \
            and device is None and (data._data is None or not trace.made_here(data)):
        return apply("cast", trace.detached(data), dtype=(dtype or data.dtype).name)
    return Tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor holding a copy of a NumPy array, keeping its dtype."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    return Tensor(array)


def full(size, fill_value: float, dtype: DType | None = None, device: Any = None,
         requires_grad: bool = False) -> Tensor:
    shape = _check_shape(shape_args((size,), "full"), "full")
    if dtype is None:
        dtype = bool_ if isinstance(fill_value, bool) else (
            int64 if isinstance(fill_value, (int, np.integer)) else float32)
    return _filled(shape, fill_value, dtype, device, requires_grad, "full")


def zeros(*size, dtype: DType | None = None, device: Any = None,
          requires_grad: bool = False) -> Tensor:
    shape = _check_shape(shape_args(size, "zeros"), "zeros")
    return _filled(shape, 0, dtype or float32, device, requires_grad, "zeros")


def ones(*size, dtype: DType | None = None, device: Any = None,
         requires_grad: bool = False) -> Tensor:
    shape = _check_shape(shape_args(size, "ones"), "ones")
    return _filled(shape, 1, dtype or float32, device, requires_grad, "ones")


def empty(*size, dtype: DType | None = None, device: Any = None,
          requires_grad: bool = False) -> Tensor:
    """Like zeros (Neurenix never hands out uninitialised memory)."""
    return zeros(*size, dtype=dtype, device=device, requires_grad=requires_grad)


def zeros_like(x: Tensor, dtype: DType | None = None, requires_grad: bool = False) -> Tensor:
    return zeros(x.shape, dtype=dtype or x.dtype, device=x.device, requires_grad=requires_grad)


def ones_like(x: Tensor, dtype: DType | None = None, requires_grad: bool = False) -> Tensor:
    return ones(x.shape, dtype=dtype or x.dtype, device=x.device, requires_grad=requires_grad)


def full_like(x: Tensor, fill_value: float, dtype: DType | None = None) -> Tensor:
    return full(x.shape, fill_value, dtype=dtype or x.dtype, device=x.device)


def arange(start: float, end: float | None = None, step: float = 1, dtype: DType | None = None,
           device: Any = None, requires_grad: bool = False) -> Tensor:
    """Values from start (inclusive) to end (exclusive) by step; int64 unless a float is given."""
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange: step must be non-zero")
    if isinstance(end, Dim):  # 0, 1, ..., n - 1 of a dynamic size n (only while tracing)
        return _ramp(start, end, step, dtype, requires_grad)
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = int64 if ints else float32
    return _make(np.arange(start, end, step), dtype, device, requires_grad)


def _ramp(start: Any, end: Dim, step: Any, dtype: DType | None, requires_grad: bool) -> Tensor:
    """`arange(0, n)` for a dynamic size n: an `iota` node the program computes."""
    if (start, step) != (0, 1) or requires_grad:
        raise DynamicSizeError(f"arange({start}, {end}, {step}) of a dynamic size: only "
                               "arange(n) stays symbolic")
    if dtype is not None and dtype != int64:
        raise DynamicSizeError(f"arange of the dynamic size {end} as {dtype.name}")
    return apply("iota", shape=(end,), axis=0, dtype=int64.name)


def linspace(start: float, end: float, steps: int, dtype: DType | None = None) -> Tensor:
    if steps < 0:
        raise ValueError(f"linspace: steps must be non-negative, got {steps}")
    return _make(np.linspace(start, end, steps), dtype or float32, None, False)


def eye(n: int, m: int | None = None, dtype: DType | None = None, device: Any = None,
        requires_grad: bool = False) -> Tensor:
    if n < 0 or (m is not None and m < 0):
        raise ValueError(f"eye: sizes must be non-negative, got n={n}, m={m}")
    return _make(np.eye(n, m), dtype or float32, device, requires_grad)


def _floating_dtype(dtype: DType | None, op: str) -> DType:
    dtype = dtype or float32
    if not dtype.is_floating:
        raise TypeError(f"{op}: expected a floating dtype, got {dtype.name}")
    return dtype


def _place(device: Any) -> Device | None:
    """Where a draw is made: None for the CPU, else the (available) device."""
    if device is None:
        return None
    place = as_device(device, check=True)
    return None if place == CPU else place


def _finish(t: Tensor, dtype: DType, requires_grad: bool) -> Tensor:
    """A drawn tensor as `dtype`, a leaf that requires grad when asked."""
    if t.dtype != dtype:
        t = apply("cast", t, dtype=dtype.name)
    if requires_grad:
        t.requires_grad_(True)
    return t


def randn(*size, dtype: DType | None = None, device: Any = None,
          requires_grad: bool = False) -> Tensor:
    """Standard normal samples of the given shape (fresh per call, also when compiled)."""
    shape = _check_shape(shape_args(size, "randn"), "randn")
    dtype = _floating_dtype(dtype, "randn")
    return _finish(random.normal(shape, dtype, _place(device)), dtype, requires_grad)


def rand(*size, dtype: DType | None = None, device: Any = None,
         requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1) of the given shape (fresh per call, also when compiled)."""
    shape = _check_shape(shape_args(size, "rand"), "rand")
    dtype = _floating_dtype(dtype, "rand")
    return _finish(random.uniform(shape, dtype, _place(device)), dtype, requires_grad)


def _integral(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or int(value) != value:
        raise TypeError(f"randint: {what} must be an integer, got {value!r}")
    return int(value)


def randint(low: int, high: int | None = None, size=None, dtype: DType | None = None,
            device: Any = None) -> Tensor:
    """Integers uniformly drawn from [low, high): randint(0, 5, (32,)) or randint(5, (32,)).

    Exact for ranges up to 2**48 (see `neurenix.random`); fresh per call, also when compiled.
    """
    if size is None and isinstance(high, (tuple, list)):
        low, high, size = 0, low, high
    if high is None or size is None:
        raise TypeError("randint: expected randint(low, high, size) or randint(high, size)")
    low, high = _integral(low, "low"), _integral(high, "high")
    if high <= low:
        raise ValueError(f"randint: expected low < high, got low={low}, high={high}")
    if not -2**63 <= low < high <= 2**63 or high - low >= 2**63:
        raise ValueError(f"randint: low={low}, high={high} is outside int64 (high - low must be "
                         f"below 2**63)")
    shape = _check_shape(shape_args((size,), "randint"), "randint")
    return _finish(random.integers(low, high, shape, _place(device)), dtype or int64, False)


def randperm(n: int, dtype: DType | None = None) -> Tensor:
    """A random permutation of 0 .. n-1 (eager only: it needs a sort, which no primitive does)."""
    if is_tracing():
        raise TraceError(f"randperm at {user_source()}: a random permutation needs a sort, "
                         f"which neurenix.compile cannot trace; draw it outside the compiled "
                         f"function and pass it in as an argument")
    return _make(random.generator().permutation(n), dtype or int64, None, False)


def rand_like(x: Tensor) -> Tensor:
    """Uniform samples in [0, 1) with x's shape, dtype and device."""
    return rand(x.shape, dtype=x.dtype, device=x.device)


def randn_like(x: Tensor) -> Tensor:
    """Standard normal samples with x's shape, dtype and device."""
    return randn(x.shape, dtype=x.dtype, device=x.device)


def as_tensor(data: Any, dtype: DType | None = None, device: Any = None) -> Tensor:
    """data as a tensor: a tensor itself when it already has `dtype` and `device` (no copy),
    else converted (`Tensor.to`); anything else (lists, scalars, arrays) copied into a new
    tensor.  Unlike PyTorch, a NumPy array's memory is not shared."""
    if isinstance(data, Tensor):
        if (dtype is None or data.dtype == dtype) and (device is None
                                                       or data.device == as_device(device)):
            return data
        given = {k: v for k, v in (("dtype", dtype), ("device", device)) if v is not None}
        return data.to(**given)
    return Tensor(data, dtype=dtype, device=device)


def _new(x: Tensor, op: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    return x


def new_full(x: Tensor, size, fill_value: Any, *, dtype: DType | None = None, device: Any = None,
             requires_grad: bool = False) -> Tensor:
    """A tensor of `size` filled with `fill_value`, of x's dtype and device unless given."""
    x = _new(x, "new_full")
    shape = _check_shape(shape_args((size,), "new_full"), "new_full")
    return _make(np.full(shape, fill_value), dtype or x.dtype,
                 x.device if device is None else device, requires_grad)


def new_zeros(x: Tensor, *size, dtype: DType | None = None, device: Any = None,
              requires_grad: bool = False) -> Tensor:
    """Zeros of `size`, of x's dtype and device unless given."""
    shape = _check_shape(shape_args(size, "new_zeros"), "new_zeros")
    return new_full(_new(x, "new_zeros"), shape, 0, dtype=dtype, device=device,
                    requires_grad=requires_grad)


def new_ones(x: Tensor, *size, dtype: DType | None = None, device: Any = None,
             requires_grad: bool = False) -> Tensor:
    """Ones of `size`, of x's dtype and device unless given."""
    shape = _check_shape(shape_args(size, "new_ones"), "new_ones")
    return new_full(_new(x, "new_ones"), shape, 1, dtype=dtype, device=device,
                    requires_grad=requires_grad)


def new_empty(x: Tensor, *size, dtype: DType | None = None, device: Any = None,
              requires_grad: bool = False) -> Tensor:
    """Like new_zeros (Neurenix never hands out uninitialised memory)."""
    shape = _check_shape(shape_args(size, "new_empty"), "new_empty")
    return new_full(_new(x, "new_empty"), shape, 0, dtype=dtype, device=device,
                    requires_grad=requires_grad)


def new_tensor(x: Tensor, data: Any, *, dtype: DType | None = None, device: Any = None,
               requires_grad: bool = False) -> Tensor:
    """A copy of data as a tensor of x's dtype and device unless given."""
    x = _new(x, "new_tensor")
    return Tensor(data, dtype=dtype or x.dtype, device=x.device if device is None else device,
                  requires_grad=requires_grad)
