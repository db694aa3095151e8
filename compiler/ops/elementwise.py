"""Elementwise primitives: unary math, binary arithmetic and comparison, `where`, `cast`.

Binary primitives take operands of one shape and one dtype: broadcasting and type promotion are
explicit `expand`/`cast` nodes inserted by the frontend, so these rules never unbroadcast.
"""
from __future__ import annotations

import math

import numpy as np

from ..types import DType, TensorType, bool_, dtype_from_name
from .registry import ELEMENTWISE, OpError, non_differentiable, per_input, register


def _float_unary(name: str):
    def rule(x: TensorType) -> TensorType:
        if not x.dtype.is_floating:
            raise OpError(f"{name}: expected a floating-point tensor, got {x}")
        return x
    return rule


def _any_unary(name: str):
    def rule(x: TensorType) -> TensorType:
        if x.dtype == bool_:
            raise OpError(f"{name}: expected a numeric tensor, got {x}")
        return x
    return rule


def _same(name: str, a: TensorType, b: TensorType) -> None:
    if a.shape != b.shape or a.dtype != b.dtype:
        raise OpError(f"{name}: expected operands of one shape and dtype, got {a} and {b}")


def _arith(name: str):
    def rule(a: TensorType, b: TensorType) -> TensorType:
        _same(name, a, b)
        if a.dtype == bool_:
            raise OpError(f"{name}: expected numeric operands, got {a} and {b}")
        return a
    return rule


def _float_binary(name: str):
    def rule(a: TensorType, b: TensorType) -> TensorType:
        _same(name, a, b)
        if not a.dtype.is_floating:
            raise OpError(f"{name}: expected floating-point operands, got {a} and {b}")
        return a
    return rule


def _compare(name: str):
    def rule(a: TensorType, b: TensorType) -> TensorType:
        _same(name, a, b)
        return TensorType(a.shape, bool_)
    return rule


def _logical(name: str):
    def rule(a: TensorType, b: TensorType) -> TensorType:
        _same(name, a, b)
        if a.dtype != bool_:
            raise OpError(f"{name}: expected bool operands, got {a} and {b}")
        return a
    return rule


# ---- unary ----------------------------------------------------------------------------------

register("neg", ELEMENTWISE, 1, _any_unary("neg"), np.negative,
         per_input(lambda b, g, out, x: b.neg(g)), "-x")
register("exp", ELEMENTWISE, 1, _float_unary("exp"), np.exp,
         per_input(lambda b, g, out, x: b.mul(g, out)), "e**x; d/dx = out")
register("log", ELEMENTWISE, 1, _float_unary("log"), np.log,
         per_input(lambda b, g, out, x: b.div(g, x)), "natural log; d/dx = 1/x")
register("sqrt", ELEMENTWISE, 1, _float_unary("sqrt"), np.sqrt,
         per_input(lambda b, g, out, x: b.div(g, b.mul(out, b.full_like(out, 2.0)))),
         "square root; d/dx = 1/(2 sqrt x)")
register("tanh", ELEMENTWISE, 1, _float_unary("tanh"), np.tanh,
         per_input(lambda b, g, out, x: b.mul(g, b.sub(b.full_like(out, 1.0), b.mul(out, out)))),
         "hyperbolic tangent; d/dx = 1 - out**2")

register("sin", ELEMENTWISE, 1, _float_unary("sin"), np.sin,
         per_input(lambda b, g, out, x: b.mul(g, b.cos(x))), "sine; d/dx = cos x")
register("cos", ELEMENTWISE, 1, _float_unary("cos"), np.cos,
         per_input(lambda b, g, out, x: b.neg(b.mul(g, b.sin(x)))), "cosine; d/dx = -sin x")


def _sigmoid(x):
    # Split by sign so neither branch overflows: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) otherwise.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


register("sigmoid", ELEMENTWISE, 1, _float_unary("sigmoid"), _sigmoid,
         per_input(lambda b, g, out, x:
                   b.mul(g, b.mul(out, b.sub(b.full_like(out, 1.0), out)))),
         "logistic function; d/dx = out (1 - out)")


_ERF = np.frompyfunc(math.erf, 1, 1)


def _erf(x):
    # math.erf is exact to double precision, which the finite-difference checks need
    return np.asarray(_ERF(x), dtype=x.dtype)


def _erf_vjp(b, g, out, x):
    # d/dx erf(x) = 2/sqrt(pi) * exp(-x^2)
    scale = b.full_like(x, 2.0 / math.sqrt(math.pi))
    return b.mul(g, b.mul(scale, b.exp(b.neg(b.mul(x, x)))))


