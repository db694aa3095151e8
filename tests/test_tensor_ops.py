"""Every Tensor function, method and operator against PyTorch: values, dtypes and gradients."""
from __future__ import annotations

import operator

import numpy as np
import pytest
import torch
from op_helpers import check_lib, check_op, make_data, torch_dtype

import neurenix as nx

BROADCAST_PAIRS = [
    ((3, 4), (3, 4)),
    ((3, 4), (4,)),
    ((4,), (3, 4)),
    ((2, 1, 4), (3, 1)),
    ((5, 1), (1, 5)),
    ((), (2, 3)),
    ((2, 3), ()),
]


def _away_from_zero(shape, seed):
    """Floats in +-[0.5, 2): safe denominators and bases."""
    rng = np.random.default_rng(seed)
    mag = rng.uniform(0.5, 2.0, size=shape)
    return (mag * rng.choice([-1.0, 1.0], size=shape)).astype(np.float32)


# ---- binary arithmetic --------------------------------------------------------------------


@pytest.mark.parametrize("shapes", BROADCAST_PAIRS, ids=str)
@pytest.mark.parametrize("op", [operator.add, operator.sub, operator.mul], ids=lambda f: f.__name__)
def test_arithmetic_broadcast(op, shapes):
    check_op(shapes, op)


@pytest.mark.parametrize("shapes", BROADCAST_PAIRS, ids=str)
def test_truediv_broadcast(shapes):
    a = make_data([shapes[0]], seed=1)[0]
    check_op(None, operator.truediv, data=[a, _away_from_zero(shapes[1], 2)])


@pytest.mark.parametrize("shapes", BROADCAST_PAIRS, ids=str)
def test_pow_tensor_exponent(shapes):
    base = np.abs(_away_from_zero(shapes[0], 3))
    check_op(None, operator.pow, data=[base, make_data([shapes[1]], seed=4)[0]])


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "maximum", "minimum", "pow"])
def test_binary_functions_and_methods(name):
    data = [np.abs(_away_from_zero((3, 4), 5)), _away_from_zero((4,), 6)]
    check_lib(None, lambda lib, a, b: getattr(lib, name)(a, b), data=data)
    check_op(None, lambda a, b: getattr(a, name)(b), data=data)


SCALAR_CASES = [
    ("x + 2", lambda x: x + 2),
    ("2 + x", lambda x: 2 + x),
    ("x - 1.5", lambda x: x - 1.5),
    ("1.5 - x", lambda x: 1.5 - x),
    ("x * 3", lambda x: x * 3),
    ("3 * x", lambda x: 3 * x),
    ("x / 2", lambda x: x / 2),
    ("2 / x", lambda x: 2 / x),
    ("x ** 2", lambda x: x ** 2),
    ("x ** 3", lambda x: x ** 3),
    ("x ** -1", lambda x: x ** -1),
    ("2 ** x", lambda x: 2 ** x),
    ("-x", lambda x: -x),
    ("+x", lambda x: +x),
    ("abs(x)", lambda x: abs(x)),
]


@pytest.mark.parametrize("name, fn", SCALAR_CASES, ids=[c[0] for c in SCALAR_CASES])
def test_scalar_operands(name, fn):
    check_op(None, fn, data=[_away_from_zero((3, 5), 7)])


@pytest.mark.parametrize("exponent", [0.5, 1.5, -0.5, 0.0])
def test_pow_fractional_exponent_positive_base(exponent):
    check_op(None, lambda x: x ** exponent, data=[np.abs(_away_from_zero((4, 3), 8))])


def test_pow_zero_base():
    # d/dx x**2 at 0 is 0; d/dy 0**y is 0 for y > 0 (PyTorch's masking of 0 * log 0)
    base = np.array([0.0, 0.0, 1.0, 2.0], np.float32)
    exp = np.array([2.0, 0.0, 3.0, 0.5], np.float32)
    check_op(None, operator.pow, data=[base, exp])


@pytest.mark.parametrize("op", [operator.floordiv, operator.mod], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [nx.int64, nx.float32], ids=str)
def test_floordiv_and_mod_follow_the_divisor_sign(op, dtype):
    a = np.array([[7, -7, 5, -5, 0, 9]], dtype=dtype.np_type)
    b = np.array([[2], [-3]], dtype=dtype.np_type)
    check_op(None, op, data=[a, b], grad=False)
    check_op(None, lambda x: op(x, 3), data=[a], grad=False)


# ---- comparison and logical -----------------------------------------------------------------

COMPARISONS = [operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge]


@pytest.mark.parametrize("shapes", BROADCAST_PAIRS[:5], ids=str)
@pytest.mark.parametrize("op", COMPARISONS, ids=lambda f: f.__name__)
def test_comparison_broadcast(op, shapes):
    # small integers so that ties happen
    check_op(shapes, op, dtype=nx.int64, low=0, high=3)


