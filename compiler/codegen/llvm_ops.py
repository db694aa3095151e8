"""Kernel-IR expressions to LLVM values: the op table (op x dtype class -> emitter) and casts.

The tables are keyed by (kernel op name, dtype class), the names of compiler/kernel/ops.py
(a test checks that every (op, dtype) that module allows has an entry).  Dtype classes: "f"
floating, "i" integer (wrapping like NumPy; an emitter that differs for unsigned integers
reads the signedness from the dtype it is given), "b" bool.  Bools are `i1` in registers and
one byte in memory.  Emitters are branch-free, so loops stay
vectorizable, except the masked load: it loads under the mask (a branch LLVM turns into a
masked vector load, never touching memory where the mask is false) and yields `other`
elsewhere.  Integer division guards its divisor instead of trapping.
"""
from __future__ import annotations

from llvmlite import ir

from ..kernel.ir import (
    Acc,
    Binary,
    Cast,
    Const,
    Expr,
    Kernel,
    Load,
    RandomUniform,
    Sym,
    Unary,
    Var,
    Where,
    dtype_of,
)
from ..types import DType, int64
from .llvm_math import F32, F64, I1, I8, I32, I64, MathLib


class CodegenError(NotImplementedError):
    """A kernel uses an op/dtype combination the LLVM backend does not implement."""


def value_type(dtype: DType) -> ir.Type:
    """The LLVM type of a value of `dtype` in registers."""
    return {"bool": I1, "int32": I32, "int64": I64, "uint32": I32, "float32": F32,
            "float64": F64}[dtype.name]


def memory_type(dtype: DType) -> ir.Type:
    """The LLVM type of an element of `dtype` in memory (bools are bytes)."""
    return I8 if dtype.name == "bool" else value_type(dtype)


def dclass(dtype: DType) -> str:
    """The op-table class of a dtype: "f", "i" or "b"."""
    return "f" if dtype.is_floating else "i" if dtype.is_integer else "b"


def const(dtype: DType, value) -> ir.Constant:
    """A constant of `dtype`."""
    if dtype.is_floating:
        return ir.Constant(value_type(dtype), float(value))
    t = value_type(dtype)
    v = int(value)
    if dtype.is_integer and not dtype.is_signed and v >= 1 << (t.width - 1):
        v -= 1 << t.width  # LLVM reads integer constants signed
    return ir.Constant(t, v)


def cast(b: ir.IRBuilder, lib: MathLib, x: ir.Value, src: DType, dst: DType) -> ir.Value:
    """Convert `x` from `src` to `dst` as the `cast` primitive does (compiler/ops/elementwise.py
    `convert`): float -> integer truncates in range and gives INT_MIN for nan, +-inf and out
    of range, as x86 does (and PyTorch there); int -> int wraps (an unsigned source widens
    with zeros); float -> uint32 converts to int64 so and wraps; float -> bool is x != 0 (so
    nan is true)."""
    if src == dst:
        return x
    s, d, t = dclass(src), dclass(dst), value_type(dst)
    if d == "b":
        if s == "f":
            return b.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))
        return b.icmp_unsigned("!=", x, ir.Constant(x.type, 0))
    if s == "b":
        return b.uitofp(x, t) if d == "f" else b.zext(x, t)
    if s == "i" and d == "i":
        if t.width == x.type.width:
            return x
        if t.width < x.type.width:
            return b.trunc(x, t)
        return b.sext(x, t) if src.is_signed else b.zext(x, t)
    if s == "i":
        return b.sitofp(x, t) if src.is_signed else b.uitofp(x, t)
    if d == "i":
        if not dst.is_signed:
            return b.trunc(_float_to_int(b, lib, x, I64), t)
        return _float_to_int(b, lib, x, t)
    return b.fpext(x, t) if dst.itemsize > src.itemsize else b.fptrunc(x, t)


def _float_to_int(b: ir.IRBuilder, lib: MathLib, x: ir.Value, t: ir.IntType) -> ir.Value:
    """fptosi where |x| < 2**(bits - 1), INT_MIN elsewhere (nan fails the ordered compare):
    a compare and a select around the plain conversion, whose poison out of range the select
    never picks.  At x = -2**(bits - 1) both give INT_MIN."""
    limit = ir.Constant(x.type, float(2 ** (t.width - 1)))
    magnitude = b.call(lib.intrinsic("llvm.fabs", x.type), [x])
    in_range = b.fcmp_ordered("<", magnitude, limit)
    return b.select(in_range, b.fptosi(x, t), ir.Constant(t, -(2 ** (t.width - 1))))


