"""In-place arithmetic: `x += y`, `x.mul_(2)`, `p.sub_(lr * g)` change x itself, as in PyTorch.

The result is computed by the ordinary operation, then written into x's own array, so every
alias of x (a variable bound to the same tensor, a NumPy view of its data) sees it; a manual
`with no_grad(): p -= lr * p.grad` updates the parameter.  Autograd as in PyTorch: a leaf that
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

from .elementwise import add, cast, clamp, div, mul, sub
from .state import current_trace, is_grad_enabled
from .tensor import Tensor

Binary = Callable[[Any, Any], Tensor]


def apply_inplace(x: Tensor, fn: Binary, other: Any, name: str) -> Tensor:
    """x = fn(x, other), in place: x keeps its identity, dtype and shape."""
    x._check_inplace(name)
    trace = current_trace()
    if trace is not None:
        if not trace.made_here(x) or isinstance(other, Tensor) and other._value is not None:
            result = _checked(x, fn(x, other), name)
            x._version += 1
            trace.write(x, result)
            return x
    grad = x.requires_grad or isinstance(other, Tensor) and other.requires_grad
    if grad and is_grad_enabled():
        old = Tensor._wrap(np.array(x._host(), copy=True), x._dtype)
        old._node, old.requires_grad = x._node, x.requires_grad
        result = _checked(x, fn(old, old if other is x else other), name)
        _store(x, result._host())
        x._node, x.requires_grad = result._node, result.requires_grad
    else:
        _store(x, _checked(x, fn(x, other), name)._host())
    x._version += 1
    return x


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


def _store(x: Tensor, values: np.ndarray) -> None:
    current = x._host()
    if current.flags.writeable:
        np.copyto(current, values, casting="unsafe")
        x._set_host(current)
    else:  # a broadcast or window view: the tensor takes a private array
        x._set_host(np.array(values, dtype=x._dtype.np_type))


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