@pytest.mark.parametrize("op", COMPARISONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("scalar", [1, 1.0, 0.5])
def test_comparison_with_scalar(op, scalar):
    data = [np.array([[0.0, 0.5, 1.0], [1.5, -1.0, 1.0]], np.float32)]
    check_op(None, lambda x: op(x, scalar), data=data, grad=False)
    check_op(None, lambda x: op(scalar, x), data=data, grad=False)


@pytest.mark.parametrize("op", [operator.and_, operator.or_], ids=lambda f: f.__name__)
def test_logical_operators(op):
    check_op([(3, 4), (4,)], op, dtype=nx.bool)


def test_logical_not_and_where():
    check_op([(3, 4)], lambda m: ~m, dtype=nx.bool)
    cond = np.array([[True, False, True]])
    a, b = make_data([(2, 3), (2, 1)], seed=3)
    check_lib(None, lambda lib, c, x, y: lib.where(c, x, y), data=[cond, a, b])
    check_lib(None, lambda lib, c, x: lib.where(c, x, 0.0), data=[cond, a])
    check_op(None, lambda c, x, y: x.where(c, y), data=[cond, a, b])


# ---- dtype promotion ------------------------------------------------------------------------

PROMOTIONS = [
    (nx.int32, nx.int64),
    (nx.int32, nx.float32),
    (nx.int64, nx.float32),
    (nx.float32, nx.float64),
    (nx.int64, nx.float64),
    (nx.bool, nx.int32),
    (nx.bool, nx.float32),
    (nx.int32, nx.int32),
]


# torch refuses `-` with a bool operand, so sub is not compared on those pairs
PROMOTION_CASES = [(op, da, db) for op in (operator.add, operator.mul, operator.sub,
                                           operator.truediv, operator.lt)
                   for da, db in PROMOTIONS if not (op is operator.sub and nx.bool in (da, db))]


@pytest.mark.parametrize("op, da, db", PROMOTION_CASES,
                         ids=[f"{c[0].__name__}-{c[1].name}-{c[2].name}" for c in PROMOTION_CASES])
def test_tensor_tensor_promotion(op, da, db):
    a = make_data([(2, 3)], da, low=1, high=4, seed=1)[0]
    b = make_data([(3,)], db, low=1, high=4, seed=2)[0]
    check_op(None, op, data=[a, b], grad=False)


@pytest.mark.parametrize("scalar", [2, 2.5, True])
@pytest.mark.parametrize("dtype", [nx.int32, nx.int64, nx.float32, nx.float64, nx.bool], ids=str)
def test_tensor_scalar_promotion(dtype, scalar):
    a = make_data([(2, 3)], dtype, low=1, high=4)[0]
    check_op(None, lambda x: x * scalar, data=[a], grad=False)
    check_op(None, lambda x: x + scalar, data=[a], grad=False)
    check_op(None, lambda x: x / scalar, data=[a], grad=False)


ZERO_DIM_PROMOTIONS = [
    # (dtype of the tensor with dims, dtype of the 0-d tensor): a 0-d tensor only lifts the
    # category, like a Python scalar but to its own dtype
    (nx.int32, nx.int64),
    (nx.float32, nx.float64),
    (nx.int32, nx.float64),
    (nx.bool, nx.int32),
    (nx.float64, nx.int64),
]


@pytest.mark.parametrize("op", [operator.add, operator.mul, operator.lt],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("dims, zero", ZERO_DIM_PROMOTIONS, ids=str)
def test_zero_dim_tensor_promotion(op, dims, zero):
    a = make_data([(2, 3)], dims, low=1, high=4, seed=1)[0]
    b = make_data([()], zero, low=1, high=4, seed=2)[0]
    check_op(None, op, data=[a, b], grad=False)
    check_op(None, op, data=[b, a], grad=False)
    check_op(None, lambda x, y: op(x, y) + 2.5, data=[a, b], grad=False)


def test_zero_dim_float64_tensor_gradient_comes_back_as_float64():
    check_op(None, operator.mul, data=[make_data([(3,)])[0], np.array(1.5)])


@pytest.mark.parametrize("op", [operator.add, operator.mul], ids=lambda f: f.__name__)
def test_bool_add_and_mul_are_or_and_and(op):
    check_op([(2, 3), (3,)], op, dtype=nx.bool)
    check_op([(2, 3)], lambda x: op(x, False), dtype=nx.bool)


def test_gradient_through_promotion_keeps_each_dtype():
    a = make_data([(3,)], nx.float32, seed=1)[0]
    b = make_data([(2, 3)], nx.float64, seed=2)[0]
    check_op(None, lambda x, y: x * y + x, data=[a, b])


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "tanh", "sigmoid", "erf"])
def test_unary_float_of_integer_tensor_is_float32(name):
    a = make_data([(2, 3)], nx.int64, low=1, high=5)[0]
    check_lib(None, lambda lib, x: getattr(lib, name)(x), data=[a])


# ---- matmul ---------------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((4,), (4,)),
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((4,), (2, 4, 3)),
    ((2, 3, 4), (4,)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul(shapes):
    check_op(shapes, operator.matmul)
    check_lib(shapes, lambda lib, a, b: lib.matmul(a, b))


def test_matmul_float64_and_int():
    check_op([(3, 4), (4, 2)], operator.matmul, dtype=nx.float64)
    check_op([(3, 4), (4, 2)], operator.matmul, dtype=nx.int64, low=-3, high=3)


def test_mm_bmm_dot():
    check_lib([(3, 4), (4, 5)], lambda lib, a, b: lib.mm(a, b))
    check_lib([(2, 3, 4), (2, 4, 5)], lambda lib, a, b: lib.bmm(a, b))
    check_lib([(4,), (4,)], lambda lib, a, b: lib.dot(a, b))


# ---- reductions -----------------------------------------------------------------------------

DIMS = [None, 0, 1, -1, (0, 2), (-1, 0)]


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", DIMS, ids=str)
@pytest.mark.parametrize("name", ["sum", "mean", "amax", "amin"])
def test_reductions_dim_keepdim(name, dim, keepdim):
    if dim is None:
        check_op([(2, 3, 4)], lambda x: getattr(x, name)())
        check_lib([(2, 3, 4)], lambda lib, x: getattr(lib, name)(x))
        return
    check_op([(2, 3, 4)], lambda x: getattr(x, name)(dim, keepdim=keepdim))
    check_lib([(2, 3, 4)], lambda lib, x: getattr(lib, name)(x, dim, keepdim=keepdim))


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [None, 0, -1])
def test_prod(dim, keepdim):
    # values near 1 keep the product well scaled; one exact zero checks the zero-safe gradient
    data = make_data([(3, 4)], low=0.5, high=1.5)[0]
    data[1, 2] = 0.0
    if dim is None:
        check_op(None, lambda x: x.prod(), data=[data])
    else:
        check_op(None, lambda x: x.prod(dim, keepdim=keepdim), data=[data])


