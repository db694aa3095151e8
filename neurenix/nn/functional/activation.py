"""Activation functions as compositions of elementwise primitives.

The piecewise ones are written with `where` on the comparison PyTorch's own kernels use, so the
gradient at the kink (x == 0) and the treatment of NaN (it passes through) match PyTorch.
"""
from __future__ import annotations

import math
import warnings

from ... import elementwise as ew
from ... import reductions
from ...compiler.types import DType
from ...tensor import Tensor

# The fixed constants of SELU (Klambauer et al., 2017), to PyTorch's precision.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _check(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    return x


def relu(x: Tensor, inplace: bool = False) -> Tensor:
    """max(0, x); the gradient at 0 is 0, as in PyTorch.

    `inplace` is accepted for PyTorch compatibility; the result is always a new tensor
    (compiled graphs have no aliasing, and the values are the same).
    """
    return ew.relu(_check(x, "relu"))


def leaky_relu(x: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """x for x > 0, negative_slope * x otherwise (the gradient at 0 is negative_slope)."""
    _check(x, "leaky_relu")
    # PyTorch tests x > 0, so x == 0 takes the negative branch; NaN > 0 is false and NaN * s
    # is NaN, so NaN passes through.
    return ew.where(ew.gt(x, 0), x, ew.mul(x, float(negative_slope)))


def _elu_core(x: Tensor, alpha: float) -> Tensor:
    # PyTorch's backward tests x <= 0, so a NaN input takes the identity branch (its gradient
    # is the upstream one) and x == 0 the exponential one (gradient alpha).  exp() sees
    # where(x <= 0, x, 0) rather than x: the unused branch of `where` still receives a zero
    # cotangent, and 0 * exp(large x) = 0 * inf would be NaN.
    negative = ew.le(x, 0)
    safe = ew.where(negative, x, 0.0)
    return ew.where(negative, ew.mul(ew.expm1(safe), float(alpha)), x)


def elu(x: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """x for x > 0, alpha * (exp(x) - 1) otherwise (the gradient at 0 is alpha)."""
    return _elu_core(_check(x, "elu"), alpha)


def selu(x: Tensor, inplace: bool = False) -> Tensor:
    """SELU_SCALE * elu(x, SELU_ALPHA): self-normalising for standardised inputs."""
    return ew.mul(_elu_core(_check(x, "selu"), SELU_ALPHA), SELU_SCALE)


def gelu_approximation(approximate: str | bool) -> str:
    """'none' or 'tanh'; the spec's GELU(approximate=False/True) maps onto them."""
    if approximate is False:
        return "none"
    if approximate is True:
        return "tanh"
    if approximate in ("none", "tanh"):
        return approximate
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh' (or a bool), got "
                     f"{approximate!r}")


def gelu(x: Tensor, approximate: str | bool = "none") -> Tensor:
    """x * Phi(x), exactly with erf ('none') or with PyTorch's tanh approximation ('tanh')."""
    mode = gelu_approximation(approximate)
    _check(x, "gelu")
    if mode == "none":
        cdf = ew.mul(ew.add(ew.erf(ew.mul(x, 1.0 / math.sqrt(2.0))), 1.0), 0.5)
    else:
        inner = ew.mul(ew.add(x, ew.mul(ew.mul(ew.mul(x, x), x), 0.044715)),
                       math.sqrt(2.0 / math.pi))
        cdf = ew.mul(ew.add(ew.tanh(inner), 1.0), 0.5)
    return ew.mul(x, cdf)


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x))."""
    return ew.sigmoid(_check(x, "sigmoid"))


def tanh(x: Tensor) -> Tensor:
    """The hyperbolic tangent."""
    return ew.tanh(_check(x, "tanh"))


def _softmax_dim(name: str, x: Tensor, dim: int | None) -> int:
    if dim is not None:
        return dim
    # PyTorch's legacy implicit choice, with the same deprecation warning.
    warnings.warn(f"{name}: implicit dimension choice is deprecated; pass dim= explicitly",
                  UserWarning, stacklevel=3)
    return 0 if x.ndim in (0, 1, 3) else 1


def softmax(x: Tensor, dim: int | None = None, dtype: DType | None = None) -> Tensor:
    """exp(x) / sum(exp(x)) along dim (computed stably, shifted by the max)."""
    _check(x, "softmax")
    if dtype is not None:
        x = ew.cast(x, dtype)
    return reductions.softmax(x, _softmax_dim("softmax", x, dim))


def log_softmax(x: Tensor, dim: int | None = None, dtype: DType | None = None) -> Tensor:
    """x - logsumexp(x) along dim: log-probabilities without underflow."""
    _check(x, "log_softmax")
    if dtype is not None:
        x = ew.cast(x, dtype)
    return reductions.log_softmax(x, _softmax_dim("log_softmax", x, dim))


def silu(x: Tensor, inplace: bool = False) -> Tensor:
    """x * sigmoid(x) (also called swish)."""
    x = _check(x, "silu")
    return ew.mul(x, ew.sigmoid(x))


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold.

    exp() sees 0 instead of the large values the linear branch takes, so neither branch's
    gradient overflows (the unused branch of `where` still receives a zero cotangent).
    """
    _check(x, "softplus")
    scaled = ew.mul(x, float(beta))
    linear = ew.gt(scaled, float(threshold))
    safe = ew.where(linear, 0.0, scaled)
    return ew.where(linear, x, ew.div(ew.log1p(ew.exp(safe)), float(beta)))


