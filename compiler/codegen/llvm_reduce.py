"""Reductions in the generic loop nest: per point, or across a strip of columns.

Per point (the default): at each domain point an accumulator slot (promoted to a register by
mem2reg) is combined over the reduction loops; the innermost reduction loop is the contiguous
one when the reduced axis is the last axis of the data (a row sum), and it vectorizes.  A
reduction of at most `SMALL_REDUCTION` steps (a pooling window) is unrolled into straight-line
code, so the domain loop around it vectorizes instead.

Across columns: when the data is contiguous along the last *domain* axis instead (a column
sum such as a bias gradient, a softmax over axis 0, pooling over window taps), the loops are
interchanged.  A strip of up to `STRIP` columns keeps one accumulator per column in a stack
array; every reduction step updates the whole strip with a vectorizable loop over columns;
then the stores run over the strip.  Results are the same (argmax/argmin still keep the first
extreme: each column's steps run in order).

Combining: `sum`/`prod` may reassociate (so LLVM vectorizes them), `max`/`min` propagate NaN
as NumPy does, `argmax`/`argmin` keep the first extreme and the first NaN, as `np.argmax`.
"""
from __future__ import annotations

import itertools

import numpy as np
from llvmlite import ir

from ..kernel import Kernel, Load, dtype_of
from ..passes.memory import affine
from ..types import DType
from .llvm_loops import FunctionBuilder
from .llvm_math import I64, MathLib
from .llvm_ops import (
    CodegenError,
    ExprEmitter,
    combine_sum,
    const,
    dclass,
    emit_stores,
    value_type,
)

STRIP = 256  # columns reduced together when the reduction runs across columns
SMALL_REDUCTION = 16  # reductions up to this many steps are unrolled
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


def across_columns(kernel: Kernel) -> bool:
    """Whether the reduced data is contiguous along the last domain axis rather than along the
    innermost reduction axis, so that reducing a strip of columns at once pays."""
    if kernel.reduce_value is None or not kernel.domain or not kernel.reduce:
        return False
    if is_small(kernel):
        return False
    if kernel.domain[-1] < 4:
        return False
    last, inner = len(kernel.domain) - 1, len(kernel.domain) + len(kernel.reduce) - 1
    along_domain = along_reduce = 0
    for load in _loads(kernel.reduce_value):
        coeffs = affine(load.index) or {}
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
        if self.indices is not None:
            return b.load(self._at(b, self.indices, j, I64), typ=I64)
        return b.load(self._at(b, self.values, j, self._type), typ=self._type)


def reduce_at_point(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
                    vars: dict) -> ir.Value:
    """Run the reduction loops at one domain point; returns the finished accumulator."""
    slots = _Slots(fb, kernel.reduce_op, value_dtype(kernel), 1)
    slots.reset(fb.b)

    def step(vars: dict) -> None:
        v = ExprEmitter(fb.b, lib, buffers, vars).emit(kernel.reduce_value)
        slots.combine(fb.b, lib, v, lambda: _linear(fb.b, kernel, vars))

    if is_small(kernel):  # straight-line code: the domain loop around it vectorizes
        for point in itertools.product(*(range(n) for n in kernel.reduce)):
            here = dict(vars)
            for j, r in enumerate(point):
                here[len(kernel.domain) + j] = ir.Constant(I64, r)
            step(here)
        return slots.result(fb.b)
    # not forced: LLVM vectorizes the reassociable sums (and min/max) by itself where legal,
    # and a forced loop it cannot vectorize would make it complain on stderr
    _reduction_loops(fb, kernel, dict(vars), step, vectorize_inner=False)
    return slots.result(fb.b)


def is_small(kernel: Kernel) -> bool:
    """Whether the reduction is short enough to unroll at every domain point (a pooling
    window, a few gates)."""
    size = 1
    for n in kernel.reduce:
        size *= n
    return kernel.reduce_value is not None and size <= SMALL_REDUCTION


def reduce_columns(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
                   vars: dict, lo: ir.Value, hi: ir.Value) -> None:
    """Reduce and store columns [lo, hi) of the last domain axis, a strip at a time."""
    b = fb.b
    last = len(kernel.domain) - 1
    slots = _Slots(fb, kernel.reduce_op, value_dtype(kernel), STRIP)
    strips = b.udiv(b.add(b.sub(hi, lo), ir.Constant(I64, STRIP - 1)), ir.Constant(I64, STRIP))
    with fb.loop(0, strips, "strip") as s:
        first = b.add(lo, b.mul(s, ir.Constant(I64, STRIP)))
        width = fb.min(b.sub(hi, first), STRIP)
        with fb.loop(0, width, "reset", vectorize=True) as j:
            slots.reset(b, j)

        def step(point: dict) -> None:
            with fb.loop(0, width, "col", vectorize=True) as j:
                inner = dict(point)
                inner[last] = b.add(first, j)
                v = ExprEmitter(b, lib, buffers, inner).emit(kernel.reduce_value)
                slots.combine(b, lib, v, lambda: _linear(b, kernel, inner), j)

        _reduction_loops(fb, kernel, dict(vars), step, vectorize_inner=False)
        flat_stores = not any(st.accumulate for st in kernel.stores)
        with fb.loop(0, width, "store", vectorize=flat_stores) as j:
            point = dict(vars)
            point[last] = b.add(first, j)
            emit_stores(b, lib, kernel, buffers, point, slots.result(b, j))


def _reduction_loops(fb: FunctionBuilder, kernel: Kernel, vars: dict, step,
                     vectorize_inner: bool, depth: int = 0) -> None:
    if depth == len(kernel.reduce):
        step(vars)
        return
    inner = vectorize_inner and depth == len(kernel.reduce) - 1
    with fb.loop(0, kernel.reduce[depth], f"r{depth}", vectorize=inner) as r:
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
    """The row-major flat index of the current point of the reduction axes."""
    first = len(kernel.domain)
    sizes = kernel.reduce
    index = vars[first + len(sizes) - 1]
    stride = sizes[-1]
    for j in range(len(sizes) - 2, -1, -1):
        index = b.add(index, b.mul(vars[first + j], ir.Constant(I64, stride)))
        stride *= sizes[j]
    return index