def test_prod_two_zeros_in_a_slice():
    data = np.array([[0.0, 2.0, 0.0], [1.0, 3.0, 2.0]], np.float32)
    check_op(None, lambda x: x.prod(1), data=[data])


@pytest.mark.parametrize("dtype", [nx.int32, nx.int64, nx.bool], ids=str)
def test_sum_and_prod_of_integers_are_int64(dtype):
    data = make_data([(3, 4)], dtype, low=-3, high=3)
    check_op(None, lambda x: x.sum(), data=data)
    check_op(None, lambda x: x.sum(0), data=data)
    check_op(None, lambda x: x.prod(1), data=data)


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("name", ["max", "min"])
def test_max_min_with_dim_return_values_and_indices(name, dim, keepdim):
    outs = check_op([(3, 4, 2)], lambda x: getattr(x, name)(dim, keepdim=keepdim))
    assert outs[1].dtype == nx.int64
    result = getattr(nx.randn(3, 4), name)(1)
    assert result.values.shape == result.indices.shape == (3,)
    np.testing.assert_array_equal(result.values.numpy(), result[0].numpy())


@pytest.mark.parametrize("name", ["max", "min"])
def test_max_min_with_dim_route_tied_gradient_to_the_index(name):
    data = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 1.0], [-1.0, -1.0, -1.0]], np.float32)
    check_op(None, lambda x: getattr(x, name)(1), data=[data])
    check_op(None, lambda x: getattr(x, name)(0, keepdim=True), data=[data])


@pytest.mark.parametrize("name", ["max", "min", "amax", "amin"])
def test_full_reductions_share_tied_gradient(name):
    data = np.array([[1.0, 3.0, 3.0], [-1.0, -1.0, 0.0]], np.float32)
    check_op(None, lambda x: getattr(x, name)(), data=[data])


@pytest.mark.parametrize("name", ["amax", "amin"])
def test_amax_amin_share_ties_along_dim(name):
    data = np.array([[1.0, 3.0, 3.0], [-1.0, -1.0, 0.0]], np.float32)
    check_op(None, lambda x: getattr(x, name)(1), data=[data])
    check_op(None, lambda x: getattr(x, name)((0, 1)), data=[data])


def test_max_min_of_two_tensors_split_ties():
    a = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    b = np.array([1.0, 5.0, 0.0, 4.0], np.float32)
    check_lib(None, lambda lib, x, y: lib.maximum(x, y), data=[a, b])
    check_lib(None, lambda lib, x, y: lib.minimum(x, y), data=[a, b])
    check_lib(None, lambda lib, x, y: lib.max(x, y), data=[a, b])


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [None, 0, 1, -1])
@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_argmax_argmin(name, dim, keepdim):
    # small integers make ties: both libraries return the first extreme
    data = make_data([(3, 5)], nx.int64, low=0, high=3, seed=4)
    check_op(None, lambda x: getattr(x, name)(dim, keepdim=keepdim), data=data)
    check_op(None, lambda x: getattr(x, name)(dim, keepdim=keepdim),
             data=[d.astype(np.float32) for d in data])


@pytest.mark.parametrize("name", ["var", "std"])
@pytest.mark.parametrize("kwargs", [{}, {"unbiased": True}, {"unbiased": False},
                                    {"correction": 0}, {"correction": 2}], ids=str)
@pytest.mark.parametrize("dim", [None, 1, (0, 2)], ids=str)
def test_var_std(name, kwargs, dim):
    check_op([(3, 4, 5)], lambda x: getattr(x, name)(dim, **kwargs))
    if dim is not None:
        check_op([(3, 4, 5)], lambda x: getattr(x, name)(dim, keepdim=True, **kwargs))


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, -1, (0, 1)], ids=str)
def test_logsumexp(dim, keepdim):
    check_op([(3, 4)], lambda x: x.logsumexp(dim, keepdim=keepdim))
    check_lib([(3, 4)], lambda lib, x: lib.logsumexp(x, dim, keepdim=keepdim))


def test_logsumexp_is_stable_for_large_inputs():
    # float64: near 1000 a float32 result is only good to ~6e-5, and torch's backward
    # exp(x - result) inherits that rounding, so float32 would compare rounding noise
    data = np.array([[1000.0, 1000.0], [-1000.0, -1001.0], [700.0, -700.0]], np.float64)
    check_op(None, lambda x: x.logsumexp(1), data=[data])


# ---- elementwise math -----------------------------------------------------------------------

