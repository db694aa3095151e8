"""The tiled, register-blocked path for contraction kernels (matmul, and any sum of products).

A kernel matches when its reduction is `sum` over one axis k of `a * b`, where `a` does not read
the *column* domain axis and `b` does not read the *row* axis (any other domain axes are batch
axes).  That covers matmul with any strides (transposed operands are just other index
expressions) and contractions whose operands are computed or masked (im2col-style windows).
It is then computed BLIS-style, specialised at compile time:

    for (batch, row block, column tile) in [start, end):   # the kernel's range
      pack b[k, n0:n0+NR] for all k into a contiguous panel (zeros past the last column)
      for each tile of MR rows in the block (rows past the last clamped, results dropped):
        MR vector accumulators of NR lanes, k innermost: acc[i] += splat(a[m0+i, k]) * panel[k]
        spill the MR x NR tile, then run the kernel's stores (the epilogue) on its valid part

NR is two host vectors wide and MR rows keep 2*MR accumulator registers busy, so the inner loop
is one panel load and MR broadcast-FMAs per k.  MR is `ROWS`, or the height that clamps fewest
rows when that leaves many clamped (16 or 32 channels: 8); the last column tile, of a width
known at compile time, takes the narrowest vector holding it (NR/2 or NR/4 lanes).  A row
block holds the rows of `a` that fit in half the host's L2 cache (they stay there while
consecutive column tiles pass over them; each row block repacks `b`, so bigger blocks pack
less).  With `b` contiguous along the columns and a single row tile, or a short k (a tile's
columns fit `DIRECT_PANEL_BYTES`), full tiles read `b` in place instead of packing it; a `b`
contiguous along k is packed k-innermost so that its reads stream; in a computed `b` (a
convolution's window gather) the divisions that read the column but not k are computed once per
column tile into stack strips.  The panel lives on the
stack; kernels whose panel would exceed `MAX_PANEL_BYTES` use the generic loop nest.  Rows and
columns swap roles when the columns are fewer than half a tile, or when the stores are
contiguous along the row axis (a product stored transposed, as a weight gradient is) and it
fills a tile: the epilogue then stores vectors, not one element per stored row.
"""
from __future__ import annotations

import functools
import pathlib
from dataclasses import dataclass

from llvmlite import ir

from ..kernel import Binary, Expr, Kernel, Load, Var, dtype_of
from ..passes.memory import affine
from ..types import DType, int64
from .llvm_loops import FunctionBuilder
from .llvm_math import I32, I64, MathLib
from .llvm_ops import ExprEmitter, cast, emit_stores, value_type

MAX_PANEL_BYTES = 512 * 1024
DIRECT_PANEL_BYTES = 16 * 1024  # b's columns of a tile over all k: read in place up to this
ROWS = 6  # MR
ROW_CHOICES = (8, 7, 6, 5, 4)  # MR candidates when ROWS would leave a large clamped edge
MAX_ROW_WASTE = 1 / 32  # clamped (wasted) rows tolerated before another MR is chosen
MIN_CHAINS = 4  # independent accumulator rows needed to cover the FMA latency
MIN_PACKED_ROWS = 4  # fewer rows with a k-contiguous b: per-output dot products are faster
DEFAULT_L2_BYTES = 512 * 1024


@dataclass(frozen=True)
class ContractionMatch:
    """How a kernel maps onto the tiled loop nest."""

    a: Expr  # the operand independent of the column axis (broadcast per row)
    b: Expr  # the operand independent of the row axis (packed per column tile)
    row: int | None  # domain axis tiled by MR rows; None for a single row
    col: int  # domain axis vectorised across NR columns
    batch: tuple[int, ...]
    dtype: DType
    mr: int
    nr: int
    direct: bool  # `b` is a plain load contiguous along the column axis
    k_major: bool  # `b` is a plain load contiguous along k (a transposed weight): pack by rows