def prelu(x: Tensor, weight: Tensor) -> Tensor:
    """x for x > 0, weight * x otherwise; weight holds one slope or one per channel (dim 1,
    or dim 0 of a 1-D input)."""
    _check(x, "prelu")
    if not isinstance(weight, Tensor) or weight.ndim > 1:
        raise ValueError(f"prelu: expected a 0-D or 1-D weight, got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    count = weight.numel()
    slope = weight.reshape(()) if count == 1 else weight
    if count != 1:
        channel = 0 if x.ndim == 1 else 1
        if x.ndim == 0 or x.shape[channel] != count:
            raise ValueError(f"prelu: weight has {count} slopes (num_parameters) but the input "
                             f"of shape {tuple(x.shape)} has "
                             f"{x.shape[channel] if x.ndim else 'no'} channels")
        slope = weight.reshape((count,) + (1,) * (x.ndim - channel - 1))
    return ew.where(ew.gt(x, 0), x, ew.mul(x, slope))


def hardtanh(x: Tensor, min_val: float = -1.0, max_val: float = 1.0,
             inplace: bool = False) -> Tensor:
    """x clamped to [min_val, max_val]; the gradient is 0 at and beyond both limits, as in
    PyTorch (where `clamp` would pass it at the limits)."""
    _check(x, "hardtanh")
    if max_val < min_val:
        raise ValueError(f"hardtanh: min_val ({min_val}) must not exceed max_val ({max_val})")
    inside = ew.logical_and(ew.gt(x, float(min_val)), ew.lt(x, float(max_val)))
    return ew.where(inside, x, ew.clamp(ew.stop_gradient(x), float(min_val), float(max_val)))


def relu6(x: Tensor, inplace: bool = False) -> Tensor:
    """min(max(0, x), 6): hardtanh(x, 0, 6)."""
    _check(x, "relu6")
    return hardtanh(x, 0.0, 6.0)


def hardswish(x: Tensor, inplace: bool = False) -> Tensor:
    """x * relu6(x + 3) / 6, with PyTorch's gradient: 0 up to -3 (included), x / 3 + 1/2
    between, 1 from 3 on."""
    _check(x, "hardswish")
    middle = ew.div(ew.mul(x, ew.add(x, 3.0)), 6.0)
    return ew.where(ew.le(x, -3.0), ew.mul(x, 0.0), ew.where(ew.lt(x, 3.0), middle, x))
