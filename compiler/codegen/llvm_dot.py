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

Used while the rows of `a` fit in L2 (`MAX_ROWS_BYTES`), so that every column block re-reads
them from there; larger products take the packed path, which blocks over k, except those with
fewer than `MIN_PACKED_ROWS` rows (which it refuses) and those with a single column block (a
matrix-vector product), which read the rows of `a` once whatever the length of k.  Products
over a short k (`SHORT_K`) with at least `SHORT_K_ROWS` rows take the packed path too, when it
takes them: there the 16 horizontal sums per block and the scalar k % V tail cost more than
the products, and packing `b` k-innermost for the tiled path (llvm_matmul.py) is paid back
over the rows (measured, (32, 20) @ (20, 80): 5.5 -> 2.3 us; (480, 20) @ (20, 80): 75 -> 16
us; (32, 63) @ (63, 80): 15 -> 5.7 us).
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from ..kernel.ir import Binary, Kernel, Load, dtype_of
from ..kernel.memory import affine
from ..types import DType
from .llvm_loops import FunctionBuilder
from .llvm_math import I64, MathLib
from .llvm_matmul import MIN_PACKED_ROWS
from .llvm_ops import ExprEmitter, emit_stores, value_type

RM, RN = 4, 4
MAX_ROWS_BYTES = 512 * 1024
SHORT_K = 64  # a shorter k with at least SHORT_K_ROWS rows takes the tiled path instead
SHORT_K_ROWS = 6


@dataclass(frozen=True)
class DotMatch:
    """How a contraction maps onto the dot-product blocks."""

    a: Load  # reads rows (not the column axis), contiguous along k
    b: Load  # reads columns (not the row axis), contiguous along k
    row: int | None
    col: int
    batch: tuple[int, ...]
    dtype: DType
    lanes: int


def _k_contiguous(e, k_axis: int, dtype: DType, avoid: int | None) -> bool:
    if not isinstance(e, Load) or e.mask is not None or e.dtype != dtype:
        return False
    coeffs = affine(e.index)
    return coeffs is not None and coeffs.get(k_axis) == 1 and not coeffs.get(avoid, 0)


def match_dot(kernel: Kernel, vector_bits: int) -> DotMatch | None:
    """The dot-product plan for `kernel`, or None."""
    value = kernel.reduce_value
    if (kernel.reduce_op != "sum" or len(kernel.reduce) != 1 or not kernel.domain
            or not isinstance(value, Binary) or value.op != "mul"):
        return None
    dtype = dtype_of(value)
    nd = len(kernel.domain)
    lanes = vector_bits // (8 * dtype.itemsize)
    k_size = kernel.reduce[0]
    if not dtype.is_floating or k_size < lanes:
        return None
    row, col = (nd - 2, nd - 1) if nd >= 2 else (None, 0)
    rows = 1 if row is None else kernel.domain[row]
    # past L2, a's rows are worth keeping only if several column blocks re-read them; the
    # tiled path (blocked over k) takes those products, except with few rows, which it refuses
    if (rows >= MIN_PACKED_ROWS and kernel.domain[col] > RN
            and rows * k_size * dtype.itemsize > MAX_ROWS_BYTES):
        return None
    for a, b in ((value.a, value.b), (value.b, value.a)):
        if _k_contiguous(a, nd, dtype, col) and _k_contiguous(b, nd, dtype, row):
            batch = tuple(range(nd - 2)) if nd >= 2 else ()
            return DotMatch(a, b, row, col, batch, dtype, lanes)
    return None


def prefers_tiled(kernel: Kernel, m: DotMatch) -> bool:
    """Whether the tiled path, when it takes `kernel`, beats these dot products: a k shorter
    than `SHORT_K` with at least `SHORT_K_ROWS` rows."""
    rows = 1 if m.row is None else kernel.domain[m.row]
    return kernel.reduce[0] < SHORT_K and rows >= SHORT_K_ROWS