# ---- unary ----------------------------------------------------------------------------------


def _intrinsic1(name: str):
    return lambda em, x, dt: em.b.call(em.lib.intrinsic(name, x.type), [x])


def _libcall(name: str):
    return lambda em, x, dt: em.lib.call(em.b, name, x.type, [x])


def _sign_f(em, x, dt):
    """(x > 0) - (x < 0), as PyTorch: -1, 1, or +0 (for +-0 and for nan)."""
    b = em.b
    one, zero = ir.Constant(x.type, 1.0), ir.Constant(x.type, 0.0)
    neg = b.select(b.fcmp_ordered("<", x, zero), b.fneg(one), zero)
    return b.select(b.fcmp_ordered(">", x, zero), one, neg)


def _sign_i(em, x, dt):
    b = em.b
    zero = ir.Constant(x.type, 0)
    return b.sub(b.zext(b.icmp_signed(">", x, zero), x.type),
                 b.zext(b.icmp_signed("<", x, zero), x.type))


UNARY: dict[tuple[str, str], object] = {
    ("neg", "f"): lambda em, x, dt: em.b.fneg(x),
    ("neg", "i"): lambda em, x, dt: em.b.sub(ir.Constant(x.type, 0), x),
    ("exp", "f"): _libcall("exp"),
    ("log", "f"): _libcall("log"),
    ("tanh", "f"): _libcall("tanh"),
    ("sigmoid", "f"): _libcall("sigmoid"),
    ("erf", "f"): _libcall("erf"),
    ("sin", "f"): _libcall("sin"),
    ("cos", "f"): _libcall("cos"),
    ("sqrt", "f"): _intrinsic1("llvm.sqrt"),
    ("abs", "f"): _intrinsic1("llvm.fabs"),
    ("abs", "i"): lambda em, x, dt: em.b.call(em.lib.intrinsic("llvm.abs", x.type),
                                              [x, ir.Constant(I1, 0)]),
    ("sign", "f"): _sign_f,
    ("sign", "i"): _sign_i,
    ("floor", "f"): _intrinsic1("llvm.floor"),
    ("floor", "i"): lambda em, x, dt: x,
    ("reciprocal", "f"): lambda em, x, dt: em.b.fdiv(ir.Constant(x.type, 1.0), x),
    ("not", "b"): lambda em, x, dt: em.b.xor(x, ir.Constant(I1, 1)),
}

# ---- binary ---------------------------------------------------------------------------------

_CMP = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _cmp_f(op: str):
    if op == "ne":  # NaN != anything is true
        return lambda em, a, c, dt: em.b.fcmp_unordered("!=", a, c)
    return lambda em, a, c, dt: em.b.fcmp_ordered(_CMP[op], a, c)


def _cmp_i(op: str, signed: bool = True):
    def emit(em, a, c, dt):
        if signed and dt.is_signed:
            return em.b.icmp_signed(_CMP[op], a, c)
        return em.b.icmp_unsigned(_CMP[op], a, c)
    return emit


def _arith_i(method: str):
    # index arithmetic never overflows, so it is marked nsw, which lets LLVM see strides
    def emit(em, a, c, dt):
        return getattr(em.b, method)(a, c, flags=("nsw",) if em.in_index else ())
    return emit


def _floor_divmod_i(em, a, c):
    """Python-style floor quotient and remainder; 0 for a zero divisor (as NumPy), no traps."""
    b = em.b
    zero, one = ir.Constant(a.type, 0), ir.Constant(a.type, 1)
    minus_one = ir.Constant(a.type, -1)
    bad = b.or_(b.icmp_signed("==", c, zero), b.icmp_signed("==", c, minus_one))
    safe = b.select(bad, one, c)
    q = b.sdiv(a, safe)
    r = b.srem(a, safe)
    fix = b.and_(b.icmp_signed("!=", r, zero), b.icmp_signed("<", b.xor(r, safe), zero))
    q = b.sub(q, b.zext(fix, a.type))
    r = b.select(fix, b.add(r, safe), r)
    is_m1 = b.icmp_signed("==", c, minus_one)
    q = b.select(is_m1, b.sub(zero, a), b.select(bad, zero, q))
    r = b.select(bad, zero, r)
    return q, r


def _idiv_i(em, a, c, dt):
    shift = _power_of_two(em, c)
    if shift is not None:
        return em.b.ashr(a, ir.Constant(a.type, shift))
    return _floor_divmod_i(em, a, c)[0]


