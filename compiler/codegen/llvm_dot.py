"""The dot-product path for contractions whose two operands are both contiguous along k.

That is `x @ w.T` with a PyTorch-layout weight `w[n, k]` (every Linear layer) and any other
"NT" product.  Packing `w` for the BLIS-style path (llvm_matmul.py) would read it across its
rows; here nothing is packed.  A block of RM x RN outputs keeps RM * RN vector accumulators
over k, so each step loads RM + RN vectors and issues RM * RN FMAs:

    for (batch, column block) in [start, end):
      for each block of RM rows (rows and columns past the edge clamped, results dropped):
        acc[i][j] += a[m0+i, k:k+V] * b[n0+j, k:k+V]   for k in steps of V
        s[i][j] = horizontal sum of acc[i][j], plus the k % V tail in scalars
        the kernel's stores (the fused epilogue) on the valid part of the block

Which contractions take this path is decided by compiler/schedule/dot.py (a `Dot` schedule).
"""
from __future__ import annotations

from llvmlite import ir

from ..kernel.ir import Kernel, Load
from ..schedule.contraction import operands
from ..schedule.types import Dot
from .llvm_loops import FunctionBuilder
from .llvm_math import I64, MathLib
from .llvm_ops import ExprEmitter, emit_stores, value_type


