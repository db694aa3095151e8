"""Symbolic sizes: the arithmetic and the reasoning of shape-polymorphic programs.

A dynamic dimension is a `Dim`, an integer polynomial in named symbols (`n`, `4096*n + 64`)
that takes part in shape arithmetic like an int: type rules, lowering and memory planning
compute with it unchanged.  What cannot be decided for every value of the symbols is decided
for the sizes being traced (each symbol's *hint*) and recorded as a `Guard` in the active
`ShapeEnv`; a program is valid only for calls whose sizes satisfy its guards, which the caller
checks per call (PyTorch's ShapeEnv does the same).  A `Dim` used where an int is required
(`int(d)`, `range(d)`, a NumPy shape) raises `DynamicSizeError`: the caller then compiles for
static sizes instead.  docs/compiler/dynamic-shapes.md tells the whole story.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from ..runtime.sizes import Monomial, Poly, Size, poly_from_terms

__all__ = ["Dim", "DynamicSizeError", "Guard", "ShapeEnv", "SpecializeSize", "Symbol", "active_env",
           "current_env", "hint", "is_dynamic", "shape_env", "size_bounds"]


class DynamicSizeError(TypeError):
    """A dynamic size used where only a static one works (a Python int, a NumPy shape, a
    division that is not exact)."""


class SpecializeSize(DynamicSizeError):
    """The trace relied on symbol `name` being `value`: trace again with that size static."""

    def __init__(self, name: str, value: int) -> None:
        super().__init__(f"the trace relies on the dynamic size {name} being {value}")
        self.name, self.value = name, value


@dataclass(frozen=True)
class Symbol:
    """One dynamic size: its name, its inclusive range (`hi` None: unbounded) and the value
    it has in the trace being compiled."""

    name: str
    lo: int
    hi: int | None
    hint: int


_RELATIONS = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
              "gt": operator.gt, "ge": operator.ge}


@dataclass(frozen=True)
class Guard:
    """`expr <relation> 0` must hold for a call to use the program (each relation is one of
    eq, ne, lt, le, gt, ge)."""

    expr: Poly
    relation: str

    def holds(self, env: Mapping[str, int]) -> bool:
        return _RELATIONS[self.relation](self.expr.evaluate(env), 0)

    def __str__(self) -> str:
        symbol = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
        return f"{self.expr} {symbol[self.relation]} 0"


@dataclass
class ShapeEnv:
    """The symbols of one trace and the guards recorded while it is traced and compiled."""

    symbols: dict[str, Symbol] = field(default_factory=dict)
    guards: list[Guard] = field(default_factory=list)
    specialize: bool = False
    """Whether a trace relying on a symbol being one value (`n == 4`) raises
    `SpecializeSize` (the caller traces again with that size static, as PyTorch does)
    rather than keeping the symbol under the guard `n == 4`."""

    def symbol(self, name: str, hint: int, lo: int = 2, hi: int | None = None) -> Dim:
        """A new symbol with this hint and range (by default 2.., as PyTorch: sizes 0 and 1
        are kept static because broadcasting treats 1 specially)."""
        if not name.isidentifier() or name in self.symbols:
            raise ValueError(f"ShapeEnv.symbol: expected a new identifier, got {name!r}")
        if not (lo <= hint and (hi is None or hint <= hi)):
            raise ValueError(f"ShapeEnv.symbol: hint {hint} outside {name}'s range "
                             f"{lo}..{'' if hi is None else hi}")
        self.symbols[name] = Symbol(name, lo, hi, hint)
        return Dim(((name,), 1),)

    def hints(self) -> dict[str, int]:
        return {s.name: s.hint for s in self.symbols.values()}

    def bounds(self, size: Size) -> tuple[int, float]:
        """Inclusive (lo, hi) of `size` over every allowed value of its symbols (hi may be
        math.inf)."""
        if isinstance(size, int):
            return size, size
        lo_total, hi_total = 0, 0
        for monomial, coefficient in size.terms:
            lo, hi = coefficient, coefficient
            for name in monomial:
                s = self.symbols[name]
                top = math.inf if s.hi is None else s.hi
                corners = [v for v in (lo * s.lo, lo * top, hi * s.lo, hi * top)
                           if not math.isnan(v)]
                lo, hi = min(corners), max(corners)
            lo_total += lo
            hi_total += hi
        return lo_total, hi_total

    def decide(self, expr: Size, relation: str) -> bool:
        """Whether `expr <relation> 0`: from the symbols' ranges when that settles it for
        every call, else for the hints, recording a guard that it stays so."""
        if isinstance(expr, int):
            return _RELATIONS[relation](expr, 0)
        lo, hi = self.bounds(expr)
        test = _RELATIONS[relation]
        if test(lo, 0) and test(hi, 0) and (relation != "ne" or lo > 0 or hi < 0):
            return True
        if not test(lo, 0) and not test(hi, 0) and (relation != "eq" or lo > 0 or hi < 0):
            return False
        answer = test(expr.evaluate(self.hints()), 0)
        kept = relation if answer else _NEGATION[relation]
        if kept == "eq" and self.specialize:
            fixed = _fixed_symbol(expr)
            if fixed is not None:
                raise SpecializeSize(*fixed)
        guard = Guard(Poly(expr.terms), kept)
        if guard not in self.guards:
            self.guards.append(guard)
        return answer

    def excludes(self, values: Mapping[str, int]) -> bool:
        """Whether these values of some symbols violate a range or a guard over those
        symbols alone (sizes no call of the program has: checks sample around them)."""
        for name, v in values.items():
            s = self.symbols.get(name)
            if s is not None and (v < s.lo or (s.hi is not None and v > s.hi)):
                return True
        return any(g.expr.symbols() <= values.keys() and not g.holds(values)
                   for g in self.guards)

    def check(self, env: Mapping[str, int]) -> Guard | None:
        """The first guard or symbol range these sizes violate, as a guard; None if none."""
        for s in self.symbols.values():
            value = env[s.name]
            if value < s.lo or (s.hi is not None and value > s.hi):
                return Guard(Poly(((s.name,), 1),), "ge" if value < s.lo else "le")
        for guard in self.guards:
            if not guard.holds(env):
                return guard
        return None


def _fixed_symbol(expr: Poly) -> tuple[str, int] | None:
    """(name, value) when `expr == 0` says one symbol is one value (`a*n + c == 0`)."""
    linear = [(m, c) for m, c in expr.terms if m]
    if len(linear) != 1 or len(linear[0][0]) != 1:
        return None
    (name,), a = linear[0]
    c = sum(k for m, k in expr.terms if not m)
    return (name, -c // a) if c % a == 0 else None


_NEGATION = {"eq": "ne", "ne": "eq", "lt": "ge", "ge": "lt", "le": "gt", "gt": "le"}
_ACTIVE: contextvars.ContextVar[ShapeEnv | None] = contextvars.ContextVar("neurenix_shape_env",
                                                                         default=None)


@contextlib.contextmanager
def shape_env(env: ShapeEnv) -> Iterator[ShapeEnv]:
    """Make `env` the one comparisons of dynamic sizes decide in (and record guards in)."""
    token = _ACTIVE.set(env)
    try:
        yield env
    finally:
        _ACTIVE.reset(token)


def active_env() -> ShapeEnv:
    env = _ACTIVE.get()
    if env is None:
        raise DynamicSizeError("a dynamic size was compared outside a shape environment "
                               "(compiler.symbolic.shape_env)")
    return env


def current_env() -> ShapeEnv | None:
    """The active environment, or None outside one."""
    return _ACTIVE.get()


def is_dynamic(size: object) -> bool:
    return isinstance(size, Poly)


def hint(size: Size) -> int:
    """A size's value in the trace being compiled (an int is itself): what heuristics (tiles,
    fusion, threading) read, never a comparison that would record a guard."""
    if isinstance(size, int):
        return size
    env = _ACTIVE.get()
    if env is None:
        raise DynamicSizeError(f"the hint of the dynamic size {size} needs a shape "
                               "environment (compiler.symbolic.shape_env)")
    return size.evaluate(env.hints())


def size_bounds(size: Size) -> tuple[int, float]:
    """Inclusive (lo, hi) of a size in the active environment (an int's is itself)."""
    return (size, size) if isinstance(size, int) else active_env().bounds(size)


def _terms(x: Size) -> dict[Monomial, int]:
    if isinstance(x, Poly):
        return dict(x.terms)
    return {(): int(x)}


def _make(terms: Mapping[Monomial, int]) -> Size:
    p = poly_from_terms(terms)
    return Dim(*p.terms) if isinstance(p, Poly) else p


def _operand(other: object) -> bool:
    return isinstance(other, Poly) or (isinstance(other, int) and not isinstance(other, bool))


class Dim(Poly):
    """A symbolic size with int-like arithmetic (`+ - *`, exact `//` and `%`), and comparisons
    that are decided in the active `ShapeEnv` (see the module docstring)."""

    def __init__(self, *terms: tuple[Monomial, int]) -> None:
        object.__setattr__(self, "terms", tuple(terms))

    def __hash__(self) -> int:
        return hash(self.terms)

    def __repr__(self) -> str:
        return str(self)

    # ---- arithmetic -----------------------------------------------------------------------

    def __add__(self, other: object) -> Size:
        if not _operand(other):
            return NotImplemented
        terms = _terms(self)
        for m, c in _terms(other).items():
            terms[m] = terms.get(m, 0) + c
        return _make(terms)

    __radd__ = __add__

    def __neg__(self) -> Size:
        return _make({m: -c for m, c in self.terms})

    def __sub__(self, other: object) -> Size:
        if not _operand(other):
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other: object) -> Size:
        if not _operand(other):
            return NotImplemented
        return (-self) + other

    def __mul__(self, other: object) -> Size:
        if not _operand(other):
            return NotImplemented
        terms: dict[Monomial, int] = {}
        for ma, ca in self.terms:
            for mb, cb in _terms(other).items():
                m = tuple(sorted(ma + mb))
                terms[m] = terms.get(m, 0) + ca * cb
        return _make(terms)

    __rmul__ = __mul__

    def __floordiv__(self, other: object) -> Size:
        """Exact division only: by an int dividing every coefficient, or by one term dividing
        every term (the -1 of a reshape); anything else raises DynamicSizeError."""
        if not _operand(other):
            return NotImplemented
        quotient = exact_quotient(self, other)
        if quotient is None:
            raise DynamicSizeError(f"{self} // {other} is not exact for every size")
        return quotient

    def __rfloordiv__(self, other: object) -> Size:
        if not _operand(other):
            return NotImplemented
        raise DynamicSizeError(f"{other} // {self}: division by a dynamic size")

    def __mod__(self, other: object) -> Size:
        if not _operand(other):
            return NotImplemented
        if exact_quotient(self, other) is not None:
            return 0
        raise DynamicSizeError(f"{self} % {other} depends on the dynamic size")

    def __truediv__(self, other: object) -> float:
        raise DynamicSizeError(f"{self} / {other}: a dynamic size as a Python number")

    __rtruediv__ = __truediv__

    # ---- what an int would be -----------------------------------------------------------------

    def __int__(self) -> int:
        raise DynamicSizeError(f"the dynamic size {self} used as a Python int")

    __index__ = __int__
    __float__ = __int__

    def __bool__(self) -> bool:
        return active_env().decide(self, "ne")

    # ---- comparisons ----------------------------------------------------------------------

    def _compare(self, other: object, relation: str) -> bool:
        if not _operand(other):
            return NotImplemented
        return active_env().decide(self - other, relation)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Poly) and other.terms == self.terms:
            return True
        if not _operand(other):
            return False
        return self._compare(other, "eq")

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __lt__(self, other: object) -> bool:
        return self._compare(other, "lt")

    def __le__(self, other: object) -> bool:
        return self._compare(other, "le")

    def __gt__(self, other: object) -> bool:
        return self._compare(other, "gt")

    def __ge__(self, other: object) -> bool:
        return self._compare(other, "ge")


