"""Index width per kernel: 32-bit index arithmetic where every size the kernel reaches fits.

GPUs run 32-bit integer arithmetic at full rate and 64-bit at a fraction of it, so a kernel
computes its loop variables and the arithmetic on them (flat offsets, `//` and `%` of views,
random-number counters) in the target's preferred width whenever nothing it can reach
overflows it.  What a kernel reaches, conservatively: every buffer's size (a bound its loops
compare against), the product of its domain and reduction extents (a generator may run them as
one flat range), and the range of every integer subexpression made of loop variables and
constants, found by interval arithmetic (`affine.value_range`), so intermediate products
count too.  Constants alone, and uint32 arithmetic (which wraps by definition: the random-number
hash), are not index arithmetic.  Values computed from loaded data are the data's dtype; an
index built from them (a gather) is masked to its buffer, and a masked-off lane may wrap.
A pure loop-variable expression the interval arithmetic cannot follow needs the widest width.

Dynamic sizes (docs/compiler/dynamic-shapes.md) count at their upper bound in the active shape
environment (interval arithmetic only widens with larger extents, so that bounds every call);
an unbounded one, or one outside an environment, needs the widest width, and a target
without 64-bit indices cannot take such a kernel (`DynamicSizeError`: compile it static).
"""
from __future__ import annotations

from dataclasses import replace
from math import prod

from ...runtime.sizes import Poly
from ..symbolic import DynamicSizeError, active_env
from ..types import uint32
from .affine import value_range
from .ir import Acc, Expr, Kernel, KernelGraph, Load, Var, children, dtype_of, postorder


def index_arithmetic(kernel: Kernel) -> list[Expr]:
    """The kernel's index arithmetic, children first: its signed integer subexpressions made
    of loop variables (at least one) and constants alone.  Constants alone fold, data is the
    data's dtype, and uint32 arithmetic wraps by definition (the random-number hash).  The
    kernel evaluator checks these same values at 32 bits."""
    roots: list[Expr] = [x for s in kernel.stores for x in (s.index, s.value)]
    if kernel.reduce_value is not None:
        roots.append(kernel.reduce_value)
    pure: dict[int, bool] = {}
    varying: dict[int, bool] = {}
    out = []
    for e in postorder(roots):
        pure[id(e)] = not isinstance(e, (Load, Acc)) and all(pure[id(c)] for c in children(e))
        varying[id(e)] = isinstance(e, Var) or any(varying[id(c)] for c in children(e))
        if pure[id(e)] and varying[id(e)]:
            dtype = dtype_of(e, kernel.acc_dtype)
            if dtype.is_integer and dtype != uint32:
                out.append(e)
    return out


def index_span(kernel: Kernel) -> tuple[int, int] | None:
    """The inclusive (lo, hi) bounds of every value the kernel's index arithmetic reaches
    (see the module docstring); None when a loop-variable expression cannot be bounded."""
    extents = _upper(tuple(kernel.domain) + tuple(kernel.reduce))
    sizes = _upper(tuple(b.size for b in kernel.buffers()))
    if extents is None or sizes is None:
        return None
    lo = 0
    hi = max(list(sizes) + [prod(extents)])
    memo: dict = {}
    for e in index_arithmetic(kernel):
        r = value_range(e, extents, memo)
        if r is None:
            return None
        lo, hi = min(lo, r[0]), max(hi, r[1])
    return lo, hi


def _upper(sizes: tuple) -> tuple[int, ...] | None:
    """Each size at its largest value: dynamic ones at their upper bound in the active shape
    environment; None when one is unbounded or no environment is active."""
    if not any(isinstance(n, Poly) for n in sizes):
        return sizes
    try:
        env = active_env()
    except DynamicSizeError:
        return None
    out = []
    for n in sizes:
        top = env.bounds(n)[1] if isinstance(n, Poly) else n
        if top == float("inf"):
            return None
        out.append(int(top))
    return tuple(out)


def fits(span: tuple[int, int] | None, bits: int) -> bool:
    """Whether every value in `span` is a signed `bits`-bit integer."""
    return span is not None and -(1 << (bits - 1)) <= span[0] and span[1] < 1 << (bits - 1)


def choose_index_bits(kernels: KernelGraph, index_bits: tuple[int, ...],
                      preferred: int) -> KernelGraph:
    """`kernels` with each kernel's `index_bits` set: `preferred` where the kernel's index
    span fits it, else the smallest of the target's `index_bits` that fits, and the widest
    (64) for a span that cannot be bounded; ValueError naming the kernel, the size and the
    widths when none fits.  Returns `kernels` itself when no kernel changes."""
    if not index_bits or any(b not in (32, 64) for b in index_bits):
        raise ValueError(f"choose_index_bits: index widths must be 32 and/or 64, got "
                         f"{tuple(index_bits)}")
    if preferred not in index_bits:
        raise ValueError(f"choose_index_bits: preferred width {preferred} is not one of the "
                         f"target's {index_bits}")
    out = []
    for k in kernels.kernels:
        span = index_span(k)
        if span is None:
            bits = max(index_bits) if max(index_bits) > 32 else None
        else:
            widths = [preferred] + sorted(b for b in index_bits if b != preferred)
            bits = next((b for b in widths if fits(span, b)), None)
        if bits is None and _dynamic(k):
            raise DynamicSizeError(f"{k.name}: dynamic sizes need 64-bit indices, which the "
                                   f"target lacks (index widths {tuple(index_bits)})")
        if bits is None:
            size = "an index it cannot bound" if span is None else f"indices up to {span[1]}"
            raise ValueError(f"{k.name}: {size} fit none of the target's index widths "
                             f"{tuple(index_bits)}")
        out.append(k if k.index_bits == bits else replace(k, index_bits=bits))
    if all(a is b for a, b in zip(out, kernels.kernels)):
        return kernels
    return kernels.with_kernels(out)


def _dynamic(kernel: Kernel) -> bool:
    return any(isinstance(n, Poly) for n in (*kernel.domain, *kernel.reduce,
                                             *(b.size for b in kernel.buffers())))
