"""Contraction primitive: batched matrix multiply."""
from __future__ import annotations

import numpy as np

from ..types import TensorType, bool_
from .registry import CONTRACTION, OpError, per_input, register


def _matmul_rule(a: TensorType, b: TensorType) -> TensorType:
    ok = (a.ndim >= 2 and a.ndim == b.ndim and a.shape[:-2] == b.shape[:-2]
          and a.shape[-1] == b.shape[-2] and a.dtype == b.dtype and a.dtype != bool_)
    if not ok:
        raise OpError(f"matmul: expected (..., m, k) @ (..., k, n) with equal batch dims and "
                      f"dtypes, got {a} @ {b}")
    return TensorType(a.shape[:-1] + (b.shape[-1],), a.dtype)


def swap_last(b, v):
    """v with its last two axes swapped (a matrix transpose per batch)."""
    n = len(b.type_of(v).shape)
    return b.permute(v, perm=tuple(range(n - 2)) + (n - 1, n - 2))


def _matmul_vjp_y(b, g, out, x, y):
    """x^T @ g, or (g^T @ x)^T for a y stored transposed (a Linear layer's W^T): the gradient
    then has y's layout, and W's own gradient, its transpose, is row-major."""
    if b.transposed_layout(y):
        return swap_last(b, b.matmul(swap_last(b, g), x))
    return b.matmul(swap_last(b, x), g)


register("matmul", CONTRACTION, 2, _matmul_rule, np.matmul,
         per_input(lambda b, g, out, x, y: b.matmul(g, swap_last(b, y)), _matmul_vjp_y),
         "batched x @ y; d/dx = g @ y^T, d/dy = x^T @ g")
