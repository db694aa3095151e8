"""The tiled, register-blocked path: carries out a `Contraction` schedule (a sum over one axis k
of `a * b`; compiler/schedule/contraction.py decides which kernels take it, MR, NR, which factor
is `a`, and the cache blocking).  That covers matmul with any strides (transposed operands are
just other index expressions) and contractions whose operands are computed or masked
(im2col-style windows).  It is computed BLIS-style, specialised at compile time:

    for each column group of a (batch, row block) in [start, end):   # the kernel's range
      for each K block [k0, k0 + kc):                               # one block when k <= KC
        pack b[k0:k0+kc, n0:n0+NR] of each column tile n0 of the group into its own panel
        for each tile of MR rows of the row block (rows past the last clamped, results dropped):
          for each column tile of the group:
            MR vector accumulators of NR lanes from zero: acc[i] += splat(a[m0+i, k]) * panel[k]
            first K block: sums = acc; later ones: sums += acc; the last one runs the kernel's
            stores (the epilogue) on sums + acc, on the valid part of the tile

NR is two host vectors wide and MR rows keep 2*MR accumulator registers busy, so the inner loop
is one panel load and MR broadcast-FMAs per k.  MR is `ROWS`, or the height that clamps fewest
rows when that leaves many clamped (16 or 32 channels: 8); the last, partial column tile takes
the narrowest vector holding it (NR/2 or NR/4 lanes), chosen at compile time or, for dynamic
columns (counted per call), per call; its columns past the last are clamped.

Blocking (`schedule.contraction.blocking`): k is cut into equal blocks of at most `KC` steps.
A column group is as many column tiles as have their KC x NR panels in a quarter of the
target's L2 cache (`Capabilities.l2_bytes`); they stay there while every row tile of the row
block sweeps them, the row tile's rows of `a` over the block staying in L1, and the stores
run along the output's rows (a column tile at a time down the rows wrote a few bytes to each
of hundreds of rows, which set-conflicts in the caches when rows are a power of two apart:
(512, 64) @ (64, 16384) ran at 40% of BLAS).
With several K blocks the tiles' partial sums over the earlier blocks wait in a scratch buffer
of (rows of the row block) x (columns of the group), `SCRATCH_BYTES` at most; the epilogue runs
once, after the last block, on the full sum.  Summing each block from zero and adding it to
the partial sums is a two-level sum: its rounding error grows with KC + k / KC additions rather
than with k.  With one K block there are no partial sums.  A single row tile reading `b` in
place (a vector-matrix product) takes K blocks of `DIRECT_KC` rows instead, so that `b` is read
a few rows at a time along the whole group rather than down k rows of NR columns, which
conflict in L1.

Scratch memory: the panels, when larger than `MAX_STACK_BYTES`, and the partial sums come from
one `malloc` per kernel call (a chunk of the range), freed before it returns; small fixed
buffers (the tile, the accumulators, a single small panel) stay on the stack, so worker threads
need little of it (a failed allocation traps).

With `b` contiguous along the columns and a single row tile, full tiles read `b` in place
instead of packing it; a plain `b` contiguous along the columns is packed a K row at a time
along the whole group, one contiguous along k a W x W square at a time (W vector loads
along k, transposed in registers), so that the reads stream;
in a computed `b` (a convolution's window gather) the divisions that read the column but not k
are computed once per column tile into stack strips.  Rows and columns swap roles when the
columns are fewer than half a tile, or when the stores are contiguous along the row axis (a
product stored transposed, as a weight gradient is) and it fills a tile: the epilogue then
stores vectors, not one element per stored row.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from ..kernel.ir import Binary, Expr, Kernel, dtype_of
from ..schedule.contraction import axes_read, operands
from ..schedule.sizes import Blocks
from ..schedule.types import Contraction
from ..types import int64
from .llvm_loops import FunctionBuilder
from .llvm_math import I8, I32, I64, PTR, MathLib
from .llvm_ops import ExprEmitter, cast, emit_stores, value_type

MIN_CHAINS = 4  # independent accumulator rows needed to cover the FMA latency


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
            axes = axes_read(x)
            if col in axes and k_axis not in axes:
                found[id(x)] = x
                return
        for child in x.__dict__.values():
            visit(child)

    visit(e)
    return list(found.values())


def emit_contraction(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
                     m: Contraction) -> None:
    """Emit the tiled loop nest of schedule `m` into `fb` (over `m.count` range points)."""
    _Tiler(fb, lib, kernel, buffers, m).emit()


class _Tiler:
    """The state of one contraction kernel's emission."""

    def __init__(self, fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
                 m: Contraction) -> None:
        self.fb, self.b, self.lib, self.kernel, self.buffers, self.m = (
            fb, fb.b, lib, kernel, buffers, m)
        self.a, self.b_operand = operands(kernel, m.a_operand)
        self.ftype = value_type(m.dtype)
        self.vec = ir.VectorType(self.ftype, m.nr)
        self.k_axis = len(kernel.domain)
        self.k_size = kernel.reduce[0]
        self.n_size = kernel.domain[m.col]
        self.m_size = 1 if m.row is None else kernel.domain[m.row]
        self.plan = m.blocking
        self.panel: ir.Value | None = None
        if self.plan.panel_on_stack:
            self.panel = fb.alloca(self.ftype, count=self.plan.panel_bytes // m.dtype.itemsize,
                                   align=64, name="panel")
        self.slot = self.panel  # the panel of the tile being computed
        self.scratch: ir.Value | None = None
        self.tile = fb.alloca(self.ftype, count=m.mr * m.nr, align=64, name="tile")
        self._accs: dict[int, list] = {}
        self._set_width(m.nr)  # the width of the tiles being emitted: NR, or less at the edge

    def emit(self) -> None:
        """The loop nest over the kernel's range: (batch, row block, column tile) triples,
        taken a column group at a time."""
        fb, b, m, p, domain = self.fb, self.b, self.m, self.plan, self.kernel.domain
        start, end = fb.fn.args[-2:]
        with b.if_then(b.icmp_signed("<", start, end)):
            raw = self._allocate()
            last_t = b.sub(end, _i64(1))
            with fb.loop(self._group_of(start), b.add(self._group_of(last_t), _i64(1)),
                         "group") as q:
                col_groups, col_tiles = fb.value(p.col_groups), fb.value(p.col_tiles)
                unit = b.udiv(q, col_groups)
                base = b.mul(unit, col_tiles)
                g0 = b.add(base, b.mul(b.urem(q, col_groups), _i64(p.group)))
                lo = _max(b, start, g0)
                hi = fb.min(end, fb.min(b.add(g0, _i64(p.group)), b.add(base, col_tiles)))
                vars: dict[int, ir.Value] = {}
                row_blocks = fb.value(p.row_blocks)
                # row tiles per row block: per call when the blocks are cut per call
                block = (fb.value(p.row_blocks.block()) if isinstance(p.row_blocks, Blocks)
                         else _i64(p.block))
                first = b.mul(b.urem(unit, row_blocks), block)
                last = fb.min(b.add(first, block), fb.ceil_div(self.m_size, m.mr))
                rest = b.udiv(unit, row_blocks)
                for axis in reversed(m.batch):
                    vars[axis] = b.urem(rest, fb.value(domain[axis]))
                    rest = b.udiv(rest, fb.value(domain[axis]))
                span = _Span(vars, base, lo, hi, first, last)
                if isinstance(p.k_blocks, int) and p.k_blocks == 1:
                    self._columns(span, None, None, fb.value(self.k_size))
                else:
                    with fb.loop(0, fb.value(p.k_blocks), "kb") as kb:
                        k0 = b.mul(kb, _i64(p.kc))
                        klen = fb.min(b.sub(fb.value(self.k_size), k0), p.kc)
                        self._columns(span, kb, k0, klen)
            if raw is not None:
                b.call(_c_function(fb.module, "free", ir.VoidType(), [PTR]), [raw])

    def _group_of(self, t: ir.Value) -> ir.Value:
        """The column group holding range point `t`."""
        b, p, fb = self.b, self.plan, self.fb
        col_tiles = fb.value(p.col_tiles)
        unit = b.udiv(t, col_tiles)
        within = b.udiv(b.urem(t, col_tiles), _i64(p.group))
        return b.add(b.mul(unit, fb.value(p.col_groups)), within)

    def _allocate(self) -> ir.Value | None:
        """One 64-byte aligned heap block per call for the panel (when larger than
        `MAX_STACK_BYTES`) and the partial sums; the raw pointer to free, or None."""
        p, b = self.plan, self.b
        if not p.heap_bytes:
            return None
        malloc = _c_function(self.fb.module, "malloc", PTR, [I64])
        raw = b.call(malloc, [_i64(p.heap_bytes + 64)])
        with b.if_then(b.icmp_unsigned("==", raw, ir.Constant(PTR, None)), likely=False):
            b.call(_c_function(self.fb.module, "llvm.trap", ir.VoidType(), []), [])
            b.unreachable()
        pad = b.and_(b.neg(b.ptrtoint(raw, I64)), _i64(63))
        base = b.gep(raw, [pad], inbounds=True, source_etype=I8)
        offset = 0
        if self.panel is None:
            self.panel = base
            offset = _round_up(p.panel_bytes, 64)
        if p.scratch_bytes:
            self.scratch = b.gep(base, [_i64(offset)], inbounds=True, source_etype=I8)
        return raw

    def _columns(self, span: _Span, kb: ir.Value | None, k0: ir.Value | None,
                 klen: ir.Value) -> None:
        """The column tiles [lo, hi) of a group over one K block (`kb`, from `k0`, `klen`
        steps; `kb` None: all of k in one block): pack them all, then for each row tile of the
        row block sweep them, so that the tile's rows of `a` stay in L1 and the stores run
        along the rows of the output."""
        fb, b, m, p = self.fb, self.b, self.m, self.plan
        full_end = b.add(span.base, b.udiv(fb.value(self.n_size), _i64(m.nr)))
        hi_full = fb.min(span.hi, full_end)
        edge = None
        if not isinstance(self.n_size, int) or self.n_size % m.nr:  # the group may end
            edge = b.icmp_signed(">", span.hi, full_end)  # with a partial last tile
        if not p.direct:
            if m.direct:
                self._pack_group(span, hi_full, k0, klen)
            else:
                with fb.loop(span.lo, hi_full, "pack_t") as t:
                    self._pack(span.vars, self._cols(span, t, kb, k0, klen), edge=False)
        if edge is not None:
            with b.if_then(edge):
                self._at_edge(lambda: self._pack(
                    span.vars, self._cols(span, full_end, kb, k0, klen), edge=True))
        with fb.loop(span.first, span.last, "rows") as rt:
            with fb.loop(span.lo, hi_full, "tile") as t:
                cols = self._cols(span, t, kb, k0, klen)
                load_b = self._direct(span.vars, cols) if p.direct else self._from_panel
                self._tile(span, cols, rt, load_b)
            if edge is not None:
                with b.if_then(edge):
                    self._at_edge(lambda: self._tile(
                        span, self._cols(span, full_end, kb, k0, klen), rt, self._from_panel))

    def _cols(self, span: _Span, t: ir.Value, kb: ir.Value | None, k0: ir.Value | None,
              klen: ir.Value) -> _Cols:
        """Column tile `t` of the group over the K block; points `slot` at its panel."""
        b, m, p = self.b, self.m, self.plan
        index = b.sub(t, span.lo)
        self.slot = self.panel
        if not p.direct:
            self.slot = b.gep(self.panel, [b.mul(index, _i64(p.kc * m.nr))], inbounds=True,
                              source_etype=self.ftype)
        return _Cols(b.mul(b.sub(t, span.base), _i64(m.nr)), index, kb, k0, klen)

    def _pack_group(self, span: _Span, hi: ir.Value, k0: ir.Value | None,
                    klen: ir.Value) -> None:
        """Pack the full column tiles [lo, hi) of the group over the K block, each into its
        own KC x NR panel, reading b's rows along the group (b is a plain load contiguous
        along the columns)."""
        fb, b, m, p = self.fb, self.b, self.m, self.plan
        with fb.loop(_i64(0), klen, "gpack_k") as kk:
            k = kk if k0 is None else b.add(k0, kk)
            with fb.loop(span.lo, hi, "gpack_t") as t:
                n0 = b.mul(b.sub(t, span.base), _i64(m.nr))
                row = b.add(b.mul(b.sub(t, span.lo), _i64(p.kc * m.nr)),
                            b.mul(kk, _i64(m.nr)))
                with fb.loop(0, m.nr, "gpack_j", vectorize=True) as j:
                    point = dict(span.vars)
                    point[self.k_axis] = k
                    point[m.col] = b.add(n0, j)
                    v = ExprEmitter(b, self.lib, self.buffers, point).emit(self.b_operand)
                    slot = b.gep(self.panel, [b.add(row, j)], inbounds=True,
                                 source_etype=self.ftype)
                    b.store(v, slot)

    def _at_edge(self, emit: Callable[[], None]) -> None:
        """Run `emit` for the last column tile, of `n_size % NR` columns, at the narrowest
        vector (NR / 2 or NR / 4 lanes) that holds them: known at compile time for static
        columns, picked per call for dynamic ones (the pack and the tiles of one call pick
        alike, so the panel's rows have the width its tiles read)."""
        nr = self.m.nr
        if isinstance(self.n_size, int):
            widths = [_narrowest(self.n_size % nr, nr)]
        else:
            widths = sorted({_narrowest(rem, nr) for rem in range(1, nr)})
        rem = None if len(widths) == 1 else self.b.urem(self.fb.value(self.n_size), _i64(nr))
        self._widths(rem, widths, emit)

    def _widths(self, rem: ir.Value | None, widths: list[int],
                emit: Callable[[], None]) -> None:
        """`emit` at the first of `widths` holding `rem` columns (the last when `rem` is
        None)."""
        if rem is None or len(widths) == 1:
            self._set_width(widths[-1])
            emit()
            self._set_width(self.m.nr)
            return
        with self.b.if_else(self.b.icmp_unsigned("<=", rem, _i64(widths[0]))) as (fits, wider):
            with fits:
                self._widths(None, widths[:1], emit)
            with wider:
                self._widths(rem, widths[1:], emit)

    def _set_width(self, nr: int) -> None:
        """Emit the following tiles `nr` columns wide (their own accumulators)."""
        self.nr = nr
        self.vec = ir.VectorType(self.ftype, nr)
        if nr not in self._accs:
            self._accs[nr] = [self.fb.alloca(self.vec, align=64, name=f"acc{nr}_{i}")
                              for i in range(self.m.mr * max(1, MIN_CHAINS // self.m.mr))]
        self.accs = self._accs[nr]
        self.chains = len(self.accs) // self.m.mr

    def _from_panel(self, kk: ir.Value) -> ir.Value:
        ptr = self.b.gep(self.slot, [kk], inbounds=True, source_etype=self.vec)
        return self.b.load(ptr, typ=self.vec, align=64)

    def _direct(self, vars: dict, cols: _Cols):
        def load(kk: ir.Value) -> ir.Value:
            point = dict(vars)
            point[self.k_axis] = cols.k(self.b, kk)
            point[self.m.col] = cols.n0
            em = ExprEmitter(self.b, self.lib, self.buffers, point)
            ptr = em.element_pointer(self.b_operand.buffer, em.index(self.b_operand.index))
            return self.b.load(ptr, typ=self.vec, align=self.m.dtype.itemsize)
        return load

    def _pack(self, vars: dict, cols: _Cols, edge: bool) -> None:
        """panel[kk * NR + j] = b at (column n0 + j, k0 + kk) over the K block; zero past the
        last column.  The loop order follows b's contiguous axis, so that the reads stream."""
        fb, b, m = self.fb, self.b, self.m
        n0 = cols.n0
        hoisted = self._column_strips(vars, n0, edge)
        k_from = _i64(0)
        if m.k_major and not edge:
            k_from = self._pack_transposed(vars, cols)
        outer, inner = ("pack_j", "pack_k") if m.k_major else ("pack_k", "pack_j")
        bounds = {"pack_j": (_i64(0), _i64(self.nr)), "pack_k": (k_from, cols.klen)}
        with fb.loop(*bounds[outer], outer) as o:
            with fb.loop(*bounds[inner], inner, vectorize=not m.k_major) as i:
                kk, j = (i, o) if m.k_major else (o, i)
                n = b.add(n0, j)
                point = dict(vars)
                point[self.k_axis] = cols.k(b, kk)
                point[m.col] = fb.min(n, fb.value(self.n_size - 1)) if edge else n
                em = ExprEmitter(b, self.lib, self.buffers, point)
                for e, strip in hoisted:
                    slot = b.gep(strip, [j], inbounds=True, source_etype=I64)
                    em.preset(e, b.load(slot, typ=I64, align=8))
                v = em.emit(self.b_operand)
                v = cast(b, self.lib, v, dtype_of(self.b_operand), m.dtype)
                if edge:
                    inside = b.icmp_signed("<", n, fb.value(self.n_size))
                    v = b.select(inside, v, ir.Constant(self.ftype, 0.0))
                slot = b.gep(self.slot, [b.add(b.mul(kk, _i64(self.nr)), j)], inbounds=True,
                             source_etype=self.ftype)
                b.store(v, slot)

    def _pack_transposed(self, vars: dict, cols: _Cols) -> ir.Value:
        """Pack a full column tile of a `b` contiguous along k (a product with a transposed
        weight, `x @ w.T`) a square of W x W elements at a time (W: the host vector's
        lanes): W vector loads along k, transposed in registers, W vector stores along the
        panel's rows, where moving single elements costs a load and a store each.  Returns
        the step where the element-wise pack takes over (the K block's last `klen % W`)."""
        fb, b, m = self.fb, self.b, self.m
        lanes = m.nr // 2
        vec = ir.VectorType(self.ftype, lanes)
        squares = b.udiv(cols.klen, _i64(lanes))
        with fb.loop(_i64(0), squares, "tpack_k") as q:
            kk = b.mul(q, _i64(lanes))
            for half in (0, lanes):
                rows = []
                for j in range(half, half + lanes):
                    point = dict(vars)
                    point[self.k_axis] = cols.k(b, kk)
                    point[m.col] = b.add(cols.n0, _i64(j))
                    em = ExprEmitter(b, self.lib, self.buffers, point)
                    ptr = em.element_pointer(self.b_operand.buffer,
                                             em.index(self.b_operand.index))
                    rows.append(b.load(ptr, typ=vec, align=m.dtype.itemsize))
                for i, row in enumerate(_transpose(b, rows)):
                    at = b.add(b.mul(b.add(kk, _i64(i)), _i64(m.nr)), _i64(half))
                    slot = b.gep(self.slot, [at], inbounds=True, source_etype=self.ftype)
                    b.store(row, slot, align=min(64, lanes * m.dtype.itemsize))
        return b.mul(squares, _i64(lanes))

    def _column_strips(self, vars: dict, n0: ir.Value, edge: bool) -> list[tuple[Expr, ir.Value]]:
        """Compute the integer divisions and remainders of `b` that depend on the column but
        not on k (an im2col window's output row and column, `n // W` and `n % W`) once per
        column tile into stack strips, rather than once per packed element: vector 64-bit
        divisions have no instruction and are split into scalar ones."""
        exprs = _column_only(self.b_operand, self.k_axis, self.m.col)
        if not exprs:
            return []
        fb, b = self.fb, self.b
        strips = [fb.alloca(I64, count=self.m.nr, align=64, name="strip") for _ in exprs]
        with fb.loop(0, self.nr, "strip_j") as j:
            n = b.add(n0, j)
            point = dict(vars)
            point[self.m.col] = fb.min(n, fb.value(self.n_size - 1)) if edge else n
            em = ExprEmitter(b, self.lib, self.buffers, point)
            for e, strip in zip(exprs, strips):
                slot = b.gep(strip, [j], inbounds=True, source_etype=I64)
                b.store(em.emit(e), slot, align=8)
        return list(zip(exprs, strips))

    def _tile(self, span: _Span, cols: _Cols, rt: ir.Value, load_b) -> None:
        """Row tile `rt` against one column tile over one K block, then either its epilogue
        (the last K block) or its partial sums kept in the scratch.

        With few rows the k loop is split over `chains` accumulator sets (k mod chains), so
        that enough independent FMA chains hide the FMA latency; they are summed at the end.
        """
        fb, b, m, vec = self.fb, self.b, self.m, self.vec
        chains = self.chains
        m0 = b.mul(rt, _i64(m.mr))
        for acc in self.accs:
            b.store(ir.Constant(vec, None), acc)
        if cols.kb is None and isinstance(self.k_size, int):
            steps: ir.Value = _i64(self.k_size // chains)
            done = self.k_size // chains * chains
            tail = done < self.k_size
            done_v: ir.Value = _i64(done)
        else:  # a K block, or a dynamic k in one block
            steps = b.udiv(cols.klen, _i64(chains)) if chains > 1 else cols.klen
            done_v = b.mul(steps, _i64(chains))
            tail = chains > 1
        with fb.loop(_i64(0), steps, "k") as kb:
            for c in range(chains):
                kk = b.add(b.mul(kb, _i64(chains)), _i64(c)) if chains > 1 else kb
                self._step(span.vars, m0, cols.k(b, kk), load_b(kk),
                           self.accs[c * m.mr:(c + 1) * m.mr])
        if tail:
            with fb.loop(done_v, cols.klen, "k_rest") as kk:
                self._step(span.vars, m0, cols.k(b, kk), load_b(kk), self.accs[:m.mr])
        for i in range(m.mr):
            total = b.load(self.accs[i], typ=vec, align=64)
            for c in range(1, chains):
                total = b.fadd(total, b.load(self.accs[c * m.mr + i], typ=vec, align=64))
            b.store(total, self.accs[i], align=64)
        if cols.kb is None:
            self._finish(span.vars, m0, cols.n0)
        else:
            self._accumulate(span, cols, rt, m0)

    def _accumulate(self, span: _Span, cols: _Cols, rt: ir.Value, m0: ir.Value) -> None:
        """Add the K block's tile (in the first MR accumulators) to the tile's partial sums:
        the first block initialises them, the last one runs the epilogue on the total.  Row
        by row, three ways, so that no more than a row is live beside the accumulators."""
        b, m, vec, p = self.b, self.m, self.vec, self.plan
        index = b.add(b.mul(b.sub(rt, span.first), _i64(p.group)), cols.slot)
        base = b.gep(self.scratch, [b.mul(index, _i64(m.mr * m.nr))], inbounds=True,
                     source_etype=self.ftype)
        slots = [b.gep(base, [_i64(i)], inbounds=True, source_etype=vec) for i in range(m.mr)]

        def total(i: int) -> ir.Value:
            return b.fadd(b.load(self.accs[i], typ=vec, align=64),
                          b.load(slots[i], typ=vec, align=64))

        first = b.icmp_unsigned("==", cols.kb, _i64(0))
        if not isinstance(p.k_blocks, int):  # any block may be the first and the last
            self._accumulate_dynamic(span, cols, m0, slots, first)
            return
        final = b.icmp_unsigned("==", cols.kb, _i64(p.k_blocks - 1))
        with b.if_else(first) as (initialise, add):
            with initialise:
                for acc, slot in zip(self.accs, slots):
                    b.store(b.load(acc, typ=vec, align=64), slot, align=64)
            with add:
                self._total(span, cols, m0, slots, final, total)

    def _accumulate_dynamic(self, span: _Span, cols: _Cols, m0: ir.Value, slots: list,
                            first: ir.Value) -> None:
        """`_accumulate` for a dynamic number of K blocks: the partial sums so far are zero
        in the first block (a select, so that one epilogue serves a single block too)."""
        b, vec, p = self.b, self.vec, self.plan
        last = b.sub(self.fb.value(p.k_blocks), _i64(1))
        final = b.icmp_unsigned("==", cols.kb, last)
        zero = ir.Constant(vec, [0.0] * self.nr)

        def total(i: int) -> ir.Value:
            before = b.select(first, zero, b.load(slots[i], typ=vec, align=64))
            return b.fadd(b.load(self.accs[i], typ=vec, align=64), before)

        self._total(span, cols, m0, slots, final, total)

    def _total(self, span: _Span, cols: _Cols, m0: ir.Value, slots: list, final: ir.Value,
               total) -> None:
        """In the last K block, the totals into the accumulators and the epilogue on them;
        in any other, the totals back into the partial sums."""
        b, mr = self.b, self.m.mr
        with b.if_else(final) as (finish, keep):
            with finish:
                for i in range(mr):
                    b.store(total(i), self.accs[i], align=64)
                self._finish(span.vars, m0, cols.n0)
            with keep:
                for i in range(mr):
                    b.store(total(i), slots[i], align=64)

    def _finish(self, vars: dict, m0: ir.Value, n0: ir.Value) -> None:
        """Spill the total (the first MR accumulators) to the tile, then run the epilogue."""
        b, vec = self.b, self.vec
        for i in range(self.m.mr):
            slot = b.gep(self.tile, [_i64(i)], inbounds=True, source_etype=vec)
            b.store(b.load(self.accs[i], typ=vec, align=64), slot, align=64)
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
                point[m.row] = fb.min(b.add(m0, _i64(i)), fb.value(self.m_size - 1))
            a = ExprEmitter(b, self.lib, self.buffers, point).emit(self.a)
            a = cast(b, self.lib, a, dtype_of(self.a), m.dtype)
            lane = b.insert_element(ir.Constant(vec, None), a, _i32(0))
            splat = b.shuffle_vector(lane, ir.Constant(vec, None), zeros)
            b.store(b.call(fma, [splat, bvec, b.load(acc, typ=vec, align=64)]), acc)

    def _epilogue(self, vars: dict, m0: ir.Value, n0: ir.Value) -> None:
        """Run the kernel's stores on the valid part of the finished tile (a full tile with
        constant bounds, so that its store loop vectorises without a remainder)."""
        fb, b, m = self.fb, self.b, self.m
        rows = fb.min(b.sub(fb.value(self.m_size), m0), m.mr)
        cols = fb.min(b.sub(fb.value(self.n_size), n0), self.nr)
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




@dataclass(frozen=True)
class _Span:
    """A column group of one (batch, row block) unit: range points [lo, hi) from `base`."""

    vars: dict
    base: ir.Value
    lo: ir.Value
    hi: ir.Value
    first: ir.Value  # row tiles [first, last)
    last: ir.Value


@dataclass(frozen=True)
class _Cols:
    """One column tile over one K block."""

    n0: ir.Value
    slot: ir.Value  # its index within the group (where its partial sums live)
    kb: ir.Value | None  # the K block (None: all of k at once)
    k0: ir.Value | None
    klen: ir.Value

    def k(self, b: ir.IRBuilder, kk: ir.Value) -> ir.Value:
        """The reduction index of step `kk` of the block."""
        return kk if self.k0 is None else b.add(self.k0, kk)


def _transpose(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The transpose of a square of vectors (W rows of W lanes, W a power of two): for each
    s = W/2, ..., 1, every 2s x 2s block swaps its off-diagonal s x s blocks, one two-source
    shuffle per row and stage."""
    w = len(rows)
    rows = list(rows)
    mask = ir.VectorType(I32, w)
    s = w // 2
    while s:
        upper = ir.Constant(mask, [lane if not lane & s else w + lane - s for lane in range(w)])
        lower = ir.Constant(mask, [lane + s if not lane & s else w + lane for lane in range(w)])
        for i in range(w):
            if not i & s:
                top, bottom = rows[i], rows[i + s]
                rows[i] = b.shuffle_vector(top, bottom, upper)
                rows[i + s] = b.shuffle_vector(top, bottom, lower)
        s //= 2
    return rows


def _narrowest(rem: int, nr: int) -> int:
    """The narrowest vector width, NR or NR halved while it keeps at least 4 lanes, that
    holds a last tile of `rem` columns."""
    width = nr
    while rem and width % 2 == 0 and rem <= width // 2 and width // 2 >= 4:
        width //= 2
    return width


def _c_function(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    """The C library function `name`, declared once per module."""
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(ret, args), name)


def _max(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed(">", x, y), x, y)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(n: int, align: int) -> int:
    return _ceil_div(n, align) * align


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _i32(v: int) -> ir.Constant:
    return ir.Constant(I32, v)