UNARY = [
    ("exp", -2.0, 2.0),
    ("log", 0.1, 3.0),
    ("sqrt", 0.1, 3.0),
    ("abs", -2.0, 2.0),
    ("tanh", -3.0, 3.0),
    ("sigmoid", -5.0, 5.0),
    ("relu", -2.0, 2.0),
    ("erf", -2.0, 2.0),
    ("neg", -2.0, 2.0),
    ("reciprocal", 0.5, 2.0),
    ("rsqrt", 0.5, 2.0),
    ("square", -2.0, 2.0),
    ("log1p", -0.5, 2.0),
    ("expm1", -2.0, 2.0),
    ("sign", -2.0, 2.0),
    ("floor", -3.0, 3.0),
    ("ceil", -3.0, 3.0),
]


@pytest.mark.parametrize("name, low, high", UNARY, ids=[u[0] for u in UNARY])
def test_unary_math(name, low, high):
    check_lib([(3, 4)], lambda lib, x: getattr(lib, name)(x), low=low, high=high)
    check_op([(3, 4)], lambda x: getattr(x, name)(), low=low, high=high)
    check_lib([(2, 3)], lambda lib, x: getattr(lib, name)(x), low=low, high=high,
              dtype=nx.float64)


def test_relu_and_abs_gradient_at_zero():
    data = np.array([-1.0, 0.0, 0.0, 2.0], np.float32)
    check_lib(None, lambda lib, x: lib.relu(x), data=[data])
    check_lib(None, lambda lib, x: lib.abs(x), data=[data])


def test_sigmoid_extreme_inputs_do_not_overflow():
    data = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], np.float32)
    check_lib(None, lambda lib, x: lib.sigmoid(x), data=[data])
    check_lib(None, lambda lib, x: lib.tanh(x), data=[data])


CLAMPS = [(-0.5, 0.5), (-0.5, None), (None, 0.5), (0, 1)]


@pytest.mark.parametrize("lo, hi", CLAMPS, ids=str)
def test_clamp(lo, hi):
    check_op([(4, 5)], lambda x: x.clamp(lo, hi))
    check_lib([(4, 5)], lambda lib, x: lib.clamp(x, min=lo, max=hi))


def test_clamp_gradient_is_one_on_the_closed_range():
    data = np.array([-2.0, -1.0, 0.0, 1.0, 2.0], np.float32)
    check_op(None, lambda x: x.clamp(-1.0, 1.0), data=[data])


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_family(name, dim):
    check_op([(3, 4, 5)], lambda x: getattr(x, name)(dim))
    check_lib([(3, 4, 5)], lambda lib, x: getattr(lib, name)(x, dim))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_family_large_inputs(name):
    data = np.array([[1000.0, 0.0, -1000.0], [88.0, 89.0, 90.0]], np.float32)
    check_op(None, lambda x: getattr(x, name)(1), data=[data])


# ---- movement -------------------------------------------------------------------------------

MOVEMENT = [
    ("view -1", (2, 3, 4), lambda lib, x: x.view(-1)),
    ("view 6,-1", (2, 3, 4), lambda lib, x: x.view(6, -1)),
    ("view tuple", (2, 3, 4), lambda lib, x: x.view((4, 3, 2))),
    ("reshape -1,2", (2, 3, 4), lambda lib, x: x.reshape(-1, 2)),
    ("reshape fn", (2, 3, 4), lambda lib, x: lib.reshape(x, (3, -1))),
    ("reshape scalar", (1, 1), lambda lib, x: x.reshape(())),
    ("permute", (2, 3, 4), lambda lib, x: x.permute(2, 0, 1)),
    ("permute tuple neg", (2, 3, 4), lambda lib, x: x.permute((-1, 1, 0))),
    ("transpose", (2, 3, 4), lambda lib, x: x.transpose(0, 2)),
    ("transpose neg", (2, 3, 4), lambda lib, x: lib.transpose(x, -1, -2)),
    ("T", (3, 5), lambda lib, x: x.T),
    ("t", (3, 5), lambda lib, x: x.t()),
    ("flatten", (2, 3, 4), lambda lib, x: x.flatten()),
    ("flatten 1", (2, 3, 4), lambda lib, x: x.flatten(1)),
    ("flatten 0,1", (2, 3, 4), lambda lib, x: lib.flatten(x, 0, 1)),
    ("squeeze", (1, 3, 1, 4), lambda lib, x: x.squeeze()),
    ("squeeze dim", (1, 3, 1, 4), lambda lib, x: x.squeeze(2)),
    ("squeeze non-1", (1, 3, 1, 4), lambda lib, x: x.squeeze(1)),
    ("unsqueeze 0", (3, 4), lambda lib, x: x.unsqueeze(0)),
    ("unsqueeze -1", (3, 4), lambda lib, x: x.unsqueeze(-1)),
    ("unsqueeze 1", (3, 4), lambda lib, x: lib.unsqueeze(x, 1)),
    ("expand", (3, 1), lambda lib, x: x.expand(3, 4)),
    ("expand -1 new", (3, 1), lambda lib, x: x.expand(2, -1, 5)),
    ("expand_as", (1, 4), lambda lib, x: x.expand_as(lib.zeros(3, 4))),
    ("broadcast_to", (4,), lambda lib, x: lib.broadcast_to(x, (2, 3, 4))),
    ("flip 0", (3, 4), lambda lib, x: x.flip(0)),
    ("flip both", (2, 3, 4), lambda lib, x: lib.flip(x, (0, 2))),
    ("repeat", (2, 3), lambda lib, x: x.repeat(2, 3)),
    ("repeat new dims", (2, 3), lambda lib, x: x.repeat(2, 1, 2)),
    ("split int", (7, 3), lambda lib, x: x.split(3)),
    ("split sections", (7, 3), lambda lib, x: lib.split(x, [2, 5], 0)),
    ("split dim 1", (2, 5), lambda lib, x: x.split(2, dim=1)),
    ("chunk", (7, 3), lambda lib, x: x.chunk(3)),
    ("chunk dim", (2, 6), lambda lib, x: lib.chunk(x, 4, 1)),
    ("unbind", (3, 2), lambda lib, x: x.unbind(1)),
    ("narrow", (5, 3), lambda lib, x: x.narrow(0, 1, 3)),
    ("movedim", (2, 3, 4), lambda lib, x: x.movedim(0, 2)),
]


