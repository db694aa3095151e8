"""In-place arithmetic: `x += y`, `x.mul_(2)`, `p.sub_(lr * g)` change x itself, as in PyTorch.

The result is computed by the ordinary operation, then written into x's own array, so every
alias of x (a variable bound to the same tensor, a NumPy view of its data) sees it; a manual
`with no_grad(): p -= lr * p.grad` updates the parameter.  On a device the operation runs
there and the result's buffer replaces the buffer of x's storage (device buffers are never
written; `neurenix.tensor.Storage`): every alias of x sees it (a `detach()`, a `state_dict()`
entry, a view of x, or, when x is a view, its base: the view's elements are written into the
base's storage).  Autograd as in PyTorch: a leaf that
requires grad is refused under grad mode; for a non-leaf, x takes the result's place in the
graph (computed from a copy of x's old value, so the tape has no cycle) and its version is
bumped, so a backward through an earlier use of x refuses a wrong gradient.  Inside a trace the
write goes to the trace (`trace.write`: an output written back after every call when x outlives
it).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from neurenix.compiler.types import bool_

from . import random, view_writes
from .device_ops import current
from .dispatch import EAGER, apply
from .elementwise import add, cast, clamp, div, mul, sub
from .indexing import masked_fill
from .state import current_trace, is_grad_enabled, no_grad
from .tensor import HostConstant, Tensor, version_of

Binary = Callable[[Any, Any], Tensor]


def apply_inplace(x: Tensor, fn: Binary, other: Any, name: str) -> Tensor:
    """x = fn(x, other), in place: x keeps its identity, dtype and shape."""
    x._check_inplace(name)
    view_writes.refuse_overlap(x)
    trace = current_trace()
    if trace is not None:
        if not trace.made_here(x) or isinstance(other, Tensor) and other._value is not None:
            old = trace.value_of(x)  # as eagerly: the result's backward reads the old value,
            # which no later write changes (x's own earlier uses see the write)
            result = _checked(x, fn(old, old if other is x else other), name)
            x._version += 1
            trace.write(x, result)
            return x
    view_writes.protect_saved(x)
    grad = x.requires_grad or isinstance(other, Tensor) and other.requires_grad
    if grad and is_grad_enabled():
        old = Tensor._wrap(_snapshot(x), x._dtype, x._device)
        old._node, old.requires_grad = x._node, x.requires_grad
        result = _checked(x, fn(old, old if other is x else other), name)
        bases = view_writes.chain(x)  # x a view: its bases take the write too
        _store(x, result)
        x._node, x.requires_grad = result._node, result.requires_grad
        if x._view is not None:
            view_writes.bump_bases(x)
        view_writes.write_through(x, bases, apply)
    else:
        _store(x, _checked(x, fn(x, other), name))
        if x._view is not None:
            view_writes.bump_bases(x)
    x._version += 1
    return x


def _snapshot(x: Tensor) -> object:
    """x's values as they are now: a copy of a host array, a device buffer itself."""
    data = x._data
    return np.array(data, copy=True) if isinstance(data, np.ndarray) else current(x)


def _checked(x: Tensor, result: Tensor, name: str) -> Tensor:
    """The result cast to x's dtype, or PyTorch's errors: a result that does not fit x's shape,
    or whose dtype x cannot hold (a float result into an integer tensor)."""
    if tuple(result.shape) != tuple(x.shape):
        raise ValueError(f"{name}: the result of shape {tuple(result.shape)} does not fit the "
                         f"tensor of shape {tuple(x.shape)} it is written into")
    if result.dtype == x.dtype:
        return result
    if (result.dtype.is_floating and not x.dtype.is_floating) or \
            (result.dtype != bool_ and x.dtype == bool_):
        raise TypeError(f"{name}: the result type {result.dtype.name} can't be cast to the "
                        f"tensor's type {x.dtype.name}")
    return cast(result, x.dtype)


def _store(x: Tensor, result: Tensor) -> None:
    """Write `result` (x's shape and dtype) into x: into its host array, or as its storage
    on a device."""
    data = x._data
    if not isinstance(data, np.ndarray):
        if type(result._data) is type(data):
            x._set_storage(result._data)
        else:
            x._set_host(np.asarray(result._host()))
    elif data.flags.writeable:
        np.copyto(data, result._host(), casting="unsafe")
    else:  # a broadcast or window view: the tensor takes a private array, a view no more
        _private(x, np.array(result._host(), dtype=x._dtype.np_type))


def _private(x: Tensor, values: np.ndarray) -> None:
    """Make host `values` x's own memory, shared with no base or `detach()` any more (a write
    into a read-only view); its version goes on from the one its uses saw."""
    x._version = version_of(x)
    x._data, x._view = values, None


def add_(x: Tensor, other: Any, *, alpha: float = 1) -> Tensor:
    """x += alpha * other."""
    return apply_inplace(x, add, other if alpha == 1 else mul(other, alpha), "add_")


def sub_(x: Tensor, other: Any, *, alpha: float = 1) -> Tensor:
    """x -= alpha * other."""
    return apply_inplace(x, sub, other if alpha == 1 else mul(other, alpha), "sub_")


def mul_(x: Tensor, other: Any) -> Tensor:
    return apply_inplace(x, mul, other, "mul_")


def div_(x: Tensor, other: Any) -> Tensor:
    return apply_inplace(x, div, other, "div_")


