"""Reductions: which are unrolled, which run across a strip of columns, which are split in
parts over threads, and how long float sums are cut into blocks.

A reduction of at most `SMALL_REDUCTION` steps (a pooling window, a few gates) is unrolled at
each domain point.  When the reduced data is contiguous along the last domain axis rather than
along the innermost reduction axis (a column sum such as a bias gradient, a softmax over axis
0), a strip of `STRIP` columns is reduced together (`column_rule`).  A full reduction (no
domain axes) big enough for threads is cut into `part_count` parts, runs of whole blocks
(`split_rule`).  A float sum longer than one block runs in blocks of at most `BLOCK` steps per
point (`COLUMN_BLOCK` across columns) added into a wider total, so that its rounding error
does not grow with its length (`blocks`, `cut`; see docs/compiler/codegen-llvm.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..kernel.ir import Kernel, Load, dtype_of
from ..targets import Capabilities
from .ranges import range_axes, splits_reduction, worth_splitting
from .sizes import Count, ceil_count, hint, is_static, static_affine
from .types import ColumnReduction, SplitReduction

SMALL_REDUCTION = 16  # reductions up to this many steps are unrolled
STRIP = 256  # columns reduced together when the reduction runs across columns
BLOCK = 1024  # steps of a long float sum per block, per point (a few dozen per vector lane)
COLUMN_BLOCK = 128  # steps per block across a strip of columns (64 pairs added in order)
PARTS = 64  # parts a full reduction is cut into (at most); threads claim runs of parts


def is_small(kernel: Kernel) -> bool:
    """Whether the reduction is short enough to unroll at every domain point (a dynamic one
    never is)."""
    return (kernel.reduce_value is not None and all(is_static(n) for n in kernel.reduce)
            and math.prod(kernel.reduce) <= SMALL_REDUCTION)


def across_columns(kernel: Kernel) -> bool:
    """Whether the reduced data is contiguous along the last domain axis rather than along the
    innermost reduction axis, so that reducing a strip of columns at once pays."""
    if kernel.reduce_value is None or not kernel.domain or not kernel.reduce:
        return False
    if is_small(kernel) or hint(kernel.domain[-1]) < 4:
        return False
    last, inner = len(kernel.domain) - 1, len(kernel.domain) + len(kernel.reduce) - 1
    along_domain = along_reduce = 0
    for load in _loads(kernel.reduce_value):
        coeffs = static_affine(load.index) or {}
        along_domain += coeffs.get(last) == 1
        along_reduce += coeffs.get(inner) == 1
    return along_domain > along_reduce


def _loads(e) -> list[Load]:
    out = []
    if isinstance(e, Load):
        out.append(e)
    for child in getattr(e, "__dict__", {}).values():
        if hasattr(child, "__dataclass_fields__"):
            out += _loads(child)
    return out


def column_rule(kernel: Kernel, caps: Capabilities) -> ColumnReduction | None:
    """A strip of columns reduced together, for data contiguous along the last domain axis."""
    if not across_columns(kernel):
        return None
    ranged, count = range_axes(kernel.domain)
    return ColumnReduction(count=count, threaded=worth_splitting(kernel, caps), ranged=ranged,
                           strip=STRIP)


def split_rule(kernel: Kernel, caps: Capabilities) -> SplitReduction | None:
    """A full reduction big enough for threads, cut into parts."""
    if not splits_reduction(kernel, caps):
        return None
    return SplitReduction(count=1, threaded=True, parts=part_count(kernel))


@dataclass(frozen=True)
class Blocks:
    """A long float sum's steps cut into blocks, in order: the reduction axes before `level` run
    in full, axis `level` in chunks of `chunk` steps (the last one may be shorter), the axes
    after it whole inside each block.  Block `q` is chunk `q % chunks` of axis `level` at the
    point `q // chunks` of the axes before it (row-major).  Sizes may be dynamic: `chunks` and
    `count` are then a `Ceil` or polynomial the generated code computes per call."""

    sizes: tuple
    level: int
    chunk: int

    @property
    def chunks(self) -> Count:
        """Chunks of axis `level`."""
        return ceil_count(self.sizes[self.level], self.chunk)

    @property
    def count(self) -> Count:
        """Blocks in all."""
        return ceil_count(self.sizes[self.level], self.chunk, math.prod(self.sizes[:self.level]))

    @property
    def steps(self) -> int:
        """Steps of a full block."""
        return self.chunk * math.prod(self.sizes[self.level + 1:])


def float_sum(kernel: Kernel) -> bool:
    """Whether the kernel's reduction is a float sum (the reductions that are blocked)."""
    return (kernel.reduce_op == "sum" and kernel.reduce_value is not None
            and dtype_of(kernel.reduce_value).is_floating)


def blocks(kernel: Kernel, block: int) -> Blocks | None:
    """How a float sum of more than `block` steps is cut into blocks of at most `block` steps
    (None for other reductions and short sums, which run as one block; a dynamic sum is
    always cut)."""
    if not float_sum(kernel):
        return None
    if all(is_static(n) for n in kernel.reduce) and math.prod(kernel.reduce) <= block:
        return None
    return cut(tuple(kernel.reduce), block)


def cut(sizes: tuple[int, ...], block: int) -> Blocks:
    """`sizes` cut into blocks of at most `block` steps (one block if they fit): the innermost
    axes that fit whole in a block, and chunks of the next axis out — preferably a divisor of
    it between half and all of what fits, so that every chunk has the same constant length.
    A dynamic axis counts as longer than a block: the axes inside a block are static, so a
    block's length is at most `block` for every size."""
    static = all(is_static(n) for n in sizes)
    if static and math.prod(sizes) <= block:
        return Blocks(sizes, 0, max(sizes[0], 1))
    if any(is_static(n) and n == 0 for n in sizes):  # no step at all, whatever the sizes
        return Blocks(sizes, 0, 1)
    level, inner = len(sizes) - 1, 1
    while is_static(sizes[level]) and inner * sizes[level] <= block:
        inner *= sizes[level]  # stops: all axes together exceed a block, or a dynamic one
        level -= 1
    most = block // inner
    n = sizes[level]
    chunk = most
    if is_static(n):
        chunk = next((c for c in range(most, most // 2, -1) if n % c == 0), most)
    return Blocks(sizes, level, chunk)


def part_blocks(kernel: Kernel) -> Blocks:
    """The blocks a full reduction is cut into; a part is a run of whole blocks."""
    return blocks(kernel, BLOCK) or cut(tuple(kernel.reduce), BLOCK)


def part_count(kernel: Kernel) -> int:
    """How many parts a full reduction is cut into: fixed by its size, not by the threads, so
    that its result does not depend on how many there are (`PARTS` for a dynamic size: parts
    with no block are empty)."""
    count = part_blocks(kernel).count
    return min(count, PARTS) if isinstance(count, int) else PARTS
