"""The affine analysis of index expressions: one flat offset as a sum of loop variables.

Lowering writes every index through the index algebra (compiler/lowering/index.py), whose
canonical form makes an affine index a plain sum of `Var * constant` terms and a constant; this
recognises that form.  Memory planning (in-place reuse), the contraction record, the schedule
rules and the verifier's bounds check all read indices through it.
"""
from __future__ import annotations

import math

from ...runtime.sizes import Poly
from ..symbolic import Dim, DynamicSizeError, active_env
from .ir import Binary, Cast, Const, Expr, Sym, Unary, Var, Where


def affine(e: Expr) -> dict[int, int | Poly] | None:
    """`e` as {axis: coefficient, -1: constant} if it is affine in the loop variables (sums
    and constant multiples of `Var`s and integer constants), else None.

    A `Sym` (a dynamic size) counts as a constant: coefficients and the constant of an index
    with dynamic strides are then dynamic sizes (`compiler.symbolic.Dim`)."""
    if isinstance(e, Var):
        return {e.axis: 1}
    if isinstance(e, Sym):
        return {-1: Dim(((e.name,), 1),)}
    if isinstance(e, Const) and isinstance(e.value, int) and not isinstance(e.value, bool):
        return {-1: e.value}
    if isinstance(e, Binary) and e.op in ("add", "sub", "mul"):
        a, b = affine(e.a), affine(e.b)
        if a is None or b is None:
            return None
        if e.op == "mul":
            if set(a) == {-1}:
                a, b = b, a
            if set(b) != {-1}:
                return None
            return {k: v * b[-1] for k, v in a.items()}
        sign = -1 if e.op == "sub" else 1
        out = dict(a)
        for k, v in b.items():
            out[k] = out.get(k, 0) + sign * v
        return out
    return None


def _symbol_range(name: str) -> tuple[int, int] | None:
    """A dynamic size's range in the active shape environment; None when it is unbounded or
    no environment is active."""
    try:
        lo, hi = active_env().bounds(Dim(((name,), 1),))
    except DynamicSizeError:
        return None
    return None if hi == math.inf else (int(lo), int(hi))


def affine_range(coeffs: dict[int, int], extents: tuple[int, ...]) -> tuple[int, int]:
    """Inclusive (lo, hi) of an affine form over loop variables with these extents (each
    at least 1)."""
    lo = hi = coeffs.get(-1, 0)
    for axis, k in coeffs.items():
        if axis < 0:
            continue
        span = k * (extents[axis] - 1)
        lo += min(0, span)
        hi += max(0, span)
    return lo, hi


def value_range(e: Expr, extents: tuple[int, ...],
                memo: dict[int, tuple[int, int] | None] | None = None) -> tuple[int, int] | None:
    """Inclusive (lo, hi) of an integer expression of loop variables and constants (every
    intermediate lies in the range of its own node), None where unknown: a load, the
    reduction, or an op this interval arithmetic does not follow.  `extents[i]` is the
    extent of `Var(i)`; `memo` (by identity) shares work across calls."""
    memo = {} if memo is None else memo
    key = id(e)
    if key in memo:
        return memo[key]
    out = _range(e, extents, memo)
    memo[key] = out
    return out


def _range(e: Expr, extents: tuple[int, ...], memo: dict) -> tuple[int, int] | None:
    if isinstance(e, Sym):
        return _symbol_range(e.name)
    if isinstance(e, Var):
        return (0, extents[e.axis] - 1) if e.axis < len(extents) else None
    if isinstance(e, Const):
        if isinstance(e.value, bool) or not isinstance(e.value, int):
            return None
        return e.value, e.value
    if isinstance(e, Cast):
        return value_range(e.x, extents, memo) if e.dtype.is_integer else None
    if isinstance(e, Where):
        a, b = value_range(e.a, extents, memo), value_range(e.b, extents, memo)
        return None if a is None or b is None else (min(a[0], b[0]), max(a[1], b[1]))
    if isinstance(e, Unary) and e.op in ("neg", "abs"):
        r = value_range(e.x, extents, memo)
        if r is None:
            return None
        lo, hi = -r[1], -r[0]
        return (lo, hi) if e.op == "neg" else (max(0, r[0], lo), max(r[1], hi))
    if not isinstance(e, Binary):
        return None
    a, b = value_range(e.a, extents, memo), value_range(e.b, extents, memo)
    if a is None or b is None:
        return None
    if e.op == "add":
        return a[0] + b[0], a[1] + b[1]
    if e.op == "sub":
        return a[0] - b[1], a[1] - b[0]
    if e.op == "mul":
        corners = (a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
        return min(corners), max(corners)
    if e.op in ("max", "min"):
        f = max if e.op == "max" else min
        return f(a[0], b[0]), f(a[1], b[1])
    if e.op in ("idiv", "mod") and b[0] == b[1] and b[0] > 0:
        c = b[0]
        if e.op == "idiv":
            return a[0] // c, a[1] // c
        return (a[0] % c, a[1] % c) if a[0] // c == a[1] // c else (0, c - 1)
    return None