def clamp_(x: Tensor, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002
    return apply_inplace(x, lambda a, _: clamp(a, min, max), None, "clamp_")


def clamp_min_(x: Tensor, min: Any) -> Tensor:  # noqa: A002
    return apply_inplace(x, lambda a, _: clamp(a, min, None), None, "clamp_min_")


def clamp_max_(x: Tensor, max: Any) -> Tensor:  # noqa: A002
    return apply_inplace(x, lambda a, _: clamp(a, None, max), None, "clamp_max_")


def masked_fill_(x: Tensor, mask: Tensor, value: Any) -> Tensor:
    """x[mask] = value, mask broadcast to x's shape."""
    return apply_inplace(x, lambda a, _: masked_fill(a, mask, value), None, "masked_fill_")


def _random_fill(x: Tensor, op: str) -> None:
    if not isinstance(x, Tensor) or not x.dtype.is_floating:
        got = x.dtype.name if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{op}: expected a floating-point tensor, got {got}")


def _device_of(x: Tensor) -> Any:
    return None if x.device.type.value == "cpu" else x.device


def uniform_(x: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """Fill x with samples uniform on [a, b) (seeded by neurenix.manual_seed; fresh per call,
    also when compiled)."""
    _random_fill(x, "uniform_")
    if not a <= b:
        raise ValueError(f"uniform_: expects a <= b, got a={a}, b={b}")
    x._check_inplace("uniform_")
    with no_grad():
        u = random.uniform(tuple(x.shape), x.dtype, _device_of(x))
        value = u if (a, b) == (0.0, 1.0) else add(mul(u, float(b) - float(a)), float(a))
    return copy_(x, value)


def normal_(x: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Fill x with samples of the normal distribution N(mean, std**2) (seeded by
    neurenix.manual_seed; fresh per call, also when compiled)."""
    _random_fill(x, "normal_")
    if std < 0:
        raise ValueError(f"normal_: expects std >= 0.0, got std={std}")
    x._check_inplace("normal_")
    with no_grad():
        z = random.normal(tuple(x.shape), x.dtype, _device_of(x))
        value = z if (mean, std) == (0.0, 1.0) else add(mul(z, float(std)), float(mean))
    return copy_(x, value)


def copy_(x: Tensor, src: Tensor | Any) -> Tensor:
    """Overwrite x's values with src's (broadcast and cast to x's dtype), on x's device;
    under grad mode the gradient flows to src (and, x a view, through x's bases)."""
    x._check_inplace("copy_")
    view_writes.refuse_overlap(x)
    if current_trace() is None and is_grad_enabled() and x.dtype.is_floating and (
            x.requires_grad or isinstance(src, Tensor) and src.requires_grad):
        if not isinstance(src, Tensor):  # fill_, zero_, an array: onto x's device
            src = Tensor._wrap(np.asarray(src))
            if x._device != src._device and src.ndim:
                src = src.to(x._device)
        _check_broadcast(x, tuple(src.shape))
        return apply_inplace(x, _copied, src, "copy_")
    x._version += 1
    trace = current_trace()
    if trace is not None and trace.write(x, src):
        return x
    if isinstance(x._data, np.ndarray):
        view_writes.protect_saved(x)
        _copy_host(x, src._host() if isinstance(src, Tensor) else np.asarray(src))
    elif not isinstance(src, Tensor) or type(src._data) is not type(x._data):
        values = np.asarray(src._host() if isinstance(src, Tensor) else src)
        _check_broadcast(x, values.shape)
        x._set_host(np.broadcast_to(values, x.shape).astype(x._dtype.np_type))
    else:
        _check_broadcast(x, tuple(src.shape))
        with no_grad():
            value = EAGER.broadcast_to(src, tuple(x.shape))
            if value.dtype != x.dtype:
                value = cast(value, x.dtype)
        x._set_storage(value._data)  # device buffers are never written: sharing src's copies
    if x._view is not None:
        view_writes.bump_bases(x)
    return x


def _copied(old: Tensor, src: Tensor) -> Tensor:
    """src in old's shape, as a select over old: old's gradient is zeros, as PyTorch's."""
    shape = tuple(old.shape)
    mask = np.ones(shape, dtype=bool)
    if not isinstance(old._data, np.ndarray):  # on a device: a host constant travels there
        mask = mask.view(HostConstant)
    everywhere = Tensor._wrap(mask, bool_)
    return apply("where", everywhere, EAGER.broadcast_to(cast(src, old.dtype), shape), old)


def _check_broadcast(x: Tensor, shape: tuple[int, ...]) -> None:
    try:
        fits = np.broadcast_shapes(shape, tuple(x.shape)) == tuple(x.shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"copy_: cannot copy a tensor of shape {tuple(shape)} into one of "
                         f"shape {tuple(x.shape)}")


def _copy_host(x: Tensor, value: np.ndarray) -> None:
    values = x._data
    try:
        np.copyto(values, np.broadcast_to(value, x.shape), casting="unsafe")
    except ValueError:
        raise ValueError(f"copy_: cannot copy a tensor of shape {tuple(np.shape(value))} "
                         f"into one of shape {tuple(x.shape)}") from None
    except TypeError:
        values = np.array(values)  # a read-only view: take a private copy first
        np.copyto(values, np.broadcast_to(value, x.shape), casting="unsafe")
        _private(x, values)


def fill_(x: Tensor, value: Any) -> Tensor:
    """Set every element of x to `value`."""
    return copy_(x, np.asarray(value))


def zero_(x: Tensor) -> Tensor:
    """Set every element of x to 0."""
    return copy_(x, np.asarray(0))
