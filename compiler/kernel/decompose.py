"""Decompositions: kernel expressions a target cannot render, rewritten into ones it can.

A target lists the operations its generator renders in `Capabilities.native_ops` (None:
all of them).  `decompose` rewrites every other operation of a `KernelGraph` into simpler
kernel-IR operations, before scheduling and code generation, so a generator never meets an
op it lacks:

- `rng_uniform` (`RandomUniform`) becomes the hash of compiler/ops/source.py in uint32 bit
  operations (`xor`, `shr`, wrapping `add`/`mul`) and casts: bit-identical numbers.  The seed's
  high word is `seed >> 32` on int64; a target without 64-bit integers would need the seed
  passed as two uint32 words (the counter is truncated to 32 bits anyway).
- `sigmoid` becomes exp(-|x|) and one division, split by sign so nothing overflows (the same
  operations the LLVM backend emits for it).
- `erf` (float32) becomes x + x R(x^2) for |x| < 1, and 1 - exp(-t^2) Q(1/t), t = min(|x|, 4),
  with the sign of x, beyond: polynomials fitted for float32, within 2 ulp of the correctly
  rounded erf.  Float64 erf has no decomposition (a float64 target must render it).
- `tanh` has none either: without expm1, the formulas in exp lose the small arguments.

An operation that is not native and has no decomposition for its dtype raises
`DecompositionError` naming the kernel, the op and the dtype.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..ops.source import HASH_MUL1, HASH_MUL2, SEED_GOLDEN
from ..types import DType, float32, float64, int64, uint32
from .ir import (
    Acc,
    Binary,
    Cast,
    Const,
    Expr,
    Kernel,
    KernelGraph,
    Load,
    RandomUniform,
    Store,
    Sym,
    Unary,
    Var,
    Where,
    dtype_of,
)
from .ops import RNG

# erf(x) = x + x R(x^2) on |x| < 1; coefficients of R from z^0 up (float32 values)
ERF_SMALL = (0.12837916612625122, -0.3761262595653534, 0.1128358542919159,
             -0.02685382030904293, 0.005188341718167067, -0.0008010306628420949,
             7.854205614421517e-05)
# erf(t) = 1 - exp(-t^2) Q(1/t) on 1 <= t <= 4 (erf rounds to 1 in float32 beyond 4)
ERF_LARGE = (0.0002530883648432791, 0.5593159198760986, 0.04015903174877167,
             -0.46466463804244995, 0.4809337854385376, -0.21906128525733948,
             0.004019979387521744, 0.03800314664840698, -0.011375464498996735)
ERF_CAP = 4.0


class DecompositionError(ValueError):
    """A kernel uses an operation the target neither renders nor can have decomposed."""


def _u32(value: int) -> Const:
    return Const(value, uint32)


def _hash32(x: Expr) -> Expr:
    """lowbias32 (compiler/ops/source.py `hash32`) on a uint32 expression."""
    x = Binary("xor", x, Binary("shr", x, _u32(16)))
    x = Binary("mul", x, _u32(HASH_MUL1))
    x = Binary("xor", x, Binary("shr", x, _u32(15)))
    x = Binary("mul", x, _u32(HASH_MUL2))
    return Binary("xor", x, Binary("shr", x, _u32(16)))


def random_uniform(e: RandomUniform) -> Expr:
    """`uniform_bits` of compiler/ops/source.py, then (bits >> 8) * 2**-24: exact in both
    float32 and float64, so bit-identical to the reference."""
    lo = Cast(uint32, e.seed)
    hi = Cast(uint32, Binary("shr", e.seed, Const(32, int64)))
    key = _hash32(Binary("xor", lo, _hash32(Binary("add", hi, _u32(SEED_GOLDEN)))))
    bits = _hash32(Binary("add", _hash32(Binary("xor", Cast(uint32, e.counter), key)), key))
    u = Cast(e.dtype, Binary("shr", bits, _u32(8)))
    return Binary("mul", u, Const(1.0 / (1 << 24), e.dtype))


def _horner(coeffs: tuple[float, ...], z: Expr, dtype: DType) -> Expr:
    acc: Expr = Const(coeffs[-1], dtype)
    for c in reversed(coeffs[:-1]):
        acc = Binary("add", Binary("mul", acc, z), Const(c, dtype))
    return acc


def sigmoid(x: Expr, dtype: DType) -> Expr:
    """1/(1+e) for x >= 0, e/(1+e) below, e = exp(-|x|) (never overflows)."""
    one = Const(1.0, dtype)
    e = Unary("exp", Unary("neg", Unary("abs", x)))
    pos = Binary("div", one, Binary("add", one, e))
    return Where(Binary("ge", x, Const(0.0, dtype)), pos, Binary("mul", e, pos))


def erf(x: Expr, dtype: DType) -> Expr:
    """The float32 erf of the module docstring (nan stays nan, +-inf gives +-1, -0 gives -0)."""
    one = Const(1.0, dtype)
    a = Unary("abs", x)
    small = Binary("add", x, Binary("mul", x, _horner(ERF_SMALL, Binary("mul", x, x), dtype)))
    t = Binary("min", a, Const(ERF_CAP, dtype))
    tail = Binary("mul", Unary("exp", Unary("neg", Binary("mul", t, t))),
                  _horner(ERF_LARGE, Binary("div", one, t), dtype))
    large = Binary("sub", one, tail)
    signed = Where(Binary("lt", x, Const(0.0, dtype)), Unary("neg", large), large)
    return Where(Binary("lt", a, one), small, signed)


UNARY_RULES: dict[str, tuple[frozenset[DType], Callable[[Expr, DType], Expr]]] = {
    "sigmoid": (frozenset({float32, float64}), sigmoid),
    "erf": (frozenset({float32}), erf),
}
"""Unary op -> (the dtypes it decomposes on, rule(operand, dtype))."""


def decompose(kernels: KernelGraph, native_ops: frozenset[str] | None) -> KernelGraph:
    """`kernels` with every operation outside `native_ops` decomposed (None: all native).
    Returns `kernels` itself when nothing changes."""
    if native_ops is None:
        return kernels
    out = [_Rewriter(k, native_ops).kernel() for k in kernels.kernels]
    if all(new is old for new, old in zip(out, kernels.kernels)):
        return kernels
    return kernels.with_kernels(out)


class _Rewriter:
    """Rewrites one kernel's expressions bottom-up, each shared node once (by identity)."""

    def __init__(self, kernel: Kernel, native: frozenset[str]) -> None:
        self.k = kernel
        self.native = native
        self.memo: dict[int, tuple[Expr, Expr]] = {}

    def kernel(self) -> Kernel:
        k = self.k
        rv = None if k.reduce_value is None else self(k.reduce_value)
        stores = tuple(self._store(s) for s in k.stores)
        if rv is k.reduce_value and all(a is b for a, b in zip(stores, k.stores)):
            return k
        return replace(k, reduce_value=rv, stores=stores)

    def _store(self, s: Store) -> Store:
        index, value = self(s.index), self(s.value)
        if index is s.index and value is s.value:
            return s
        return replace(s, index=index, value=value)

    def __call__(self, e: Expr) -> Expr:
        hit = self.memo.get(id(e))
        if hit is not None and hit[0] is e:
            return hit[1]
        out = self._rewrite(e)
        self.memo[id(e)] = (e, out)
        return out

    def _rewrite(self, e: Expr) -> Expr:
        if isinstance(e, (Var, Sym, Const, Acc)):
            return e
        if isinstance(e, Load):
            index = self(e.index)
            mask = None if e.mask is None else self(e.mask)
            if index is e.index and mask is e.mask:
                return e
            return replace(e, index=index, mask=mask)
        if isinstance(e, Unary):
            x = self(e.x)
            if e.op in self.native:
                return e if x is e.x else Unary(e.op, x)
            dtype = dtype_of(x, self.k.acc_dtype)
            rule = UNARY_RULES.get(e.op)
            if rule is None or dtype not in rule[0]:
                self._fail(e.op, dtype)
            return self(rule[1](x, dtype))
        if isinstance(e, Binary):
            a, b = self(e.a), self(e.b)
            if e.op not in self.native:
                self._fail(e.op, dtype_of(a, self.k.acc_dtype))
            return e if a is e.a and b is e.b else Binary(e.op, a, b)
        if isinstance(e, Where):
            c, a, b = self(e.cond), self(e.a), self(e.b)
            return e if c is e.cond and a is e.a and b is e.b else Where(c, a, b)
        if isinstance(e, Cast):
            x = self(e.x)
            return e if x is e.x else Cast(e.dtype, x)
        if isinstance(e, RandomUniform):
            seed, counter = self(e.seed), self(e.counter)
            if RNG in self.native:
                if seed is e.seed and counter is e.counter:
                    return e
                return RandomUniform(seed, counter, e.dtype)
            return self(random_uniform(RandomUniform(seed, counter, e.dtype)))
        raise DecompositionError(f"{self.k.name}: not a kernel expression: {e!r}")

    def _fail(self, op: str, dtype: DType) -> None:
        raise DecompositionError(f"{self.k.name}: the target does not render {op!r} on "
                                 f"{dtype.name} and it has no decomposition there")
