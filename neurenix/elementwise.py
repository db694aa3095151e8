"""Elementwise tensor functions: arithmetic with broadcasting and type promotion, math, where.

Binary primitives need operands of one shape and dtype, so the promotion (PyTorch's rules:
a Python scalar never widens a tensor of its own category) and the broadcast are made explicit
here as `cast` and `expand` nodes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.symbolic import Dim
from neurenix.compiler.types import DType, as_shape, bool_, float32, int64, promote

from . import eager_kernels
from .checks import check_values
from .dispatch import EAGER, apply, wrap
from .eager_kernels import activation as activation_kernels
from .state import no_grad, read_trace
from .tensor import Tensor, is_scalar

Operand = Tensor | float | int | bool


def _scalar_dtype(value: Any) -> DType:
    if isinstance(value, (bool, np.bool_)):
        return bool_
    if isinstance(value, (int, np.integer, Dim)):
        return int64
    if isinstance(value, (float, np.floating)):
        return float32
    raise TypeError(f"expected a Tensor or a real number, got {type(value).__name__}")


def result_dtype(*operands: Operand) -> DType:
    """The dtype of combining tensors and Python scalars, by PyTorch's three tiers: tensors with
    dimensions, then 0-d tensors, then Python scalars.  A lower tier only lifts the category
    (a 0-d tensor to its own dtype, a scalar to float32 or int64), never the width within it."""
    if len(operands) == 2:  # the common cases first: two tensors of one dtype, tensor and number
        a, b = operands
        if isinstance(a, Tensor):
            if isinstance(b, Tensor):
                if a._dtype is b._dtype:
                    return a._dtype
            elif type(b) in _SCALAR_CATEGORY:
                return _with_scalar(a._dtype, _SCALAR_CATEGORY[type(b)])
        elif isinstance(b, Tensor) and type(a) in _SCALAR_CATEGORY:
            return _with_scalar(b._dtype, _SCALAR_CATEGORY[type(a)])
    dt: DType | None = None
    for zero_dim in (False, True):
        tier: DType | None = None
        for o in operands:
            if isinstance(o, Tensor) and (o.ndim == 0) == zero_dim:
                tier = o.dtype if tier is None else promote(tier, o.dtype)
        if tier is not None and (dt is None or tier.category > dt.category):
            dt = tier
    if dt is None:
        dt = bool_
    for o in operands:
        if not isinstance(o, Tensor):
            sd = _scalar_dtype(o)
            if sd.category > dt.category:
                dt = float32 if sd.is_floating else int64
    return dt


_SCALAR_CATEGORY = {bool: 0, int: 1, float: 2}
"""The category of each Python scalar type (`_scalar_dtype`'s), for the fast paths."""
_REFS = {name: REGISTRY[name].impl for name in ("le", "lt", "where")}
"""NumPy references eager `relu` runs directly (its masks need no gradient)."""


def _with_scalar(dt: DType, category: int) -> DType:
    """`result_dtype` of one tensor of dtype `dt` and a Python scalar of `category`."""
    if category > dt.category:
        return float32 if category == 2 else int64
    return dt


def broadcast_shapes(*shapes: tuple[int, ...], op: str = "broadcast") -> tuple[int, ...]:
    """NumPy's broadcast of several shapes, or a ValueError naming the op and the shapes."""
    if shapes and all(len(s) == len(shapes[0]) and s == shapes[0] for s in shapes):
        return as_shape(shapes[0])
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        dims = {s[len(s) - ndim + i] for s in shapes if len(s) - ndim + i >= 0} - {1}
        if len(dims) > 1 and any(isinstance(d, Dim) for d in dims):
            dims = _equal_sizes(dims)
        if len(dims) > 1:
            raise ValueError(f"{op}: shapes {' and '.join(str(tuple(s)) for s in shapes)} "
                             f"cannot be broadcast together")
        out.append(dims.pop() if dims else 1)
    return as_shape(out)


def _equal_sizes(dims: set) -> set:
    """Sizes of one broadcast axis, some dynamic, as one size when they are equal: a dynamic
    size equal to another size records that guard (the program then holds for calls where
    it is so), and an int among them is kept.  Unequal sizes come back as they are."""
    ints = [d for d in dims if not isinstance(d, Dim)]
    first = ints[0] if ints else next(iter(dims))
    return {first} if all(d is first or d == first for d in dims) else dims


def as_tensor(value: Operand, dtype: DType) -> Tensor:
    """A tensor of `dtype` from a tensor (cast when needed) or a Python scalar (0-d)."""
    if isinstance(value, Tensor):
        return value if value._dtype is dtype or value._dtype == dtype else cast(value, dtype)
    if isinstance(value, Dim):  # a dynamic size in a trace: a number the program computes
        return apply("full", shape=(), value=value, dtype=dtype.name)
    if not is_scalar(value):
        raise TypeError(f"expected a Tensor or a real number, got {type(value).__name__}")
    return Tensor._wrap(np.asarray(value, dtype=dtype.np_type), dtype)


def cast(x: Tensor, dtype: DType) -> Tensor:
    """x converted to dtype (a new tensor; gradients flow between floating types)."""
    return apply("cast", x, dtype=dtype.name)


def prepare(op: str, *operands: Operand, dtype: DType | None = None) -> list[Tensor]:
    """Operands promoted to one dtype (or `dtype`) and broadcast to one shape."""
    dtype = result_dtype(*operands) if dtype is None else dtype
    tensors = [as_tensor(o, dtype) for o in operands]
    shapes = [t.shape for t in tensors]
    if all(s == shapes[0] for s in shapes):
        return tensors
    shape = broadcast_shapes(*shapes, op=op)
    eager = read_trace() is None
    return [_spread(t, shape) if eager and not isinstance(o, Tensor)
            else EAGER.broadcast_to(t, shape) for o, t in zip(operands, tensors)]


def _spread(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """t, a 0-d host tensor `as_tensor` made of a Python scalar, broadcast to `shape` as
    `EAGER.broadcast_to` would (a read-only view repeating the value) without dispatching its
    `reshape` and `expand`: neither needs a gradient or leaves a view to track."""
    if t.shape == shape:
        return t
    return wrap(_repeated(t._data, shape), t._dtype)


def _repeated(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """0-d `value` repeated to `shape`: a read-only view with zero strides."""
    array = np.ndarray(shape, value.dtype, buffer=value, strides=(0,) * len(shape))
    array.flags.writeable = False
    return array


_NUMBERS: dict[tuple, np.ndarray] = {}
"""`_number`'s read-only broadcast arrays, per (dtype name, Python type, value, shape)."""


def _number(value: bool | int | float, dtype: DType, shape: tuple[int, ...]) -> Tensor:
    """`_spread(as_tensor(value, dtype), shape)` for a Python bool, int or float.  The
    read-only arrays are kept for values whose equality is identity of bits (all but float
    zeros, -0.0 == 0.0, and nans)."""
    if not shape:
        return as_tensor(value, dtype)
    kind = type(value)
    exact = kind is not float or (value != 0 and value == value)
    key = (dtype.name, kind, value, shape)
    array = _NUMBERS.get(key) if exact else None
    if array is None:
        array = _repeated(np.asarray(value, dtype=dtype.np_type), shape)
        if exact:
            if len(_NUMBERS) >= 256:
                _NUMBERS.clear()
            _NUMBERS[key] = array
    return wrap(array, dtype)


def _binary(op: str, a: Operand, b: Operand, dtype: DType | None = None) -> Tensor:
    if isinstance(a, Tensor):
        if isinstance(b, Tensor):
            if a._dtype is b._dtype and (dtype is None or dtype is a._dtype) \
                    and a.shape == b.shape:
                return apply(op, a, b)  # nothing to promote or broadcast
        elif type(b) in _SCALAR_CATEGORY and read_trace() is None:
            dt = _with_scalar(a._dtype, _SCALAR_CATEGORY[type(b)]) if dtype is None else dtype
            if dt is a._dtype:  # the number is made a tensor of a's dtype and shape
                return apply(op, a, _number(b, dt, a.shape))
    elif not isinstance(b, Tensor):
        raise TypeError(f"{op}: expected at least one Tensor, got {type(a).__name__} and "
                        f"{type(b).__name__}")
    elif type(a) in _SCALAR_CATEGORY and read_trace() is None:
        dt = _with_scalar(b._dtype, _SCALAR_CATEGORY[type(a)]) if dtype is None else dtype
        if dt is b._dtype:
            return apply(op, _number(a, dt, b.shape), b)
    x, y = prepare(op, a, b, dtype=dtype)
    return apply(op, x, y)


def _floating(a: Operand, b: Operand) -> DType:
    dt = result_dtype(a, b)
    return dt if dt.is_floating else float32


def add(a: Operand, b: Operand) -> Tensor:
    dt = result_dtype(a, b)
    if dt.category == 0:
        return logical_or(a, b)  # bool + bool is "or", as in PyTorch
    return _binary("add", a, b, dt)


def _is_bool(value: Operand) -> bool:
    if isinstance(value, Tensor):
        return value._dtype.category == 0
    return isinstance(value, (bool, np.bool_))


def sub(a: Operand, b: Operand) -> Tensor:
    """a - b.  A bool operand (a bool tensor or True/False) raises TypeError, as PyTorch
    refuses it, rather than silently computing in integers."""
    if _is_bool(a) and _is_bool(b):
        raise TypeError("sub: subtraction, the `-` operator, with two bool tensors is not "
                        "supported (as in PyTorch); use `a != b` for a logical xor")
    if _is_bool(a) or _is_bool(b):
        raise TypeError("sub: subtraction, the `-` operator, with a bool tensor is not "
                        "supported (as in PyTorch); use `~` or logical_not() to invert a mask, "
                        "or cast it to a number first")
    return _binary("sub", a, b)


def mul(a: Operand, b: Operand) -> Tensor:
    dt = result_dtype(a, b)
    if dt.category == 0:
        return logical_and(a, b)  # bool * bool is "and", as in PyTorch
    return _binary("mul", a, b, dt)


def div(a: Operand, b: Operand) -> Tensor:
    """True division: integer operands give a float32 result, as in PyTorch."""
    return _binary("div", a, b, dtype=_floating(a, b))


def pow(a: Operand, b: Operand) -> Tensor:  # noqa: A001
    """a ** b.  Floats: a Python-number exponent is computed as PyTorch computes it
    (`_pow_scalar`); a tensor exponent is C's pow.  Integers: exact, in wrapping arithmetic, as
    PyTorch (`_int_pow_scalar` for a Python-int exponent, else the `pow` primitive, whose
    negative exponents give 1 ** e = 1, (-1) ** e = +-1 and 0 otherwise).  bool ** bool raises
    TypeError, as in PyTorch (except a True/False exponent: x, or all True)."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise TypeError(f"pow: expected at least one Tensor, got {type(a).__name__} and "
                        f"{type(b).__name__}")
    dt = result_dtype(a, b)
    number_exponent = isinstance(a, Tensor) and not isinstance(b, Tensor) and is_scalar(b)
    if dt == bool_:
        if number_exponent:  # PyTorch's shortcuts for the exponents 1 and 0
            return clone(a) if b else logical_or(a, True)
        raise TypeError("pow: not supported for bool tensors (as in PyTorch); cast the base "
                        "or the exponent to a number first")
    if dt.is_floating:
        if number_exponent and not isinstance(b, (bool, np.bool_)):
            return _pow_scalar(as_tensor(a, dt), float(b))
        return _binary("pow", a, b)
    if number_exponent:
        return _int_pow_scalar(as_tensor(a, dt), int(b))
    return _binary("pow", a, b)


def _int_pow_scalar(x: Tensor, e: int) -> Tensor:
    """x ** e for an integer tensor and a Python int, unrolled over the bits of e into
    products (wrapping, so exact as PyTorch's; at most 2 * bits of them, and plain products
    in compiled code).  A negative e raises, as in PyTorch."""
    if e < 0:
        raise ValueError(f"pow: integers to negative integer powers are not allowed (got "
                         f"exponent {e} for a {x.dtype.name} tensor; as in PyTorch)")
    bits = 8 * x.dtype.itemsize
    if e >= 2 ** (bits - 1):
        raise ValueError(f"pow: exponent {e} does not fit the tensor's {x.dtype.name}")
    if e == 0:
        return add(mul(x, 0), 1)
    if e == 1:
        return clone(x)
    out: Tensor | None = None
    power = x  # x ** (2 ** k) at bit k of e
    while True:
        if e & 1:
            out = power if out is None else mul(out, power)
        e >>= 1
        if not e:
            return out
        power = mul(power, power)


def _pow_scalar(x: Tensor, e: float) -> Tensor:
    """x ** e for a Python number e, as PyTorch's CPU kernel: 0.5 is sqrt (so (-inf) ** 0.5
    is nan and (-0.0) ** 0.5 is -0.0, where C's pow gives inf and 0.0), -0.5 is 1 / sqrt,
    -1 is 1 / x, 2 and 3 are products; other exponents are C's pow.  The gradients are
    PyTorch's `e * x ** (e - 1)` at the special values too."""
    if e == 0.5:
        return sqrt(x)
    if e == -0.5:
        return _rsqrt_like_torch(x)
    if e == -1.0:
        return reciprocal(x)
    if e == 2.0:
        return mul(x, x)
    if e == 3.0:
        return mul(mul(x, x), x)
    return _binary("pow", x, e)


def _rsqrt_like_torch(x: Tensor) -> Tensor:
    """1 / sqrt(x), whose gradient is PyTorch's -0.5 * pow(x, -1.5): -inf at +-0 (not the
    +inf the chain rule gives at -0.0) and 0 at -inf (not nan).  The special points take
    their own branch, fed a safe operand elsewhere, so no branch makes a nan gradient."""
    zero = eq(x, 0.0)
    special = logical_or(zero, eq(x, float("-inf")))
    regular = reciprocal(sqrt(where(special, 1.0, x)))
    at_zero = reciprocal(where(zero, x, 1.0))
    return where(zero, at_zero, where(special, float("nan"), regular))


def maximum(a: Operand, b: Operand) -> Tensor:
    return _binary("maximum", a, b)


def minimum(a: Operand, b: Operand) -> Tensor:
    return _binary("minimum", a, b)


def floor_divide(a: Operand, b: Operand) -> Tensor:
    """floor(a / b): exact for integers (INT_MIN // -1 wraps to INT_MIN, as in PyTorch), and
    an integer division by zero raises ZeroDivisionError."""
    return _integer_division("floordiv", "floor_divide", a, b)


def remainder(a: Operand, b: Operand) -> Tensor:
    """a - floor(a / b) * b, exactly: the sign follows the divisor, as in Python and PyTorch;
    an integer division by zero raises ZeroDivisionError."""
    return _integer_division("remainder", "remainder", a, b)


def _integer_division(op: str, name: str, a: Operand, b: Operand) -> Tensor:
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise TypeError(f"{name}: expected at least one Tensor, got {type(a).__name__} and "
                        f"{type(b).__name__}")
    dt = result_dtype(a, b)
    x, y = prepare(name, a, b, dtype=dt)
    if not dt.is_floating and x.numel() > 0:
        _check_divisor(name, b, dt)
    return apply(op, x, y)


def _check_divisor(name: str, b: Operand, dt: DType) -> None:
    """Raise ZeroDivisionError (PyTorch raises `RuntimeError: ZeroDivisionError`) when an
    integer divisor has a zero: a Python number now, a tensor eagerly or after the compiled
    call (`neurenix.value_checks`).  Every element of `b` is used when the result is not
    empty, so the un-broadcast divisor is checked."""
    message = f"{name}: integer division by zero"
    if not isinstance(b, Tensor) or b._data is not None:  # eager: read the values at once
        if np.any(b._host() == 0 if isinstance(b, Tensor) else b == 0):
            raise ZeroDivisionError(message)
        return
    with no_grad():
        zeros = cast(eq(as_tensor(b, dt), 0), int64)
        axes = tuple(range(zeros.ndim))
        found = apply("reduce_max", zeros, axes=axes) if axes else zeros

    def test(found: np.ndarray) -> None:
        if found.item():
            raise ZeroDivisionError(message)

    check_values((found,), test)


def _compare(op: str, a: Operand, b: Operand) -> Tensor:
    return _binary(op, a, b, dtype=result_dtype(a, b))


def eq(a: Operand, b: Operand) -> Tensor:
    return _compare("eq", a, b)


def ne(a: Operand, b: Operand) -> Tensor:
    return _compare("ne", a, b)


def lt(a: Operand, b: Operand) -> Tensor:
    return _compare("lt", a, b)


def le(a: Operand, b: Operand) -> Tensor:
    return _compare("le", a, b)


def gt(a: Operand, b: Operand) -> Tensor:
    return _compare("gt", a, b)


def ge(a: Operand, b: Operand) -> Tensor:
    return _compare("ge", a, b)


def logical_and(a: Operand, b: Operand) -> Tensor:
    return _binary("logical_and", a, b, dtype=bool_)


def logical_or(a: Operand, b: Operand) -> Tensor:
    return _binary("logical_or", a, b, dtype=bool_)


def logical_not(x: Tensor) -> Tensor:
    return apply("logical_not", as_tensor(x, bool_))


def where(condition: Tensor, x: Operand, y: Operand) -> Tensor:
    """x where condition holds, else y, broadcasting all three."""
    if not isinstance(condition, Tensor):
        raise TypeError(f"where: expected a bool Tensor condition, got "
                        f"{type(condition).__name__}")
    dt = result_dtype(x, y)
    operands = (condition, x, y)
    parts = (as_tensor(condition, bool_), as_tensor(x, dt), as_tensor(y, dt))
    shape = broadcast_shapes(*(t.shape for t in parts), op="where")
    eager = read_trace() is None
    return apply("where", *(_spread(t, shape) if eager and not isinstance(o, Tensor)
                            else t if t.shape == shape else EAGER.broadcast_to(t, shape)
                            for o, t in zip(operands, parts)))


# ---- unary --------------------------------------------------------------------------------


def _float_input(x: Tensor, op: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    return x if x.dtype.is_floating else cast(x, float32)


def _unary_float(op: str):
    def fn(x: Tensor) -> Tensor:
        return apply(op, _float_input(x, op))
    fn.__name__ = op
    fn.__doc__ = f"Elementwise {op} (integer inputs are computed in float32)."
    return fn


exp = _unary_float("exp")
log = _unary_float("log")
sqrt = _unary_float("sqrt")
tanh = _unary_float("tanh")
sigmoid = _unary_float("sigmoid")
erf = _unary_float("erf")
reciprocal = _unary_float("reciprocal")
sin = _unary_float("sin")
cos = _unary_float("cos")


def neg(x: Tensor) -> Tensor:
    if isinstance(x, Tensor) and x.dtype == bool_:
        raise TypeError("neg: negation, the `-` operator, on a bool tensor is not supported "
                        "(as in PyTorch); use `~` or logical_not() to invert a mask")
    return apply("neg", x)


def abs(x: Tensor) -> Tensor:  # noqa: A001
    return apply("abs", x)


def sign(x: Tensor) -> Tensor:
    return apply("sign", x)


def floor(x: Tensor) -> Tensor:
    return x if not x.dtype.is_floating else apply("floor", x)


def ceil(x: Tensor) -> Tensor:
    return neg(floor(neg(x)))


def rsqrt(x: Tensor) -> Tensor:
    return reciprocal(sqrt(x))


def square(x: Tensor) -> Tensor:
    return mul(x, x)


def _corrected(rough: Tensor, exact: Tensor) -> Tensor:
    """`exact`'s value with `rough`'s gradient: rough + stop_gradient(exact - rough), the
    correction dropped where it is NaN (infinities, NaN inputs: `rough` is right there)."""
    fix = sub(exact, rough)
    return add(rough, stop_gradient(where(ne(fix, fix), 0.0, fix)))


def log1p(x: Tensor) -> Tensor:
    """log(1 + x), accurate for small x: log(u) * x / (u - 1) with u = 1 + x cancels the
    rounding of u (Goldberg); the gradient is log(1 + x)'s, 1 / (1 + x)."""
    x = _float_input(x, "log1p")
    u = add(x, 1.0)
    rough = log(u)
    d = sub(u, 1.0)
    return _corrected(rough, where(eq(d, 0.0), x, mul(rough, div(x, d))))


def expm1(x: Tensor) -> Tensor:
    """exp(x) - 1, accurate for small x: (u - 1) * x / log(u) with u = exp(x) (Kahan); the
    gradient is exp(x)'s."""
    u = exp(x)
    rough = sub(u, 1.0)
    exact = where(eq(u, 1.0), x, where(eq(rough, -1.0), -1.0, mul(rough, div(x, log(u)))))
    return _corrected(rough, exact)


def detach(x: Tensor) -> Tensor:
    return x.detach()


def stop_gradient(x: Tensor) -> Tensor:
    """x as a value autograd does not differentiate through (recorded, unlike detach)."""
    return apply("stop_gradient", x)


def clone(x: Tensor) -> Tensor:
    """A copy of x that keeps its place in the autograd graph."""
    return apply("cast", x, dtype=x.dtype.name)


def relu(x: Tensor) -> Tensor:
    """PyTorch's relu: 0 below 0, x elsewhere, so -0.0 stays -0.0 and nan passes through
    (x86's maxps(0, x)); the gradient is 0 at +-0 and below, g elsewhere, nan included.
    where(x <= 0, stop_gradient(where(x < 0, 0, x)), x): the backward keeps the one mask
    x <= 0, and LLVM folds the forward's nested selects into x < 0 ? 0 : x."""
    if not x.dtype.is_floating:
        return where(lt(x, 0), 0, x)
    if eager_kernels.eligible(x):
        return activation_kernels.relu(x, _relu_primitives)
    return _relu_primitives(x)


def _relu_primitives(x: Tensor) -> Tensor:
    """relu of a floating x as primitives (see `relu`)."""
    data = x._data
    if type(data) is np.ndarray and read_trace() is None:
        # eagerly on the host: the masks and the stop_gradient operand need no gradient, so
        # their references run directly; only the outer `where` is dispatched (and recorded)
        zero = np.zeros((), data.dtype)
        mask = np.asarray(_REFS["le"](data, zero))  # 0-d: NumPy gives a scalar, not an array
        inner = np.asarray(_REFS["where"](_REFS["lt"](data, zero), zero, data))
        return apply("where", wrap(mask, bool_), wrap(inner, x._dtype), x)
    return where(le(x, 0), stop_gradient(where(lt(x, 0), 0.0, x)), x)


def _no_grad_at_nan(x: Tensor) -> Tensor:
    """x, with a zero gradient where it is nan: where(x != x, stop_gradient(x), x).  Free in
    compiled code: with stop_gradient gone after autodiff, `where(c, x, x)` folds to x."""
    if not x.dtype.is_floating:
        return x
    return where(ne(x, x), stop_gradient(x), x)


def clamp(x: Tensor, min: Operand | None = None, max: Operand | None = None) -> Tensor:  # noqa: A002
    """Limit x to [min, max]; the gradient is 1 inside the closed range, 0 outside and at nan
    (a nan stays nan), as in PyTorch."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    out = _no_grad_at_nan(x)
    if min is not None:
        out = where(lt(out, min), min, out)
    if max is not None:
        out = where(gt(out, max), max, out)
    return out


def clamp_min(x: Tensor, min: Operand) -> Tensor:  # noqa: A002
    """clamp(x, min=min)."""
    return clamp(x, min, None)


def clamp_max(x: Tensor, max: Operand) -> Tensor:  # noqa: A002
    """clamp(x, max=max)."""
    return clamp(x, None, max)


def _tensor_input(x: Any, op: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    return x


def isnan(x: Tensor) -> Tensor:
    """Where x is NaN (x != x); all False for integer and bool tensors."""
    x = _tensor_input(x, "isnan")
    return ne(x, x)


def isinf(x: Tensor) -> Tensor:
    """Where x is +inf or -inf; all False for integer and bool tensors."""
    x = _tensor_input(x, "isinf")
    if not x.dtype.is_floating:
        return ne(x, x)
    return eq(abs(x), float("inf"))


def isfinite(x: Tensor) -> Tensor:
    """Where x is neither NaN nor infinite."""
    x = _tensor_input(x, "isfinite")
    if not x.dtype.is_floating:
        return eq(x, x)
    return lt(abs(x), float("inf"))


def isclose(a: Tensor, b: Tensor, rtol: float = 1e-05, atol: float = 1e-08,
            equal_nan: bool = False) -> Tensor:
    """|a - b| <= atol + rtol * |b| elementwise (broadcasting), as PyTorch: equal values
    (infinities included) are close, NaN only with `equal_nan`.  a and b must share a dtype."""
    a, b = _tensor_input(a, "isclose"), _tensor_input(b, "isclose")
    if a.dtype != b.dtype:
        raise TypeError(f"isclose: expected tensors of one dtype, got {a.dtype.name} and "
                        f"{b.dtype.name}")
    if rtol < 0 or atol < 0:
        raise ValueError(f"isclose: rtol and atol must be non-negative, got rtol={rtol}, "
                         f"atol={atol}")
    same = eq(a, b)
    if not a.dtype.is_floating:
        if a.dtype == bool_:
            return same
        a, b = cast(a, float32), cast(b, float32)
    near = le(abs(sub(a, b)), add(mul(abs(b), rtol), atol))
    near = logical_and(near, lt(abs(b), float("inf")))
    out = logical_or(same, near)
    if equal_nan:
        out = logical_or(out, logical_and(ne(a, a), ne(b, b)))
    return out