@pytest.mark.parametrize("shape, fn", [m[1:] for m in MOVEMENT], ids=[m[0] for m in MOVEMENT])
def test_movement(shape, fn):
    check_lib([shape], fn)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat(dim):
    shapes = [(2, 3), (2, 3), (2, 3)]
    shapes = [tuple(s + i if d == dim % 2 else s for d, s in enumerate(sh))
              for i, sh in enumerate(shapes)]
    check_lib(shapes, lambda lib, a, b, c: lib.cat([a, b, c], dim))
    check_lib(shapes, lambda lib, a, b, c: lib.cat((a, b, c), dim=dim))


def test_cat_promotes_dtypes():
    a = make_data([(2,)], nx.int64)[0]
    b = make_data([(3,)], nx.float32)[0]
    check_lib(None, lambda lib, x, y: lib.cat([x, y]), data=[a, b])


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack(dim):
    check_lib([(2, 3)] * 3, lambda lib, a, b, c: lib.stack([a, b, c], dim))


# ---- indexing -------------------------------------------------------------------------------

BASIC_INDICES = [
    ("int", lambda x: x[1]),
    ("neg int", lambda x: x[-1]),
    ("two ints", lambda x: x[1, 2]),
    ("three ints", lambda x: x[1, -2, 3]),
    ("slice", lambda x: x[1:3]),
    ("neg bounds", lambda x: x[-3:-1]),
    ("neg start only", lambda x: x[:, -2:]),
    ("step", lambda x: x[::2]),
    ("step and start", lambda x: x[1::2, ::3]),
    ("step neg bounds", lambda x: x[:, -4::2, 1:-1:2]),
    ("out of range slice", lambda x: x[1:100]),
    ("empty slice", lambda x: x[3:1]),
    ("None", lambda x: x[None]),
    ("None middle", lambda x: x[:, None, 1:]),
    ("Ellipsis", lambda x: x[..., 1]),
    ("Ellipsis middle", lambda x: x[1, ..., 2:]),
    ("Ellipsis None", lambda x: x[..., None]),
    ("int slice None", lambda x: x[0, 1:, None, ::2]),
]


@pytest.mark.parametrize("fn", [b[1] for b in BASIC_INDICES], ids=[b[0] for b in BASIC_INDICES])
def test_basic_indexing(fn):
    check_op([(4, 5, 6)], fn)


def _idx(lib, values):
    return lib.tensor(values)


ADVANCED_INDICES = [
    ("one tensor", lambda lib, x: x[_idx(lib, [0, 2, 2])]),
    ("negative entries", lambda lib, x: x[_idx(lib, [-1, 0, -4])]),
    ("2-D index", lambda lib, x: x[_idx(lib, [[0, 1], [3, 3]])]),
    ("second dim", lambda lib, x: x[:, _idx(lib, [4, 0])]),
    ("two tensors", lambda lib, x: x[_idx(lib, [0, 1, 3]), _idx(lib, [2, 2, 0])]),
    ("two broadcast", lambda lib, x: x[_idx(lib, [[0], [3]]), _idx(lib, [1, 2, 4])]),
    ("separated", lambda lib, x: x[_idx(lib, [0, 3]), :, _idx(lib, [1, 5])]),
    ("with int", lambda lib, x: x[1, _idx(lib, [0, 4, 4])]),
    ("with slice", lambda lib, x: x[1:3, _idx(lib, [0, 2])]),
    ("list", lambda lib, x: x[[0, 2]]),
    ("int32 index", lambda lib, x: x[_idx(lib, [1, 2]).int()]),
    ("mask 1-D", lambda lib, x: x[_idx(lib, [True, False, True, True])]),
    ("mask 2-D", lambda lib, x: x[x.sum(2) > 0]),
    ("mask full", lambda lib, x: x[x > 0.5]),
    ("mask after slice", lambda lib, x: x[:, _idx(lib, [True, False, False, True, False])]),
]


@pytest.mark.parametrize("fn", [a[1] for a in ADVANCED_INDICES],
                         ids=[a[0] for a in ADVANCED_INDICES])
def test_advanced_indexing(fn):
    check_lib([(4, 5, 6)], fn)


