"""`dropout`: zero elements at random during training, rescaling the rest.

The mask comes from the counter-based `rng_uniform` primitive seeded from Neurenix's global
generator, so `neurenix.manual_seed` makes it reproducible and a compiled graph draws the same
numbers as eager execution given the same seed.
"""
from __future__ import annotations

import numbers
import warnings

from ... import elementwise as ew
from ...dispatch import apply
from ...random import seed_tensor
from ...tensor import Tensor


def check_probability(p: float, name: str = "Dropout") -> float:
    """p as a float in [0, 1], or a ValueError naming the layer."""
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: dropout probability p must be between 0 and 1, got {p!r}")
    return float(p)


def dropout(x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability p and scale the kept ones by 1/(1-p) when training.

    The expected value of every element is unchanged, so evaluation (training=False) is the
    identity.  `inplace` is accepted for PyTorch compatibility; the result is a new tensor.
    """
    p = check_probability(p)
    if not isinstance(x, Tensor):
        raise TypeError(f"Dropout: expected a Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating:
        raise TypeError(f"Dropout: expected a floating-point input, got {x.dtype.name}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        # Every element dropped: x * 0, as PyTorch computes it (NaN stays NaN).
        return ew.mul(x, 0.0)
    seed = seed_tensor(x.device)  # fresh per call; a per-call graph input when traced
    u = apply("rng_uniform", seed, shape=tuple(x.shape), dtype=x.dtype.name)
    # keep with probability 1 - p; the kept values are scaled so the mean is preserved
    scale = ew.mul(ew.cast(ew.ge(u, p), x.dtype), 1.0 / (1.0 - p))
    return ew.mul(x, scale)


def feature_dropout(x: Tensor, p: float, training: bool, name: str) -> Tensor:
    """Zero whole channels: one draw per (N, C) pair, broadcast over the remaining axes."""
    p = check_probability(p, name)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating:
        raise TypeError(f"{name}: expected a floating-point input, got {x.dtype.name}")
    if x.ndim < 2:
        raise ValueError(f"{name}: expected an input of at least 2 dimensions (N, C, *), got "
                         f"shape {tuple(x.shape)}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return ew.mul(x, 0.0)
    seed = seed_tensor(x.device)
    shape = tuple(x.shape[:2]) + (1,) * (x.ndim - 2)
    u = apply("rng_uniform", seed, shape=shape, dtype=x.dtype.name)
    return ew.mul(x, ew.mul(ew.cast(ew.ge(u, p), x.dtype), 1.0 / (1.0 - p)))


def dropout2d(x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero entire channels of (N, C, H, W) with probability p, scaling the rest by 1/(1-p).

    As in PyTorch, a 3-D input is read as (N, C, L) (channel-wise 1-D dropout), with its
    warning; `inplace` is accepted and the result is a new tensor.
    """
    if isinstance(x, Tensor) and x.ndim == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that "
                      "channel-wise 1D dropout behavior is desired - input is interpreted as "
                      "shape (N, C, L), where C is the channel dim.", UserWarning, stacklevel=2)
    elif isinstance(x, Tensor) and x.ndim != 4:
        warnings.warn(f"dropout2d: Received a {x.ndim}-D input to dropout2d, which is "
                      f"deprecated; pass a 4-D (N, C, H, W) input.", UserWarning, stacklevel=2)
    return feature_dropout(x, p, training, "Dropout2d")