def emit_dot(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict, m: Dot) -> None:
    """Emit the blocked dot products of schedule `m` into `fb` (over `m.count` range points:
    (batch, column block) pairs)."""
    b = fb.b
    rm, rn = m.rm, m.rn
    a_operand, b_operand = operands(kernel, m.a_operand)
    domain = kernel.domain
    ftype = value_type(m.dtype)
    vec = ir.VectorType(ftype, m.lanes)
    k_axis, k_size = len(domain), kernel.reduce[0]
    n_size = domain[m.col]
    m_size = 1 if m.row is None else domain[m.row]
    col_blocks = -(-n_size // rn)
    accs = [fb.alloca(vec, align=64, name=f"acc{i}") for i in range(rm * rn)]
    sums = fb.alloca(ftype, count=rm * rn, align=64, name="sums")
    fma = lib.intrinsic("llvm.fmuladd", vec)
    hsum = lib.intrinsic("llvm.vector.reduce.fadd", vec)
    start, end = fb.fn.args[-2:]

    def rows_of(operand: Load, point: dict) -> ir.Value:
        em = ExprEmitter(b, lib, buffers, point)
        return em.element_pointer(operand.buffer, em.index(operand.index))

    with fb.loop(start, end, "cols") as t:
        vars: dict[int, ir.Value] = {k_axis: ir.Constant(I64, 0)}
        n0 = b.mul(b.urem(t, _i64(col_blocks)), _i64(rn))
        rest = b.udiv(t, _i64(col_blocks))
        for axis in reversed(m.batch):
            vars[axis] = b.urem(rest, fb.value(domain[axis]))
            rest = b.udiv(rest, fb.value(domain[axis]))
        b_rows = [rows_of(b_operand, {**vars, m.col: fb.min(b.add(n0, _i64(j)), n_size - 1)})
                  for j in range(rn)]
        with fb.loop(0, fb.ceil_div(m_size, rm), "rows") as rb:
            m0 = b.mul(rb, _i64(rm))
            a_rows = []
            for i in range(rm):
                point = dict(vars)
                if m.row is not None:
                    point[m.row] = fb.min(b.add(m0, _i64(i)), fb.value(m_size - 1))
                a_rows.append(rows_of(a_operand, point))
            for acc in accs:
                b.store(ir.Constant(vec, None), acc)
            with fb.loop(0, k_size // m.lanes, "kv") as kv:
                k = b.mul(kv, _i64(m.lanes))
                av = [b.load(b.gep(p, [k], inbounds=True, source_etype=ftype), typ=vec,
                             align=m.dtype.itemsize) for p in a_rows]
                bv = [b.load(b.gep(p, [k], inbounds=True, source_etype=ftype), typ=vec,
                             align=m.dtype.itemsize) for p in b_rows]
                for i in range(rm):
                    for j in range(rn):
                        acc = accs[i * rn + j]
                        b.store(b.call(fma, [av[i], bv[j], b.load(acc, typ=vec)]), acc)
            _horizontal_sums(b, [b.load(acc, typ=vec) for acc in accs], sums, hsum, ftype)
            tail = k_size // m.lanes * m.lanes
            if tail < k_size:
                with fb.loop(tail, k_size, "k_tail") as k:
                    av = [b.load(b.gep(p, [k], inbounds=True, source_etype=ftype), typ=ftype)
                          for p in a_rows]
                    bv = [b.load(b.gep(p, [k], inbounds=True, source_etype=ftype), typ=ftype)
                          for p in b_rows]
                    for i in range(rm):
                        for j in range(rn):
                            slot = b.gep(sums, [_i64(i * rn + j)], inbounds=True,
                                         source_etype=ftype)
                            b.store(b.fadd(b.load(slot, typ=ftype), b.fmul(av[i], bv[j])), slot)
            _epilogue(fb, lib, kernel, buffers, m, vars, sums, m0, n0, m_size, n_size)


def _horizontal_sums(b: ir.IRBuilder, accs: list[ir.Value], sums: ir.Value, hsum,
                     ftype: ir.Type) -> None:
    """sums[i] = the sum of accs[i]'s lanes.  Each run of as many accumulators as a vector
    has lanes is reduced together by a transposing tree: every level adds two vectors'
    halves, lanes of one accumulator kept next to each other, until lane i holds sum i:
    log2(lanes) levels of two shuffles and one add per pair, where one reduction per
    accumulator costs log2(lanes) of each per accumulator (the dot products of a short k
    spent as much on those as on their FMAs).  Other counts reduce one by one."""
    lanes = accs[0].type.count
    zero = ir.Constant(ftype, 0.0)
    whole = len(accs) // lanes * lanes if lanes & (lanes - 1) == 0 and lanes > 1 else 0
    for first in range(0, whole, lanes):
        level = accs[first:first + lanes]
        groups, width = 1, lanes  # each vector: `groups` accumulators of `width` lanes
        while width > 1:
            half = width // 2
            lo = [(0 if p < groups else lanes) + (p % groups) * width + r
                  for p in range(2 * groups) for r in range(half)]
            hi = [i + half for i in lo]
            level = [b.fadd(b.shuffle_vector(x, y, _mask(lo)), b.shuffle_vector(x, y, _mask(hi)))
                     for x, y in zip(level[::2], level[1::2])]
            groups, width = 2 * groups, half
        slot = b.gep(sums, [_i64(first)], inbounds=True, source_etype=ftype)
        b.store(level[0], slot, align=4)
    for idx in range(whole, len(accs)):
        total = b.call(hsum, [zero, accs[idx]], fastmath=("reassoc",))
        b.store(total, b.gep(sums, [_i64(idx)], inbounds=True, source_etype=ftype))


def _mask(lanes: list[int]) -> ir.Constant:
    return ir.Constant(ir.VectorType(ir.IntType(32), len(lanes)), lanes)


def _epilogue(fb, lib, kernel, buffers, m: Dot, vars, sums, m0, n0, m_size, n_size):
    """The kernel's stores on the valid part of one block of outputs."""
    b = fb.b
    ftype = value_type(m.dtype)
    rows = fb.min(b.sub(fb.value(m_size), m0), m.rm)
    cols = fb.min(b.sub(_i64(n_size), n0), m.rn)

    def stores(rows, cols) -> None:
        with fb.loop(0, rows, "ep_i") as i:
            with fb.loop(0, cols, "ep_j") as j:
                point = {a: v for a, v in vars.items() if a != len(kernel.domain)}
                if m.row is not None:
                    point[m.row] = b.add(m0, i)
                point[m.col] = b.add(n0, j)
                slot = b.gep(sums, [b.add(b.mul(i, _i64(m.rn)), j)], inbounds=True,
                             source_etype=ftype)
                emit_stores(b, lib, kernel, buffers, point, b.load(slot, typ=ftype))

    if isinstance(m_size, int):
        stores(rows, cols)
        return
    # dynamic rows: a whole block stores in loops of constant trip counts (unrolled, as a
    # static program's are), only the edge blocks in loops of counted length
    whole = b.and_(b.icmp_signed("==", rows, _i64(m.rm)), b.icmp_signed("==", cols, _i64(m.rn)))
    with b.if_else(whole) as (full, edge):
        with full:
            stores(_i64(m.rm), _i64(m.rn))
        with edge:
            stores(rows, cols)


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)