def emit_dot(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
             m: DotMatch) -> int:
    """Emit the blocked dot products into `fb`; returns the size of the kernel's range."""
    b = fb.b
    domain = kernel.domain
    ftype = value_type(m.dtype)
    vec = ir.VectorType(ftype, m.lanes)
    k_axis, k_size = len(domain), kernel.reduce[0]
    n_size = domain[m.col]
    m_size = 1 if m.row is None else domain[m.row]
    col_blocks = -(-n_size // RN)
    count = col_blocks
    for axis in m.batch:
        count *= domain[axis]
    accs = [fb.alloca(vec, align=64, name=f"acc{i}") for i in range(RM * RN)]
    sums = fb.alloca(ftype, count=RM * RN, align=64, name="sums")
    fma = lib.intrinsic("llvm.fmuladd", vec)
    hsum = lib.intrinsic("llvm.vector.reduce.fadd", vec)
    zero = ir.Constant(ftype, 0.0)
    start, end = fb.fn.args[-2:]

    def rows_of(operand: Load, point: dict) -> ir.Value:
        em = ExprEmitter(b, lib, buffers, point)
        return em.element_pointer(operand.buffer, em.index(operand.index))

    with fb.loop(start, end, "cols") as t:
        vars: dict[int, ir.Value] = {k_axis: ir.Constant(I64, 0)}
        n0 = b.mul(b.urem(t, _i64(col_blocks)), _i64(RN))
        rest = b.udiv(t, _i64(col_blocks))
        for axis in reversed(m.batch):
            vars[axis] = b.urem(rest, _i64(domain[axis]))
            rest = b.udiv(rest, _i64(domain[axis]))
        b_rows = [rows_of(m.b, {**vars, m.col: fb.min(b.add(n0, _i64(j)), n_size - 1)})
                  for j in range(RN)]
        with fb.loop(0, -(-m_size // RM), "rows") as rb:
            m0 = b.mul(rb, _i64(RM))
            a_rows = []
            for i in range(RM):
                point = dict(vars)
                if m.row is not None:
                    point[m.row] = fb.min(b.add(m0, _i64(i)), m_size - 1)
                a_rows.append(rows_of(m.a, point))
            for acc in accs:
                b.store(ir.Constant(vec, None), acc)
            with fb.loop(0, k_size // m.lanes, "kv") as kv:
                k = b.mul(kv, _i64(m.lanes))
                av = [b.load(b.gep(p, [k], inbounds=True, source_etype=ftype), typ=vec,
                             align=m.dtype.itemsize) for p in a_rows]
                bv = [b.load(b.gep(p, [k], inbounds=True, source_etype=ftype), typ=vec,
                             align=m.dtype.itemsize) for p in b_rows]
                for i in range(RM):
                    for j in range(RN):
                        acc = accs[i * RN + j]
                        b.store(b.call(fma, [av[i], bv[j], b.load(acc, typ=vec)]), acc)
            for idx, acc in enumerate(accs):
                total = b.call(hsum, [zero, b.load(acc, typ=vec)], fastmath=("reassoc",))
                b.store(total, b.gep(sums, [_i64(idx)], inbounds=True, source_etype=ftype))
            tail = k_size // m.lanes * m.lanes
            if tail < k_size:
                with fb.loop(tail, k_size, "k_tail") as k:
                    av = [b.load(b.gep(p, [k], inbounds=True, source_etype=ftype), typ=ftype)
                          for p in a_rows]
                    bv = [b.load(b.gep(p, [k], inbounds=True, source_etype=ftype), typ=ftype)
                          for p in b_rows]
                    for i in range(RM):
                        for j in range(RN):
                            slot = b.gep(sums, [_i64(i * RN + j)], inbounds=True,
                                         source_etype=ftype)
                            b.store(b.fadd(b.load(slot, typ=ftype), b.fmul(av[i], bv[j])), slot)
            _epilogue(fb, lib, kernel, buffers, m, vars, sums, m0, n0, m_size, n_size)
    return count


def _epilogue(fb, lib, kernel, buffers, m: DotMatch, vars, sums, m0, n0, m_size, n_size):
    """The kernel's stores on the valid part of one RM x RN block."""
    b = fb.b
    ftype = value_type(m.dtype)
    rows = fb.min(b.sub(_i64(m_size), m0), RM)
    cols = fb.min(b.sub(_i64(n_size), n0), RN)
    with fb.loop(0, rows, "ep_i") as i:
        with fb.loop(0, cols, "ep_j") as j:
            point = {a: v for a, v in vars.items() if a != len(kernel.domain)}
            if m.row is not None:
                point[m.row] = b.add(m0, i)
            point[m.col] = b.add(n0, j)
            slot = b.gep(sums, [b.add(b.mul(i, _i64(RN)), j)], inbounds=True,
                         source_etype=ftype)
            emit_stores(b, lib, kernel, buffers, point, b.load(slot, typ=ftype))


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)