register("erf", ELEMENTWISE, 1, _float_unary("erf"), _erf, per_input(_erf_vjp),
         "the error function; d/dx = 2/sqrt(pi) exp(-x**2)")


def _abs_vjp(b, g, out, x):
    """g * sgn(x), PyTorch's rule, with sgn(x) = 1 above 0, -1 below, and 0 at +-0 and at nan:
    the gradient at nan is 0 unless g is not finite."""
    zero = b.zeros_like(x)
    sgn = b.where(b.gt(x, zero), b.full_like(x, 1.0),
                  b.where(b.lt(x, zero), b.full_like(x, -1.0), zero))
    return b.mul(g, sgn)


register("abs", ELEMENTWISE, 1, _any_unary("abs"), np.abs, per_input(_abs_vjp),
         "|x|; d/dx = sign(x), 0 at 0 and at nan")


def sign_impl(x):
    """(x > 0) - (x < 0), as PyTorch computes it: 0 (never -0.0) at +-0 and at nan, where
    NumPy's sign gives -0.0 and nan."""
    return np.subtract(x > 0, x < 0, dtype=x.dtype)


register("sign", ELEMENTWISE, 1, _any_unary("sign"), sign_impl,
         per_input(lambda b, g, out, x: b.zeros_like(x)),
         "-1, 0 or 1 (0 at +-0 and at nan, as PyTorch); zero gradient")
register("floor", ELEMENTWISE, 1, _any_unary("floor"), np.floor,
         per_input(lambda b, g, out, x: b.zeros_like(x)), "round down; zero gradient")
register("reciprocal", ELEMENTWISE, 1, _float_unary("reciprocal"), np.reciprocal,
         per_input(lambda b, g, out, x: b.neg(b.mul(g, b.mul(out, out)))),
         "1/x; d/dx = -out**2")


def _not_rule(x: TensorType) -> TensorType:
    if x.dtype != bool_:
        raise OpError(f"logical_not: expected a bool tensor, got {x}")
    return x


register("logical_not", ELEMENTWISE, 1, _not_rule, np.logical_not, non_differentiable)


def _cast_rule(x: TensorType, *, dtype: str) -> TensorType:
    return TensorType(x.shape, dtype_from_name(dtype))


def convert(x: np.ndarray, np_type) -> np.ndarray:
    """x.astype(np_type), a float -> integer conversion defined everywhere as x86 (and PyTorch
    there) defines it: truncation toward zero in range, and the target's INT_MIN (the "integer
    indefinite") for nan, +-inf and values out of range, which NumPy leaves to the platform
    (and warns about).  |x| < 2**(bits - 1) is the range: -2**(bits - 1) itself is INT_MIN
    either way.  Every backend converts so (llvm_ops.cast)."""
    to = np.dtype(np_type)
    if x.dtype.kind != "f" or to.kind != "i":
        return x.astype(to)
    ok = np.abs(x) < float(2 ** (8 * to.itemsize - 1))
    with np.errstate(invalid="ignore"):
        out = x.astype(to)
    if ok.all():
        return out
    return np.where(ok, out, to.type(np.iinfo(to).min))


def _cast_impl(x, *, dtype: str):
    return convert(x, dtype_from_name(dtype).np_type)


def _cast_vjp(b, g, out, x, *, dtype: str):
    src: DType = b.type_of(x).dtype
    if not (src.is_floating and dtype_from_name(dtype).is_floating):
        return None
    return b.cast(g, dtype=src.name)


register("cast", ELEMENTWISE, 1, _cast_rule, _cast_impl, per_input(_cast_vjp),
         "convert to attrs.dtype (float -> integer as on x86, see `convert`); gradient flows "
         "between floating types only")

# ---- binary ---------------------------------------------------------------------------------

register("add", ELEMENTWISE, 2, _arith("add"), np.add,
         per_input(lambda b, g, out, x, y: g, lambda b, g, out, x, y: g), "x + y")
register("sub", ELEMENTWISE, 2, _arith("sub"), np.subtract,
         per_input(lambda b, g, out, x, y: g, lambda b, g, out, x, y: b.neg(g)), "x - y")
register("mul", ELEMENTWISE, 2, _arith("mul"), np.multiply,
         per_input(lambda b, g, out, x, y: b.mul(g, y), lambda b, g, out, x, y: b.mul(g, x)),
         "x * y")
register("div", ELEMENTWISE, 2, _float_binary("div"), np.divide,
         per_input(lambda b, g, out, x, y: b.div(g, y),
                   lambda b, g, out, x, y: b.neg(b.div(b.mul(g, out), y))),
         "x / y (true division)")


