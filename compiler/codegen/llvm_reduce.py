"""Reductions in the generic loop nest: per point, or across a strip of columns.

Which form a reduction takes (unrolled, across columns, split in parts) and how long float
sums are cut into blocks is decided in compiler/schedule/reduction.py; this module emits it.

Per point (the default): at each domain point an accumulator slot (promoted to a register by
mem2reg) is combined over the reduction loops; the innermost reduction loop is the contiguous
one when the reduced axis is the last axis of the data (a row sum), and it vectorizes.  A short
reduction (a pooling window; the schedule's `unroll`) is unrolled into straight-line code, so
the domain loop around it vectorizes instead.

Across columns: when the data is contiguous along the last *domain* axis instead (a column
sum such as a bias gradient, a softmax over axis 0, pooling over window taps), the loops are
interchanged.  A strip of columns (`ColumnReduction.strip`, 256) keeps one accumulator per
column in a stack array; every reduction step updates the whole strip with a vectorizable
loop over columns; then the stores run over the strip.  Results are the same (argmax/argmin
still keep the first extreme: each column's steps run in order).

Long float sums run in blocks (`Blocks`), so that rounding errors do not grow with the length.
Each addition to a float32 accumulator rounds by up to half an ulp of what it holds, so over n
serial additions the relative error can reach n * 6e-8 (measured: 2.6e-2 for 10^8 ones; LLVM's
vector lanes only divide n by their number).  So a block of at most `BLOCK` steps per point starts
from zero and sums in the value type — in LLVM's vector lanes, 32 on AVX2, each adding about 32
values — and its result is added into a `_Total`: in float64 for float32 data (exact to 2^-53
per block: nothing to compensate, one conversion and one add per block), with Neumaier's
compensation in float64 for float64 data.  Across columns a block is `COLUMN_BLOCK` steps, taken
two at a time (acc += v0 + v1: 64 serial adds per column, and half the accumulator traffic),
and the strip of totals is folded once per block.  The error is then that of one block (a few
dozen additions, about 3e-7 relative at worst for a constant, 1e-8 for random data) plus one
final rounding, whatever the length; the overhead (a horizontal vector sum per 1024 steps, one
fold per 128 column steps) does not show in the timings (docs/performance.md).  Reductions of
one block or less, integer sums (exact) and max/min/argmax/argmin/prod are emitted as before.

A full reduction (no domain axes) is cut into `SplitReduction.parts` runs of whole blocks, that
threads reduce into partials; `finish_parts` combines them in part order (llvm_parallel.py).

Combining: `sum`/`prod` may reassociate (so LLVM vectorizes them), `max`/`min` propagate NaN
as NumPy does, `argmax`/`argmin` keep the first extreme and the first NaN, as `np.argmax`.
"""
from __future__ import annotations

import itertools
from contextlib import ExitStack

import numpy as np
from llvmlite import ir

from ..kernel.ir import Kernel, dtype_of
from ..schedule.reduction import (
    BLOCK,
    COLUMN_BLOCK,
    PARTS,
    Blocks,
    blocks,
    float_sum,
    part_blocks,
)
from ..types import DType
from .llvm_loops import FunctionBuilder, size_value
from .llvm_math import F32, F64, I64, MathLib
from .llvm_ops import (
    CodegenError,
    ExprEmitter,
    combine_sum,
    const,
    dclass,
    emit_stores,
    value_type,
)

_IDENTITY = {"sum": 0, "prod": 1}


def identity(op: str, dtype: DType) -> ir.Constant:
    """The starting value of a reduction accumulator."""
    if op in _IDENTITY:
        return const(dtype, _IDENTITY[op])
    low = op in ("max", "argmax")
    if dtype.is_floating:
        return const(dtype, float("-inf") if low else float("inf"))
    info = np.iinfo(dtype.np_type)
    return const(dtype, info.min if low else info.max)


def value_dtype(kernel: Kernel) -> DType:
    """The dtype of the values being reduced (bools are refused)."""
    dtype = dtype_of(kernel.reduce_value)
    if dclass(dtype) == "b":
        raise CodegenError(f"llvm codegen: kernel {kernel.name}: {kernel.reduce_op} of bool "
                           "values")
    return dtype


