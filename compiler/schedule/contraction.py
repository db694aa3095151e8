"""The tiled (register-blocked, BLIS-style) schedule for contractions, and its cache blocking.

A kernel is a contraction when its reduction is `sum` over one axis k of `a * b`, `a` not
reading the *column* domain axis and `b` not reading the *row* axis (other domain axes are
batch axes): matmul with any strides, and contractions of computed or masked operands (a
convolution's window gather).  MR x NR tiles keep 2 * MR vector accumulators: NR is two
vectors wide, MR is `ROWS` or the height that clamps fewest rows (16 or 32 channels: 8).  Rows
and columns swap roles when the columns are fewer than half a tile, or when the stores are
contiguous along the row axis (a product stored transposed, as a weight gradient is).

Blocking (`blocking`): k is cut into equal blocks of at most `KC` steps; a row block's rows of
`a` over one K block fit in half of L2 (or rows are cut smaller for `MIN_UNITS` range points,
`MIN_UNITS_LARGE_B` when `b` is larger than L2: every row block packs all of `b`);
a column group's KC x NR panels fit in a quarter of L2 and their partial sums in
`SCRATCH_BYTES`.  A single row tile reading `b` in place (a vector-matrix product) takes K
blocks of `DIRECT_KC` rows.  Dynamic rows are cut per call (`sizes.Blocks`) into the row blocks
the static rules cut that many rows into, capped at the blocks of a fixed length as for
`DYNAMIC_ROWS` rows, so that a shape-polymorphic program hands the thread pool the parts the
static one does (issue 13).  Dynamic columns are laid out as static ones would be at the
hint, counted per call (`Ceil` column tiles and groups; a group as long as the caches allow)
with the last tile clamped.  Codegen: llvm_matmul.py, whose docstring explains the loop nest.
"""
from __future__ import annotations

import math
from dataclasses import replace

from ...runtime.sizes import Size
from ..kernel.ir import Binary, Expr, Kernel, Load, Var, dtype_of
from ..symbolic import size_bounds
from ..targets import Capabilities
from ..types import DType
from .dot import MIN_PACKED_ROWS, dot_rows, dot_rule, prefers_tiled
from .ranges import worth_splitting
from .sizes import Blocks, Ceil, Count, ceil_count, hint, hints, is_static, strides
from .types import Blocking, Choice, Contraction, Dot

KC = 128  # K block: the steps accumulated in registers before the tile's partial sums
MAX_STACK_BYTES = 16 * 1024  # larger scratch (the panels of a group) comes from the heap
SCRATCH_BYTES = 1024 * 1024  # partial sums of a column group of one row block
DIRECT_KC = 8  # K block of a single row tile reading `b` in place
MIN_UNITS = 64  # range points wanted (row blocks x column tiles x batch) for the threads
MIN_UNITS_LARGE_B = 32  # the same for a `b` larger than L2, which each row block packs
# again from L3: at 64 a (256, 1024) @ (1024, 1024).T forward packed its 4 MiB weight
# twice, and the MLP step holding it ran 3% slower
MIN_BLOCK_TILES = 8  # row tiles a row block keeps at least when split for the threads
ROWS = 6  # MR
ROW_CHOICES = (8, 7, 6, 5, 4)  # MR candidates when ROWS would leave a large clamped edge
MAX_ROW_WASTE = 1 / 32  # clamped (wasted) rows tolerated before another MR is chosen
ASSUMED_L2_BYTES = 512 * 1024  # a target whose record does not give its L2 size
DYNAMIC_ROWS = 1024  # dynamic rows: no more row blocks than as for at least this many
FEW_ROWS = (2, 4, max(ROW_CHOICES))  # dynamic rows up to each: one row tile that high


def contraction_rule(kernel: Kernel, caps: Capabilities) -> Contraction | None:
    """The tiled schedule, unless dot products suit `kernel` better (both operands contiguous
    along k, and not a short k over enough rows)."""
    dot = dot_rule(kernel, caps)
    if dot is not None and dot.row is not None and not is_static(kernel.domain[dot.row]):
        return _choice(kernel, caps, dot)
    if dot is not None and not prefers_tiled(kernel, dot):
        return None
    return _few_rows(kernel, caps, tiled(kernel, caps))