def _pow_dbase(b, g, out, x, y):
    # y * x**(y-1), written so that x == 0 with y == 0 gives 0 rather than nan (as PyTorch does)
    if not b.type_of(x).dtype.is_floating:
        return None
    ym1 = b.sub(y, b.full_like(y, 1.0))
    d = b.mul(y, b.pow(x, ym1))
    return b.mul(g, b.where(b.eq(y, b.zeros_like(y)), b.zeros_like(d), d))


def _pow_dexp(b, g, out, x, y):
    # out * log(x), masked to 0 where x == 0 and y >= 0 (the limit PyTorch uses)
    if not b.type_of(x).dtype.is_floating:
        return None
    d = b.mul(out, b.log(x))
    zero_base = b.logical_and(b.eq(x, b.zeros_like(x)), b.ge(y, b.zeros_like(y)))
    return b.mul(g, b.where(zero_base, b.zeros_like(d), d))


def int_pow(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x ** y for integers, exactly as PyTorch's powi: squaring over the bits of y in wrapping
    arithmetic (so 3000000 ** 3 wraps); for y < 0, 1 where x is 1, +-1 (by the parity of y)
    where x is -1, else 0 (0 ** -1 is 0, no error)."""
    x, y = np.broadcast_arrays(x, y)
    negative = y < 0
    e = np.where(negative, np.zeros_like(y), y)
    out = np.ones_like(x)
    base = x
    with np.errstate(over="ignore"):
        while np.any(e):  # at most the bit width of y rounds
            out = np.where((e & 1) == 1, out * base, out)
            base = base * base
            e = e >> 1
    odd = (y & 1) == 1
    minus_one = np.where(odd, np.full_like(x, -1), np.ones_like(x))
    at_negative = np.where(x == 1, np.ones_like(x),
                           np.where(x == -1, minus_one, np.zeros_like(x)))
    return np.where(negative, at_negative, out).astype(x.dtype, copy=False)


def pow_impl(x, y):
    """C's pow(x, y) for floats, whatever the memory layout: NumPy computes a stride-0
    exponent of 0.5 as sqrt(x), which differs at x = -inf (nan, not inf) and x = -0.0 (-0.0,
    not +0.0).  Integers: `int_pow`."""
    if x.dtype.kind != "f":
        return int_pow(x, y)
    out = np.power(x, y)
    half = y == 0.5
    if np.any(half):
        out = np.where(half & (x == 0), np.zeros_like(out), out)
        out = np.where(half & (x == -np.inf), np.full_like(out, np.inf), out)
    return out


register("pow", ELEMENTWISE, 2, _arith("pow"), pow_impl,
         per_input(_pow_dbase, _pow_dexp),
         "x ** y: C's pow for floats (also at the special values); exact and wrapping for "
         "integers, as PyTorch (see int_pow)")


def _safe_divisor(y):
    """The divisor integer division uses: 1 where `y` is 0 or -1, whose results are set
    apart (no trap, no overflow warning)."""
    return np.where((y == 0) | (y == -1), np.ones_like(y), y)


def floordiv_impl(x, y):
    """Floor division.  Integers: exact, 0 for a zero divisor (the frontend raises first),
    x // -1 == -x wrapping (INT_MIN // -1 == INT_MIN, as PyTorch).  Floats: NumPy's (and
    PyTorch's) floor of the exact quotient, x / y for a zero divisor."""
    if x.dtype.kind == "f":
        return np.floor_divide(x, y)
    q = np.floor_divide(x, _safe_divisor(y))
    q = np.where(y == -1, np.negative(x), q)
    return np.where(y == 0, np.zeros_like(q), q).astype(x.dtype, copy=False)


def remainder_impl(x, y):
    """x - floor(x / y) * y, exactly, with the divisor's sign (Python and PyTorch).
    Integers: 0 for a zero divisor (the frontend raises first).  Floats: PyTorch's
    fmod(x, y) + y when the signs differ (a zero keeps fmod's sign, nan for y == 0)."""
    if x.dtype.kind == "f":
        r = np.fmod(x, y)
        fix = (r != 0) & ((r < 0) != (y < 0))
        return np.where(fix, r + y, r).astype(x.dtype, copy=False)
    r = np.remainder(x, _safe_divisor(y))
    return np.where((y == 0) | (y == -1), np.zeros_like(r), r).astype(x.dtype, copy=False)


def _floordiv_vjp(b, g, out, x, y):
    # piecewise constant: a zero gradient for floats (as floor has), none for integers
    return b.zeros_like(x) if b.type_of(x).dtype.is_floating else None


def _remainder_dy(b, g, out, x, y):
    # d/dy (x - floor(x / y) * y) = -floor(x / y), as PyTorch
    if not b.type_of(x).dtype.is_floating:
        return None
    return b.neg(b.mul(g, b.floordiv(x, y)))


def _remainder_dx(b, g, out, x, y):
    return g if b.type_of(x).dtype.is_floating else None


register("floordiv", ELEMENTWISE, 2, _arith("floordiv"), floordiv_impl,
         per_input(_floordiv_vjp, _floordiv_vjp),
         "floor(x / y); exact for integers; zero gradient")
register("remainder", ELEMENTWISE, 2, _arith("remainder"), remainder_impl,
         per_input(_remainder_dx, _remainder_dy),
         "x - floor(x / y) * y, with the divisor's sign; exact for integers")


def _max_vjp(loses):
    """PyTorch's rule: where(x == y, g / 2, g), set to 0 where this operand loses (is smaller
    for maximum, larger for minimum).  So a tie splits the gradient in half, and where either
    operand is nan (no comparison holds) both get the whole of it."""
    def rule(b, g, out, x, y, first: bool):
        mine, other = (x, y) if first else (y, x)
        half = b.mul(g, b.full_like(g, 0.5))
        return b.where(loses(b, mine, other), b.zeros_like(g),
                       b.where(b.eq(mine, other), half, g))
    return rule


_max = _max_vjp(lambda b, m, o: b.lt(m, o))
_min = _max_vjp(lambda b, m, o: b.gt(m, o))
register("maximum", ELEMENTWISE, 2, _arith("maximum"), np.maximum,
         per_input(lambda b, g, out, x, y: _max(b, g, out, x, y, True),
                   lambda b, g, out, x, y: _max(b, g, out, x, y, False)),
         "elementwise max (nan if either is; the second operand of a tie, so of -0.0 and 0.0, "
         "as NumPy); the gradient as PyTorch's, see _max_vjp")
register("minimum", ELEMENTWISE, 2, _arith("minimum"), np.minimum,
         per_input(lambda b, g, out, x, y: _min(b, g, out, x, y, True),
                   lambda b, g, out, x, y: _min(b, g, out, x, y, False)),
         "elementwise min (nan if either is; the second operand of a tie, as NumPy); the "
         "gradient as PyTorch's, see _max_vjp")

for _name, _fn in (("eq", np.equal), ("ne", np.not_equal), ("lt", np.less),
                   ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal)):
    register(_name, ELEMENTWISE, 2, _compare(_name), _fn, non_differentiable, f"compare: {_name}")