def exact_quotient(a: Size, b: Size) -> Size | None:
    """a / b when it is a polynomial with integer coefficients that divides exactly for
    every value of the symbols (b an int, a single term, or a polynomial that divides a:
    `3 * (2 + s1) * (2 + s2)` by `(2 + s1) * (2 + s2)`); None otherwise."""
    if isinstance(b, int):
        if b == 0:
            return None
        terms = _terms(a)
        if any(c % b for c in terms.values()):
            return None
        return _make({m: c // b for m, c in terms.items()})
    if isinstance(a, int) and a == 0:
        return 0
    if len(b.terms) != 1:
        return _long_division(_terms(a), dict(b.terms))
    (mb, cb), = b.terms
    out: dict[Monomial, int] = {}
    for m, c in _terms(a).items():
        rest = list(m)
        for name in mb:
            if name not in rest:
                return None
            rest.remove(name)
        if c % cb:
            return None
        out[tuple(rest)] = c // cb
    return _make(out)


def _long_division(a: dict[Monomial, int], b: dict[Monomial, int]) -> Size | None:
    """a / b for polynomials, when b divides a with integer coefficients (the remainder of
    dividing by the leading terms, graded by degree, is zero), else None."""
    def leading(terms: dict[Monomial, int]) -> Monomial:
        return max(terms, key=lambda m: (len(m), m))

    lb = leading(b)
    out: dict[Monomial, int] = {}
    rest = {m: c for m, c in a.items() if c}
    for _ in range(64 * (1 + len(rest))):  # each step removes the leading term
        if not rest:
            return _make(out)
        la = leading(rest)
        left = list(la)
        for name in lb:
            if name not in left:
                return None
            left.remove(name)
        if rest[la] % b[lb]:
            return None
        qm, qc = tuple(sorted(left)), rest[la] // b[lb]
        out[qm] = out.get(qm, 0) + qc
        for m, c in b.items():
            key = tuple(sorted(qm + m))
            rest[key] = rest.get(key, 0) - qc * c
            if not rest[key]:
                del rest[key]
    return None


def dim_from_poly(p: Poly) -> Dim:
    """The compiler's form of a runtime size polynomial."""
    return p if isinstance(p, Dim) else Dim(*p.terms)
