"""Math routines the LLVM backend emits as small internal functions of the generated module.

LLVM lowers `llvm.exp.*`/`llvm.log.*` to scalar libm calls, which stops the loop vectorizer, so
float32 exp, log, tanh and sigmoid are written here as branch-free IR (range reduction and a
polynomial, selects for the special values) that vectorizes with the loop around it.  Each
routine is an `internal alwaysinline` function, so the generated IR stays readable and the
optimizer inlines it into the loops before vectorizing.

Accuracy (float32, against NumPy): exp and log within 2 ulp, tanh and sigmoid within 4 ulp
(tests/test_codegen_llvm.py checks dense grids).
float64 and the rarely hot functions (erf, pow, sin, cos) call the C library, which is exact
to an ulp.
`pow` is therefore C's pow at every special value ((-inf) ** 0.5 is inf), which is what the
`pow` primitive means and what PyTorch computes for a tensor exponent; PyTorch's shortcuts for
a number exponent (0.5 is sqrt, so nan there) are the frontend's (`neurenix.elementwise.pow`).

`ipow` is integer pow as PyTorch's powi computes it (wrapping): squaring over every bit of the
exponent, unrolled and branch-free so that it vectorizes (a multiply and a select per bit; a
Python-int exponent never gets here, the frontend unrolls it into products).

`rng` is the counter-based hash of `compiler/ops/source.py` (`uniform_bits`), in uint32
wrap-around arithmetic, bit-exact with the NumPy reference.
"""
from __future__ import annotations

from llvmlite import ir

from ..ops.source import HASH_MUL1, HASH_MUL2, SEED_GOLDEN

F32 = ir.FloatType()
F64 = ir.DoubleType()
I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()

LN2_HI = 0.693359375  # ln 2 split so that k * LN2_HI is exact for |k| < 512 (Cody-Waite)
LN2_LO = -2.12194440e-4
LOG2E = 1.4426950408889634
EXP_HI = 88.72284  # above: exp overflows float32
EXP_LO = -103.97208  # below: exp underflows to zero
INV_FACT = (1.0, 1.0, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040)
TANH_CAP = 10.0  # tanh(x) rounds to 1 in float32 beyond this
# 2 atanh(s) = log((1+s)/(1-s)) = 2s + s * (2/3 z + 2/5 z^2 + ...), z = s^2
LOG_SERIES = (2 / 3, 2 / 5, 2 / 7, 2 / 9)

HOW = {  # (kernel op, float type) -> how it is computed
    ("exp", "double"): "intrinsic", ("log", "double"): "intrinsic",
    ("exp", "float"): "routine", ("log", "float"): "routine", ("tanh", "float"): "routine",
    ("sigmoid", "float"): "routine", ("sigmoid", "double"): "inline",
    ("tanh", "double"): "libm", ("erf", "double"): "libm", ("erf", "float"): "libm_wide",
    ("pow", "double"): "libm", ("pow", "float"): "libm",
    ("sin", "double"): "libm", ("sin", "float"): "libm",
    ("cos", "double"): "libm", ("cos", "float"): "libm",
}
"""The math routines by kernel-op name (compiler/kernel/ops.py): an LLVM intrinsic, a
routine defined below, a body emitted in place, or the C library (float32 erf through the
double one)."""
LIBM = {("tanh", F64): "tanh", ("erf", F64): "erf", ("erf", F32): "erf",
        ("pow", F64): "pow", ("pow", F32): "powf", ("sin", F64): "sin", ("sin", F32): "sinf",
        ("cos", F64): "cos", ("cos", F32): "cosf"}
"""(function, float type) -> C library symbol."""

_ARITY = {"llvm.fmuladd": 3, "llvm.fma": 3, "llvm.maximum": 2, "llvm.minimum": 2,
          "llvm.copysign": 2, "llvm.smax": 2, "llvm.smin": 2,
          "llvm.umax": 2, "llvm.umin": 2, "llvm.pow": 2}


def _mangle(t: ir.Type) -> str:
    """The type suffix of an overloaded intrinsic's name (f32, i64, v16f32)."""
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{_mangle(t.element)}"
    return t.intrinsic_name


def i32(value: int) -> ir.Constant:
    """A 32-bit constant from an unsigned value (LLVM prints i32 constants signed)."""
    value &= 0xFFFFFFFF
    return ir.Constant(I32, value - (1 << 32) if value >= 1 << 31 else value)


