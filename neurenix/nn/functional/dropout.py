"""`dropout`: zero elements at random during training, rescaling the rest.

The mask comes from the counter-based `rng_uniform` primitive seeded from Neurenix's global
generator, so `neurenix.manual_seed` makes it reproducible and a compiled graph draws the same
numbers as eager execution given the same seed.
"""
from __future__ import annotations

import numbers

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