def _mod_i(em, a, c, dt):
    shift = _power_of_two(em, c)
    if shift is not None:
        return em.b.and_(a, ir.Constant(a.type, (1 << shift) - 1))
    return _floor_divmod_i(em, a, c)[1]


def _power_of_two(em, c) -> int | None:
    if isinstance(c, ir.Constant) and isinstance(c.constant, int):
        v = c.constant
        if v > 0 and v & (v - 1) == 0:
            return v.bit_length() - 1
    return None


def _idiv_f(em, a, c, dt):
    """NumPy's float floor_divide: (a - fmod(a, c)) / c, corrected towards floor; a / c for a
    zero divisor."""
    b = em.b
    zero = ir.Constant(a.type, 0.0)
    one = ir.Constant(a.type, 1.0)
    mod = b.frem(a, c)
    div = b.fdiv(b.fsub(a, mod), c)
    differ = b.xor(b.fcmp_ordered("<", mod, zero), b.fcmp_ordered("<", c, zero))
    div = b.select(b.and_(b.fcmp_ordered("!=", mod, zero), differ), b.fsub(div, one), div)
    floor = b.call(em.lib.intrinsic("llvm.floor", a.type), [div])
    half = b.fcmp_ordered(">", b.fsub(div, floor), ir.Constant(a.type, 0.5))
    floor = b.select(half, b.fadd(floor, one), floor)
    quotient = b.fdiv(a, c)
    signed_zero = b.call(em.lib.intrinsic("llvm.copysign", a.type), [zero, quotient])
    floor = b.select(b.fcmp_ordered("==", div, zero), signed_zero, floor)
    return b.select(b.fcmp_ordered("==", c, zero), quotient, floor)


def _mod_f(em, a, c, dt):
    """PyTorch's float remainder: fmod(a, c), plus c when the signs differ (the remainder takes
    the divisor's sign; a zero keeps fmod's, NaN for a zero divisor)."""
    b = em.b
    zero = ir.Constant(a.type, 0.0)
    r = b.frem(a, c)
    differ = b.xor(b.fcmp_ordered("<", r, zero), b.fcmp_ordered("<", c, zero))
    fix = b.and_(b.fcmp_ordered("!=", r, zero), differ)
    return b.select(fix, b.fadd(r, c), r)


def _pow_f(em, a, c, dt):
    if isinstance(c, ir.Constant) and c.constant == 2.0:
        return em.b.fmul(a, a)
    return em.lib.call(em.b, "pow", a.type, [a, c])


def _intrinsic2(name: str):
    return lambda em, a, c, dt: em.b.call(em.lib.intrinsic(name, a.type), [a, c])


def _extreme_i(kind: str):
    """llvm.smax/smin on signed integers, llvm.umax/umin on unsigned ones."""
    def emit(em, a, c, dt):
        name = f"llvm.{'s' if dt.is_signed else 'u'}{kind}"
        return em.b.call(em.lib.intrinsic(name, a.type), [a, c])
    return emit


def _shift(method: str):
    """a shifted by c modulo the bit width (the count's low bits, so every count is
    defined: LLVM's shift by the width or more is poison)."""
    def emit(em, a, c, dt):
        mask = a.type.width - 1
        if isinstance(c, ir.Constant) and isinstance(c.constant, int):
            count = ir.Constant(a.type, c.constant & mask)
        else:
            count = em.b.and_(c, ir.Constant(a.type, mask))
        if method == "shr":
            return (em.b.ashr if dt.is_signed else em.b.lshr)(a, count)
        return em.b.shl(a, count)
    return emit


def _extreme_f(pred: str):
    """NumPy's maximum (pred ">") or minimum ("<"): a nan in either operand gives nan, and a
    tie gives the second operand (so maximum(-0.0, 0.0) is 0.0, maximum(0.0, -0.0) is -0.0),
    as x86's maxps/minps (also PyTorch's vectorized kernel).  `a pred c ? a : c` is the
    instruction itself; a nan `a` is passed on by one more select."""
    def emit(em, a, c, dt):
        b = em.b
        pick = b.select(b.fcmp_ordered(pred, a, c), a, c)
        return b.select(b.fcmp_unordered("uno", a, a), a, pick)
    return emit


def _pow_i(em, a, c, dt):
    return em.lib.ipow(em.b, a, c)


