"""The typed schedules: how one kernel is carried out, decided before any code is generated.

A schedule holds target-neutral decisions only (tiles, vector widths, the kernel's range and
whether it is split over threads, parts of a split reduction); a generator reads them and
emits code, it decides nothing about the kernel's shape.  Every schedule is frozen and prints
as one line (`str(schedule)`), which the LLVM generator writes above each kernel function.

Every schedule has a *range*: `count` points, the kernel function running a [start, end) part
of them, and `threaded`: whether the range is worth splitting over the target's threads.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..types import DType
from .sizes import Count


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """What every schedule has: the range and whether threads split it."""

    count: Count
    """Points in the kernel's range: an int, or for a kernel with dynamic sizes a
    polynomial or `Ceil` of the symbols, which the entry evaluates per call."""
    threaded: bool
    """Whether the range is split over the target's threads."""

    def _line(self, path: str, details: str) -> str:
        threads = ", threaded" if self.threaded else ""
        points = "point" if isinstance(self.count, int) and self.count == 1 else "points"
        return f"{path}: {details}; {self.count} range {points}{threads}"


@dataclass(frozen=True, kw_only=True)
class Blocking:
    """The cache blocking of a tiled contraction: K blocks, row blocks, column groups."""

    kc: int
    """K block length (the last block may be shorter)."""
    k_blocks: Count
    """K blocks: a `Ceil` of a dynamic k (blocks of `kc`, the last one shorter)."""
    block: int
    """Row tiles per row block (dynamic rows: the most a row block gets; `row_blocks.block()`
    is the call's)."""
    row_blocks: Count
    """Row blocks: `Blocks` of dynamic rows, cut per call as static rows are."""
    group: int
    """Column tiles per column group (their partial sums share the scratch)."""
    col_groups: Count
    """Column groups per row block: `Ceil` of dynamic columns."""
    col_tiles: Count
    """Column tiles per row block: `Ceil` of dynamic columns (the last tile is clamped)."""
    direct: bool
    """Full tiles read `b` in place (a single row tile) rather than from packed panels."""
    panel_bytes: int
    """KC x NR panels: one per tile of the group, or one (direct)."""
    panel_on_stack: bool
    """Whether the panels are small enough for the stack (else they come from the heap)."""
    scratch_bytes: int
    """Partial sums of a row block by a column group (0: one K block)."""

    @property
    def heap_bytes(self) -> int:
        """Bytes taken from the heap per kernel call (the panels when too large for the
        stack, and the partial sums)."""
        panel = 0 if self.panel_on_stack else -(-self.panel_bytes // 64) * 64
        return panel + self.scratch_bytes

    def __str__(self) -> str:
        where = "stack" if self.panel_on_stack else "heap"
        panels = "b in place" if self.direct else f"panels {self.panel_bytes} B ({where})"
        scratch = f", scratch {self.scratch_bytes} B" if self.scratch_bytes else ""
        return (f"K blocks {self.k_blocks} x {self.kc}, row blocks {self.row_blocks} x "
                f"{self.block} tiles, column groups {self.col_groups} x {self.group} of "
                f"{self.col_tiles} tiles, {panels}{scratch}")


@dataclass(frozen=True, kw_only=True)
class Contraction(Schedule):
    """A sum over one axis k of `a * b`, register-tiled (BLIS-style): MR x NR tiles of
    accumulators, `b` packed into KC x NR panels (or read in place), blocked for the caches.
    The range is (batch, row block, column tile) triples."""

    a_operand: int
    """Which factor of the reduced product is `a` (broadcast per row): 0 or 1."""
    row: int | None
    """Domain axis tiled by MR rows; None for a single row."""
    col: int
    """Domain axis vectorised across NR columns."""
    batch: tuple[int, ...]
    dtype: DType
    mr: int
    nr: int
    vector_bits: int
    direct: bool
    """`b` is a plain load contiguous along the column axis."""
    k_major: bool
    """`b` is a plain load contiguous along k (a transposed weight): packed k-innermost."""
    blocking: Blocking

    def __str__(self) -> str:
        b = "contiguous along columns" if self.direct else (
            "contiguous along k" if self.k_major else "computed")
        return self._line("tiled", f"{self.dtype.name} rows {_axis(self.row)} x {self.mr}, "
                          f"columns axis {self.col} x {self.nr} ({self.vector_bits}-bit), "
                          f"batch {_axes(self.batch)}, a = factor {self.a_operand}, b {b}; "
                          f"{self.blocking}")


@dataclass(frozen=True, kw_only=True)
class Dot(Schedule):
    """A contraction whose two operands are both contiguous along k (`x @ w.T`): blocks of
    RM x RN outputs, each a vector dot product along k, nothing packed.  The range is
    (batch, column block) pairs."""

    a_operand: int
    """Which factor of the reduced product reads the rows (not the column axis)."""
    row: int | None
    col: int
    batch: tuple[int, ...]
    dtype: DType
    lanes: int
    """Vector lanes along k."""
    rm: int
    rn: int

    def __str__(self) -> str:
        return self._line("dot", f"{self.dtype.name} rows {_axis(self.row)}, columns axis "
                          f"{self.col}, batch {_axes(self.batch)}, a = factor "
                          f"{self.a_operand}, blocks {self.rm} x {self.rn}, {self.lanes} "
                          "lanes along k")


@dataclass(frozen=True, kw_only=True)
class Nest(Schedule):
    """The generic loop nest: the leading `ranged` domain axes flattened into the range (a
    1-D domain: its axis), the other outer axes counted loops, then the innermost axis."""

    ranged: int
    """Leading domain axes that form the range."""

    def _nest(self) -> str:
        if self.ranged == 0:
            return "no range axes"
        if self.ranged == 1:
            return "range over axis 0"
        return f"range over axes 0-{self.ranged - 1}"


@dataclass(frozen=True, kw_only=True)
class Window(Nest):
    """A small max/min/sum of one plain load striding by 2 to 4 along the last domain axis
    (pooling): a chunk of `lanes` outputs per step, from masked contiguous loads picked apart
    by deinterleaving shuffles."""

    stride: int
    offsets: tuple[int, ...]
    """Per tap (row-major over the reduction axes): its offset in the loaded index."""
    lanes: int

    def __str__(self) -> str:
        return self._line("window", f"{self._nest()}, stride {self.stride}, taps "
                          f"{_axes(self.offsets)}, {self.lanes} outputs per chunk")


@dataclass(frozen=True, kw_only=True)
class ColumnReduction(Nest):
    """A reduction whose data is contiguous along the last domain axis: a strip of `strip`
    columns reduced together, one accumulator each, step by step."""

    strip: int

    def __str__(self) -> str:
        return self._line("columns", f"{self._nest()}, strips of {self.strip} columns")


@dataclass(frozen=True, kw_only=True)
class SplitReduction(Schedule):
    """A full reduction (no domain axes) cut into `parts` runs of whole blocks that threads
    reduce into partials, combined in part order (the same result on any threads)."""

    parts: int

    def __str__(self) -> str:
        return self._line("split reduction", f"{self.parts} parts")


@dataclass(frozen=True, kw_only=True)
class PerPoint(Nest):
    """A nest that computes its domain points one by one: the reduction, if any, then the
    stores."""

    unroll: bool
    """A short reduction at each point is unrolled into straight-line code."""


@dataclass(frozen=True, kw_only=True)
class Elementwise(PerPoint):
    """The generic nest of a kernel without accumulating stores (a reduction per point
    included): a plain innermost loop (no nested reduction loop) is forced to vectorise when
    long enough and tail-folded when short; reductions are left to the cost model."""

    vector_bits: int
    vectorize: bool
    """The innermost loop carries `llvm.loop.vectorize.enable` (or the target's like)."""
    fold_tail: bool
    """Its remainder runs as one masked vector iteration, not a scalar loop."""

    def __str__(self) -> str:
        inner = "vectorised" if self.vectorize else "left to the cost model"
        fold = ", tail folded" if self.fold_tail else ""
        unroll = ", reduction unrolled" if self.unroll else ""
        return self._line("elementwise", f"{self._nest()}, inner loop {inner} "
                          f"({self.vector_bits}-bit){fold}{unroll}")


@dataclass(frozen=True, kw_only=True)
class Fallback(PerPoint):
    """The generic nest with nothing forced (any kernel; what scatters, whose accumulating
    stores forbid vectorising and threads, get)."""

    def __str__(self) -> str:
        unroll = ", reduction unrolled" if self.unroll else ""
        return self._line("loops", f"{self._nest()}{unroll}")


@dataclass(frozen=True, kw_only=True)
class Choice(Schedule):
    """Two schedules of a kernel with a dynamic size, picked per call: `small` while `size`
    is at most `limit`, else `large` (a contraction's dot products for few rows, tiles for
    many, as the static rules would pick at that size).  `count` and `threaded` are
    `large`'s."""

    size: object
    """The dynamic size tested (an int polynomial of the symbols)."""
    limit: int
    small: Schedule
    large: Schedule

    def __str__(self) -> str:
        return f"choice: {self.size} <= {self.limit}: {self.small} | else: {self.large}"


def _axis(axis: int | None) -> str:
    return "(one)" if axis is None else f"axis {axis}"


def _axes(values: tuple[int, ...]) -> str:
    return "(" + " ".join(str(v) for v in values) + ")"