register("logical_and", ELEMENTWISE, 2, _logical("logical_and"), np.logical_and,
         non_differentiable)
register("logical_or", ELEMENTWISE, 2, _logical("logical_or"), np.logical_or, non_differentiable)

# ---- ternary --------------------------------------------------------------------------------


def _where_rule(c: TensorType, x: TensorType, y: TensorType) -> TensorType:
    if c.dtype != bool_ or c.shape != x.shape:
        raise OpError(f"where: expected a bool condition of the operands' shape, got {c} for {x}")
    _same("where", x, y)
    return x


_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def select(c: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """np.where(c, x, y), bit for bit, without a branch per element: NumPy's where runs at about
    4 ns per element on a random mask (a mispredicted branch each), a masked bitwise blend at
    under 1.  Operands broadcast as np.where's."""
    c, x, y = np.asarray(c), np.asarray(x), np.asarray(y)
    unsigned = _UNSIGNED.get(x.dtype.itemsize)
    if c.dtype != np.bool_ or x.dtype != y.dtype or unsigned is None or c.size < 256 \
            or x.dtype.kind not in "biuf":
        return np.where(c, x, y)
    shape = np.broadcast_shapes(c.shape, x.shape, y.shape)
    mask = np.broadcast_to(c, shape).astype(unsigned)
    np.negative(mask, out=mask)  # every bit set where c
    out = np.bitwise_and(x.view(unsigned), mask)
    np.invert(mask, out=mask)
    np.bitwise_and(y.view(unsigned), mask, out=mask)
    np.bitwise_or(out, mask, out=out)
    return out.view(x.dtype)


register("where", ELEMENTWISE, 3, _where_rule, select,
         per_input(None,
                   lambda b, g, out, c, x, y: b.where(c, g, b.zeros_like(g)),
                   lambda b, g, out, c, x, y: b.where(c, b.zeros_like(g), g)),
         "c ? x : y; the gradient is routed by c")

register("stop_gradient", ELEMENTWISE, 1, lambda x: x, lambda x: x, non_differentiable,
         "identity whose gradient is zero (detach)")