BINARY: dict[tuple[str, str], object] = {
    ("add", "f"): lambda em, a, c, dt: em.b.fadd(a, c),
    ("sub", "f"): lambda em, a, c, dt: em.b.fsub(a, c),
    ("mul", "f"): lambda em, a, c, dt: em.b.fmul(a, c),
    ("div", "f"): lambda em, a, c, dt: em.b.fdiv(a, c),
    ("pow", "f"): _pow_f,
    ("max", "f"): _extreme_f(">"),
    ("min", "f"): _extreme_f("<"),
    ("idiv", "f"): _idiv_f,
    ("mod", "f"): _mod_f,
    ("add", "i"): _arith_i("add"),
    ("sub", "i"): _arith_i("sub"),
    ("mul", "i"): _arith_i("mul"),
    ("pow", "i"): _pow_i,
    ("max", "i"): _extreme_i("max"),
    ("min", "i"): _extreme_i("min"),
    ("idiv", "i"): _idiv_i,
    ("mod", "i"): _mod_i,
    ("max", "b"): lambda em, a, c, dt: em.b.or_(a, c),
    ("min", "b"): lambda em, a, c, dt: em.b.and_(a, c),
    ("and", "b"): lambda em, a, c, dt: em.b.and_(a, c),
    ("or", "b"): lambda em, a, c, dt: em.b.or_(a, c),
    ("bitand", "i"): lambda em, a, c, dt: em.b.and_(a, c),
    ("bitor", "i"): lambda em, a, c, dt: em.b.or_(a, c),
    ("xor", "i"): lambda em, a, c, dt: em.b.xor(a, c),
    ("shl", "i"): _shift("shl"),
    ("shr", "i"): _shift("shr"),
}
for _op in _CMP:
    BINARY[(_op, "f")] = _cmp_f(_op)
    BINARY[(_op, "i")] = _cmp_i(_op)
    BINARY[(_op, "b")] = _cmp_i(_op, signed=False)


# ---- the emitter ----------------------------------------------------------------------------