def test_setitem_without_grad():
    for dtype in (nx.float32, nx.int64):
        data = make_data([(4, 5)], dtype, low=-3, high=3)[0]
        a = nx.tensor(data)
        t = torch.tensor(data)
        for target in (a, t):
            lib = nx if target is a else torch
            target[1] = 7
            target[:, -2:] = lib.tensor([1, 2]).to(target.dtype)
            target[::2, 0] = -1
            target[target > 5] = 0
            target[lib.tensor([0, 3]), lib.tensor([1, 1])] = lib.tensor([8, 9]).to(target.dtype)
            target[..., 2] = target[..., 3]
        np.testing.assert_array_equal(a.numpy(), t.numpy())
        assert a.dtype == dtype


def test_setitem_on_a_view_does_not_touch_the_source():
    base = nx.zeros(2, 3)
    e = base[0:1].expand(4, 3)
    e[0, 0] = 1.0
    assert base.numpy().sum() == 0 and e.numpy()[0, 0] == 1.0


def test_setitem_autograd_through_non_leaf():
    def fn(lib, x, v):
        y = x * 2
        y[1:3] = v * 3
        y[:, 0] = 0.0
        return y.exp()

    check_lib([(4, 3), (3,)], fn)


def test_setitem_of_a_grad_value_into_a_plain_tensor():
    def fn(lib, v):
        y = lib.zeros(3, 4)
        y[lib.tensor([0, 2])] = v
        return y * y

    check_lib([(4,)], fn)


def test_setitem_after_use_refuses_backward():
    x = nx.randn(3, requires_grad=True)
    y = x * 2
    z = y * y
    y[0] = 1.0
    with pytest.raises(RuntimeError, match="modified in place"):
        z.sum().backward()


# ---- creation -------------------------------------------------------------------------------

DETERMINISTIC_CREATORS = [
    ("zeros", lambda lib: lib.zeros(2, 3)),
    ("zeros tuple", lambda lib: lib.zeros((2, 3), dtype=lib.int64)),
    ("ones", lambda lib: lib.ones((4,))),
    ("ones float64", lambda lib: lib.ones(2, 2, dtype=lib.float64)),
    ("full float", lambda lib: lib.full((2, 3), 1.5)),
    ("full int", lambda lib: lib.full((2,), 7)),
    ("full bool", lambda lib: lib.full((2,), True)),
    ("full dtype", lambda lib: lib.full((3,), 2, dtype=lib.float64)),
    ("arange n", lambda lib: lib.arange(5)),
    ("arange start end", lambda lib: lib.arange(2, 7)),
    ("arange step", lambda lib: lib.arange(1, 10, 3)),
    ("arange neg step", lambda lib: lib.arange(5, 0, -2)),
    ("arange float", lambda lib: lib.arange(0, 1, 0.25)),
    ("arange dtype", lambda lib: lib.arange(4, dtype=lib.float32)),
    ("eye", lambda lib: lib.eye(3)),
    ("eye rect", lambda lib: lib.eye(2, 4)),
    ("eye int", lambda lib: lib.eye(3, dtype=lib.int64)),
    ("linspace", lambda lib: lib.linspace(0, 1, 5)),
    ("tensor int", lambda lib: lib.tensor([[1, 2], [3, 4]])),
    ("tensor float", lambda lib: lib.tensor([1.5, 2.0])),
    ("tensor bool", lambda lib: lib.tensor([True, False])),
    ("tensor scalar", lambda lib: lib.tensor(3.0)),
    ("tensor dtype", lambda lib: lib.tensor([1, 2], dtype=lib.float64)),
    ("zeros_like", lambda lib: lib.zeros_like(lib.ones(2, 3, dtype=lib.int32))),
    ("ones_like", lambda lib: lib.ones_like(lib.zeros(2))),
    ("full_like", lambda lib: lib.full_like(lib.zeros(2, 2), 4.0)),
]


@pytest.mark.parametrize("fn", [c[1] for c in DETERMINISTIC_CREATORS],
                         ids=[c[0] for c in DETERMINISTIC_CREATORS])
def test_deterministic_creation(fn):
    check_op(None, nx_fn=lambda: fn(nx), torch_fn=lambda: fn(torch), data=[])


@pytest.mark.parametrize("name", ["zeros", "ones", "randn", "rand"])
def test_creators_as_static_methods(name):
    nx.manual_seed(3)
    a = getattr(nx, name)(2, 3)
    nx.manual_seed(3)
    b = getattr(nx.Tensor, name)((2, 3))
    assert a.shape == b.shape == (2, 3) and a.dtype == b.dtype == nx.float32
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_other_static_creators():
    assert nx.Tensor.full((2,), 3.0).tolist() == [3.0, 3.0]
    assert nx.Tensor.arange(3).tolist() == [0, 1, 2]
    assert nx.Tensor.eye(2).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    r = nx.Tensor.randint(0, 5, (32,))
    assert r.shape == (32,) and r.dtype == nx.int64


@pytest.mark.parametrize("name, args", [("randn", ((3, 4),)), ("rand", (3, 4)),
                                        ("randint", (0, 10, (5,)))], ids=str)
def test_manual_seed_reproducibility(name, args):
    fn = getattr(nx, name)
    nx.manual_seed(1234)
    a = fn(*args)
    b = fn(*args)
    nx.manual_seed(1234)
    c = fn(*args)
    nx.manual_seed(1235)
    d = fn(*args)
    np.testing.assert_array_equal(a.numpy(), c.numpy())
    assert not np.array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), d.numpy())


