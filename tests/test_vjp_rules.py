"""Every primitive's VJP rule against central finite differences in float64 (JAX check_grads).

`CASES` maps every registry entry to its input generators (None for a primitive declared
`non_differentiable`); a meta-test keeps the table and the registry in step, so a new primitive
cannot land without a gradient check.  Each rule runs through the eager builder, on tensors.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.ops.registry import non_differentiable

import neurenix as nx
from neurenix.dispatch import EAGER, apply

EPS = 1e-6
RTOL = 1e-5
ATOL = 1e-6


def _u(rng, shape, low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape)


def _nonzero(rng, shape):
    return _u(rng, shape, 0.5, 2.0) * rng.choice([-1.0, 1.0], size=shape)


def _distinct(rng, shape):
    """Values at least 0.1 apart, so a perturbation of EPS never changes which one wins."""
    n = int(np.prod(shape))
    return rng.permutation(np.arange(n) * 0.25 + rng.uniform(0, 0.1)).reshape(shape) - n * 0.1


def _unary(low=-2.0, high=2.0):
    return lambda rng: ([_u(rng, (3, 4), low, high)], {})


def _binary(rng):
    return [_u(rng, (3, 4)), _u(rng, (3, 4))], {}


def _no_tie(rng):
    x = _u(rng, (3, 4))
    return [x, x + _nonzero(rng, (3, 4)) * 0.5], {}


def _off_steps(rng):
    """x, y with x / y at least 0.2 from an integer, where floor division is locally flat."""
    y = _nonzero(rng, (3, 4))
    q = rng.integers(-3, 3, (3, 4)) + _u(rng, (3, 4), 0.2, 0.8)
    return [q * y, y], {}


def _prod_with_zeros(rng):
    x = _u(rng, (3, 4), 0.5, 1.5)
    x[0, 1] = 0.0  # one zero in a row
    x[2, 0] = x[2, 3] = 0.0  # two zeros in a row
    return [x], {"axes": (1,)}


_WINDOW = {"kernel": (2, 3), "stride": (1, 2), "dilation": (2, 1)}

# primitive -> generators of (inputs, attrs); None: declared non-differentiable
CASES = {
    "neg": [_unary()],
    "exp": [_unary()],
    "log": [_unary(0.5, 3.0)],
    "sqrt": [_unary(0.5, 3.0)],
    "tanh": [_unary()],
    "sigmoid": [_unary(-4.0, 4.0)],
    "erf": [_unary()],
    "sin": [_unary()],
    "cos": [_unary()],
    "abs": [lambda rng: ([_nonzero(rng, (3, 4))], {})],
    "sign": [lambda rng: ([_nonzero(rng, (3, 4))], {})],
    "floor": [lambda rng: ([rng.integers(-3, 3, (3, 4)) + _u(rng, (3, 4), 0.2, 0.8)], {})],
    "reciprocal": [lambda rng: ([_nonzero(rng, (3, 4))], {})],
    "cast": [lambda rng: ([_u(rng, (3, 4))], {"dtype": "float64"})],
    "add": [_binary],
    "sub": [_binary],
    "mul": [_binary],
    "div": [lambda rng: ([_u(rng, (3, 4)), _nonzero(rng, (3, 4))], {})],
    "pow": [lambda rng: ([_u(rng, (3, 4), 0.5, 2.0), _u(rng, (3, 4))], {})],
    "floordiv": [_off_steps],
    "remainder": [_off_steps],
    "maximum": [_no_tie],
    "minimum": [_no_tie],
    "where": [lambda rng: ([rng.integers(0, 2, (3, 4)).astype(bool), _u(rng, (3, 4)),
                            _u(rng, (3, 4))], {})],
    "reduce_sum": [lambda rng: ([_u(rng, (2, 3, 4))], {"axes": (0, 2)}),
                   lambda rng: ([_u(rng, (2, 3))], {"axes": (0, 1)}),
                   lambda rng: ([_u(rng, (2, 3))], {"axes": ()})],
    "reduce_prod": [lambda rng: ([_u(rng, (3, 4), 0.5, 1.5)], {"axes": (1,)}),
                    lambda rng: ([_u(rng, (2, 3, 2), -1.5, 1.5)], {"axes": (0, 2)}),
                    _prod_with_zeros],
    "reduce_max": [lambda rng: ([_distinct(rng, (3, 4))], {"axes": (1,)}),
                   lambda rng: ([_distinct(rng, (2, 3, 2))], {"axes": (0, 2)}),
                   lambda rng: ([_distinct(rng, (3, 4))], {"axes": (1,), "masked": True})],
    "reduce_min": [lambda rng: ([_distinct(rng, (3, 4))], {"axes": (0,)}),
                   lambda rng: ([_distinct(rng, (2, 3))], {"axes": (0, 1)}),
                   lambda rng: ([_distinct(rng, (2, 3))], {"axes": (0, 1), "masked": True})],
    "reshape": [lambda rng: ([_u(rng, (2, 6))], {"shape": (3, 1, 4)})],
    "permute": [lambda rng: ([_u(rng, (2, 3, 4))], {"perm": (2, 0, 1)})],
    "expand": [lambda rng: ([_u(rng, (3, 1))], {"shape": (3, 4)}),
               lambda rng: ([_u(rng, (1, 2, 1))], {"shape": (2, 2, 3)})],
    "slice": [lambda rng: ([_u(rng, (5, 6))],
                           {"starts": (1, 0), "stops": (5, 6), "steps": (2, 3)}),
              lambda rng: ([_u(rng, (4, 3))],
                           {"starts": (2, 1), "stops": (2, 3), "steps": (1, 1)})],
    "pad": [lambda rng: ([_u(rng, (2, 3))],
                         {"lo": (1, 0), "hi": (0, 2), "interior": (1, 2), "value": 1.5})],
    "concat": [lambda rng: ([_u(rng, (2, 1)), _u(rng, (2, 3)), _u(rng, (2, 2))], {"axis": 1})],
    "matmul": [lambda rng: ([_u(rng, (2, 3, 4)), _u(rng, (2, 4, 5))], {}),
               lambda rng: ([_u(rng, (3, 2)), _u(rng, (2, 4))], {})],
    "gather": [lambda rng: ([_u(rng, (4, 3)), np.array([0, 3, 3, 1, 0])], {"axis": 0}),
               lambda rng: ([_u(rng, (2, 5)), np.array([[4, 0], [4, 4]])], {"axis": 1})],
    "scatter_add": [lambda rng: ([_u(rng, (4, 3)), np.array([0, 2, 2, 3, 0]),
                                  _u(rng, (5, 3))], {"axis": 0})],
    "unfold": [lambda rng: ([_u(rng, (1, 2, 5, 6))], dict(_WINDOW))],
    "fold": [lambda rng: ([_u(rng, (1, 2, 2, 3, 3, 2))], {"spatial": (5, 6), **_WINDOW})],
    # piecewise constant, integral or seed-driven: declared non_differentiable
    "argmax": None,
    "argmin": None,
    "eq": None,
    "ne": None,
    "lt": None,
    "le": None,
    "gt": None,
    "ge": None,
    "logical_and": None,
    "logical_or": None,
    "logical_not": None,
    "full": None,
    "iota": None,
    "rng_uniform": None,
    "stop_gradient": None,
}

FLAT = [(name, k) for name, gens in CASES.items() if gens for k in range(len(gens))]


def test_every_registry_entry_has_a_case():
    assert set(CASES) == set(REGISTRY), (
        f"missing: {sorted(set(REGISTRY) - set(CASES))}, "
        f"unknown: {sorted(set(CASES) - set(REGISTRY))}")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_non_differentiable_entries_match_the_registry(name):
    vjp = REGISTRY[name].vjp
    assert vjp is not None, f"{name} declares no VJP (use non_differentiable explicitly)"
    assert (CASES[name] is None) == (vjp is non_differentiable), name


def _impl(name, inputs, attrs):
    return np.asarray(REGISTRY[name].impl(*inputs, **attrs), dtype=np.float64)


def numeric_vjp(name, inputs, attrs, g, i):
    """sum(g * d out / d inputs[i]) by central differences, one element at a time."""
    x = inputs[i]
    grad = np.zeros_like(x)
    for j in np.ndindex(x.shape):
        plus = [a.copy() for a in inputs]
        minus = [a.copy() for a in inputs]
        plus[i][j] += EPS
        minus[i][j] -= EPS
        diff = _impl(name, plus, attrs) - _impl(name, minus, attrs)
        grad[j] = np.sum(diff * g) / (2 * EPS)
    return grad


@pytest.mark.parametrize("name, case", FLAT, ids=[f"{n}-{k}" for n, k in FLAT])
def test_vjp_matches_finite_differences(name, case):
    rng = np.random.default_rng(zlib.crc32(name.encode()) + case)
    inputs, attrs = CASES[name][case](rng)
    inputs = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in inputs]
    tensors = [nx.tensor(a) for a in inputs]
    out = apply(name, *tensors, **attrs)
    g = rng.standard_normal(out.shape)
    prim = REGISTRY[name]
    float_inputs = [i for i, a in enumerate(inputs) if a.dtype.kind == "f"]
    assert float_inputs, f"{name}: the case has no floating input to differentiate"
    for i, a in enumerate(inputs):
        got = prim.vjp(EAGER, nx.tensor(g), out, tensors, attrs, i)
        if i not in float_inputs:
            assert got is None, f"{name}: input {i} is not floating but has a cotangent"
            continue
        assert got is not None, f"{name}: no cotangent for input {i}"
        assert got.shape == a.shape and got.dtype == nx.float64, \
            f"{name}: cotangent {got.dtype}{list(got.shape)} for input {a.dtype}{list(a.shape)}"
        want = numeric_vjp(name, inputs, attrs, g, i)
        np.testing.assert_allclose(got.numpy(), want, rtol=RTOL, atol=ATOL,
                                   err_msg=f"{name} input {i}")


@pytest.mark.parametrize("src, dst, flows", [
    ("float32", "float64", True), ("float64", "float32", True), ("float32", "int64", False),
    ("int64", "float32", False), ("bool", "float64", False)])
def test_cast_vjp_returns_to_the_source_dtype(src, dst, flows):
    x = nx.tensor(np.array([1.0, 0.0, 2.0]), dtype=getattr(nx, src))
    out = apply("cast", x, dtype=dst)
    g = nx.tensor(np.array([0.5, -1.0, 3.0]), dtype=out.dtype) if flows else nx.ones_like(out)
    got = REGISTRY["cast"].vjp(EAGER, g, out, (x,), {"dtype": dst}, 0)
    if not flows:
        assert got is None
        return
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got.numpy(), [0.5, -1.0, 3.0])


def test_maximum_vjp_splits_ties():
    x = nx.tensor(np.array([1.0, 2.0, 3.0]))
    y = nx.tensor(np.array([1.0, 5.0, 0.0]))
    g = nx.tensor(np.array([2.0, 2.0, 2.0]))
    for name, want_x in (("maximum", [1.0, 0.0, 2.0]), ("minimum", [1.0, 2.0, 0.0])):
        out = apply(name, x, y)
        gx = REGISTRY[name].vjp(EAGER, g, out, (x, y), {}, 0)
        gy = REGISTRY[name].vjp(EAGER, g, out, (x, y), {}, 1)
        np.testing.assert_array_equal(gx.numpy(), want_x)
        np.testing.assert_array_equal(gx.numpy() + gy.numpy(), [2.0, 2.0, 2.0])


def test_maximum_vjp_gives_both_operands_the_gradient_at_nan():
    nan = float("nan")
    x = nx.tensor(np.array([nan, 1.0, nan, 2.0]))
    y = nx.tensor(np.array([1.0, nan, nan, 1.0]))
    g = nx.tensor(np.array([2.0, 2.0, 2.0, 2.0]))
    for name, want_y in (("maximum", [2.0, 2.0, 2.0, 0.0]), ("minimum", [2.0, 2.0, 2.0, 2.0])):
        out = apply(name, x, y)
        gx = REGISTRY[name].vjp(EAGER, g, out, (x, y), {}, 0)
        gy = REGISTRY[name].vjp(EAGER, g, out, (x, y), {}, 1)
        want_x = [2.0, 2.0, 2.0, 2.0 if name == "maximum" else 0.0]
        np.testing.assert_array_equal(gx.numpy(), want_x)
        np.testing.assert_array_equal(gy.numpy(), want_y)


def test_abs_vjp_is_zero_at_zero_and_nan():
    x = nx.tensor(np.array([float("nan"), -0.0, 0.0, -2.0, 3.0, float("-inf")]))
    g = nx.tensor(np.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0]))
    got = REGISTRY["abs"].vjp(EAGER, g, apply("abs", x), (x,), {}, 0)
    np.testing.assert_array_equal(got.numpy(), [0.0, 0.0, 0.0, -2.0, 2.0, -2.0])


@pytest.mark.parametrize("masked", [False, True])
def test_reduce_max_vjp_shares_ties(masked):
    x = nx.tensor(np.array([[3.0, 1.0, 3.0], [0.0, 0.0, 0.0]]))
    out = apply("reduce_max", x, axes=(1,), masked=masked)
    got = REGISTRY["reduce_max"].vjp(EAGER, nx.tensor(np.array([1.0, 3.0])), out, (x,),
                                     {"axes": (1,), "masked": masked}, 0)
    np.testing.assert_array_equal(got.numpy(), [[0.5, 0.0, 0.5], [1.0, 1.0, 1.0]])


def test_reduce_max_vjp_at_nan():
    """amax's rule (the default), (g / count) * (x == out): nan over a slice holding a nan,
    nan over a slice whose cotangent is nan, nan off the extreme under an infinite one.
    max()'s (`masked`): g / count on the nans or the extremes, 0 elsewhere."""
    nan, inf = float("nan"), float("inf")
    x = nx.tensor(np.array([[1.0, nan, nan], [1.0, 2.0, 2.0], [1.0, 2.0, 0.0]]))
    g = nx.tensor(np.array([1.0, nan, inf]))
    vjp = REGISTRY["reduce_max"].vjp
    out = apply("reduce_max", x, axes=(1,))
    got = vjp(EAGER, g, out, (x,), {"axes": (1,)}, 0)
    np.testing.assert_array_equal(got.numpy(), [[nan] * 3, [nan] * 3, [nan, inf, nan]])
    got = vjp(EAGER, g, out, (x,), {"axes": (1,), "masked": True}, 0)
    np.testing.assert_array_equal(got.numpy(), [[0.0, 0.5, 0.5], [0.0, nan, nan],
                                                [0.0, inf, 0.0]])