class _Total:
    """The running total of blocked float sums (`count` of them, for a strip of columns).

    float32 blocks are added in float64: each addition is exact to 2^-53 relative, so even
    10^9 blocks lose nothing a float32 result could show, and it costs one conversion and one
    add per block.  float64 blocks have no wider type at hand (x87 long double would not
    vectorize across a strip), so they are added with Neumaier's compensation (the rounding
    error of each addition is recovered exactly and summed apart), which keeps the total within
    a few ulps however many blocks there are.  These operations carry no fast-math flags, so
    LLVM may not reassociate the compensation away."""

    def __init__(self, fb: FunctionBuilder, dtype: DType, count: int) -> None:
        self.dtype = dtype
        self.wide = dtype.itemsize < 8
        self.sum = fb.alloca(F64, count=count, align=64, name="total")
        self.comp = None if self.wide else fb.alloca(F64, count=count, align=64,
                                                      name="total_comp")

    def _at(self, b: ir.IRBuilder, base, j):
        return base if j is None else b.gep(base, [j], inbounds=True, source_etype=F64)

    def reset(self, b: ir.IRBuilder, j=None) -> None:
        for slot in (self.sum, self.comp):
            if slot is not None:
                b.store(ir.Constant(F64, 0.0), self._at(b, slot, j))

    def add(self, b: ir.IRBuilder, lib: MathLib, v: ir.Value, j=None) -> None:
        """total += v (a block's sum in the value type, or a part's total in float64)."""
        at = self._at(b, self.sum, j)
        s = b.load(at, typ=F64)
        if v.type != F64:
            v = b.fpext(v, F64)
        if self.wide:
            b.store(b.fadd(s, v), at)
            return
        # Neumaier: t = s + v; the rounding error of t is (s - t) + v when |s| >= |v|, else
        # (v - t) + s, both exact
        t = b.fadd(s, v)
        fabs = lib.intrinsic("llvm.fabs", F64)
        bigger = b.fcmp_ordered(">=", b.call(fabs, [s]), b.call(fabs, [v]))
        error = b.select(bigger, b.fadd(b.fsub(s, t), v), b.fadd(b.fsub(v, t), s))
        comp = self._at(b, self.comp, j)
        b.store(b.fadd(b.load(comp, typ=F64), error), comp)
        b.store(t, at)

    def partial(self, b: ir.IRBuilder, j=None) -> ir.Value:
        """The total as one float64."""
        s = b.load(self._at(b, self.sum, j), typ=F64)
        return s if self.wide else b.fadd(s, b.load(self._at(b, self.comp, j), typ=F64))

    def result(self, b: ir.IRBuilder, j=None) -> ir.Value:
        """The total in the value type."""
        total = self.partial(b, j)
        return b.fptrunc(total, F32) if self.wide else total


def each_block(fb: FunctionBuilder, kernel: Kernel, plan: Blocks, vars: dict, lo, hi,
               begin, step, end, pairs: bool = False) -> None:
    """Run blocks [lo, hi) of `plan` in order: `begin()`, `step(vars)` at every step of the
    block (the reduction axes set in `vars`), `end()`.  With `pairs`, `step` gets a list of
    two steps (two neighbours along axis `level`) at a time, and of one for an odd last."""
    b = fb.b
    first, sizes, level = len(kernel.domain), plan.sizes, plan.level
    with fb.loop(lo, hi, "block") as q:
        index = rest = q
        if level:
            index = b.urem(q, fb.value(plan.chunks))
            rest = b.udiv(q, fb.value(plan.chunks))
        for axis in reversed(range(level)):
            size = fb.value(sizes[axis])
            vars[first + axis] = b.urem(rest, size) if axis else rest
            rest = b.udiv(rest, size)
        start = b.mul(index, ir.Constant(I64, plan.chunk), flags=("nuw", "nsw"))
        width = ir.Constant(I64, plan.chunk)
        if not isinstance(sizes[level], int) or sizes[level] % plan.chunk:
            width = fb.min(b.sub(fb.value(sizes[level]), start), plan.chunk)
        begin()
        if not pairs:
            with fb.loop(0, width, f"r{level}") as j:
                vars[first + level] = b.add(start, j, flags=("nuw", "nsw"))
                _reduction_loops(fb, kernel, vars, step, vectorize_inner=False,
                                 depth=level + 1)
            end()
            return

        def twice(point: dict) -> None:
            after = dict(point)
            after[first + level] = b.add(point[first + level], ir.Constant(I64, 1),
                                         flags=("nuw", "nsw"))
            step([point, after])

        with fb.loop(0, b.lshr(width, ir.Constant(I64, 1)), f"r{level}") as j:
            vars[first + level] = b.add(start, b.shl(j, ir.Constant(I64, 1)),
                                        flags=("nuw", "nsw"))
            _reduction_loops(fb, kernel, vars, twice, vectorize_inner=False, depth=level + 1)
        odd = width.constant % 2 if isinstance(width, ir.Constant) else None
        if odd != 0:
            with ExitStack() as maybe:
                if odd is None:
                    maybe.enter_context(b.if_then(b.trunc(width, ir.IntType(1))))
                vars[first + level] = b.sub(b.add(start, width), ir.Constant(I64, 1))
                _reduction_loops(fb, kernel, vars, lambda point: step([point]),
                                 vectorize_inner=False, depth=level + 1)
        end()