class MathLib:
    """The per-module library of math routines, each defined on first use."""

    def __init__(self, module: ir.Module) -> None:
        self.module = module
        self._fns: dict[str, ir.Function] = {}

    # ---- entry points ---------------------------------------------------------------------

    def call(self, b: ir.IRBuilder, name: str, ftype: ir.Type, args: list) -> ir.Value:
        """Kernel op `name` ("exp", "log", "tanh", "sigmoid", "erf", "pow") at `ftype`, as
        `HOW` says."""
        how = HOW[(name, str(ftype))]
        if how == "intrinsic":
            return b.call(self.intrinsic(f"llvm.{name}", ftype), args)
        if how == "routine":
            return b.call(self._routine(f"{name}_f32"), args)
        if how == "inline":
            return self._sigmoid_body(b, args[0], ftype)
        if how == "libm_wide":
            wide = b.call(self.libm(LIBM[(name, ftype)], F64, 1), [b.fpext(args[0], F64)])
            return b.fptrunc(wide, F32)
        return b.call(self.libm(LIBM[(name, ftype)], ftype, len(args)), args)

    def rng(self, b: ir.IRBuilder, seed: ir.Value, counter: ir.Value, ftype: ir.Type) -> ir.Value:
        """Uniform [0, 1) of `ftype` from int64 seed and counter, as `_rng_impl` computes it."""
        return b.call(self._routine("rng_f32" if ftype == F32 else "rng_f64"), [seed, counter])

    def ipow(self, b: ir.IRBuilder, base: ir.Value, exponent: ir.Value) -> ir.Value:
        """base ** exponent for integers of one width, as `int_pow` of ops/elementwise.py."""
        return b.call(self._routine(f"ipow_i{base.type.width}"), [base, exponent])

    def intrinsic(self, name: str, *types: ir.Type) -> ir.Function:
        """An LLVM intrinsic overloaded on `types` (the result type first, for conversions)."""
        t = types[0]
        if name == "llvm.abs":
            fnty = ir.FunctionType(t, [t, I1])
        elif name == "llvm.vector.reduce.fadd":
            fnty = ir.FunctionType(t.element, [t.element, t])
        else:
            fnty = ir.FunctionType(t, [t] * _ARITY.get(name, 1))
        full = ".".join([name] + [_mangle(x) for x in types])
        if full in self.module.globals:
            return self.module.globals[full]
        return ir.Function(self.module, fnty, full)

    def libm(self, symbol: str, ftype: ir.Type, nargs: int) -> ir.Function:
        """A C library function `ftype symbol(ftype, ...)`."""
        if symbol in self.module.globals:
            return self.module.globals[symbol]
        return ir.Function(self.module, ir.FunctionType(ftype, [ftype] * nargs), symbol)

    # ---- helpers --------------------------------------------------------------------------

    def _routine(self, name: str) -> ir.Function:
        if name not in self._fns:
            self._fns[name] = getattr(self, f"_define_{name}")()
        return self._fns[name]

    def _function(self, name: str, ret: ir.Type, args: list[ir.Type]):
        fn = ir.Function(self.module, ir.FunctionType(ret, args), f"neurenix_{name}")
        fn.linkage = "internal"
        fn.attributes.add("alwaysinline")
        fn.attributes.add("nounwind")
        return fn, ir.IRBuilder(fn.append_basic_block("entry"))

    def _muladd(self, b: ir.IRBuilder, x, y, z):
        """x * y + z, fused where the target has FMA."""
        return b.call(self.intrinsic("llvm.fmuladd", x.type), [x, y, z])

    def _horner(self, b: ir.IRBuilder, x, coeffs, ftype):
        """coeffs[0] + coeffs[1] x + ... evaluated from the highest degree down."""
        acc = ir.Constant(ftype, coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = self._muladd(b, acc, x, ir.Constant(ftype, c))
        return acc

    @staticmethod
    def _is_nan(b: ir.IRBuilder, x):
        return b.fcmp_unordered("uno", x, x)

    # ---- float32 routines -----------------------------------------------------------------

    def _define_exp_f32(self) -> ir.Function:
        """exp(x) = 2^k * p(r), k = round(x / ln2), r = x - k ln2, p = Taylor degree 7."""
        fn, b = self._function("exp_f32", F32, [F32])
        (x,) = fn.args
        c = lambda v: ir.Constant(F32, v)
        xc = b.select(b.fcmp_ordered(">", x, c(EXP_HI)), c(EXP_HI), x)
        xc = b.select(b.fcmp_ordered("<", xc, c(EXP_LO)), c(EXP_LO), xc)
        k = b.call(self.intrinsic("llvm.floor", F32), [self._muladd(b, xc, c(LOG2E), c(0.5))])
        r = self._muladd(b, k, c(-LN2_HI), xc)
        r = self._muladd(b, k, c(-LN2_LO), r)
        p = self._horner(b, r, INV_FACT, F32)
        # 2^k in two factors so that results down to the smallest subnormal stay exact
        ki = b.fptosi(k, I32)
        k1 = b.ashr(ki, i32(1))
        k2 = b.sub(ki, k1)
        s1 = b.bitcast(b.shl(b.add(k1, i32(127)), i32(23)), F32)
        s2 = b.bitcast(b.shl(b.add(k2, i32(127)), i32(23)), F32)
        y = b.fmul(b.fmul(p, s1), s2)
        y = b.select(b.fcmp_ordered(">", x, c(EXP_HI)), c(float("inf")), y)
        y = b.select(b.fcmp_ordered("<", x, c(EXP_LO)), c(0.0), y)
        b.ret(b.select(self._is_nan(b, x), x, y))
        return fn

    def _define_log_f32(self) -> ir.Function:
        """log(x) = e ln2 + 2 atanh((m-1)/(m+1)), x = m 2^e with m in [sqrt(1/2), sqrt(2))."""
        fn, b = self._function("log_f32", F32, [F32])
        (x,) = fn.args
        c = lambda v: ir.Constant(F32, v)
        subnormal = b.fcmp_ordered("<", x, c(1.17549435e-38))
        xs = b.select(subnormal, b.fmul(x, c(8388608.0)), x)
        bits = b.bitcast(xs, I32)
        e = b.sub(b.and_(b.lshr(bits, i32(23)), i32(0xFF)), i32(127))
        e = b.sub(e, b.select(subnormal, i32(23), i32(0)))
        m = b.bitcast(b.or_(b.and_(bits, i32(0x7FFFFF)), i32(0x3F800000)), F32)
        big = b.fcmp_ordered(">", m, c(1.41421356))
        m = b.select(big, b.fmul(m, c(0.5)), m)
        e = b.add(e, b.zext(big, I32))
        f = b.fsub(m, c(1.0))
        s = b.fdiv(f, b.fadd(f, c(2.0)))
        z = b.fmul(s, s)
        tail = b.fmul(z, self._horner(b, z, LOG_SERIES, F32))
        lg = self._muladd(b, s, tail, b.fadd(s, s))
        ef = b.sitofp(e, F32)
        y = self._muladd(b, ef, c(LN2_HI), self._muladd(b, ef, c(LN2_LO), lg))
        y = b.select(b.fcmp_ordered("==", x, c(0.0)), c(float("-inf")), y)
        y = b.select(b.fcmp_ordered("<", x, c(0.0)), c(float("nan")), y)
        y = b.select(b.fcmp_ordered("==", x, c(float("inf"))), x, y)
        b.ret(b.select(self._is_nan(b, x), x, y))
        return fn

    def _define_tanh_f32(self) -> ir.Function:
        """tanh(x) = sign(x) e / (e + 2), e = expm1(2|x|) (accurate near 0), |x| capped at 10
        where tanh is 1 in float32."""
        fn, b = self._function("tanh_f32", F32, [F32])
        (x,) = fn.args
        c = lambda v: ir.Constant(F32, v)
        a = b.call(self.intrinsic("llvm.fabs", F32), [x])
        y = b.select(b.fcmp_ordered("<", a, c(TANH_CAP)), b.fadd(a, a), c(2 * TANH_CAP))
        e = self._expm1_small(b, y)
        t = b.fdiv(e, b.fadd(e, c(2.0)))
        t = b.call(self.intrinsic("llvm.copysign", F32), [t, x])
        b.ret(b.select(self._is_nan(b, x), x, t))
        return fn

    def _expm1_small(self, b: ir.IRBuilder, y):
        """expm1(y) for 0 <= y <= 2 * TANH_CAP: 2^k (p(r) - 1) + (2^k - 1), where p(r) - 1 is
        evaluated without its constant term, so that small y keep full precision."""
        c = lambda v: ir.Constant(F32, v)
        k = b.call(self.intrinsic("llvm.floor", F32), [self._muladd(b, y, c(LOG2E), c(0.5))])
        r = self._muladd(b, k, c(-LN2_HI), y)
        r = self._muladd(b, k, c(-LN2_LO), r)
        q = b.fmul(r, self._horner(b, r, INV_FACT[1:], F32))
        scale = b.bitcast(b.shl(b.add(b.fptosi(k, I32), i32(127)), i32(23)), F32)
        return self._muladd(b, scale, q, b.fsub(scale, c(1.0)))

    def _define_sigmoid_f32(self) -> ir.Function:
        fn, b = self._function("sigmoid_f32", F32, [F32])
        b.ret(self._sigmoid_body(b, fn.args[0], F32))
        return fn

    def _sigmoid_body(self, b: ir.IRBuilder, x, ftype):
        """1/(1+e^-x) for x >= 0, e^x/(1+e^x) otherwise (e = exp(-|x|) never overflows), with
        one division."""
        one = ir.Constant(ftype, 1.0)
        a = b.call(self.intrinsic("llvm.fabs", ftype), [x])
        e = self.call(b, "exp", ftype, [b.fneg(a)])
        pos = b.fdiv(one, b.fadd(one, e))
        return b.select(b.fcmp_ordered(">=", x, ir.Constant(ftype, 0.0)), pos, b.fmul(e, pos))

    # ---- integer pow ----------------------------------------------------------------------

    def _define_ipow(self, t: ir.IntType) -> ir.Function:
        """PyTorch's powi in wrapping arithmetic, branch-free so that the loop around it still
        vectorizes: squaring over every bit of e below the sign bit (a multiply and a select
        per bit); for e < 0, 1 where a is 1, +-1 by the parity of e where a is -1, else 0."""
        fn, b = self._function(f"ipow_i{t.width}", t, [t, t])
        a, e = fn.args
        zero, one, minus_one = ir.Constant(t, 0), ir.Constant(t, 1), ir.Constant(t, -1)
        negative = b.icmp_signed("<", e, zero)
        bits = b.select(negative, zero, e)
        result, power = one, a
        for k in range(t.width - 1):
            if k:
                power = b.mul(power, power)
            bit = b.icmp_unsigned("!=", b.and_(bits, ir.Constant(t, 1 << k)), zero)
            result = b.select(bit, b.mul(result, power), result)
        sign = b.select(b.trunc(e, I1), minus_one, one)
        small = b.select(b.icmp_signed("==", a, one), one,
                         b.select(b.icmp_signed("==", a, minus_one), sign, zero))
        b.ret(b.select(negative, small, result))
        return fn

    def _define_ipow_i32(self) -> ir.Function:
        return self._define_ipow(I32)

    def _define_ipow_i64(self) -> ir.Function:
        return self._define_ipow(I64)

    # ---- random numbers -------------------------------------------------------------------

    def _define_hash32(self) -> ir.Function:
        """lowbias32: the 32-bit mixer of compiler/ops/source.py."""
        fn, b = self._function("hash32", I32, [I32])
        (x,) = fn.args
        x = b.xor(x, b.lshr(x, i32(16)))
        x = b.mul(x, i32(HASH_MUL1))
        x = b.xor(x, b.lshr(x, i32(15)))
        x = b.mul(x, i32(HASH_MUL2))
        x = b.xor(x, b.lshr(x, i32(16)))
        b.ret(x)
        return fn

    def _define_rng(self, ftype: ir.Type, name: str) -> ir.Function:
        fn, b = self._function(name, ftype, [I64, I64])
        seed, counter = fn.args
        h = self._routine("hash32")
        lo = b.trunc(seed, I32)
        hi = b.trunc(b.lshr(seed, ir.Constant(I64, 32)), I32)
        key = b.call(h, [b.xor(lo, b.call(h, [b.add(hi, i32(SEED_GOLDEN))]))])
        bits = b.call(h, [b.add(b.call(h, [b.xor(b.trunc(counter, I32), key)]), key)])
        u = b.uitofp(b.lshr(bits, i32(8)), ftype)
        b.ret(b.fmul(u, ir.Constant(ftype, 1.0 / (1 << 24))))
        return fn

    def _define_rng_f32(self) -> ir.Function:
        return self._define_rng(F32, "rng_f32")

    def _define_rng_f64(self) -> ir.Function:
        return self._define_rng(F64, "rng_f64")
