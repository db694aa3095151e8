"""Vector norms and distances: `normalize`, `pairwise_distance`, `cosine_similarity`.

The p-norm is sum(|x|^p)^(1/p) with a gradient of 0 where the norm is 0 (PyTorch masks it
there too): the root sees 1 instead of 0, and `where` puts the 0 back.
"""
from __future__ import annotations

import math

from ... import elementwise as ew
from ... import reductions
from ...tensor import Tensor


def _check(name: str, **tensors: object) -> None:
    for what, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected {what} to be a Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating:
            raise TypeError(f"{name}: expected a floating-point {what}, got {t.dtype.name}")


def _check_p(p: float, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < math.inf:
        raise ValueError(f"{name}: p must be a positive finite number, got {p!r}")
    return float(p)


def vector_norm(x: Tensor, p: float, dim: int, keepdim: bool) -> Tensor:
    """The p-norm along dim, with a zero gradient at the zero vector."""
    if p == 2.0:
        total = reductions.sum(ew.mul(x, x), dim, keepdim=keepdim)
    elif p == 1.0:
        return reductions.sum(ew.abs(x), dim, keepdim=keepdim)
    else:
        total = reductions.sum(ew.pow(ew.abs(x), p), dim, keepdim=keepdim)
    zero = ew.eq(total, 0.0)
    safe = ew.where(zero, 1.0, total)
    root = ew.sqrt(safe) if p == 2.0 else ew.pow(safe, 1.0 / p)
    return ew.where(zero, 0.0, root)


def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12,
              out: None = None) -> Tensor:
    """input / max(||input||_p, eps) along dim."""
    _check("normalize", input=input)
    if out is not None:
        raise TypeError("normalize: out= is not supported; use the returned tensor")
    norm = vector_norm(input, _check_p(p, "normalize"), dim, keepdim=True)
    # clamp_min's gradient passes where norm >= eps, as PyTorch's does
    return ew.div(input, ew.where(ew.lt(norm, float(eps)), float(eps), norm))


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6,
                      keepdim: bool = False) -> Tensor:
    """||x1 - x2 + eps||_p along the last dimension (PyTorch adds eps before the norm)."""
    _check("pairwise_distance", x1=x1, x2=x2)
    p = _check_p(p, "pairwise_distance")
    diff = ew.add(ew.sub(x1, x2), float(eps))
    if diff.ndim == 0:
        diff = diff.reshape((1,))
    return vector_norm(diff, p, -1, keepdim)


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """sum(x1 / ||x1|| * x2 / ||x2||) along dim, each norm floored at eps (PyTorch floors the
    norms' values only: their gradients stay those of the unfloored norms)."""
    _check("cosine_similarity", x1=x1, x2=x2)
    shape = ew.broadcast_shapes(tuple(x1.shape), tuple(x2.shape))
    a = x1 if tuple(x1.shape) == shape else x1.expand(*shape)
    b = x2 if tuple(x2.shape) == shape else x2.expand(*shape)
    terms = []
    for v in (a, b):
        norm = vector_norm(v, 2.0, dim, keepdim=True)
        # eps + (norm - norm): the value eps, the gradient the norm's own
        floored = ew.add(ew.sub(norm, ew.stop_gradient(norm)), float(eps))
        terms.append(ew.div(v, ew.where(ew.lt(norm, float(eps)), floored, norm)))
    return reductions.sum(ew.mul(terms[0], terms[1]), dim)