class _Slots:
    """Accumulator storage: `count` values (and indices, for argmax/argmin) on the stack."""

    def __init__(self, fb: FunctionBuilder, op: str, dtype: DType, count: int) -> None:
        self.op, self.dtype = op, dtype
        self.values = fb.alloca(value_type(dtype), count=count, align=64, name="acc")
        self.indices = None
        if op in ("argmax", "argmin"):
            self.indices = fb.alloca(I64, count=count, align=64, name="acc_index")

    def _at(self, b: ir.IRBuilder, base, j, typ):
        return base if j is None else b.gep(base, [j], inbounds=True, source_etype=typ)

    def reset(self, b: ir.IRBuilder, j=None) -> None:
        b.store(identity(self.op, self.dtype), self._at(b, self.values, j, self._type))
        if self.indices is not None:
            b.store(ir.Constant(I64, 0), self._at(b, self.indices, j, I64))

    @property
    def _type(self):
        return value_type(self.dtype)

    def combine(self, b: ir.IRBuilder, lib: MathLib, v, linear, j=None) -> None:
        """acc[j] = op(acc[j], v), `linear` being the flat reduction index of `v`."""
        slot = self._at(b, self.values, j, self._type)
        acc = b.load(slot, typ=self._type)
        op = self.op
        floating = dclass(self.dtype) == "f"
        if op == "sum":
            new = combine_sum(b, acc, v, self.dtype)
        elif op == "prod":
            new = b.fmul(acc, v, flags=("reassoc", "nsz")) if floating else b.mul(acc, v)
        elif op in ("max", "min"):
            name = {("max", True): "llvm.maximum", ("min", True): "llvm.minimum",
                    ("max", False): "llvm.smax", ("min", False): "llvm.smin"}[(op, floating)]
            new = b.call(lib.intrinsic(name, v.type), [acc, v])
        else:
            better = _arg_better(b, op, acc, v, floating)
            index_slot = self._at(b, self.indices, j, I64)
            b.store(b.select(better, linear(), b.load(index_slot, typ=I64)), index_slot)
            new = b.select(better, v, acc)
        b.store(new, slot)

    def result(self, b: ir.IRBuilder, j=None):
        """The finished reduction: the index for argmax/argmin, else the value."""
        if self.indices is not None:
            return b.load(self._at(b, self.indices, j, I64), typ=I64)
        return self.value(b, j)

    def value(self, b: ir.IRBuilder, j=None):
        return b.load(self._at(b, self.values, j, self._type), typ=self._type)


