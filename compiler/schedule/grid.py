"""GPU schedules: how a kernel maps onto a grid of work-groups (OpenCL, WebGPU, CUDA, HIP).

Every GPU schedule is a launch: `grid` work-groups per dimension of `block` work-items each
(the same convention as `runtime.program.KernelInfo`), and a mapping of the kernel's points
onto them:

- `GridLoop` (the basic mapping, always applies): one work-item per point of the flattened
  domain, in a grid-stride loop, so that no grid dimension exceeds the target's `max_grid`
  (the grid goes 2-D first); a reduction runs sequentially in its work-item.  A kernel that
  is not parallel (scatter-add stores that may collide) runs as one work-item looping
  over everything (`serial`).
- `TiledContraction`: a sum over one axis k of `a * b` (matmul, a convolution's window
  product; the CPU contraction rule's recognition): TILE x TILE work-items per work-group,
  each computing an R x C micro-tile of outputs in registers (register blocking: a
  16R x 16C output tile per work-group; 1 x 1 for small outputs), `a` and `b` staged
  through local memory TILE steps of k at a time (k in order, so the sums are the basic
  mapping's).
- `GroupReduction`: one work-group per output point (grid-stride over points): its
  work-items reduce strided parts of the reduction, then combine them as a tree in local
  memory.  For reductions with few output points and a long reduction (a full sum, softmax
  rows), where one work-item per point would leave the device idle.

`GRID_RULES` tries them in order; the basic mapping ends the list.

Dynamic sizes (docs/compiler/dynamic-shapes.md): a rule decides from the sizes' hints
(`schedule.sizes.hint`), never by comparing them, and keeps what the launch needs symbolic: a
count may be a polynomial and a grid dimension `runtime.sizes.Groups` (ceil(points / block),
capped at `MAX_GROUPS` or the target's `max_grid`, whichever is smaller), which the runtime
evaluates per call; the kernel's grid-stride loops step by the launched work-groups, so every
size in the symbols' ranges is covered.  A symbolic grid stays 1-D (a second dimension would
need the static count).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ...runtime.sizes import Groups, Size
from ..kernel.ir import Binary, Kernel, dtype_of
from ..targets import Capabilities
from .contraction import axes_read
from .sizes import hint, hints, is_static
from .types import Schedule

BLOCK = 256
"""Work-items per work-group of the basic mapping (at most the target's limit)."""
MAX_GROUPS = 1 << 20
"""Work-groups launched at most: a grid-stride loop covers larger domains."""
GROUP_REDUCTION_STEPS = 256
"""Reduction steps per point from which a work-group reduces each point."""
GROUP_REDUCTION_POINTS = 1 << 16
"""Output points up to which a work-group per point beats a work-item per point."""
TILE = 16
"""Work-items per side of a contraction's work-group, and k steps staged per pass."""
MICRO = (4, 2, 1)
"""Rows (columns) of outputs per work-item a contraction tries, largest first: register
blocking where the output has a full tile of them, 1 (an output per work-item) below."""


@dataclass(frozen=True, kw_only=True)
class GridSchedule(Schedule):
    """A launch: `grid` work-groups per dimension of `block` work-items each."""

    grid: tuple[int | Groups, ...]
    block: tuple[int, ...]

    def _launch(self) -> str:
        grid = " x ".join(map(str, self.grid))
        block = " x ".join(map(str, self.block))
        return f"grid {grid} of {block}"


@dataclass(frozen=True, kw_only=True)
class GridLoop(GridSchedule):
    """One work-item per domain point in a grid-stride loop (`serial`: one work-item does
    every point in order, for stores that may collide)."""

    serial: bool

    def __str__(self) -> str:
        what = "one work-item, in order" if self.serial else "a work-item per point"
        return self._line("grid loop", f"{what}, {self._launch()}")


@dataclass(frozen=True, kw_only=True)
class GroupReduction(GridSchedule):
    """One work-group per output point: strided partial reductions per work-item, then a
    tree in local memory over the `block[0]` partials (a power of two)."""

    steps: int
    """Reduction steps per point."""

    def __str__(self) -> str:
        return self._line("group reduction", f"{self.steps} steps per point, a work-group "
                          f"per point, {self._launch()}")


@dataclass(frozen=True, kw_only=True)
class TiledContraction(GridSchedule):
    """A work-group of `tile` x `tile` work-items per `rows` x `cols` output tile
    (grid-stride over tiles): work-item (ty, tx) accumulates in registers the `micro`
    outputs (ty + tile * i, tx + tile * j) of it, k runs in steps of `tile` through
    local-memory tiles of `a` (rows x k) and `b` (k x columns)."""

    a_operand: int
    """Which factor of the reduced product is `a` (reads no column): 0 or 1."""
    row: int
    col: int
    batch: tuple[int, ...]
    tile: int
    """Work-items per side of the work-group, and k steps staged per pass."""
    micro: tuple[int, int] = (1, 1)
    """Outputs per work-item (rows, columns), held in registers (register blocking)."""

    @property
    def rows(self) -> int:
        """Rows of the output tile of a work-group."""
        return self.tile * self.micro[0]

    @property
    def cols(self) -> int:
        """Columns of the output tile of a work-group."""
        return self.tile * self.micro[1]

    @property
    def local_elements(self) -> int:
        """Elements of local memory: the `a` (rows x tile) and `b` (tile x cols) tiles."""
        return self.tile * (self.rows + self.cols)

    def __str__(self) -> str:
        batch = " ".join(map(str, self.batch))
        r, c = self.micro
        return self._line("tiled contraction", f"rows axis {self.row} x columns axis "
                          f"{self.col} in {self.rows} x {self.cols} tiles, {r} x {c} outputs "
                          f"per work-item, batch ({batch}), a = factor {self.a_operand}, k "
                          f"staged by {self.tile} in local memory, {self._launch()}")


def launch(groups: int, block: int, max_grid: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(grid, block) for `groups` work-groups of `block` work-items: 1-D while the groups fit
    `max_grid` (0: no limit), else 2-D; at most `MAX_GROUPS` (a grid-stride loop does the
    rest); a zero grid for no groups."""
    groups = min(groups, MAX_GROUPS)
    if groups == 0:
        return (0,), (block,)
    if not max_grid or groups <= max_grid:
        return (groups,), (block,)
    x = max_grid
    return (x, min(-(-groups // x), max_grid)), (block, 1)


def dynamic_launch(parts: list[tuple[Size, int]], block: int, max_grid: int
                   ) -> tuple[tuple[int | Groups, ...], tuple[int, ...]]:
    """`launch` for prod(ceil(size / divisor)) work-groups of dynamic sizes: a 1-D grid of
    `Groups` capped at `MAX_GROUPS` and at `max_grid` (0: no limit; WebGPU's 65,535), the
    grid-stride loops stepping by the groups launched doing the rest."""
    most = min(MAX_GROUPS, max_grid) if max_grid else MAX_GROUPS
    return (groups(parts, most),), (block,)


def groups(parts: list[tuple[Size, int]], most: int = 0) -> Groups:
    """`Groups` of these parts, the static ones folded into one factor."""
    static = math.prod(-(-size // d) for size, d in parts if is_static(size))
    dynamic = tuple((size, d) for size, d in parts if not is_static(size))
    return Groups(dynamic + (((static, 1),) if static != 1 else ()), most)


def _block(caps: Capabilities, want: int) -> int:
    limit = caps.max_workgroup_size or BLOCK
    return 1 << (min(want, limit).bit_length() - 1)


def serial_rule(kernel: Kernel, caps: Capabilities) -> GridLoop | None:
    """One work-item for a kernel whose points may write the same element."""
    if kernel.parallel and not any(s.accumulate for s in kernel.stores):
        return None
    count = math.prod(kernel.domain)
    grid = 1 if not is_static(count) or count else 0
    return GridLoop(count=count, threaded=False, grid=(grid,), block=(1,), serial=True)


def tiled_contraction_rule(kernel: Kernel, caps: Capabilities) -> TiledContraction | None:
    """Local-memory tiles for a float contraction with at least a tile of rows, columns
    and k steps; register blocking as large as the output and local memory allow."""
    value = kernel.reduce_value
    nd = len(kernel.domain)
    if (kernel.reduce_op != "sum" or len(kernel.reduce) != 1 or nd < 2 or not kernel.parallel
            or not isinstance(value, Binary) or value.op != "mul"
            or not dtype_of(value).is_floating):
        return None
    row, col = nd - 2, nd - 1
    m, n, k = kernel.domain[row], kernel.domain[col], kernel.reduce[0]
    tile = TILE
    if min(hints((m, n, k))) < tile or (caps.max_workgroup_size or BLOCK) < tile * tile:
        return None
    micro = _micro(hint(m), hint(n), tile, dtype_of(value).itemsize, caps.local_memory_bytes)
    if micro is None:
        return None
    for operand, (a, b) in enumerate(((value.a, value.b), (value.b, value.a))):
        if col not in axes_read(a) and row not in axes_read(b):
            batch = tuple(range(nd - 2))
            outer = math.prod(kernel.domain[:row])
            rows, cols = tile * micro[0], tile * micro[1]
            if all(is_static(x) for x in (outer, m, n)):
                tiles = outer * -(-m // rows) * -(-n // cols)
                grid, block = launch(tiles, tile * tile, caps.max_grid)
            else:
                parts = [(outer, 1), (m, rows), (n, cols)]
                tiles = groups(parts)
                grid, block = dynamic_launch(parts, tile * tile, caps.max_grid)
            return TiledContraction(count=tiles, threaded=True, grid=grid, block=block,
                                    a_operand=operand, row=row, col=col, batch=batch,
                                    tile=tile, micro=micro)
    return None


def _micro(m: int, n: int, tile: int, itemsize: int, local_bytes: int) -> tuple[int, int] | None:
    """The largest micro-tile (rows, columns) of `MICRO` whose output tile the m x n output
    fills at least once and whose local-memory tiles fit `local_bytes`; None if none does."""
    fits = [(r, c) for r in MICRO for c in MICRO
            if m >= tile * r and n >= tile * c and tile * tile * (r + c) * itemsize
            <= local_bytes]
    return max(fits, key=lambda rc: (rc[0] * rc[1], -abs(rc[0] - rc[1])), default=None)


def group_reduction_rule(kernel: Kernel, caps: Capabilities) -> GroupReduction | None:
    """A work-group per output point, for long reductions over few points."""
    if kernel.reduce_value is None or not caps.local_memory_bytes:
        return None
    points, steps = math.prod(kernel.domain), math.prod(kernel.reduce)
    if hint(steps) < GROUP_REDUCTION_STEPS or hint(points) > GROUP_REDUCTION_POINTS \
            or hint(points) == 0:
        return None
    return group_reduction(kernel, caps)


def group_reduction(kernel: Kernel, caps: Capabilities, widest: bool = False
                    ) -> GroupReduction | None:
    """A work-group per output point, whatever the sizes (`group_reduction_rule` decides
    when it pays; the GPU renderer also takes it for a static kernel whose loops per
    work-item would pass the driver's loop limit, `widest`: as many work-items as the
    target allows, not `BLOCK`): None where the kernel has no reduction, may collide or
    local memory lacks room."""
    if kernel.reduce_value is None or not caps.local_memory_bytes or not kernel.parallel \
            or any(s.accumulate for s in kernel.stores):
        return None
    points, steps = math.prod(kernel.domain), math.prod(kernel.reduce)
    most = (caps.max_workgroup_size or BLOCK) if widest else BLOCK
    block = _block(caps, min(most, hint(steps)))
    if 16 * block > caps.local_memory_bytes:  # a value and an index per work-item
        return None
    grid, blocks = launch(points, block, caps.max_grid) if is_static(points) else \
        dynamic_launch([(points, 1)], block, caps.max_grid)
    return GroupReduction(count=points, threaded=True, grid=grid, block=blocks, steps=steps)


def grid_rule(kernel: Kernel, caps: Capabilities) -> GridLoop:
    """The basic mapping; applies to every kernel."""
    count = math.prod(kernel.domain)
    block = _block(caps, BLOCK if hint(count) >= BLOCK else max(32, hint(count)))
    grid, blocks = launch(-(-count // block), block, caps.max_grid) if is_static(count) else \
        dynamic_launch([(count, block)], block, caps.max_grid)
    return GridLoop(count=count, threaded=True, grid=grid, block=blocks, serial=False)


GRID_RULES = (
    serial_rule,           # stores that may collide: one work-item
    tiled_contraction_rule,  # matmul, convolution: tiles staged in local memory
    group_reduction_rule,  # long reductions over few points: a work-group per point
    grid_rule,             # the basic mapping: always applies
)