def _few_rows(kernel: Kernel, caps: Capabilities, large: Contraction | None,
              least: int = 1) -> Contraction | Choice | None:
    """Variants per call of a contraction with dynamic rows (or a dynamic k, `_short_k`): up
    to each of `FEW_ROWS` rows, one row tile of that height (which reads a plain `b` in place
    rather than packing it, as the static rules do for so few rows), `large` past them."""
    if large is None or large.row is None or is_static(kernel.domain[large.row]):
        return _short_k(kernel, caps, large)
    rows = kernel.domain[large.row]
    lo, hi = size_bounds(rows)
    out: Contraction | Choice = _short_k(kernel, caps, large, least)
    for limit in reversed(FEW_ROWS):
        if lo > limit or least > limit:
            break
        small = tiled(kernel, caps, least=least, most=limit)
        if small is None or small.row != large.row:
            break
        out = small if hi <= limit else Choice(count=out.count, threaded=out.threaded,
                                               size=rows, limit=limit, small=small, large=out)
    return out


def _short_k(kernel: Kernel, caps: Capabilities, large: Contraction | None,
             least: int = 1) -> Contraction | Choice | None:
    """A dynamic k (a weight gradient's batch): up to `KC` steps one K block (no partial
    sums), `large` (K blocks through the partial sums) past them (dynamic rows: at least
    `least` of them, as `large` runs for)."""
    if large is None or is_static(kernel.reduce[0]):
        return large
    k = kernel.reduce[0]
    lo, hi = size_bounds(k)
    if lo > KC:
        return large
    small = tiled(kernel, caps, least=least, k_most=KC)
    if small is None or small.row != large.row or small.col != large.col:
        return large
    if hi <= KC:
        return small
    return Choice(count=large.count, threaded=large.threaded, size=k, limit=KC, small=small,
                  large=large)


def _choice(kernel: Kernel, caps: Capabilities, dot: Dot) -> Choice | None:
    """Dynamic rows where dot products apply: dot products up to the rows where the static
    rules switch to tiles (`dot_rows`), tiles past them, picked per call; one of them when
    the rows' range stays on one side (None: the dot rule's)."""
    rows = kernel.domain[dot.row]
    limit = dot_rows(kernel, dot)
    lo, hi = size_bounds(rows)
    if hi <= limit:
        return None
    large = _few_rows(kernel, caps, tiled(kernel, caps, least=int(limit) + 1), int(limit) + 1)
    if large is None:
        return None
    if lo > limit:
        return large
    return Choice(count=large.count, threaded=large.threaded, size=rows, limit=int(limit),
                  small=dot, large=large)


def tiled(kernel: Kernel, caps: Capabilities, least: int = 1, most: int | None = None,
          k_most: int | None = None) -> Contraction | None:
    """The tiled schedule for `kernel`, or None when it is not a contraction this path
    handles (dynamic rows are at least `least` and, given `most`, at most that many; a
    dynamic k at most `k_most`: the variants of a `Choice`)."""
    value = kernel.reduce_value
    if (kernel.reduce_op != "sum" or len(kernel.reduce) != 1 or not kernel.domain
            or not isinstance(value, Binary) or value.op != "mul"):
        return None
    dtype = dtype_of(value)
    nr = 2 * caps.vector_bits // (8 * dtype.itemsize)
    if not dtype.is_floating or nr < 2:
        return None
    nd = len(kernel.domain)
    if is_static(kernel.reduce[0]) and kernel.reduce[0] < 1:
        return None
    sizes = hints(kernel.domain)  # dynamic rows, batch and k are computed per call
    if nd == 1:
        layouts = [(None, 0)]
    else:
        layouts = [(nd - 2, nd - 1), (nd - 1, nd - 2)]
        if (sizes[nd - 1] < nr // 2 <= sizes[nd - 2]
                or (sizes[nd - 2] >= nr and stores_contiguous_along(kernel, nd - 2))):
            layouts.reverse()
    allowed = set(range(nd + 1))
    for row, col in layouts:
        if hint(kernel.domain[col]) < nr // 2:
            continue
        for operand, (a, b) in enumerate(((value.a, value.b), (value.b, value.a))):
            axes_a, axes_b = axes_read(a), axes_read(b)
            if not (axes_a | axes_b) <= allowed:
                return None
            if col not in axes_a and (row is None or row not in axes_b):
                batch = tuple(i for i in range(nd) if i not in (row, col))
                rows = 1 if row is None else kernel.domain[row]
                direct = _direct_load(b, col, dtype)
                k_major = _direct_load(b, nd, dtype)
                # the rows this variant runs for: dynamic ones at least `least`, whatever
                # size the trace saw (a Choice's large variant traced at batch 1)
                fewest = hint(rows) if is_static(rows) else max(hint(rows), least)
                if k_major and not direct and fewest < MIN_PACKED_ROWS:
                    return None  # dot products along k (the generic nest) beat packing b
                bounded = most if not is_static(rows) else None
                mr = (rows_per_tile(rows) if is_static(rows) else
                      ROWS if bounded is None else rows_per_tile(bounded))
                plan = blocking(kernel, row=row, col=col, batch=batch, dtype=dtype, mr=mr,
                                nr=nr, direct=direct,
                                l2_bytes=caps.l2_bytes or ASSUMED_L2_BYTES, most=bounded,
                                k_most=k_most)
                units = _times(plan.col_tiles, math.prod(kernel.domain[i] for i in batch))
                count = (_times(units, plan.row_blocks) if isinstance(plan.row_blocks, int)
                         else replace(plan.row_blocks, times=units))
                threaded = worth_splitting(kernel, caps, least, most or math.inf)
                return Contraction(count=count, threaded=threaded,
                                   a_operand=operand, row=row, col=col, batch=batch,
                                   dtype=dtype, mr=mr, nr=nr, vector_bits=caps.vector_bits,
                                   direct=direct, k_major=k_major, blocking=plan)
    return None