def reduce_at_point(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
                    vars: dict, unroll: bool) -> ir.Value:
    """Run the reduction loops at one domain point (`unroll`: as straight-line code); returns
    the finished accumulator."""
    slots = _Slots(fb, kernel.reduce_op, value_dtype(kernel), 1)
    slots.reset(fb.b)

    def step(vars: dict) -> None:
        v = ExprEmitter(fb.b, lib, buffers, vars).emit(kernel.reduce_value)
        slots.combine(fb.b, lib, v, lambda: _linear(fb.b, kernel, vars))

    if unroll:  # straight-line code: the domain loop around it vectorizes
        for point in itertools.product(*(range(n) for n in kernel.reduce)):
            here = dict(vars)
            for j, r in enumerate(point):
                here[len(kernel.domain) + j] = ir.Constant(I64, r)
            step(here)
        return slots.result(fb.b)
    # not forced: LLVM vectorizes the reassociable sums (and min/max) by itself where legal,
    # and a forced loop it cannot vectorize would make it complain on stderr
    plan = blocks(kernel, BLOCK)
    if plan is None:
        _reduction_loops(fb, kernel, dict(vars), step, vectorize_inner=False)
        return slots.result(fb.b)
    b = fb.b
    total = _Total(fb, slots.dtype, 1)
    total.reset(b)
    each_block(fb, kernel, plan, dict(vars), ir.Constant(I64, 0), fb.value(plan.count),
               lambda: slots.reset(b), step, lambda: total.add(b, lib, slots.result(b)))
    return total.result(b)


def reduce_columns(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
                   vars: dict, lo: ir.Value, hi: ir.Value, strip: int) -> None:
    """Reduce and store columns [lo, hi) of the last domain axis, `strip` columns at a
    time."""
    b = fb.b
    last = len(kernel.domain) - 1
    slots = _Slots(fb, kernel.reduce_op, value_dtype(kernel), strip)
    plan = blocks(kernel, COLUMN_BLOCK)
    total = None if plan is None else _Total(fb, slots.dtype, strip)
    strips = b.udiv(b.add(b.sub(hi, lo), ir.Constant(I64, strip - 1)), ir.Constant(I64, strip))
    with fb.loop(0, strips, "strip") as s:
        first = b.add(lo, b.mul(s, ir.Constant(I64, strip)))
        width = fb.min(b.sub(hi, first), strip)

        def over_strip(name: str, body) -> None:
            with fb.loop(0, width, name, vectorize=True) as j:
                body(j)

        def step(points: list[dict]) -> None:
            """One reduction step over the strip, or two of a blocked float sum at once:
            acc += (v0 + v1), one load and store of the accumulators for two values (the
            pair's add has no `reassoc`, so LLVM keeps it a pair)."""
            with fb.loop(0, width, "col", vectorize=True) as j:
                vs = []
                for point in points:
                    inner = dict(point)
                    inner[last] = b.add(first, j)
                    vs.append(ExprEmitter(b, lib, buffers, inner).emit(kernel.reduce_value))
                v = vs[0] if len(vs) == 1 else b.fadd(vs[0], vs[1])
                slots.combine(b, lib, v, lambda: _linear(b, kernel, inner), j)

        if plan is None:
            over_strip("reset", lambda j: slots.reset(b, j))
            _reduction_loops(fb, kernel, dict(vars), lambda point: step([point]),
                             vectorize_inner=False)
            result = slots.result
        else:
            def clear(j) -> None:
                slots.reset(b, j)
                total.reset(b, j)

            def fold(j) -> None:  # and start the next block
                total.add(b, lib, slots.result(b, j), j)
                slots.reset(b, j)

            over_strip("clear", clear)
            each_block(fb, kernel, plan, dict(vars), ir.Constant(I64, 0),
                       fb.value(plan.count), lambda: None, step,
                       lambda: over_strip("fold", fold), pairs=True)
            result = total.result
        flat_stores = not any(st.accumulate for st in kernel.stores)
        with fb.loop(0, width, "store", vectorize=flat_stores) as j:
            point = dict(vars)
            point[last] = b.add(first, j)
            emit_stores(b, lib, kernel, buffers, point, result(b, j))


def _reduction_loops(fb: FunctionBuilder, kernel: Kernel, vars: dict, step,
                     vectorize_inner: bool, depth: int = 0) -> None:
    if depth == len(kernel.reduce):
        step(vars)
        return
    inner = vectorize_inner and depth == len(kernel.reduce) - 1
    with fb.loop(0, fb.value(kernel.reduce[depth]), f"r{depth}", vectorize=inner) as r:
        vars[len(kernel.domain) + depth] = r
        _reduction_loops(fb, kernel, vars, step, vectorize_inner, depth + 1)


def _arg_better(b: ir.IRBuilder, op: str, best, v, floating: bool):
    """Whether `v` replaces the running argmax/argmin: strictly better, or the first NaN."""
    sign = ">" if op == "argmax" else "<"
    if not floating:
        return b.icmp_signed(sign, v, best)
    strictly = b.fcmp_ordered(sign, v, best)
    first_nan = b.and_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("ord", best, best))
    return b.or_(strictly, first_nan)