class ExprEmitter:
    """Emits kernel expressions at one point of a loop nest.

    `buffers` maps a buffer name to (pointer, dtype, size); `vars` maps loop axes to their
    current i64 values; `acc` is the finished reduction, if any.  A shared subexpression
    (lowering shares equal subtrees as one object) is emitted once: the cache is keyed by
    identity, since hashing frozen dataclasses walks the whole tree every time.
    """

    def __init__(self, b: ir.IRBuilder, lib: MathLib, buffers: dict, vars: dict[int, ir.Value],
                 acc: ir.Value | None = None, acc_dtype: DType | None = None) -> None:
        self.b = b
        self.lib = lib
        self.buffers = buffers
        self.vars = vars
        self.acc = acc
        self.acc_dtype = acc_dtype
        self.in_index = False
        self._memo: dict[tuple[int, bool], tuple[Expr, ir.Value]] = {}

    def dtype(self, e: Expr) -> DType:
        """The dtype `e` evaluates to here."""
        return dtype_of(e, self.acc_dtype)

    def emit(self, e: Expr) -> ir.Value:
        """The LLVM value of `e` at this point (emitted on first use)."""
        key = (id(e), self.in_index)
        if key not in self._memo:
            self._memo[key] = (e, self._emit(e))  # holding `e` keeps its id unique
        return self._memo[key][1]

    def preset(self, e: Expr, value: ir.Value) -> None:
        """Use `value` for `e` (an index subexpression computed ahead, e.g. hoisted out of a
        loop) wherever it occurs, in an index or not."""
        for in_index in (False, True):
            self._memo[(id(e), in_index)] = (e, value)

    def index(self, e: Expr) -> ir.Value:
        """An element index (i64), with the arithmetic marked as non-wrapping."""
        outer = self.in_index
        self.in_index = True
        try:
            v = self.emit(e)
        finally:
            self.in_index = outer
        return v if v.type == I64 else self.b.sext(v, I64)

    def element_pointer(self, name: str, index: ir.Value) -> ir.Value:
        """The address of element `index` of buffer `name`."""
        ptr, dtype, _ = self.buffers[name]
        return self.b.gep(ptr, [index], inbounds=True, source_etype=memory_type(dtype))

    def load(self, name: str, index: ir.Value) -> ir.Value:
        """buffer[index] as a register value (bools widened from bytes)."""
        _, dtype, _ = self.buffers[name]
        v = self.b.load(self.element_pointer(name, index), typ=memory_type(dtype),
                        align=dtype.itemsize)
        if dtype.name == "bool":
            return self.b.icmp_unsigned("!=", v, ir.Constant(I8, 0))
        return v

    def store(self, name: str, index: ir.Value, value: ir.Value) -> None:
        """buffer[index] = value (bools stored as bytes)."""
        _, dtype, _ = self.buffers[name]
        if dtype.name == "bool":
            value = self.b.zext(value, I8)
        self.b.store(value, self.element_pointer(name, index), align=dtype.itemsize)

    def _emit(self, e: Expr) -> ir.Value:
        b = self.b
        if isinstance(e, Var):
            return self.vars[e.axis]
        if isinstance(e, Sym):  # loaded in the function's entry block (llvm_loops.py)
            symbols = getattr(b.function, "neurenix_symbols", {})
            if e.name not in symbols:
                raise CodegenError(f"llvm codegen: the size {e.name} is not a parameter here")
            return symbols[e.name]
        if isinstance(e, Const):
            return const(e.dtype, e.value)
        if isinstance(e, Acc):
            if self.acc is None:
                raise CodegenError("llvm codegen: Acc() used outside a reduction's stores")
            return self.acc
        if isinstance(e, Load):
            return self._load(e)
        if isinstance(e, Cast):
            return cast(b, self.lib, self.emit(e.x), self.dtype(e.x), e.dtype)
        if isinstance(e, Where):
            return b.select(self.emit(e.cond), self.emit(e.a), self.emit(e.b))
        if isinstance(e, RandomUniform):
            seed = cast(b, self.lib, self.emit(e.seed), self.dtype(e.seed), int64)
            counter = cast(b, self.lib, self.emit(e.counter), self.dtype(e.counter), int64)
            return self.lib.rng(b, seed, counter, value_type(e.dtype))
        if isinstance(e, Unary):
            dt = self.dtype(e.x)
            fn = UNARY.get((e.op, dclass(dt)))
            if fn is None:
                raise CodegenError(f"llvm codegen: no emitter for unary {e.op!r} on {dt.name}")
            return fn(self, self.emit(e.x), dt)
        if isinstance(e, Binary):
            dt = self.dtype(e.a)
            fn = BINARY.get((e.op, dclass(dt)))
            if fn is None:
                raise CodegenError(f"llvm codegen: no emitter for binary {e.op!r} on {dt.name}")
            return fn(self, self.emit(e.a), self.emit(e.b), dt)
        raise CodegenError(f"llvm codegen: not a kernel expression: {e!r}")

    def _load(self, e: Load) -> ir.Value:
        b = self.b
        _, dtype, size = self.buffers[e.buffer]
        other = const(dtype, e.other)
        if e.mask is None:
            return self.load(e.buffer, self.index(e.index))
        if isinstance(size, int) and size == 0:
            return other
        # The index is computed unconditionally (it is pure), the load happens only under the
        # mask.  LLVM if-converts this into a masked vector load of contiguous elements; a
        # select on the index would keep the load unconditional but turn it into a gather.
        mask = self.emit(e.mask)
        index = self.index(e.index)
        before = b.block
        with b.if_then(mask):
            inside = b.block
            value = self.load(e.buffer, index)
        merged = b.phi(value.type)
        merged.add_incoming(value, inside)
        merged.add_incoming(other, before)
        return merged



def combine_sum(b: ir.IRBuilder, acc: ir.Value, v: ir.Value, dtype: DType) -> ir.Value:
    """acc + v for a sum reduction or an accumulating store (float adds may be reassociated,
    which lets LLVM vectorize sum reductions)."""
    if dclass(dtype) == "f":
        return b.fadd(acc, v, flags=("reassoc", "nsz"))
    if dclass(dtype) == "b":
        return b.or_(acc, v)
    return b.add(acc, v)


def emit_stores(b: ir.IRBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
                vars: dict[int, ir.Value], acc: ir.Value | None) -> None:
    """The kernel's stores at one domain point, `acc` being its finished reduction.  Every
    value is computed before the first store (so every load at the point precedes every
    store there: an output may take an input's memory, `memory.donations`), except in a
    kernel with accumulating stores, which read what they write."""
    em = ExprEmitter(b, lib, buffers, vars, acc, kernel.acc_dtype)
    ready = []
    for store in kernel.stores:
        index = em.index(store.index)
        dtype = buffers[store.buffer][1]
        value = cast(b, lib, em.emit(store.value), em.dtype(store.value), dtype)
        if store.accumulate:
            value = combine_sum(b, em.load(store.buffer, index), value, dtype)
            em.store(store.buffer, index, value)
        else:
            ready.append((store.buffer, index, value))
    for buffer, index, value in ready:
        em.store(buffer, index, value)
