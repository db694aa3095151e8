"""Reductions with PyTorch's `dim`/`keepdim` arguments, and the softmax family."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.symbolic import Dim
from neurenix.compiler.types import bool_, float32, int64

from .creation import arange
from .dispatch import _quietly, apply
from .elementwise import abs as abs_
from .elementwise import (
    cast,
    div,
    eq,
    exp,
    isclose,
    le,
    log,
    maximum,
    minimum,
    mul,
    sqrt,
    sub,
    where,
)
from .elementwise import pow as pow_
from .shapes import eager_result, movedim, normalize_dim, normalize_dims, reshape, unsqueeze
from .state import read_trace
from .tensor import Tensor

_REDUCE_SUM = REGISTRY["reduce_sum"]
_ALL_AXES = tuple(tuple(range(n)) for n in range(33))  # (), (0,), (0, 1), ...


class MaxMin(NamedTuple):
    """The (values, indices) pair returned by max(dim) and min(dim)."""

    values: Tensor
    indices: Tensor


def _keep(out: Tensor, shape: tuple[int, ...], axes: tuple[int, ...], keepdim: bool) -> Tensor:
    if not keepdim:
        return out
    return reshape(out, tuple(1 if i in axes else s for i, s in enumerate(shape)))


def _dims(dim, x: Tensor, op: str) -> tuple[int, ...]:
    """The axes `dim` names; none for a 0-d tensor (its dim 0 or -1 reduces nothing)."""
    axes = normalize_dims(dim, x.ndim, op)
    return axes if x.ndim else ()


def _reduce(op: str, x: Tensor, dim, keepdim: bool, **attrs: bool) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    axes = _dims(dim, x, op)
    out = apply(op, x, axes=axes, **attrs) if axes else x
    return _keep(out, x.shape, axes, keepdim)


def _numeric(x: Tensor) -> Tensor:
    return cast(x, int64) if x.dtype == bool_ else x


def sum(x: Tensor, dim=None, keepdim: bool = False, dtype=None) -> Tensor:  # noqa: A001
    """Sum over dim (all dims when None); bool and int32 inputs sum as int64, as in PyTorch."""
    if dtype is None and isinstance(x, Tensor):
        # the fast path (issue 15): a floating host tensor outside a trace summed over all its
        # dims or over one int dim is reduce_sum itself (its reference, `np.sum`, is
        # `np.add.reduce` on an array: called directly)
        data = x._data
        if type(data) is np.ndarray and x._dtype.category == 2 and read_trace() is None:
            n = data.ndim
            if dim is None:
                axes = _ALL_AXES[n] if 0 < n < len(_ALL_AXES) else None
            elif type(dim) is int and -n <= dim < n:
                axes = (dim % n,)
            else:
                axes = None
            if axes is not None:
                out = _quietly(np.add.reduce, (data,), {"axis": axes, "dtype": data.dtype})
                if type(out) is not np.ndarray:  # a full reduction gives a NumPy scalar
                    out = np.asarray(out)
                out = eager_result(_REDUCE_SUM, (x,), {"axes": axes}, out, x)
                return _keep(out, data.shape, axes, keepdim)
    if dtype is not None:
        x = cast(x, dtype)
    elif not x.dtype.is_floating:
        x = cast(x, int64)
    return _reduce("reduce_sum", x, dim, keepdim)


def _count(x: Tensor, dim) -> int:
    n = 1
    for a in _dims(dim, x, "mean"):
        n *= x.shape[a]
    return n


def divisor(n: int | Dim) -> float | Dim:
    """A count as the divisor of a mean: a float, or a dynamic size kept symbolic in a
    trace (the program computes it from the call's sizes)."""
    return n if isinstance(n, Dim) else float(n)


def mean(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    if not x.dtype.is_floating:
        raise TypeError(f"mean: expected a floating-point tensor, got {x.dtype.name}; "
                        "convert with .float()")
    return div(_reduce("reduce_sum", x, dim, keepdim), divisor(_count(x, dim)))


def prod(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return _reduce("reduce_prod", _numeric(x) if x.dtype.is_floating else cast(x, int64),
                   dim, keepdim)


def amax(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """The largest elements over dim; the gradient is shared by the elements equal to it, and
    is nan over a slice holding a nan (PyTorch's amax; max() puts it on the nans instead):
    reduce_max's own VJP."""
    return _reduce("reduce_max", _numeric(x), dim, keepdim)


def amin(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """The smallest elements over dim; gradients as `amax`."""
    return _reduce("reduce_min", _numeric(x), dim, keepdim)


def _arg(op: str, x: Tensor, dim, keepdim: bool) -> Tensor:
    x = _numeric(x)
    if dim is None:
        if x.numel() == 0:
            raise ValueError(f"{op}: expected a non-empty tensor, got shape {tuple(x.shape)}")
        out = apply(op, reshape(x, (-1,)), axis=0)
        return reshape(out, (1,) * x.ndim) if keepdim else out
    d = normalize_dim(dim, x.ndim, op)
    if x.ndim and x.shape[d] == 0:
        raise ValueError(f"{op}: expected a non-empty dimension {d}, got shape "
                         f"{tuple(x.shape)}")
    if x.ndim == 0:
        return apply(op, reshape(x, (1,)), axis=0)
    return _keep(apply(op, x, axis=d), x.shape, (d,), keepdim)


def argmax(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return _arg("argmax", x, dim, keepdim)


def argmin(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return _arg("argmin", x, dim, keepdim)


def _select_at(x: Tensor, indices: Tensor, d: int) -> Tensor:
    """x's values at `indices` along d (indices has x's shape without d).

    Written as a one-hot `where` + sum so the gradient goes to the chosen element only, the
    way PyTorch routes max(dim)'s gradient, and so an inf elsewhere never makes a NaN.
    """
    ramp = reshape(arange(x.shape[d], device=x.device),
                   tuple(-1 if i == d else 1 for i in range(x.ndim)))
    hit = eq(reshape(indices, tuple(1 if i == d else s for i, s in enumerate(x.shape))), ramp)
    return apply("reduce_sum", where(hit, x, 0), axes=(d,))


def _extreme(op: str, x: Tensor, dim, keepdim: bool):
    if dim is None:
        if x.numel() == 0:
            raise ValueError(f"{op}: expected a non-empty tensor, got shape {tuple(x.shape)}")
        # the gradient is shared by the elements equal to the result, or by the nans when it
        # is nan (PyTorch's evenly_distribute_backward): the reduce primitives' masked VJP
        return _reduce("reduce_max" if op == "max" else "reduce_min", _numeric(x), None, False,
                       masked=True)
    d = normalize_dim(dim, x.ndim, op)
    if x.ndim == 0:
        return MaxMin(x, Tensor._wrap(np.zeros((), np.int64), int64))
    idx = _arg("argmax" if op == "max" else "argmin", x, d, False)
    values = _select_at(_numeric(x), idx, d)
    return MaxMin(_keep(values, x.shape, (d,), keepdim), _keep(idx, x.shape, (d,), keepdim))


def max(x: Tensor, dim=None, keepdim: bool = False):  # noqa: A001
    """The largest element, or (values, indices) along dim."""
    if isinstance(dim, Tensor):
        return maximum(x, dim)
    return _extreme("max", x, dim, keepdim)


def min(x: Tensor, dim=None, keepdim: bool = False):  # noqa: A001
    """The smallest element, or (values, indices) along dim."""
    if isinstance(dim, Tensor):
        return minimum(x, dim)
    return _extreme("min", x, dim, keepdim)


def var(x: Tensor, dim=None, unbiased: bool | None = None, keepdim: bool = False, *,
        correction: int | None = None) -> Tensor:
    """Variance with Bessel's correction by default (correction=1, as in PyTorch)."""
    if correction is None:
        correction = 0 if unbiased is False else 1
    mu = mean(x, dim, keepdim=True)
    d = sub(x, mu)
    n = _count(x, dim)
    return div(_reduce("reduce_sum", mul(d, d), dim, keepdim), divisor(n - correction))


def std(x: Tensor, dim=None, unbiased: bool | None = None, keepdim: bool = False, *,
        correction: int | None = None) -> Tensor:
    return sqrt(var(x, dim, unbiased, keepdim, correction=correction))


def logsumexp(x: Tensor, dim, keepdim: bool = False) -> Tensor:
    """log(sum(exp(x))) over dim, shifted by the (gradient-free) max for stability.

    As PyTorch: an infinite max shifts by 0, so a slice of -inf gives -inf and one holding
    +inf gives inf (the gradient, exp(x - result), is then nan where PyTorch's is); an empty
    tensor is not shifted (an empty slice sums to 0: -inf)."""
    x = _float(x)
    axes = _dims(dim, x, "logsumexp")
    if x.numel() == 0:
        return log(_reduce("reduce_sum", exp(x), axes, keepdim))
    m = _shift(x, axes)
    m = where(eq(abs_(m), float("inf")), 0.0, m)
    s = log(_reduce("reduce_sum", exp(sub(x, m)), axes, True))
    return _keep(reshape(s + m, tuple(n for i, n in enumerate(x.shape) if i not in axes)),
                 x.shape, axes, keepdim)


def _shift(x: Tensor, axes: tuple[int, ...]) -> Tensor:
    """The gradient-free max over `axes` (kept as size-1 axes), the softmax family's shift."""
    axes = tuple(a for a in axes if a < x.ndim)
    m = apply("reduce_max", x, axes=axes) if axes else x
    kept = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
    return apply("stop_gradient", reshape(m, kept))


def _float(x: Tensor) -> Tensor:
    return x if x.dtype.is_floating else cast(x, float32)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along dim, computed as exp(x - max) (PyTorch's kernel: a slice
    holding +inf or nan, or only -inf, is nan; an empty tensor gives an empty result)."""
    x = _float(x)
    d = normalize_dim(dim, x.ndim, "softmax")
    e = exp(sub(x, _shift(x, (d,)))) if x.numel() else exp(x)
    return div(e, _reduce("reduce_sum", e, d, True))


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """(x - max) - log(sum(exp(x - max))) along dim, as PyTorch's kernel computes it (a slice
    holding +inf, or only -inf, is nan; an empty tensor gives an empty result)."""
    x = _float(x)
    d = normalize_dim(dim, x.ndim, "log_softmax")
    shifted = sub(x, _shift(x, (d,))) if x.numel() else x
    return sub(shifted, log(_reduce("reduce_sum", exp(shifted), d, True)))


def all(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:  # noqa: A001
    n = _reduce("reduce_min", cast(cast(x, bool_), int64), dim, keepdim)
    return cast(n, bool_)


def any(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:  # noqa: A001
    n = _reduce("reduce_max", cast(cast(x, bool_), int64), dim, keepdim)
    return cast(n, bool_)


def norm(x: Tensor, p: float = 2.0, dim=None, keepdim: bool = False) -> Tensor:
    """The p-norm over `dim`; at a zero vector its gradient is 0 (PyTorch's subgradient),
    not the 0/0 of differentiating the root: the root is taken of a sum known nonzero."""
    if p == 1:
        return sum(abs_(x), dim, keepdim)
    total = sum(mul(x, x), dim, keepdim) if p == 2 else sum(pow_(abs_(x), float(p)), dim,
                                                             keepdim)
    zero = eq(total, 0.0)
    safe = where(zero, 1.0, total)
    return where(zero, 0.0, sqrt(safe) if p == 2 else pow_(safe, 1.0 / p))


def cumsum(x: Tensor, dim: int, dtype=None) -> Tensor:
    """Running sums along dim (bool and integer inputs sum as int64, as in PyTorch).

    Element i sums the row masked to positions <= i: a masked broadcast and one reduction,
    O(n^2) work per row of n (no scan primitive), exact for integers; the gradient is the
    reversed running sum."""
    if not isinstance(x, Tensor):
        raise TypeError(f"cumsum: expected a Tensor, got {type(x).__name__}")
    d = normalize_dim(dim, x.ndim or 1, "cumsum")
    if dtype is not None:
        x = cast(x, dtype)
    elif not x.dtype.is_floating:
        x = cast(x, int64)
    if x.ndim == 0:
        return x
    y = movedim(x, d, -1) if d != x.ndim - 1 else x
    n = y.shape[-1]
    rows = apply("iota", shape=(n, n), axis=0, dtype="int64")
    cols = apply("iota", shape=(n, n), axis=1, dtype="int64")
    out = apply("reduce_sum", where(le(cols, rows), unsqueeze(y, -2), 0), axes=(y.ndim,))
    return movedim(out, -1, d) if d != x.ndim - 1 else out


def allclose(a: Tensor, b: Tensor, rtol: float = 1e-05, atol: float = 1e-08,
             equal_nan: bool = False) -> bool:
    """Whether every element of a is close to b's (`isclose`); a Python bool, so it reads
    the values (inside `neurenix.compile` it raises, as `.item()` does)."""
    return bool(all(isclose(a, b, rtol, atol, equal_nan)).item())