def _linear(b: ir.IRBuilder, kernel: Kernel, vars: dict) -> ir.Value:
    """The row-major flat index of the current point of the reduction axes (dynamic strides
    from the function's symbols)."""
    first = len(kernel.domain)
    sizes = kernel.reduce
    index = vars[first + len(sizes) - 1]
    stride = sizes[-1]
    symbols = getattr(b.function, "neurenix_symbols", {})
    for j in range(len(sizes) - 2, -1, -1):
        index = b.add(index, b.mul(vars[first + j], size_value(b, symbols, stride)))
        stride *= sizes[j]
    return index



# ---- a full reduction in parts ----------------------------------------------------------------

PARTIALS_BYTES = PARTS * 16  # their partial results: a value of up to 8 bytes, an i64 index


def _partial(b: ir.IRBuilder, kernel: Kernel, partials, p) -> tuple:
    """The slots of part `p`'s value (float64 for a float sum) and index (argmax/argmin)."""
    typ = F64 if float_sum(kernel) else value_type(value_dtype(kernel))
    value = b.gep(partials, [p], inbounds=True, source_etype=typ)
    index = b.gep(partials, [b.add(p, ir.Constant(I64, PARTS))], inbounds=True,
                  source_etype=I64)
    return value, index, typ


def reduce_parts(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict, partials,
                 lo: ir.Value, hi: ir.Value, parts: int) -> None:
    """Parts [lo, hi) of a full reduction (a kernel with no domain axes), each into its
    partial: part p runs blocks [p * count / n, (p + 1) * count / n) in order; a float sum adds
    them block by block into a `_Total` as at a point, other reductions run straight through
    them (integer sums, max and min are exact in any grouping; argmax/argmin keep the index of
    the first extreme, `_linear` being the index over the whole reduction)."""
    b = fb.b
    plan, n = part_blocks(kernel), parts
    slots = _Slots(fb, kernel.reduce_op, value_dtype(kernel), 1)
    total = _Total(fb, slots.dtype, 1) if float_sum(kernel) else None
    vars: dict = {}

    def step(vars: dict) -> None:
        v = ExprEmitter(b, lib, buffers, vars).emit(kernel.reduce_value)
        slots.combine(b, lib, v, lambda: _linear(b, kernel, vars))

    def block_at(part) -> ir.Value:
        return b.udiv(b.mul(part, fb.value(plan.count), flags=("nuw", "nsw")),
                      ir.Constant(I64, n))

    with fb.loop(lo, hi, "part") as p:
        slots.reset(b)
        begin = end = lambda: None
        if total is not None:
            total.reset(b)
            begin = lambda: slots.reset(b)
            end = lambda: total.add(b, lib, slots.result(b))
        first, last = block_at(p), block_at(b.add(p, ir.Constant(I64, 1)))
        each_block(fb, kernel, plan, vars, first, last, begin, step, end)
        value, index, _ = _partial(b, kernel, partials, p)
        b.store(slots.value(b) if total is None else total.partial(b), value)
        if slots.indices is not None:
            b.store(slots.result(b), index)


def finish_parts(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
                 partials, parts: int) -> None:
    """Combine a full reduction's partials, part 0 first, and run its stores: float sums in a
    `_Total` (float64; compensated for float64 data), the others with their own combine (the
    first part holding the extreme wins a tie, as the first element does in one pass)."""
    b = fb.b
    n = parts
    slots = _Slots(fb, kernel.reduce_op, value_dtype(kernel), 1)
    total = _Total(fb, slots.dtype, 1) if float_sum(kernel) else None
    slots.reset(b)
    if total is not None:
        total.reset(b)
    with fb.loop(0, n, "partial") as p:
        value, index, typ = _partial(b, kernel, partials, p)
        v = b.load(value, typ=typ)
        if total is not None:
            total.add(b, lib, v)
        else:
            slots.combine(b, lib, v, lambda: b.load(index, typ=I64))
    acc = slots.result(b) if total is None else total.result(b)
    emit_stores(b, lib, kernel, buffers, {}, acc)