def test_random_distributions():
    nx.manual_seed(0)
    n = nx.randn(20000).numpy()
    assert abs(n.mean()) < 0.05 and abs(n.std() - 1) < 0.05
    u = nx.rand(20000).numpy()
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    r = nx.randint(-3, 4, (5000,)).numpy()
    assert r.min() == -3 and r.max() == 3
    r2 = nx.randint(5, (100,))
    assert r2.numpy().min() >= 0 and r2.numpy().max() < 5
    assert nx.randn(2, 3, dtype=nx.float64).dtype == nx.float64
    assert nx.randint(0, 3, (2,), dtype=nx.int32).dtype == nx.int32


def test_random_creators_requires_grad():
    x = nx.randn(3, requires_grad=True)
    assert x.requires_grad and x.is_leaf
    assert nx.zeros(2, requires_grad=True).requires_grad


# ---- dtypes and conversions -----------------------------------------------------------------

DTYPES = [nx.float32, nx.float64, nx.int32, nx.int64, nx.bool]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtype_roundtrip_through_numpy(dtype):
    data = make_data([(2, 3)], dtype, low=-5, high=5)[0]
    t = nx.tensor(data)
    assert t.dtype == dtype
    assert t.numpy().dtype == np.dtype(dtype.np_type)
    np.testing.assert_array_equal(t.numpy(), data)
    assert nx.from_numpy(data).dtype == dtype


@pytest.mark.parametrize("src", DTYPES, ids=str)
@pytest.mark.parametrize("dst", DTYPES, ids=str)
def test_to_dtype(src, dst):
    data = make_data([(2, 3)], src, low=-3, high=3)[0]
    check_op(None, lambda x: x.to(torch_dtype(dst) if isinstance(x, torch.Tensor) else dst),
             data=[data])


@pytest.mark.parametrize("method", ["float", "double", "long", "int", "bool"])
def test_dtype_methods(method):
    check_op(None, lambda x: getattr(x, method)(), data=make_data([(3,)], low=-3, high=3))


def test_to_returns_self_when_nothing_changes():
    x = nx.randn(3)
    assert x.to(nx.float32) is x


def test_tensor_constructor_dtypes_match_torch():
    for data in ([1, 2], [1.0, 2.0], [True, False], 3, 2.5, [[1, 2.5]],
                 np.zeros(2, np.float64), np.zeros(2, np.int32)):
        assert torch_dtype(nx.tensor(data).dtype) == torch.tensor(data).dtype, data
    # narrower types are widened to the nearest supported one
    assert nx.tensor(np.zeros(2, np.int16)).dtype == nx.int64
    assert nx.tensor(np.zeros(2, np.float16)).dtype == nx.float32


# ---- attributes -----------------------------------------------------------------------------


def test_shape_ndim_numel_size_len():
    x = nx.zeros(2, 3, 4)
    assert x.shape == (2, 3, 4) and isinstance(x.shape, tuple)
    assert x.ndim == x.dim() == 3
    assert x.numel() == 24
    assert x.size() == (2, 3, 4) and x.size(1) == 3 and x.size(-1) == 4
    assert len(x) == 2
    assert nx.tensor(5.0).ndim == 0 and nx.tensor(5.0).shape == ()


def test_dtype_and_device():
    x = nx.ones(2, dtype=nx.float64)
    assert x.dtype == nx.float64 == nx.double
    assert nx.float == nx.float32 and nx.long == nx.int64 and nx.int == nx.int32
    assert x.device == nx.Device("cpu") and x.device == "cpu"
    assert x.device.type == nx.DeviceType.CPU


def test_item():
    assert nx.tensor([[2.5]]).item() == 2.5
    assert isinstance(nx.tensor(3).item(), int)
    assert nx.tensor([True]).item() is True
    assert float(nx.tensor(1.5)) == 1.5 and int(nx.tensor([7])) == 7


def test_numpy_shares_memory_and_tolist():
    x = nx.zeros(2, 2)
    x.numpy()[0, 0] = 3.0
    assert x.tolist() == [[3.0, 0.0], [0.0, 0.0]]
    assert nx.tensor([1, 2]).tolist() == [1, 2]
    assert nx.tensor(2.0).tolist() == 2.0


def test_numpy_of_a_tensor_requiring_grad_needs_detach():
    x = nx.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="detach"):
        x.numpy()
    np.testing.assert_array_equal(x.detach().numpy(), [1.0, 1.0])


def test_repr():
    text = repr(nx.tensor([1.0, 2.5]))
    assert text.startswith("tensor([1.") and "2.5" in text and "dtype" not in text
    assert repr(nx.tensor([1, 2])) == "tensor([1, 2])"
    assert repr(nx.tensor(True)) == "tensor(True)"
    assert "dtype=neurenix.float64" in repr(nx.tensor([1.0], dtype=nx.float64))
    assert "dtype=neurenix.int32" in repr(nx.tensor([1], dtype=nx.int32))
    assert "requires_grad=True" in repr(nx.ones(2, requires_grad=True))
    y = nx.ones(2, requires_grad=True) * 2
    assert "grad_fn=<mul_backward>" in repr(y)
    assert "dtype" in repr(nx.zeros(0))


# ---- autograd mechanics ---------------------------------------------------------------------


def test_requires_grad_propagates():
    x = nx.ones(3, requires_grad=True)
    c = nx.ones(3)
    assert not c.requires_grad and not (c * 2).requires_grad
    y = x * c
    assert y.requires_grad and not y.is_leaf and x.is_leaf
    assert y.grad_fn == "mul_backward" and x.grad_fn is None
    assert not (x > 0).requires_grad
    assert not x.argmax().requires_grad