@functools.cache
def host_vector_bits() -> int:
    """The widest vector register of the host CPU, in bits."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    features = llvm.get_host_cpu_features()
    if features.get("avx512f"):
        return 512
    if features.get("avx2") or features.get("avx"):
        return 256
    return 128


@functools.cache
def host_l2_bytes() -> int:
    """The size of the host's level-2 cache (Linux sysfs; `DEFAULT_L2_BYTES` elsewhere)."""
    base = pathlib.Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            if (index / "level").read_text().strip() != "2":
                continue
            size = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        units = {"K": 1024, "M": 1024 * 1024}
        if size[-1:] in units and size[:-1].isdigit():
            return int(size[:-1]) * units[size[-1]]
        if size.isdigit():
            return int(size)
    return DEFAULT_L2_BYTES


def _axes(e) -> set[int]:
    """The loop axes an expression reads."""
    if isinstance(e, Var):
        return {e.axis}
    out: set[int] = set()
    for child in getattr(e, "__dict__", {}).values():
        if hasattr(child, "__dataclass_fields__"):
            out |= _axes(child)
    return out


def match_contraction(kernel: Kernel, vector_bits: int) -> ContractionMatch | None:
    """The tiled plan for `kernel`, or None when it is not a contraction this path handles."""
    value = kernel.reduce_value
    if (kernel.reduce_op != "sum" or len(kernel.reduce) != 1 or not kernel.domain
            or not isinstance(value, Binary) or value.op != "mul"):
        return None
    dtype = dtype_of(value)
    if not dtype.is_floating:
        return None
    nr = 2 * vector_bits // (8 * dtype.itemsize)
    nd = len(kernel.domain)
    k_size = kernel.reduce[0]
    if k_size < 1 or k_size * nr * dtype.itemsize > MAX_PANEL_BYTES:
        return None
    if nd == 1:
        layouts = [(None, 0)]
    else:
        layouts = [(nd - 2, nd - 1), (nd - 1, nd - 2)]
        if (kernel.domain[nd - 1] < nr // 2 <= kernel.domain[nd - 2]
                or (kernel.domain[nd - 2] >= nr and stores_contiguous_along(kernel, nd - 2))):
            layouts.reverse()
    allowed = set(range(nd + 1))
    for row, col in layouts:
        if kernel.domain[col] < nr // 2:
            continue
        for a, b in ((value.a, value.b), (value.b, value.a)):
            axes_a, axes_b = _axes(a), _axes(b)
            if not (axes_a | axes_b) <= allowed:
                return None
            if col not in axes_a and (row is None or row not in axes_b):
                batch = tuple(i for i in range(nd) if i not in (row, col))
                rows = 1 if row is None else kernel.domain[row]
                direct = _direct_load(b, col, dtype)
                k_major = _direct_load(b, nd, dtype)
                if k_major and not direct and rows < MIN_PACKED_ROWS:
                    return None  # dot products along k (the generic nest) beat packing b
                return ContractionMatch(a, b, row, col, batch, dtype, rows_per_tile(rows), nr,
                                        direct, k_major)
    return None


def stores_contiguous_along(kernel: Kernel, axis: int) -> bool:
    """Whether every store of `kernel` steps by one element along domain `axis` and no store
    is contiguous along the last axis: a transposed store (a weight gradient computed as
    `(x.T @ dy).T`), whose tiles are best vectorised along `axis` so the epilogue writes rows
    rather than scattering one element per row."""
    last = len(kernel.domain) - 1
    for store in kernel.stores:
        coeffs = affine(store.index)
        if coeffs is None or coeffs.get(axis) != 1 or coeffs.get(last) == 1:
            return False
    return bool(kernel.stores)


def rows_per_tile(rows: int) -> int:
    """MR for a matrix of `rows` rows: `ROWS`, unless its last row tile would be mostly
    clamped (16 or 32 output channels of a convolution) and another height wastes fewer rows."""
    if rows <= ROWS:
        return rows

    def waste(mr: int) -> int:
        return _ceil_div(rows, mr) * mr - rows

    if waste(ROWS) <= rows * MAX_ROW_WASTE:
        return ROWS
    return min(ROW_CHOICES, key=lambda mr: (waste(mr), -mr))


def _direct_load(e: Expr, axis: int, dtype: DType) -> bool:
    """Whether `e` is an unmasked load of `dtype` whose index steps by one along `axis`."""
    if not isinstance(e, Load) or e.mask is not None or e.dtype != dtype:
        return False
    coeffs = affine(e.index)
    return coeffs is not None and coeffs.get(axis) == 1