def test_pow_vjp_at_zero_base_is_finite():
    x = nx.tensor(np.array([0.0, 0.0, 0.0]))
    y = nx.tensor(np.array([0.0, 1.0, 2.0]))
    out = apply("pow", x, y)
    g = nx.ones_like(out)
    gx = REGISTRY["pow"].vjp(EAGER, g, out, (x, y), {}, 0)
    gy = REGISTRY["pow"].vjp(EAGER, g, out, (x, y), {}, 1)
    np.testing.assert_array_equal(gx.numpy(), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(gy.numpy(), [0.0, 0.0, 0.0])


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_pow_is_exact_and_has_no_gradient(dtype):
    """The pow primitive on integers is PyTorch's powi (wrapping); no gradient flows."""
    x = nx.tensor(np.array([3000000, 0, 0, 1, -1, -1, 5], dtype))
    y = nx.tensor(np.array([3, -1, 0, -9, -9, -8, -2], dtype))
    out = apply("pow", x, y)
    bits = 8 * np.dtype(dtype).itemsize
    wrapped = (3000000 ** 3 + 2 ** (bits - 1)) % 2 ** bits - 2 ** (bits - 1)
    assert out.numpy().tolist() == [wrapped, 0, 1, 1, -1, 1, 0]
    for i in (0, 1):
        assert REGISTRY["pow"].vjp(EAGER, out, out, (x, y), {}, i) is None


def test_sign_is_zero_at_nan_and_negative_zero():
    out = apply("sign", nx.tensor(np.array([float("nan"), -0.0, -3.0, 2.0])))
    assert out.numpy().tolist() == [0.0, 0.0, -1.0, 1.0]
    assert not np.signbit(out.numpy()[:2]).any()


@pytest.mark.parametrize("name", [n for n, gens in CASES.items() if gens is None
                                  and REGISTRY[n].arity != 0])
def test_non_differentiable_ops_are_not_recorded(name):
    x = nx.tensor(np.array([[0.5, -1.0], [2.0, 0.5]]), requires_grad=True)
    args = {"argmax": ((x,), {"axis": 1}), "argmin": ((x,), {"axis": 0}),
            "logical_not": (((x > 0),), {}), "logical_and": ((x > 0, x > 1), {}),
            "logical_or": ((x > 0, x > 1), {}), "stop_gradient": ((x,), {}),
            "rng_uniform": ((nx.tensor(7),), {"shape": (2,), "dtype": "float64"})}
    inputs, attrs = args.get(name, ((x, x * 2), {}))
    out = apply(name, *inputs, **attrs)
    assert not out.requires_grad and out.grad_fn is None
