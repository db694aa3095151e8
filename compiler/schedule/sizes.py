"""Sizes in schedules: static ints, or dynamic sizes (`compiler.symbolic.Dim`) of a
shape-polymorphic kernel (docs/compiler/dynamic-shapes.md).

Schedule rules decide tiles, vector widths and threads from a dynamic size's *hint* (its value
in the trace being compiled) or its bounds, never by comparing it (which would record a guard
and over-specialise the program): `hint`.  What the generated code needs at run time is kept
symbolic: a range's `count` may be a polynomial, or a `Ceil` (ceil(size / divisor) * times,
the row blocks of a tiled contraction), which the entry evaluates per call.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ...runtime.sizes import Poly, Size
from ..kernel.affine import affine
from ..kernel.ir import Expr, Kernel, Sym, postorder
from ..symbolic import hint


@dataclass(frozen=True)
class Ceil:
    """ceil(size / divisor) * times: a range count only the call's sizes give."""

    size: Size
    divisor: int
    times: Size = 1

    def evaluate(self, env) -> int:
        size = self.size if isinstance(self.size, int) else self.size.evaluate(env)
        times = self.times if isinstance(self.times, int) else self.times.evaluate(env)
        return -(-size // self.divisor) * times

    def __str__(self) -> str:
        times = "" if isinstance(self.times, int) and self.times == 1 else f" * ({self.times})"
        return f"ceil(({self.size}) / {self.divisor}){times}"


@dataclass(frozen=True)
class Blocks:
    """The row blocks of a dynamic row count, cut per call: `size` rows in tiles of `tile`
    rows, in as many equal blocks as the static rules cut that many static rows into
    (`schedule.contraction._row_block`: blocks of at most `most` tiles, at least
    `min(want, tiles // least)` of them for the threads), but no more than blocks of `fixed`
    tiles make (each row block packs `b` again: more blocks than that cost more than the
    threads gain); at least one.  Each block gets `block` tiles, the last fewer.  Evaluates
    to the blocks times `times` (range points per row block) or, `per_block`, to `block`
    (what the kernel steps its row blocks by)."""

    size: Size
    tile: int
    most: int
    want: int
    least: int
    fixed: int
    times: Size = 1
    per_block: bool = False

    @staticmethod
    def cut(tiles: int, most: int, want: int, least: int, fixed: int) -> tuple[int, int]:
        """(row blocks, tiles per block) for `tiles` row tiles."""
        blocks = max(-(-tiles // most), min(want, tiles // least))
        blocks = max(1, min(blocks, -(-tiles // fixed)))
        block = max(1, -(-tiles // blocks))
        return -(-tiles // block), block

    def evaluate(self, env) -> int:
        size = self.size if isinstance(self.size, int) else self.size.evaluate(env)
        blocks, block = self.cut(-(-size // self.tile), self.most, self.want, self.least,
                                 self.fixed)
        if self.per_block:
            return block
        times = self.times if isinstance(self.times, int) else self.times.evaluate(env)
        return blocks * times

    def block(self) -> Blocks:
        """Tiles per block, per call."""
        return replace(self, times=1, per_block=True)

    def __str__(self) -> str:
        what = "tiles per block" if self.per_block else "blocks"
        times = "" if isinstance(self.times, int) and self.times == 1 else f" * ({self.times})"
        return (f"{what}(ceil(({self.size}) / {self.tile}) tiles: <= {self.most} tiles, "
                f">= min({self.want}, tiles / {self.least}), <= tiles / {self.fixed}){times}")


Count = int | Poly | Ceil | Blocks
"""A range's size: an int, a polynomial in the symbols, a `Ceil` of one, or `Blocks`."""


def is_static(size: object) -> bool:
    return isinstance(size, int)


def hints(sizes) -> tuple[int, ...]:
    return tuple(hint(s) for s in sizes)


def ceil_count(size: Size, divisor: int, times: Size = 1) -> Count:
    """ceil(size / divisor) * times: an int or polynomial where that is exact, else a `Ceil`."""
    if isinstance(size, int):
        return -(-size // divisor) * times
    if divisor == 1:
        return size * times
    return Ceil(size, divisor, times)


def kernel_symbols(kernel: Kernel) -> frozenset[str]:
    """The symbols `kernel` reads: in its extents, buffer sizes and expressions (`Sym`)."""
    names: set[str] = set()
    for size in list(kernel.domain) + list(kernel.reduce) + [b.size for b in
                                                             kernel.buffers()]:
        if isinstance(size, Poly):
            names |= size.symbols()
    roots = [x for s in kernel.stores for x in (s.index, s.value)]
    if kernel.reduce_value is not None:
        roots.append(kernel.reduce_value)
    names |= {e.name for e in postorder(roots) if isinstance(e, Sym)}
    return frozenset(names)


def strides(e: Expr) -> dict[int, int | None] | None:
    """The loop variables' coefficients in `e` when it is affine (`affine`), a dynamic one
    as None: enough to ask whether an index steps by one along an axis, which a dynamic
    stride (a product of sizes, never compared: that would record a guard) is not known to."""
    coeffs = affine(e)
    if coeffs is None:
        return None
    return {axis: c if isinstance(c, int) else None for axis, c in coeffs.items() if axis >= 0}


def static_affine(e: Expr) -> dict[int, int] | None:
    """`affine(e)` when every loop variable's coefficient is an int; None when one is a
    dynamic size (a dynamic stride: layout rules then treat the index as not affine, rather
    than compare the stride, which would record a guard).  The constant may be dynamic."""
    coeffs = affine(e)
    if coeffs is None or any(isinstance(c, Poly) for axis, c in coeffs.items() if axis >= 0):
        return None
    return coeffs