def _column_only(e: Expr, k_axis: int, col: int) -> list[Expr]:
    """The largest int64 subexpressions of `e` that read the column axis but not k and
    contain an integer division or remainder (each once, in first-use order)."""
    found: dict[int, Expr] = {}
    seen: set[int] = set()

    def visit(x) -> None:
        if id(x) in seen or not hasattr(x, "__dataclass_fields__"):
            return
        seen.add(id(x))
        if isinstance(x, Binary) and x.op in ("idiv", "mod") and dtype_of(x) == int64:
            axes = _axes(x)
            if col in axes and k_axis not in axes:
                found[id(x)] = x
                return
        for child in x.__dict__.values():
            visit(child)

    visit(e)
    return list(found.values())


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def emit_contraction(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
                     m: ContractionMatch) -> int:
    """Emit the tiled loop nest into `fb`; returns the size of the kernel's range."""
    return _Tiler(fb, lib, kernel, buffers, m).emit()


class _Tiler:
    """The state of one contraction kernel's emission."""

    def __init__(self, fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
                 m: ContractionMatch) -> None:
        self.fb, self.b, self.lib, self.kernel, self.buffers, self.m = (
            fb, fb.b, lib, kernel, buffers, m)
        self.ftype = value_type(m.dtype)
        self.vec = ir.VectorType(self.ftype, m.nr)
        self.k_axis = len(kernel.domain)
        self.k_size = kernel.reduce[0]
        self.n_size = kernel.domain[m.col]
        self.m_size = 1 if m.row is None else kernel.domain[m.row]
        self.panel = fb.alloca(self.ftype, count=self.k_size * m.nr, align=64, name="panel")
        self.tile = fb.alloca(self.ftype, count=m.mr * m.nr, align=64, name="tile")
        self._accs: dict[int, list] = {}
        self._set_width(m.nr)  # the width of the tiles being emitted: NR, or less at the edge

    def emit(self) -> int:
        fb, b, m, domain = self.fb, self.b, self.m, self.kernel.domain
        col_tiles = _ceil_div(self.n_size, m.nr)
        row_tiles = _ceil_div(self.m_size, m.mr)
        block_bytes = host_l2_bytes() // 2
        block = max(1, min(row_tiles, block_bytes // (self.k_size * m.dtype.itemsize * m.mr)))
        row_blocks = _ceil_div(row_tiles, block)
        # reading `b` in place beats packing it when no second row tile would reuse the panel,
        # or when its NR columns over all of k fit in L1 anyway (a convolution's short k)
        direct = m.direct and (row_tiles == 1
                               or self.k_size * m.nr * m.dtype.itemsize <= DIRECT_PANEL_BYTES)
        start, end = fb.fn.args[-2:]
        count = row_blocks * col_tiles
        for axis in m.batch:
            count *= domain[axis]
        with fb.loop(start, end, "tile") as t:
            vars: dict[int, ir.Value] = {}
            n0 = b.mul(b.urem(t, _i64(col_tiles)), _i64(m.nr))
            rest = b.udiv(t, _i64(col_tiles))
            first = b.mul(b.urem(rest, _i64(row_blocks)), _i64(block))
            last = fb.min(b.add(first, _i64(block)), row_tiles)
            rest = b.udiv(rest, _i64(row_blocks))
            for axis in reversed(m.batch):
                vars[axis] = b.urem(rest, _i64(domain[axis]))
                rest = b.udiv(rest, _i64(domain[axis]))
            full = b.icmp_signed("<=", b.add(n0, _i64(m.nr)), _i64(self.n_size))
            with b.if_else(full) as (whole, edge):
                with whole:
                    if direct:
                        self._row_tiles(vars, n0, first, last, self._direct(vars, n0))
                    else:
                        self._pack(vars, n0, edge=False)
                        self._row_tiles(vars, n0, first, last, self._from_panel)
                with edge:
                    self._narrow()
                    self._pack(vars, n0, edge=True)
                    self._row_tiles(vars, n0, first, last, self._from_panel)
                    self._set_width(m.nr)
        return count

    def _narrow(self) -> bool:
        """Give the last column tile, whose width `n_size % NR` is known, the narrowest
        vector (NR / 2 or NR / 4 lanes) that holds it; whether it is narrower than NR."""
        rem, width = self.n_size % self.m.nr, self.m.nr
        while rem and width % 2 == 0 and rem <= width // 2 and width // 2 >= 4:
            width //= 2
        self._set_width(width)
        return width < self.m.nr

    def _set_width(self, nr: int) -> None:
        """Emit the following tiles `nr` columns wide (their own accumulators)."""
        self.nr = nr
        self.vec = ir.VectorType(self.ftype, nr)
        if nr not in self._accs:
            self._accs[nr] = [self.fb.alloca(self.vec, align=64, name=f"acc{nr}_{i}")
                              for i in range(self.m.mr * max(1, MIN_CHAINS // self.m.mr))]
        self.accs = self._accs[nr]
        self.chains = len(self.accs) // self.m.mr

    def _from_panel(self, k: ir.Value) -> ir.Value:
        ptr = self.b.gep(self.panel, [k], inbounds=True, source_etype=self.vec)
        return self.b.load(ptr, typ=self.vec, align=64)

    def _direct(self, vars: dict, n0: ir.Value):
        def load(k: ir.Value) -> ir.Value:
            point = dict(vars)
            point[self.k_axis] = k
            point[self.m.col] = n0
            em = ExprEmitter(self.b, self.lib, self.buffers, point)
            ptr = em.element_pointer(self.m.b.buffer, em.index(self.m.b.index))
            return self.b.load(ptr, typ=self.vec, align=self.m.dtype.itemsize)
        return load

    def _pack(self, vars: dict, n0: ir.Value, edge: bool) -> None:
        """panel[k * NR + j] = b at (column n0 + j, k); zero past the last column.  The loop
        order follows b's contiguous axis, so that the reads stream."""
        fb, b, m = self.fb, self.b, self.m
        hoisted = self._column_strips(vars, n0, edge)
        outer, inner = ("pack_j", "pack_k") if m.k_major else ("pack_k", "pack_j")
        sizes = {"pack_j": self.nr, "pack_k": self.k_size}
        with fb.loop(0, sizes[outer], outer) as o:
            with fb.loop(0, sizes[inner], inner, vectorize=not m.k_major) as i:
                k, j = (i, o) if m.k_major else (o, i)
                n = b.add(n0, j)
                point = dict(vars)
                point[self.k_axis] = k
                point[m.col] = fb.min(n, self.n_size - 1) if edge else n
                em = ExprEmitter(b, self.lib, self.buffers, point)
                for e, strip in hoisted:
                    slot = b.gep(strip, [j], inbounds=True, source_etype=I64)
                    em.preset(e, b.load(slot, typ=I64, align=8))
                v = em.emit(m.b)
                v = cast(b, self.lib, v, dtype_of(m.b), m.dtype)
                if edge:
                    inside = b.icmp_signed("<", n, _i64(self.n_size))
                    v = b.select(inside, v, ir.Constant(self.ftype, 0.0))
                slot = b.gep(self.panel, [b.add(b.mul(k, _i64(self.nr)), j)], inbounds=True,
                             source_etype=self.ftype)
                b.store(v, slot)

    def _column_strips(self, vars: dict, n0: ir.Value, edge: bool) -> list[tuple[Expr, ir.Value]]:
        """Compute the integer divisions and remainders of `b` that depend on the column but
        not on k (an im2col window's output row and column, `n // W` and `n % W`) once per
        column tile into stack strips, rather than once per packed element: vector 64-bit
        divisions have no instruction and are split into scalar ones."""
        exprs = _column_only(self.m.b, self.k_axis, self.m.col)
        if not exprs:
            return []
        fb, b = self.fb, self.b
        strips = [fb.alloca(I64, count=self.m.nr, align=64, name="strip") for _ in exprs]
        with fb.loop(0, self.nr, "strip_j") as j:
            n = b.add(n0, j)
            point = dict(vars)
            point[self.m.col] = fb.min(n, self.n_size - 1) if edge else n
            em = ExprEmitter(b, self.lib, self.buffers, point)
            for e, strip in zip(exprs, strips):
                slot = b.gep(strip, [j], inbounds=True, source_etype=I64)
                b.store(em.emit(e), slot, align=8)
        return list(zip(exprs, strips))

    def _row_tiles(self, vars: dict, n0: ir.Value, first: ir.Value, last: ir.Value,
                   load_b) -> None:
        """Row tiles [first, last) against one column tile, then their epilogues.

        With few rows the k loop is split over `chains` accumulator sets (k mod chains), so
        that enough independent FMA chains hide the FMA latency; they are summed at the end.
        """
        fb, b, m, vec = self.fb, self.b, self.m, self.vec
        chains = self.chains
        with fb.loop(first, last, "rows") as rt:
            m0 = b.mul(rt, _i64(m.mr))
            for acc in self.accs:
                b.store(ir.Constant(vec, None), acc)
            steps = self.k_size // chains
            with fb.loop(0, steps, "k") as kb:
                for c in range(chains):
                    k = b.add(b.mul(kb, _i64(chains)), _i64(c)) if chains > 1 else kb
                    self._step(vars, m0, k, load_b(k), self.accs[c * m.mr:(c + 1) * m.mr])
            if steps * chains < self.k_size:
                with fb.loop(steps * chains, self.k_size, "k_rest") as k:
                    self._step(vars, m0, k, load_b(k), self.accs[:m.mr])
            for i in range(m.mr):
                total = b.load(self.accs[i], typ=vec, align=64)
                for c in range(1, chains):
                    total = b.fadd(total, b.load(self.accs[c * m.mr + i], typ=vec, align=64))
                slot = b.gep(self.tile, [_i64(i)], inbounds=True, source_etype=vec)
                b.store(total, slot, align=64)
            self._epilogue(vars, m0, n0)

    def _step(self, vars: dict, m0: ir.Value, k: ir.Value, bvec: ir.Value, accs: list) -> None:
        """acc[i] += splat(a[m0 + i, k]) * bvec for the tile's rows."""
        fb, b, m, vec = self.fb, self.b, self.m, self.vec
        fma = self.lib.intrinsic("llvm.fmuladd", vec)
        zeros = ir.Constant(ir.VectorType(I32, self.nr), [0] * self.nr)
        for i, acc in enumerate(accs):
            point = dict(vars)
            point[self.k_axis] = k
            if m.row is not None:
                point[m.row] = fb.min(b.add(m0, _i64(i)), self.m_size - 1)
            a = ExprEmitter(b, self.lib, self.buffers, point).emit(m.a)
            a = cast(b, self.lib, a, dtype_of(m.a), m.dtype)
            lane = b.insert_element(ir.Constant(vec, None), a, _i32(0))
            splat = b.shuffle_vector(lane, ir.Constant(vec, None), zeros)
            b.store(b.call(fma, [splat, bvec, b.load(acc, typ=vec, align=64)]), acc)

    def _epilogue(self, vars: dict, m0: ir.Value, n0: ir.Value) -> None:
        """Run the kernel's stores on the valid part of the finished tile (a full tile with
        constant bounds, so that its store loop vectorises without a remainder)."""
        fb, b, m = self.fb, self.b, self.m
        rows = fb.min(b.sub(_i64(self.m_size), m0), m.mr)
        cols = fb.min(b.sub(_i64(self.n_size), n0), self.nr)
        full = b.and_(b.icmp_signed("==", rows, _i64(m.mr)),
                      b.icmp_signed("==", cols, _i64(self.nr)))
        with b.if_else(full) as (whole, edge):
            with whole:
                self._stores(vars, m0, n0, _i64(m.mr), _i64(self.nr))
            with edge:
                self._stores(vars, m0, n0, rows, cols)

    def _stores(self, vars: dict, m0: ir.Value, n0: ir.Value, rows: ir.Value,
                cols: ir.Value) -> None:
        fb, b, m = self.fb, self.b, self.m
        with fb.loop(0, rows, "ep_i") as i:
            with fb.loop(0, cols, "ep_j", vectorize=True) as j:
                point = dict(vars)
                if m.row is not None:
                    point[m.row] = b.add(m0, i)
                point[m.col] = b.add(n0, j)
                slot = b.gep(self.tile, [b.add(b.mul(i, _i64(self.nr)), j)], inbounds=True,
                             source_etype=self.ftype)
                acc = b.load(slot, typ=self.ftype)
                emit_stores(b, self.lib, self.kernel, self.buffers, point, acc)


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _i32(v: int) -> ir.Constant:
    return ir.Constant(I32, v)