def test_requires_grad_setter_method():
    x = nx.ones(2)
    assert x.requires_grad_() is x and x.requires_grad
    x.requires_grad_(False)
    assert not x.requires_grad


def test_grad_accumulates_over_two_backward_calls():
    data = make_data([(3, 4)])[0]
    x = nx.tensor(data, requires_grad=True)
    t = torch.tensor(data, requires_grad=True)
    for lib_x in (x, t):
        (lib_x * lib_x).sum().backward()
        (lib_x.exp()).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_grad_is_not_aliased_to_the_upstream_gradient():
    x = nx.ones(3, requires_grad=True)
    g = nx.ones(3)
    x.backward(g)
    g.numpy()[:] = 5.0
    x.backward(g)
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0, 6.0])


def test_backward_with_gradient_argument():
    data = make_data([(2, 3)])[0]
    up = make_data([(2, 3)], seed=9)[0]
    x = nx.tensor(data, requires_grad=True)
    t = torch.tensor(data, requires_grad=True)
    (x.tanh() * 3).backward(gradient=nx.tensor(up))
    (t.tanh() * 3).backward(gradient=torch.tensor(up))
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_backward_reuses_a_tensor_in_several_paths():
    # a diamond: x feeds two branches that meet again
    check_op([(3,)], lambda x: (x * x + x.exp()) * x)
    check_op([(2, 3)], lambda x: x.sum(0) * x.max(1)[0].sum() + x.mean())


def test_retain_grad_on_non_leaf():
    x = nx.ones(2, requires_grad=True)
    y = x * 3
    y.retain_grad()
    (y * y).sum().backward()
    np.testing.assert_array_equal(y.grad.numpy(), [6.0, 6.0])
    np.testing.assert_array_equal(x.grad.numpy(), [18.0, 18.0])


def test_detach():
    x = nx.ones(3, requires_grad=True)
    d = (x * 2).detach()
    assert not d.requires_grad and d.is_leaf
    y = x * d
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])
    e = x.detach()
    e.numpy()[0] = 5.0  # storage is shared, as in PyTorch
    assert x.detach().numpy()[0] == 5.0


def test_no_grad_context_manager():
    x = nx.ones(3, requires_grad=True)
    with nx.no_grad():
        assert not nx.is_grad_enabled()
        y = x * 2
        with nx.enable_grad():
            z = x * 2
    assert nx.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad


def test_no_grad_decorator():
    @nx.no_grad()
    def f(t):
        assert not nx.is_grad_enabled()
        return t * 2

    x = nx.ones(3, requires_grad=True)
    assert not f(x).requires_grad
    assert nx.is_grad_enabled()
    assert (x * 2).requires_grad


def test_no_grad_restores_mode_after_an_exception():
    with pytest.raises(KeyError), nx.no_grad():
        raise KeyError("inside no_grad")
    assert nx.is_grad_enabled()


def test_set_grad_enabled():
    x = nx.ones(1, requires_grad=True)
    with nx.set_grad_enabled(False):
        assert not (x * 1).requires_grad
    with nx.set_grad_enabled(True):
        assert (x * 1).requires_grad


def test_inplace_update_of_a_leaf_under_no_grad():
    x = nx.ones(3, requires_grad=True)
    with nx.no_grad():
        x[0] = 5.0
        x.copy_(x * 2)
    assert x.is_leaf and x.requires_grad
    np.testing.assert_array_equal(x.detach().numpy(), [10.0, 2.0, 2.0])


def test_to_float64_passes_gradient_back_as_float32():
    check_op([(3,)], lambda x: (x.to(torch.float64) if isinstance(x, torch.Tensor)
                                else x.to(nx.float64)) * 2)


def test_clone_keeps_the_graph():
    check_op([(3,)], lambda x: x.clone() * x)


def test_unflatten_matches_torch():
    """Regression: unflatten built its size check on an int8 array, which Neurenix refuses."""
    x = nx.arange(12.0).reshape(2, 6)
    for sizes in ((2, 3), (-1, 3), (6, 1)):
        np.testing.assert_array_equal(x.unflatten(1, sizes).numpy(),
                                      torch.arange(12.0).reshape(2, 6).unflatten(1, sizes).numpy())
    with pytest.raises(ValueError, match="unflatten: shape \\(4, 2\\) is invalid"):
        x.unflatten(1, (4, 2))


@pytest.mark.parametrize("mask, index", [([False], [1]), ([False], [-9]), ([], [5])])
def test_index_tensors_that_broadcast_to_nothing_are_not_range_checked(mask, index):
    """Regression (found by test_properties): an empty boolean mask next to an out-of-range
    index selects nothing, as in NumPy and PyTorch, instead of raising."""
    a = np.arange(2.0).reshape(1, 2, 1, 1).astype(np.float32)
    m, i = np.array(mask, dtype=bool), np.array(index, dtype=np.int64)
    if m.size == 0:
        m = np.zeros(0, dtype=np.int64)  # an empty index tensor instead of a mask
    want = torch.from_numpy(a)[..., torch.from_numpy(m), torch.from_numpy(i)]
    got = nx.Tensor(a)[..., nx.Tensor(m), nx.Tensor(i)]
    assert tuple(got.shape) == tuple(want.shape)
    with pytest.raises(IndexError, match="out of bounds"):
        nx.Tensor(a)[..., nx.Tensor(np.array([0])), nx.Tensor(np.array([3]))]
