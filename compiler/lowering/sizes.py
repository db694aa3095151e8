"""Sizes in lowering: ints or dynamic sizes (`compiler.symbolic.Dim`), compared without guards.

Lowering's questions about sizes are structural ("is this axis the literal 1?", "are these
two shapes the same sizes?") or heuristic ("which is larger?"), never about the program's
meaning, so none of them may record a guard (docs/compiler/dynamic-shapes.md): structural
questions compare a dynamic size by its polynomial, heuristic ones read the symbols' hints,
and facts the index algebra relies on are proved from the symbols' ranges (`bounds`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ...runtime.sizes import Poly, Size
from ..kernel.ir import Const, Expr, size_expr
from ..symbolic import Dim, DynamicSizeError, active_env, exact_quotient, is_dynamic
from ..types import int64

Bound = int | Poly | float
"""An end of a range: a size, or -inf / inf (a float) where unbounded."""


def is_one(size: Size) -> bool:
    """Whether `size` is the literal 1 (a dynamic size never is, even where it may be 1)."""
    return isinstance(size, int) and size == 1


def is_zero(size: Size) -> bool:
    """Whether `size` is the literal 0."""
    return isinstance(size, int) and size == 0


def empty(shape: Sequence[Size]) -> bool:
    """Whether a shape has no elements for any value of its symbols' ranges (a dynamic size
    whose range starts at 0 cannot be lowered: it raises DynamicSizeError)."""
    for d in shape:
        if is_zero(d):
            return True
        if is_dynamic(d) and bounds(d)[0] < 1:
            raise DynamicSizeError(f"the dynamic size {d} may be 0: lowering needs sizes >= 1")
    return False


def same_size(a: Size, b: Size) -> bool:
    """Structural equality: equal ints, or equal polynomials."""
    if is_dynamic(a) or is_dynamic(b):
        return is_dynamic(a) and is_dynamic(b) and a.terms == b.terms
    return a == b


def bounds(size: Bound) -> tuple[float, float]:
    """Inclusive numeric (lo, hi) of a bound over every allowed value of its symbols."""
    if isinstance(size, Poly):
        return active_env().bounds(size)
    return size, size


def size_const(size: Size) -> Expr:
    """A size as an int64 index expression (a constant, or a polynomial of `Sym`s)."""
    return Const(int(size), int64) if isinstance(size, int) else size_expr(size)


exact_div = exact_quotient
"""a / c when it divides exactly for every value of the symbols, else None."""


def split(a: Size, c: Size) -> tuple[Size, Size]:
    """(q, r) with a = c*q + r exactly: for an int c, each coefficient of r lies in [0, c);
    for a dynamic c, r is 0 (c divides a) or a itself."""
    if isinstance(c, int):
        if isinstance(a, int):
            return divmod(a, c)
        q = sum(((c_ // c) * _monomial(m) for m, c_ in a.terms), 0)
        return q, a - c * q
    q = exact_div(a, c)
    return (0, a) if q is None else (q, 0)


def _monomial(m: tuple[str, ...]) -> Size:
    out: Size = 1
    for name in m:
        out = out * symbol_size(name)
    return out


def symbol_size(name: str) -> Dim:
    """The dynamic size that is the lone symbol `name` (what a `Sym` leaf stands for)."""
    return Dim(((name,), 1),)


def sign(k: Size) -> int | None:
    """1 where k >= 0 for every value of its symbols, -1 where k <= 0, else None."""
    lo, hi = bounds(k)
    if lo >= 0:
        return 1
    if hi <= 0:
        return -1
    return None


# ---- bound arithmetic ---------------------------------------------------------------------


def badd(a: Bound, b: Bound) -> Bound:
    if isinstance(a, float):
        return a
    if isinstance(b, float):
        return b
    return a + b


def bscale(b: Bound, k: Size) -> Bound:
    """b * k for a k of known sign (an infinite b keeps or flips its sign)."""
    if isinstance(b, float):
        if is_zero(k):
            return 0
        return b if sign(k) == 1 else -b
    return b * k


def provably_lt(a: Bound, b: Bound) -> bool:
    """Whether a < b for every value of the symbols."""
    if isinstance(a, float) or isinstance(b, float):
        return a < b if isinstance(a, float) and isinstance(b, float) else (
            a == -math.inf or b == math.inf)
    return bounds(a - b)[1] < 0


def provably_le(a: Bound, b: Bound) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return provably_lt(a, b)
    return bounds(a - b)[1] <= 0


def bmin(a: Bound, b: Bound) -> Bound:
    if provably_le(a, b):
        return a
    if provably_le(b, a):
        return b
    return min(bounds(a)[0], bounds(b)[0])


def bmax(a: Bound, b: Bound) -> Bound:
    if provably_le(a, b):
        return b
    if provably_le(b, a):
        return a
    return max(bounds(a)[1], bounds(b)[1])


def floor_bounds(b: Bound, c: int) -> tuple[Bound, Bound]:
    """Lower and upper bounds of floor(b / c) for an int c > 0 (equal when exact)."""
    if isinstance(b, float):
        return b, b
    q, r = split(b, c)
    if isinstance(r, int):
        return q + r // c, q + r // c
    lo, hi = bounds(r)
    return (q + lo // c if lo != -math.inf else -math.inf,
            q + hi // c if hi != math.inf else math.inf)


def floor_by_size(b: Bound, c: Size) -> Bound | None:
    """floor(b / c) for a dynamic c >= 1 when one size gives it for every value of the
    symbols (`(5*n - 1) // n` is 4), else None; an infinite b stays itself."""
    if isinstance(b, float):
        return b
    q: Size = 0
    for m, k in (b.terms if isinstance(b, Poly) else (((), b),) if b else ()):
        t = exact_div(k * _monomial(m), c)
        if t is not None:
            q = q + t
    r = b - c * q
    if provably_le(0, r) and provably_lt(r, c):
        return q
    if provably_lt(r, 0) and provably_le(0, r + c):
        return q - 1
    return None


def exact_floor(b: Bound, c: int) -> Bound | None:
    """floor(b / c) when it is one size for every value of the symbols, else None."""
    lo, hi = floor_bounds(b, c)
    if isinstance(lo, float) or not same_size(lo, hi):
        return None
    return lo
