"""Sizes known only at run time, as plain data: integer polynomials in named symbols.

A shape-polymorphic program (docs/compiler/dynamic-shapes.md) has tensor shapes, buffer
sizes, arena offsets and kernel ranges that depend on sizes given per call (a batch `n`).
Each is a `Poly`: a sum of integer multiples of products of symbols, e.g. 4096*n + 64.  The
runtime only evaluates them (`Poly.evaluate`, `size_value`); the compiler's arithmetic and
reasoning over them is `compiler.symbolic.Dim`, a subclass.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Monomial = tuple[str, ...]
"""The symbols multiplied in one term, sorted, with repeats (("n", "n") is n**2)."""
Term = tuple[Monomial, int]


@dataclass(frozen=True)
class Poly:
    """sum(coefficient * prod(symbols)) over `terms`: canonical (sorted by monomial, no zero
    coefficient, no repeated monomial) and never constant (a constant size is an int)."""

    terms: tuple[Term, ...]

    def evaluate(self, env: Mapping[str, int]) -> int:
        """The value for these symbol values; a KeyError names a symbol `env` lacks."""
        total = 0
        for monomial, coefficient in self.terms:
            value = coefficient
            for name in monomial:
                value *= env[name]
            total += value
        return total

    def symbols(self) -> frozenset[str]:
        return frozenset(name for monomial, _ in self.terms for name in monomial)

    def to_json(self) -> dict:
        return {"poly": [[list(m), c] for m, c in self.terms]}

    def __str__(self) -> str:
        parts = []
        for monomial, coefficient in self.terms:
            if not monomial:
                parts.append(str(coefficient))
            elif coefficient == 1:
                parts.append("*".join(monomial))
            else:
                parts.append(f"{coefficient}*{'*'.join(monomial)}")
        return " + ".join(parts).replace("+ -", "- ")


Size = int | Poly


def size_value(size: Size, env: Mapping[str, int]) -> int:
    """An int size, or a symbolic one evaluated for `env`."""
    return size if isinstance(size, int) else size.evaluate(env)


def poly_from_terms(terms: Mapping[Monomial, int]) -> Size:
    """The canonical size of {monomial: coefficient}: an int when no symbol is left."""
    kept = tuple(sorted((tuple(sorted(m)), int(c)) for m, c in terms.items() if c))
    if not kept:
        return 0
    if len(kept) == 1 and not kept[0][0]:
        return kept[0][1]
    return Poly(kept)


def size_from_json(data: object) -> Size:
    """An int, or `{"poly": [[symbols, coefficient], ...]}` as `Poly.to_json` writes it; a
    ValueError for anything else."""
    if isinstance(data, int) and not isinstance(data, bool):
        return data
    if isinstance(data, dict) and set(data) == {"poly"} and isinstance(data["poly"], list):
        terms: dict[Monomial, int] = {}
        for item in data["poly"]:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)
                    and all(isinstance(s, str) and s.isidentifier() for s in item[0])
                    and isinstance(item[1], int) and not isinstance(item[1], bool)):
                raise ValueError(f"size: expected [symbols, coefficient], got {item!r}")
            key = tuple(sorted(item[0]))
            terms[key] = terms.get(key, 0) + item[1]
        return poly_from_terms(terms)
    raise ValueError(f"size: expected an int or {{'poly': [...]}}, got {data!r}")


def size_to_json(size: Size) -> int | dict:
    return size if isinstance(size, int) else size.to_json()


def bind_sizes(declared: Sequence[Sequence[Size]], actual: Sequence[Sequence[int]],
               known: Mapping[str, int] | None = None) -> dict[str, int]:
    """The symbols' values that give tensors of `declared` shapes the `actual` shapes (a
    dimension that is a lone symbol binds it; `known` gives symbols no dimension may bind,
    e.g. a backward program's, whose inputs can all be scalars); a ValueError names the first
    dimension that does not match, or a symbol nothing binds."""
    env: dict[str, int] = dict(known) if known else {}
    if len(declared) != len(actual):
        raise ValueError(f"expected {len(declared)} tensors, got {len(actual)}")
    for k, (want, got) in enumerate(zip(declared, actual)):
        if len(want) != len(got):
            raise ValueError(f"tensor {k}: expected {len(want)} dimensions "
                             f"({_shape_text(want)}), got shape {tuple(got)}")
        for d, v in zip(want, got):
            if isinstance(d, Poly) and len(d.terms) == 1 and d.terms[0][1] == 1 \
                    and len(d.terms[0][0]) == 1:
                env.setdefault(d.terms[0][0][0], int(v))
    for k, (want, got) in enumerate(zip(declared, actual)):
        for axis, (d, v) in enumerate(zip(want, got)):
            try:
                expected = size_value(d, env)
            except KeyError as e:
                raise ValueError(f"size {d}: symbol {e.args[0]} is not the size of any "
                                 "input dimension") from None
            if expected != v:
                raise ValueError(f"tensor {k}: expected shape {_shape_text(want)}, got "
                                 f"{tuple(got)} (dimension {axis} is {v}, expected {expected})")
    return env


@dataclass(frozen=True)
class Groups:
    """min(prod(ceil(size / divisor) for size, divisor in parts), most): work-groups of a GPU
    launch that only the call's sizes give (`most` 0: no cap).  A GPU program with dynamic
    sizes holds these in `KernelInfo.grid`; its runtime evaluates them per call."""

    parts: tuple[tuple[Size, int], ...]
    most: int = 0

    def evaluate(self, env: Mapping[str, int]) -> int:
        total = 1
        for size, divisor in self.parts:
            total *= -(-size_value(size, env) // divisor)
        return min(total, self.most) if self.most else total

    def symbols(self) -> frozenset[str]:
        return frozenset().union(*(s.symbols() for s, _ in self.parts if isinstance(s, Poly)))

    def to_json(self) -> dict:
        return {"groups": [[size_to_json(s), d] for s, d in self.parts], "most": self.most}

    def __str__(self) -> str:
        parts = " * ".join(f"ceil(({s}) / {d})" if d != 1 else f"({s})" for s, d in self.parts)
        return f"min({parts}, {self.most})" if self.most else parts


Extent = int | Poly | Groups
"""A launch dimension: an int, a polynomial, or `Groups` of the symbols."""


def extent_value(extent: Extent, env: Mapping[str, int]) -> int:
    """A launch dimension's value for `env`."""
    return extent if isinstance(extent, int) else extent.evaluate(env)


def extent_from_json(data: object) -> Extent:
    """An int, a `{"poly": ...}` or a `{"groups": [[size, divisor], ...], "most": n}` as
    `Groups.to_json` writes it; a ValueError for anything else."""
    if isinstance(data, dict) and set(data) == {"groups", "most"}:
        parts, most = data["groups"], data["most"]
        if not (isinstance(parts, list) and isinstance(most, int) and not isinstance(most, bool)
                and most >= 0 and all(isinstance(p, list) and len(p) == 2
                                      and type(p[1]) is int and p[1] > 0 for p in parts)):
            raise ValueError(f"launch size: malformed groups {data!r}")
        return Groups(tuple((size_from_json(s), d) for s, d in parts), most)
    return size_from_json(data)


def extent_to_json(extent: Extent) -> int | dict:
    return extent if isinstance(extent, int) else extent.to_json()


def _shape_text(shape: Sequence[Size]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
