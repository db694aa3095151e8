"""Lowering to the kernel IR, checked by interpreting the schedule with NumPy (kernel_eval).

Every registry primitive alone (one-node graphs, with and without fusion) and composite graphs
(MLP, softmax, layer norm, GELU, conv, pooling, LSTM cell, views, gather/scatter) must give what
the reference evaluator gives; fusion must keep the kernel counts the compiler promises.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from neurenix.compiler import GraphBuilder, evaluate
from neurenix.compiler.kernel.eval import KernelEvalError, run_schedule
from neurenix.compiler.kernel.ir import Binary, Load, format_kernel
from neurenix.compiler.lowering.lower import lower, sanitize, walk
from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.types import TensorType, dtype_from_numpy, float32, int64

# ---- helpers ------------------------------------------------------------------------------


def assert_matches(graph, inputs, fuse=True):
    """kernel_eval(lower(graph)) == evaluate(graph): exact for ints and bools."""
    schedule = lower(graph, fuse=fuse)
    got = run_schedule(schedule, inputs)
    want = evaluate(graph, inputs)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"output {i}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"output {i}: dtype {g.dtype} != {w.dtype}"
        if w.dtype.kind == "f":
            tol = 1e-5 if w.dtype == np.float32 else 1e-12
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, equal_nan=True,
                                       err_msg=f"output {i}\n{schedule}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"output {i}\n{schedule}")
    return schedule


def one_node_graph(op, inputs, attrs):
    b = GraphBuilder(op)
    args = [b.input(f"in{i}", TensorType(a.shape, dtype_from_numpy(a.dtype)))
            for i, a in enumerate(inputs)]
    return b.build([b.apply(op, *args, **attrs)])


def f32(rng, shape, low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape).astype(np.float32)


def f64(rng, shape, low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape)


def i64(rng, shape, low=-5, high=5):
    return rng.integers(low, high, size=shape).astype(np.int64)


def i32(rng, shape, low=-5, high=5):
    return rng.integers(low, high, size=shape).astype(np.int32)


def bools(rng, shape):
    return rng.integers(0, 2, size=shape).astype(bool)


def unary(*makers):
    return [lambda rng, m=m: ([m(rng, (3, 4))], {}) for m in makers]


def binary(*makers):
    return [lambda rng, m=m: ([m(rng, (3, 4)), m(rng, (2, 3, 4))[0]], {}) for m in makers]


def positive(rng, shape):
    return f32(rng, shape, 0.1, 3.0)


def nonzero(rng, shape):
    return f32(rng, shape, 0.5, 2.0) * rng.choice([-1, 1], size=shape).astype(np.float32)


_WIN = {"kernel": (2, 3), "stride": (1, 2), "dilation": (2, 1)}

# primitive -> generators of (inputs, attrs)
CASES = {
    "neg": unary(f32, i64),
    "exp": unary(f32, f64),
    "log": unary(positive, f32),
    "sqrt": unary(positive),
    "tanh": unary(f32),
    "sigmoid": [lambda rng: ([f32(rng, (3, 4), -30, 30)], {})],
    "erf": unary(f32, f64),
    "sin": unary(f32, f64),
    "cos": unary(f32, f64),
    "abs": unary(f32, i32),
    "sign": unary(f32, i64),
    "floor": unary(f32),
    "reciprocal": unary(nonzero),
    "logical_not": unary(bools),
    "cast": [lambda rng: ([f32(rng, (3, 4), -9, 9)], {"dtype": "int64"}),
             lambda rng: ([i64(rng, (3, 4))], {"dtype": "float32"}),
             lambda rng: ([i32(rng, (3, 4), -1, 2)], {"dtype": "bool"}),
             lambda rng: ([bools(rng, (3, 4))], {"dtype": "float64"}),
             lambda rng: ([f32(rng, (3, 4))], {"dtype": "float64"}),
             lambda rng: ([f32(rng, (3, 4))], {"dtype": "float32"})],
    "add": binary(f32, i64),
    "sub": binary(f32, i32),
    "mul": binary(f64, i64),
    "div": [lambda rng: ([f32(rng, (3, 4)), nonzero(rng, (3, 4))], {})],
    "pow": [lambda rng: ([positive(rng, (3, 4)), f32(rng, (3, 4))], {})],
    "floordiv": [lambda rng: ([i64(rng, (3, 4), -9, 9), i64(rng, (3, 4))], {}),
                 lambda rng: ([i32(rng, (3, 4), -9, 9), i32(rng, (3, 4))], {}),
                 lambda rng: ([f32(rng, (3, 4), -9, 9), f32(rng, (3, 4))], {})],
    "remainder": [lambda rng: ([i64(rng, (3, 4), -9, 9), i64(rng, (3, 4))], {}),
                  lambda rng: ([f64(rng, (3, 4), -9, 9), f64(rng, (3, 4))], {})],
    "maximum": binary(f32, i64),
    "minimum": binary(f32, i32),
    "eq": binary(i64, bools),
    "ne": binary(i32),
    "lt": binary(f32),
    "le": binary(i64),
    "gt": binary(f64),
    "ge": binary(i32),
    "logical_and": binary(bools),
    "logical_or": binary(bools),
    "where": [lambda rng: ([bools(rng, (3, 4)), f32(rng, (3, 4)), f32(rng, (3, 4))], {}),
              lambda rng: ([bools(rng, (2, 3)), i64(rng, (2, 3)), i64(rng, (2, 3))], {})],
    "stop_gradient": unary(f32),
    "reduce_sum": [lambda rng: ([f32(rng, (2, 3, 4))], {"axes": (0, 2)}),
                   lambda rng: ([f32(rng, (2, 3, 4))], {"axes": (1,)}),
                   lambda rng: ([f32(rng, (2, 3))], {"axes": (0, 1)}),
                   lambda rng: ([i64(rng, (2, 3))], {"axes": ()}),
                   lambda rng: ([f32(rng, (2, 0, 3))], {"axes": (1,)}),
                   lambda rng: ([i32(rng, (4, 5))], {"axes": (1,)})],
    "reduce_max": [lambda rng: ([f32(rng, (3, 4))], {"axes": (1,)}),
                   lambda rng: ([i64(rng, (2, 3, 2))], {"axes": (0, 2)})],
    "reduce_min": [lambda rng: ([f32(rng, (3, 4))], {"axes": (0,)}),
                   lambda rng: ([f64(rng, (2, 3))], {"axes": (0, 1)})],
    "reduce_prod": [lambda rng: ([f32(rng, (3, 4), 0.5, 1.5)], {"axes": (1,)}),
                    lambda rng: ([i64(rng, (2, 3, 2), -3, 3)], {"axes": (0, 2)})],
    "argmax": [lambda rng: ([i64(rng, (4, 6), 0, 3)], {"axis": 1}),
               lambda rng: ([f32(rng, (3, 4, 2))], {"axis": 0})],
    "argmin": [lambda rng: ([i32(rng, (4, 6), 0, 3)], {"axis": 0}),
               lambda rng: ([f64(rng, (5,))], {"axis": 0})],
    "reshape": [lambda rng: ([f32(rng, (2, 6))], {"shape": (3, 1, 4)}),
                lambda rng: ([i64(rng, (1,))], {"shape": ()}),
                lambda rng: ([f32(rng, ())], {"shape": (1, 1)}),
                lambda rng: ([f32(rng, (2, 3, 4))], {"shape": (4, 6)})],
    "permute": [lambda rng: ([f32(rng, (2, 3, 4))], {"perm": (2, 0, 1)}),
                lambda rng: ([bools(rng, (3, 5))], {"perm": (1, 0)})],
    "expand": [lambda rng: ([f32(rng, (3, 1))], {"shape": (3, 4)}),
               lambda rng: ([i64(rng, (1, 2, 1))], {"shape": (2, 2, 3)})],
    "slice": [lambda rng: ([f32(rng, (5, 6))],
                           {"starts": (1, 0), "stops": (5, 6), "steps": (2, 3)}),
              lambda rng: ([f32(rng, (4, 3))],
                           {"starts": (2, 1), "stops": (2, 3), "steps": (1, 1)}),
              lambda rng: ([i64(rng, (7,))], {"starts": (6,), "stops": (7,), "steps": (4,)})],
    "pad": [lambda rng: ([f32(rng, (2, 3))],
                         {"lo": (1, 0), "hi": (0, 2), "interior": (1, 2), "value": 1.5}),
            lambda rng: ([i64(rng, (3, 2))],
                         {"lo": (2, 2), "hi": (1, 0), "interior": (0, 0), "value": -7}),
            lambda rng: ([f32(rng, (0, 2))],
                         {"lo": (1, 0), "hi": (1, 1), "interior": (2, 0), "value": 3.0})],
    "concat": [lambda rng: ([f32(rng, (2, 1)), f32(rng, (2, 3)), f32(rng, (2, 2))],
                            {"axis": 1}),
               lambda rng: ([i64(rng, (0, 3)), i64(rng, (2, 3))], {"axis": 0}),
               lambda rng: ([bools(rng, (2, 2))], {"axis": 1})],
    "matmul": [lambda rng: ([f32(rng, (2, 3, 4)), f32(rng, (2, 4, 5))], {}),
               lambda rng: ([f32(rng, (3, 2)), f32(rng, (2, 4))], {}),
               lambda rng: ([i64(rng, (2, 2, 3, 2)), i64(rng, (2, 2, 2, 3))], {}),
               lambda rng: ([f32(rng, (3, 0)), f32(rng, (0, 2))], {})],
    "gather": [lambda rng: ([f32(rng, (4, 3)), np.array([0, 3, 3, 1, 0])], {"axis": 0}),
               lambda rng: ([f32(rng, (2, 5)), np.array([[4, 0], [4, 4]], np.int32)],
                            {"axis": 1}),
               lambda rng: ([i64(rng, (3, 4, 2)), np.array(2)], {"axis": 1})],
    "scatter_add": [lambda rng: ([f32(rng, (4, 3)), np.array([0, 2, 2, 3, 0]),
                                  f32(rng, (5, 3))], {"axis": 0}),
                    lambda rng: ([i64(rng, (2, 4)), np.array([[1, 1], [3, 1]], np.int32),
                                  i64(rng, (2, 2, 2))], {"axis": 1})],
    "unfold": [lambda rng: ([f32(rng, (1, 2, 5, 6))], dict(_WIN)),
               lambda rng: ([f32(rng, (2, 1, 7))],
                            {"kernel": (3,), "stride": (2,), "dilation": (1,)})],
    "fold": [lambda rng: ([f32(rng, (1, 2, 2, 3, 3, 2))], {"spatial": (5, 6), **_WIN}),
             lambda rng: ([f32(rng, (2, 1, 3, 3))],
                          {"spatial": (8,), "kernel": (3,), "stride": (2,), "dilation": (1,)})],
    "full": [lambda rng: ([], {"shape": (2, 3), "value": 1.25, "dtype": "float32"}),
             lambda rng: ([], {"shape": (), "value": 7, "dtype": "int64"}),
             lambda rng: ([], {"shape": (3,), "value": 1, "dtype": "bool"})],
    "iota": [lambda rng: ([], {"shape": (2, 3), "axis": 1, "dtype": "int64"}),
             lambda rng: ([], {"shape": (4, 2), "axis": 0, "dtype": "float32"})],
    "rng_uniform": [lambda rng: ([np.array(1234567890123, np.int64)],
                                 {"shape": (3, 5), "dtype": "float32"}),
                    lambda rng: ([np.array(-7, np.int64)], {"shape": (4,), "dtype": "float64"})],
}

FLAT = [(name, k) for name, gens in CASES.items() for k in range(len(gens))]


def test_every_primitive_has_a_lowering_case():
    assert set(CASES) == set(REGISTRY), (f"missing: {sorted(set(REGISTRY) - set(CASES))}, "
                                         f"unknown: {sorted(set(CASES) - set(REGISTRY))}")


@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("name, case", FLAT, ids=[f"{n}-{k}" for n, k in FLAT])
def test_primitive_alone(name, case, fuse):
    rng = np.random.default_rng(zlib.crc32(name.encode()) + case)
    inputs, attrs = CASES[name][case](rng)
    assert_matches(one_node_graph(name, inputs, attrs), inputs, fuse=fuse)


# ---- composites ---------------------------------------------------------------------------


def full_like(b, v, value):
    return b.full(shape=v.type.shape, value=value, dtype=v.type.dtype.name)


def bcast(b, v, shape):
    return b.broadcast_to(v, shape)


def relu(b, x):
    # as the frontend writes it: where(x > 0, x, 0)
    zero = full_like(b, x, 0.0)
    return b.where(b.gt(x, zero), x, zero)


def linear(b, x, w, bias):
    y = b.matmul(x, b.permute(w, perm=(1, 0)))
    return b.add(y, bcast(b, bias, y.type.shape))


def keep(b, v, shape, axis):
    """A reduced value back at rank, broadcast to `shape`."""
    kept = tuple(1 if i == axis else d for i, d in enumerate(shape))
    return b.expand(b.reshape(v, shape=kept), shape=shape)


def softmax(b, x, axis=-1):
    axis %= x.type.ndim
    shape = x.type.shape
    m = b.stop_gradient(b.reshape(b.reduce_max(x, axes=(axis,)),
                                  shape=tuple(1 if i == axis else d for i, d in
                                              enumerate(shape))))
    e = b.exp(b.sub(x, b.expand(m, shape=shape)))
    return b.div(e, keep(b, b.reduce_sum(e, axes=(axis,)), shape, axis))


def log_softmax(b, x, axis=-1):
    axis %= x.type.ndim
    shape = x.type.shape
    kept = tuple(1 if i == axis else d for i, d in enumerate(shape))
    m = b.stop_gradient(b.reshape(b.reduce_max(x, axes=(axis,)), shape=kept))
    m = b.where(b.eq(m, m), m, full_like(b, m, 0.0))
    s = b.log(b.reshape(b.reduce_sum(b.exp(b.sub(x, b.expand(m, shape=shape))), axes=(axis,)),
                        shape=kept))
    lse = b.reshape(b.add(s, m), shape=tuple(d for i, d in enumerate(shape) if i != axis))
    return b.sub(x, keep(b, lse, shape, axis))


def layer_norm(b, x, w, bias, eps=1e-5):
    shape = x.type.shape
    n = float(shape[-1])
    axis = len(shape) - 1
    kept = shape[:-1] + (1,)

    def mean(v):
        s = b.reshape(b.reduce_sum(v, axes=(axis,)), shape=kept)
        return b.div(s, full_like(b, s, n))

    centred = b.sub(x, b.expand(mean(x), shape=shape))
    var = mean(b.mul(centred, centred))
    rstd = b.reciprocal(b.sqrt(b.add(var, full_like(b, var, eps))))
    out = b.mul(centred, b.expand(rstd, shape=shape))
    return b.add(b.mul(out, bcast(b, w, shape)), bcast(b, bias, shape))


def gelu(b, x, approximate):
    c = lambda v: full_like(b, x, v)
    if approximate == "none":
        cdf = b.mul(b.add(b.erf(b.mul(x, c(1 / math.sqrt(2.0)))), c(1.0)), c(0.5))
    else:
        inner = b.mul(b.add(x, b.mul(b.mul(b.mul(x, x), x), c(0.044715))),
                      c(math.sqrt(2 / math.pi)))
        cdf = b.mul(b.add(b.tanh(inner), c(1.0)), c(0.5))
    return b.mul(x, cdf)


def data_for(graph, rng, low=-2.0, high=2.0):
    out = []
    for n in graph.inputs:
        t = n.type
        if t.dtype.is_floating:
            out.append(rng.uniform(low, high, t.shape).astype(t.dtype.np_type))
        else:
            out.append(rng.integers(0, 3, t.shape).astype(t.dtype.np_type))
    return out


def check(graph, seed=0, fuse=True, inputs=None):
    inputs = data_for(graph, np.random.default_rng(seed)) if inputs is None else inputs
    return assert_matches(graph, inputs, fuse=fuse)


def T(*shape, dtype=float32):
    return TensorType(tuple(shape), dtype)


def mlp_graph():
    b = GraphBuilder("mlp")
    x = b.input("x", T(8, 6))
    w1 = b.input("fc1.weight", T(5, 6), "param")
    b1 = b.input("fc1.bias", T(5), "param")
    w2 = b.input("fc2.weight", T(3, 5), "param")
    b2 = b.input("fc2.bias", T(3), "param")
    return b.build([linear(b, relu(b, linear(b, x, w1, b1)), w2, b2)])


def test_relu_of_linear_is_one_kernel_with_a_contraction():
    b = GraphBuilder()
    x = b.input("x", T(4, 6))
    w = b.input("fc.weight", T(5, 6), "param")
    bias = b.input("fc.bias", T(5), "param")
    g = b.build([relu(b, linear(b, x, w, bias))])
    s = check(g)
    assert len(s.kernels) == 1, s
    k = s.kernels[0]
    assert k.reduce_op == "sum" and k.reduce == (6,)
    assert k.contraction == {"a": "x", "b": "fc_weight", "batch": 1, "m": 4, "n": 5, "k": 6,
                             "a_strides": (0, 6, 1), "b_strides": (0, 1, 6)}


def test_mlp_two_kernels():
    s = check(mlp_graph())
    assert len(s.kernels) == 2
    assert all(k.contraction is not None for k in s.kernels)


@pytest.mark.parametrize("fn, limit", [(softmax, 3), (log_softmax, 3)])
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_family(fn, limit, axis):
    b = GraphBuilder()
    x = b.input("x", T(5, 7))
    s = check(b.build([fn(b, x, axis)]), seed=axis + 3)
    assert len(s.kernels) <= limit, s


def test_softmax_survives_inf_and_nan():
    b = GraphBuilder()
    x = b.input("x", T(3, 4))
    g = b.build([log_softmax(b, x), softmax(b, x)])
    data = np.array([[0, 1, 2, 3], [-np.inf, 0, 1, 1], [np.nan, 1, 2, 3]], np.float32)
    check(g, inputs=[data])


def test_layer_norm_at_most_three_kernels():
    b = GraphBuilder()
    x = b.input("x", T(2, 3, 8))
    w = b.input("ln.weight", T(8), "param")
    bias = b.input("ln.bias", T(8), "param")
    s = check(b.build([layer_norm(b, x, w, bias)]))
    assert len(s.kernels) <= 3, s


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_is_one_kernel(approximate):
    b = GraphBuilder()
    x = b.input("x", T(4, 9))
    s = check(b.build([gelu(b, x, approximate)]))
    assert len(s.kernels) == 1, s


def test_elementwise_chain_of_ten_ops_is_one_kernel():
    b = GraphBuilder()
    x = b.input("x", T(6, 5))
    a = b.input("a", T(5))
    y = x
    ops = [lambda v: b.mul(v, bcast(b, a, v.type.shape)), b.tanh, b.sigmoid,
           lambda v: b.add(v, x), b.exp, b.neg, b.abs, lambda v: b.sub(v, x), b.sigmoid,
           lambda v: b.maximum(v, x)]
    for op in ops:
        y = op(y)
    s = check(b.build([y]))
    assert len(s.kernels) == 1, s
    assert len(s.kernels[0].domain) == 2  # the broadcast of `a` keeps the 2-D domain


def test_contiguous_elementwise_domain_collapses_to_one_axis():
    b = GraphBuilder()
    x = b.input("x", T(2, 3, 4))
    y = b.input("y", T(4, 6))
    g = b.build([b.add(b.exp(x), b.reshape(y, shape=(2, 3, 4)))])
    s = check(g)
    assert s.kernels[0].domain == (24,)
    assert not any(isinstance(e, Binary) and e.op in ("idiv", "mod")
                   for st_ in s.kernels[0].stores for e in walk([st_.index, st_.value]))


def conv_graph(pad, groups=1):
    b = GraphBuilder("conv")
    n, c, h, w, o, k = 2, 2 * groups, 5, 6, 3 * groups, 3
    x = b.input("x", T(n, c, h, w))
    wt = b.input("conv.weight", T(o, c // groups, k, k), "param")
    bias = b.input("conv.bias", T(o), "param")
    if pad:
        x = b.pad(x, lo=(0, 0, 1, 1), hi=(0, 0, 1, 1), interior=(0, 0, 0, 0), value=0.0)
    cols = b.unfold(x, kernel=(k, k), stride=(1, 2), dilation=(1, 1))
    wins = cols.type.shape[4:]
    taps = c // groups * k * k
    cols = b.reshape(cols, shape=(n, groups, taps, wins[0] * wins[1]))
    wm = b.expand(b.reshape(b.reshape(wt, shape=(groups, o // groups, taps)),
                            shape=(1, groups, o // groups, taps)),
                  shape=(n, groups, o // groups, taps))
    out = b.reshape(b.matmul(wm, cols), shape=(n, o) + wins)
    out = b.add(out, b.expand(b.reshape(bias, shape=(1, o, 1, 1)), shape=out.type.shape))
    return b.build([relu(b, out)])


@pytest.mark.parametrize("pad", [False, True])
def test_conv_as_unfold_matmul(pad):
    s = check(conv_graph(pad))
    assert len(s.kernels) == 1, s  # the GEMM gathers its windows itself, bias and relu fused
    (gemm,) = s.kernels
    assert gemm.contraction is None  # its right operand is the (masked) window gather
    assert [a.name for a in gemm.inputs] == ["conv_weight", "x", "conv_bias"]
    loads = [e for e in walk([gemm.reduce_value]) if isinstance(e, Load)]
    assert any(ld.buffer == "x" and (ld.mask is not None) == pad for ld in loads)


def test_grouped_conv():
    check(conv_graph(True, groups=2))


def maxpool_graph():
    b = GraphBuilder("pool")
    n, c = 2, 3
    x = b.input("x", T(n, c, 6, 5))
    xp = b.pad(x, lo=(0, 0, 1, 0), hi=(0, 0, 1, 1), interior=(0,) * 4, value=float("-inf"))
    cols = b.unfold(xp, kernel=(2, 2), stride=(2, 2), dilation=(1, 1))
    wins = cols.type.shape[4:]
    flat = b.reshape(cols, shape=(n, c, 4) + wins)
    first = b.argmax(flat, axis=2)
    hit = b.eq(b.expand(b.reshape(first, shape=(n, c, 1) + wins), shape=flat.type.shape),
               b.expand(b.iota(shape=(1, 1, 4, 1, 1), axis=2, dtype="int64"),
                        shape=flat.type.shape))
    values = b.reduce_sum(b.where(hit, flat, full_like(b, flat, 0.0)), axes=(2,))
    return b.build([values, first])


def test_maxpool_via_unfold_and_argmax():
    s = check(maxpool_graph())
    assert len(s.kernels) == 2, s


def lstm_cell_graph():
    b = GraphBuilder("lstm")
    bs, n_in, hid = 3, 4, 5
    x = b.input("x", T(bs, n_in))
    h = b.input("h", T(bs, hid))
    c = b.input("c", T(bs, hid))
    w_ih = b.input("weight_ih_l0", T(4 * hid, n_in), "param")
    w_hh = b.input("weight_hh_l0", T(4 * hid, hid), "param")
    b_ih = b.input("bias_ih_l0", T(4 * hid), "param")
    b_hh = b.input("bias_hh_l0", T(4 * hid), "param")
    gates = b.add(linear(b, x, w_ih, b_ih), linear(b, h, w_hh, b_hh))
    i, f, g, o = (b.slice(gates, starts=(0, k * hid), stops=(bs, (k + 1) * hid), steps=(1, 1))
                  for k in range(4))
    c2 = b.add(b.mul(b.sigmoid(f), c), b.mul(b.sigmoid(i), b.tanh(g)))
    h2 = b.mul(b.sigmoid(o), b.tanh(c2))
    return b.build([h2, c2])


def test_lstm_cell_gate_math_is_one_kernel_after_the_matmuls():
    s = check(lstm_cell_graph())
    gemms = [k for k in s.kernels if k.contraction is not None]
    assert len(gemms) == 2
    assert len(s.kernels) - len(gemms) <= 2, s
    last = s.kernels[-1]
    assert {st_.buffer for st_ in last.stores} == {"out0", "out1"}, s


def test_unrolled_lstm_steps():
    b = GraphBuilder("lstm2")
    bs, hid = 2, 3
    h = b.input("h", T(bs, hid))
    c = b.input("c", T(bs, hid))
    w = b.input("w", T(4 * hid, hid), "param")
    for _ in range(3):
        gates = b.matmul(h, b.permute(w, perm=(1, 0)))
        i, f, g, o = (b.slice(gates, starts=(0, k * hid), stops=(bs, (k + 1) * hid),
                              steps=(1, 1)) for k in range(4))
        c = b.add(b.mul(b.sigmoid(f), c), b.mul(b.sigmoid(i), b.tanh(g)))
        h = b.mul(b.sigmoid(o), b.tanh(c))
    s = check(b.build([h, c]))
    assert len(s.kernels) == 3 * 2, s  # per step: the GEMM, then one kernel storing h and c
    assert all(len(k.stores) == 2 for k in s.kernels if k.contraction is None)


def test_broadcasting_chain():
    b = GraphBuilder()
    x = b.input("x", T(3, 1, 4))
    y = b.input("y", T(5, 1))
    z = b.input("z", T(4))
    shape = (3, 5, 4)
    out = b.mul(b.add(bcast(b, x, shape), bcast(b, y, shape)), bcast(b, b.exp(z), shape))
    out = b.sub(out, b.expand(b.reshape(b.reduce_sum(out, axes=(1,)), shape=(3, 1, 4)),
                              shape=shape))
    check(b.build([out]))


def test_permute_reshape_combinations():
    b = GraphBuilder()
    x = b.input("x", T(2, 3, 4, 5))
    y = b.permute(x, perm=(2, 0, 3, 1))           # (4, 2, 5, 3)
    y = b.reshape(y, shape=(8, 15))                # non-contiguous: needs idiv/mod
    y = b.permute(b.reshape(y, shape=(2, 4, 3, 5)), perm=(3, 1, 0, 2))
    y = b.exp(b.reshape(y, shape=(5, 24)))
    z = b.reshape(b.permute(x, perm=(0, 1, 3, 2)), shape=(6, 20))
    check(b.build([y, z]))


def test_slices_with_steps_and_nested_views():
    b = GraphBuilder()
    x = b.input("x", T(9, 8))
    s1 = b.slice(x, starts=(1, 0), stops=(9, 8), steps=(2, 3))        # (4, 3)
    s2 = b.slice(b.permute(s1, perm=(1, 0)), starts=(1, 1), stops=(3, 4), steps=(1, 2))
    y = b.add(b.reshape(s2, shape=(4,)), b.slice(b.reshape(x, shape=(72,)), starts=(5,),
                                                 stops=(69,), steps=(17,)))
    check(b.build([y, s1]))


def test_pad_of_computed_value_masks_its_loads():
    b = GraphBuilder()
    x = b.input("x", T(3, 4))
    y = b.pad(b.log(x), lo=(2, 1), hi=(1, 3), interior=(1, 0), value=-1.0)
    z = b.pad(b.slice(y, starts=(1, 0), stops=(8, 8), steps=(3, 2)), lo=(1, 1), hi=(0, 0),
              interior=(1, 1), value=0.5)
    s = check(b.build([y, z]), inputs=[np.random.default_rng(1).uniform(0.1, 2, (3, 4))
                                       .astype(np.float32)])
    loads = [e for k in s.kernels for st_ in k.stores for e in walk([st_.value])
             if isinstance(e, Load)]
    assert loads and all(ld.mask is not None for ld in loads)


def test_concat_of_views_and_computed_values():
    b = GraphBuilder()
    x = b.input("x", T(2, 3))
    y = b.input("y", T(2, 2))
    cat = b.concat(b.exp(x), y, b.slice(x, starts=(0, 1), stops=(2, 3), steps=(1, 1)),
                   axis=1)                                            # (2, 7)
    inner = b.slice(cat, starts=(0, 3), stops=(2, 5), steps=(1, 1))  # exactly y
    out = b.concat(b.permute(cat, perm=(1, 0)), b.permute(cat, perm=(1, 0)), axis=0)
    check(b.build([out, inner]))


def test_gather_with_repeated_and_computed_indices():
    b = GraphBuilder()
    table = b.input("emb.weight", T(6, 4), "param")
    idx = b.input("idx", T(2, 5, dtype=int64))
    gathered = b.gather(b.mul(table, table), idx, axis=0)                  # (2, 5, 4)
    back = b.gather(gathered, b.argmax(b.reduce_sum(gathered, axes=(0,)), axis=0), axis=1)
    data = [np.random.default_rng(2).standard_normal((6, 4)).astype(np.float32),
            np.array([[0, 5, 5, 2, 0], [1, 1, 1, 4, 3]])]
    check(b.build([gathered, back]), inputs=data)


def test_scatter_add_with_collisions():
    b = GraphBuilder()
    base = b.input("base", T(5, 3))
    idx = b.input("idx", T(6, dtype=int64))
    src = b.input("src", T(6, 3))
    out = b.scatter_add(b.mul(base, full_like(b, base, 2.0)), idx, b.exp(src), axis=0)
    total = b.reduce_sum(out, axes=(0, 1))
    data = [np.ones((5, 3), np.float32), np.array([4, 4, 0, 4, 1, 0]),
            np.random.default_rng(3).standard_normal((6, 3)).astype(np.float32)]
    s = check(b.build([out, total]), inputs=data)
    acc = [k for k in s.kernels if any(st_.accumulate for st_ in k.stores)]
    assert len(acc) == 1 and not acc[0].parallel


def test_scatter_add_into_zeros_is_an_embedding_gradient():
    b = GraphBuilder()
    g = b.input("g", T(4, 2))
    idx = b.input("idx", T(4, dtype=int64))
    zeros = b.full(shape=(3, 2), value=0.0, dtype="float32")
    out = b.scatter_add(zeros, idx, g, axis=0)
    check(b.build([out]), inputs=[np.arange(8, dtype=np.float32).reshape(4, 2),
                                  np.array([2, 0, 2, 2])])


def test_fold_of_unfold_counts_window_overlaps():
    b = GraphBuilder()
    x = b.input("x", T(1, 2, 6, 5))
    win = {"kernel": (3, 2), "stride": (2, 1), "dilation": (1, 2)}
    cols = b.unfold(x, **win)
    back = b.fold(b.mul(cols, cols), spatial=(6, 5), **win)
    s = check(b.build([back]))
    assert len(s.kernels) == 1, s


def test_rng_uniform_matches_the_reference_bits():
    b = GraphBuilder()
    seed = b.input("seed", T(dtype=int64))
    x = b.input("x", T(4, 6))
    keep = b.lt(b.rng_uniform(seed, shape=(4, 6), dtype="float32"), full_like(b, x, 0.7))
    dropped = b.where(keep, b.div(x, full_like(b, x, 0.7)), full_like(b, x, 0.0))
    s = check(b.build([dropped]), inputs=[np.array(42, np.int64),
                                          np.ones((4, 6), np.float32)])
    assert len(s.kernels) == 1


def test_reduction_to_a_scalar_and_zero_size_values():
    b = GraphBuilder()
    x = b.input("x", T(3, 4))
    e = b.input("e", T(0, 4))
    loss = b.div(b.reduce_sum(b.mul(x, x), axes=(0, 1)), b.full(shape=(), value=12.0,
                                                                 dtype="float32"))
    col = b.reduce_sum(e, axes=(0,))
    check(b.build([loss, col, b.exp(e)]))


# ---- buffers and schedule contract ----------------------------------------------------------


def test_buffer_names_outputs_and_copies():
    b = GraphBuilder()
    w = b.input("fc.weight", T(2, 3), "param")
    x = b.input("int", T(2, 3))
    c = b.constant(np.arange(6, dtype=np.float32).reshape(2, 3), name="table")
    y = b.add(x, c)
    g = b.build([y, w, y, c])
    s = check(g)
    assert s.inputs == ["fc_weight", "int_"]
    assert s.outputs == ["out0", "out1", "out2", "out3"]
    assert set(s.constants) == {"table"}
    assert s.shapes["out1"] == (2, 3)
    written = {st_.buffer for k in s.kernels for st_ in k.stores}
    assert written == set(s.outputs)
    assert not set(s.temporaries())


@pytest.mark.parametrize("raw, want", [("fc.weight", "fc_weight"), ("0x", "v0x"),
                                       ("_a", "v_a"), ("for", "for_"), ("a-b c", "a_b_c")])
def test_sanitize(raw, want):
    assert sanitize(raw) == want


def test_kernels_only_read_what_earlier_kernels_wrote():
    s = lower(maxpool_graph())
    ready = set(s.inputs) | set(s.constants)
    for k in s.kernels:
        assert {a.name for a in k.inputs} <= ready, k.name
        ready |= {a.name for a in k.outputs}


def test_comment_names_ops_and_sources():
    b = GraphBuilder()
    x = b.input("x", T(3))
    b.source = "model.py:7"
    y = b.exp(x)
    b.source = "model.py:8"
    y = b.neg(y)
    s = lower(b.build([y]))
    assert s.kernels[0].comment == "exp + neg (model.py:7, model.py:8)"
    assert "// exp + neg" in format_kernel(s.kernels[0])


def test_unfused_mode_is_one_kernel_per_node():
    g = mlp_graph()
    s = check(g, fuse=False)
    assert len(s.kernels) == g.ops_count()


def test_kernel_eval_rejects_out_of_bounds_access():
    from neurenix.compiler.kernel.ir import BufferArg, Const, Kernel, KernelGraph, Store, Var
    a = BufferArg("a", float32, 4)
    o = BufferArg("o", float32, 4)
    bad = Kernel("k", (a,), (o,), (4,), (Store("o", Var(0), Load("a", Binary(
        "add", Var(0), Const(1, int64)), float32)),))
    sched = KernelGraph([bad], {"a": a, "o": o}, ["a"], ["o"], {"a": (4,), "o": (4,)})
    with pytest.raises(KernelEvalError, match="out of bounds"):
        run_schedule(sched, [np.zeros(4, np.float32)])
    masked = Load("a", Binary("add", Var(0), Const(1, int64)), float32,
                  Binary("lt", Var(0), Const(3, int64)), 9.0)
    ok = Kernel("k", (a,), (o,), (4,), (Store("o", Var(0), masked),))
    sched.kernels = [ok]
    out = run_schedule(sched, [np.arange(4, dtype=np.float32)])[0]
    np.testing.assert_array_equal(out, [1, 2, 3, 9])
    twice = Kernel("k", (a,), (o,), (4,), (Store("o", Const(0, int64), Load("a", Var(0),
                                                                               float32)),))
    sched.kernels = [twice]
    with pytest.raises(KernelEvalError, match="twice"):
        run_schedule(sched, [np.zeros(4, np.float32)])


# ---- random view chains -------------------------------------------------------------------


@st.composite
def view_chain(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    steps = draw(st.lists(st.sampled_from(["reshape", "permute", "expand", "slice", "pad",
                                           "exp", "concat"]), min_size=1, max_size=5))
    return shape, steps, draw(st.randoms(use_true_random=False))


@settings(max_examples=60, deadline=None)
@given(view_chain())
def test_random_view_chains(chain):
    shape, steps, rnd = chain
    b = GraphBuilder()
    x = b.input("x", T(*shape))
    v = x
    for step in steps:
        s = v.type.shape
        if step == "reshape":
            n = v.type.numel
            divs = [d for d in range(1, n + 1) if n % d == 0]
            first = rnd.choice(divs)
            v = b.reshape(v, shape=(first, n // first) if rnd.random() < 0.7 else (n,))
        elif step == "permute":
            perm = list(range(len(s)))
            rnd.shuffle(perm)
            v = b.permute(v, perm=tuple(perm))
        elif step == "expand":
            v = b.expand(b.reshape(v, shape=(1,) + s), shape=(2,) + s)
        elif step == "slice":
            starts = tuple(rnd.randrange(d) for d in s)
            stops = tuple(rnd.randrange(a + 1, d + 1) for a, d in zip(starts, s))
            v = b.slice(v, starts=starts, stops=stops,
                        steps=tuple(rnd.randrange(1, 3) for _ in s))
        elif step == "pad":
            v = b.pad(v, lo=tuple(rnd.randrange(2) for _ in s),
                      hi=tuple(rnd.randrange(2) for _ in s),
                      interior=tuple(rnd.randrange(2) for _ in s), value=0.25)
        elif step == "exp":
            v = b.exp(v)
        else:
            v = b.concat(v, b.neg(v), axis=rnd.randrange(len(s)))
    g = b.build([b.add(v, v)])
    data = [np.random.default_rng(0).standard_normal(shape).astype(np.float32)]
    assert_matches(g, data, fuse=True)


def test_out_of_range_gather_and_scatter_indices_touch_no_memory():
    # the reference raises on such indices; generated code must never read or write outside
    # a buffer, so the kernels mask them: a gather reads 0, a scatter drops the update
    b = GraphBuilder()
    table = b.input("table", T(3, 2))
    idx = b.input("idx", T(4, dtype=int64))
    got = b.gather(table, idx, axis=0)
    acc = b.scatter_add(table, idx, b.input("src", T(4, 2)), axis=0)
    s = lower(b.build([got, acc]))
    data = np.arange(6, dtype=np.float32).reshape(3, 2)
    src = np.ones((4, 2), np.float32)
    out, scattered = run_schedule(s, [data, np.array([2, -1, 3, 0]), src])
    np.testing.assert_array_equal(out, [[4, 5], [0, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(scattered, data + [[1, 1], [0, 0], [1, 1]])