def _times(count: Count, factor: Size) -> Count:
    """`count` range points times `factor` (a `Ceil` of dynamic columns keeps its form)."""
    if isinstance(count, Ceil):
        return replace(count, times=count.times * factor)
    return count * factor


def stores_contiguous_along(kernel: Kernel, axis: int) -> bool:
    """Whether every store of `kernel` steps by one element along domain `axis` and no store
    is contiguous along the last axis: a transposed store (a weight gradient computed as
    `(x.T @ dy).T`), whose tiles are best vectorised along `axis` so the epilogue writes rows
    rather than scattering one element per row."""
    last = len(kernel.domain) - 1
    for store in kernel.stores:
        coeffs = strides(store.index)
        if coeffs is None or coeffs.get(axis) != 1 or coeffs.get(last) == 1:
            return False
    return bool(kernel.stores)


def rows_per_tile(rows: int) -> int:
    """MR for a matrix of `rows` rows: `ROWS`, unless its last row tile would be mostly
    clamped (16 or 32 output channels of a convolution) and another height wastes fewer rows."""
    if rows <= ROWS:
        return rows

    def waste(mr: int) -> int:
        return -(-rows // mr) * mr - rows

    if waste(ROWS) <= rows * MAX_ROW_WASTE:
        return ROWS
    return min(ROW_CHOICES, key=lambda mr: (waste(mr), -mr))


def blocking(kernel: Kernel, *, row: int | None, col: int, batch: tuple[int, ...],
             dtype: DType, mr: int, nr: int, direct: bool, l2_bytes: int,
             most: int | None = None, k_most: int | None = None) -> Blocking:
    """How `kernel` is blocked on the tiled path: K blocks of about `KC` steps; row blocks
    whose rows of `a` over one K block fit in half of L2 (each column group reads them again),
    or smaller for `MIN_UNITS` range points; column groups whose panels fit in a quarter of L2
    and whose partial sums fit in `SCRATCH_BYTES`.

    Dynamic sizes: rows are cut per call as static rows of that many are (`row_blocks` is
    then `Blocks` of the call's rows, `block` the most row tiles a block may get: the L2
    bound, or with partial sums what the scratch is sized for, as for `DYNAMIC_ROWS` rows
    at least); a dynamic k runs in `Ceil(k, KC)` blocks
    of `KC` (the last one shorter), always through the partial sums.  Dynamic rows of at most
    `most` are blocked as for that many (static row blocks); a dynamic k of at most `k_most`
    (no more than a K block) is one K block of up to that many steps."""
    itemsize = dtype.itemsize
    k_size = kernel.reduce[0]
    n_size = kernel.domain[col]
    m_size = 1 if row is None else kernel.domain[row]
    col_tiles = -(-hint(n_size) // nr)
    row_tiles = -(-(hint(m_size) if most is None else most) // mr)
    single = (is_static(m_size) or most is not None) and row_tiles == 1
    # one row tile reading `b` in place (a vector-matrix product) streams `b` along its rows
    # best in short K blocks: a few rows at a time across every column tile
    kc_max = DIRECT_KC if direct and single else KC
    if is_static(k_size):
        k_blocks = 1 if k_size <= kc_max else -(-k_size // kc_max)
        kc = -(-k_size // k_blocks)
    elif k_most is not None and k_most <= KC:
        k_blocks, kc = 1, k_most
    else:
        k_blocks, kc = ceil_count(k_size, kc_max), kc_max
    units = col_tiles * math.prod(hint(kernel.domain[axis]) for axis in batch)
    wanted = (MIN_UNITS if hint(k_size) * hint(n_size) * itemsize <= l2_bytes
              else MIN_UNITS_LARGE_B)
    block = _row_block(row_tiles, kc * itemsize * mr, units, l2_bytes, wanted)
    row_blocks = -(-row_tiles // block)
    blocked = not is_static(k_blocks) or k_blocks > 1
    if not is_static(m_size) and most is None:
        # cut per call into as many equal row blocks as the static rules cut that many rows
        # into, but no more than blocks as for `DYNAMIC_ROWS` rows (each packs `b`): never
        # longer than the L2 bound or, with partial sums, than the scratch is sized for
        fixed = _row_block(-(-max(hint(m_size), DYNAMIC_ROWS) // mr), kc * itemsize * mr,
                           units, l2_bytes, wanted)
        cap = fixed if blocked else max(1, l2_bytes // 2 // (kc * itemsize * mr))
        block = cap
        row_blocks = Blocks(m_size, mr, cap, -(-wanted // units), MIN_BLOCK_TILES, fixed)
    # reading `b` in place beats packing it when no second row tile would reuse the panel
    in_place = direct and single
    panel_bytes = kc * nr * itemsize
    # dynamic columns: a group as long as the caches allow, however many tiles the call has
    group = col_tiles if is_static(n_size) else l2_bytes // 4 // panel_bytes
    if not in_place:  # the group's panels stay in L2 while every row tile sweeps them
        group = max(1, min(group, l2_bytes // 4 // panel_bytes))
    tile_bytes = block * mr * nr * itemsize
    if blocked:
        group = max(1, min(group, SCRATCH_BYTES // tile_bytes))
    panels = panel_bytes * (1 if in_place else group)
    return Blocking(kc=kc, k_blocks=k_blocks, block=block, row_blocks=row_blocks, group=group,
                    col_groups=ceil_count(n_size, nr * group),
                    col_tiles=ceil_count(n_size, nr), direct=in_place,
                    panel_bytes=panels, panel_on_stack=panels <= MAX_STACK_BYTES,
                    scratch_bytes=group * tile_bytes if blocked else 0)


def _row_block(row_tiles: int, tile_bytes: int, units: int, l2_bytes: int,
               wanted: int) -> int:
    """Row tiles per row block: their rows of `a` over a K block (`tile_bytes` per tile) in
    half of L2, fewer for `wanted` range points (with `units` column tiles x batch), equal
    row blocks rather than a short last one."""
    block = max(1, min(row_tiles, l2_bytes // 2 // tile_bytes))
    row_blocks = -(-row_tiles // block)
    # enough range points for many threads' chunks, while a row block pays for its packing
    row_blocks = max(row_blocks, min(-(-wanted // units), row_tiles // MIN_BLOCK_TILES))
    return -(-row_tiles // row_blocks)


def operands(kernel: Kernel, a_operand: int) -> tuple[Expr, Expr]:
    """The factors `a` and `b` of a contraction's reduced product, given which one is `a`."""
    value = kernel.reduce_value
    return (value.a, value.b) if a_operand == 0 else (value.b, value.a)


def axes_read(e) -> set[int]:
    """The loop axes an expression reads."""
    if isinstance(e, Var):
        return {e.axis}
    out: set[int] = set()
    for child in getattr(e, "__dict__", {}).values():
        if hasattr(child, "__dataclass_fields__"):
            out |= axes_read(child)
    return out


def _direct_load(e: Expr, axis: int, dtype: DType) -> bool:
    """Whether `e` is an unmasked load of `dtype` whose index steps by one along `axis`."""
    if not isinstance(e, Load) or e.mask is not None or e.dtype != dtype:
        return False
    coeffs = strides(e.index)
    return coeffs is not None and coeffs.get(axis) == 1
