"""The dot-product schedule for contractions whose two operands are contiguous along k.

That is `x @ w.T` with a PyTorch-layout weight (every Linear layer): blocks of RM x RN outputs
keep RM * RN vector accumulators over k, nothing packed (codegen: llvm_dot.py).  Used while the
rows of `a` fit in L2 (`MAX_ROWS_BYTES`), so that every column block re-reads them from there;
larger products are tiled (contraction.py), except those with fewer than `MIN_PACKED_ROWS` rows
(which the tiled path refuses) and those with a single column block (a matrix-vector product),
which read the rows of `a` once whatever the length of k.  A short k (`SHORT_K`) with at least
`SHORT_K_ROWS` rows is tiled too where the tiled path takes it (`prefers_tiled`): there the
horizontal sums and the scalar k % V tail cost more than the products.
"""
from __future__ import annotations

import math

from ..kernel.ir import Binary, Kernel, Load, dtype_of
from ..targets import Capabilities
from ..types import DType
from .ranges import worth_splitting
from .sizes import ceil_count, hint, is_static, static_affine
from .types import Dot

RM, RN = 4, 4
MAX_ROWS_BYTES = 512 * 1024
MIN_PACKED_ROWS = 4  # fewer rows with a k-contiguous b: per-output dot products are faster
SHORT_K = 64  # a shorter k with at least SHORT_K_ROWS rows takes the tiled path instead
SHORT_K_ROWS = 6


def _k_contiguous(e, k_axis: int, dtype: DType, avoid: int | None) -> bool:
    if not isinstance(e, Load) or e.mask is not None or e.dtype != dtype:
        return False
    coeffs = static_affine(e.index)
    return coeffs is not None and coeffs.get(k_axis) == 1 and not coeffs.get(avoid, 0)


def dot_rule(kernel: Kernel, caps: Capabilities) -> Dot | None:
    """The dot-product schedule for `kernel`, or None."""
    value = kernel.reduce_value
    if (kernel.reduce_op != "sum" or len(kernel.reduce) != 1 or not kernel.domain
            or not isinstance(value, Binary) or value.op != "mul"):
        return None
    dtype = dtype_of(value)
    nd = len(kernel.domain)
    lanes = caps.vector_bits // (8 * dtype.itemsize)
    k_size = kernel.reduce[0]
    if not dtype.is_floating or lanes < 1 or not is_static(k_size) or k_size < lanes:
        return None
    row, col = (nd - 2, nd - 1) if nd >= 2 else (None, 0)
    if not is_static(kernel.domain[col]):  # dynamic rows and batch only
        return None
    rows = 1 if row is None else kernel.domain[row]
    # past L2, a's rows are worth keeping only if several column blocks re-read them; the
    # tiled path (blocked over k) takes those products, except with few rows, which it refuses
    # (dynamic rows: contraction_rule picks between both per call, `dot_rows`)
    if (is_static(rows) and rows >= MIN_PACKED_ROWS and kernel.domain[col] > RN
            and rows * k_size * dtype.itemsize > MAX_ROWS_BYTES):
        return None
    for operand, (a, b) in enumerate(((value.a, value.b), (value.b, value.a))):
        if _k_contiguous(a, nd, dtype, col) and _k_contiguous(b, nd, dtype, row):
            batch = tuple(range(nd - 2)) if nd >= 2 else ()
            count = ceil_count(kernel.domain[col], RN,
                               math.prod(kernel.domain[i] for i in batch))
            return Dot(count=count, threaded=worth_splitting(kernel, caps), a_operand=operand,
                       row=row, col=col, batch=batch, dtype=dtype, lanes=lanes, rm=RM, rn=RN)
    return None


def dot_rows(kernel: Kernel, dot: Dot) -> float:
    """The most rows for which the static rules keep dot products rather than tiles (inf:
    always): what a kernel with dynamic rows tests per call."""
    k_size = kernel.reduce[0]
    if k_size < SHORT_K:
        return SHORT_K_ROWS - 1
    if kernel.domain[dot.col] <= RN:
        return math.inf
    return max(MIN_PACKED_ROWS - 1, MAX_ROWS_BYTES // (k_size * dot.dtype.itemsize))


def prefers_tiled(kernel: Kernel, dot: Dot) -> bool:
    """Whether the tiled path, when it takes `kernel`, beats these dot products: a k shorter
    than `SHORT_K` with at least `SHORT_K_ROWS` rows."""
    rows = 1 if dot.row is None else hint(kernel.domain[dot.row])
    return kernel.reduce[0] < SHORT_K and rows >= SHORT_K_ROWS
