"""The shapes of kernels that matter for speed: max pooling as one max reduction, and no dead
stores from merged elementwise kernels.  Each case is checked against the reference evaluator
(through the kernel IR interpreter) and, compiled, through the LLVM backend."""
from __future__ import annotations

import numpy as np
import pytest
from neurenix.compiler import GraphBuilder
from neurenix.compiler.lowering.fusion import plan_fusion
from neurenix.compiler.passes.select_max import select_max
from test_codegen_graphs import assert_outputs_match, compile_graphs
from test_lower import T, check, full_like, maxpool_graph


def pool_graph(n=2, c=3, size=(6, 5), kernel=(2, 2), stride=(2, 2), return_index=False,
               select_axis=2, iota_axis=2):
    """Max pooling as the frontend writes it: -inf pad, unfold, argmax, one-hot select."""
    b = GraphBuilder("pool")
    x = b.input("x", T(n, c, *size))
    xp = b.pad(x, lo=(0, 0, 1, 0), hi=(0, 0, 1, 1), interior=(0,) * 4, value=float("-inf"))
    cols = b.unfold(xp, kernel=kernel, stride=stride, dilation=(1, 1))
    wins = cols.type.shape[4:]
    taps = kernel[0] * kernel[1]
    flat = b.reshape(cols, shape=(n, c, taps) + wins)
    first = b.argmax(flat, axis=2)
    iota_shape = [1, 1, 1, 1, 1]
    iota_shape[iota_axis] = flat.type.shape[iota_axis]
    hit = b.eq(b.expand(b.reshape(first, shape=(n, c, 1) + wins), shape=flat.type.shape),
               b.expand(b.iota(shape=tuple(iota_shape), axis=iota_axis, dtype="int64"),
                        shape=flat.type.shape))
    values = b.reduce_sum(b.where(hit, flat, full_like(b, flat, 0.0)), axes=(select_axis,))
    return b.build([values, first] if return_index else [values])


def pool_data(shape, rng, ties=False, nans=False):
    x = rng.standard_normal(shape).astype(np.float32)
    if ties:
        x = np.round(x)  # many equal values per window
    if nans:
        x.flat[rng.choice(x.size, size=max(1, x.size // 10), replace=False)] = np.nan
    return [x]


def test_max_pool_is_one_max_reduction_over_the_window_axes():
    g = pool_graph()
    s = check(g)
    (k,) = s.kernels
    assert k.reduce_op == "max" and k.reduce == (2, 2)
    assert "argmax" not in k.comment


@pytest.mark.parametrize("ties,nans", [(False, False), (True, False), (False, True)])
def test_max_pool_reduction_matches_the_reference(ties, nans):
    g = pool_graph(n=2, c=4, size=(9, 7), kernel=(3, 2), stride=(2, 2))
    rng = np.random.default_rng(1)
    data = pool_data(g.inputs[0].type.shape, rng, ties, nans)
    check(g, inputs=data)
    ((got, want),) = compile_graphs([(g, data)])
    assert_outputs_match(got, want, "max pool")


def test_argmax_still_computed_when_it_is_an_output():
    s = check(maxpool_graph())
    ops = sorted(k.reduce_op for k in s.kernels)
    assert ops == ["argmax", "max"]
    data = pool_data(maxpool_graph().inputs[0].type.shape, np.random.default_rng(2), ties=True)
    ((got, want),) = compile_graphs([(maxpool_graph(), data)])
    assert_outputs_match(got, want, "max pool with indices")


def test_select_of_another_axis_is_left_alone():
    # the one-hot mask runs along axis 2, the sum along axis 3: not a max
    g = pool_graph(select_axis=3)
    assert [n.op for n in select_max(g).nodes] == [n.op for n in g.nodes]
    check(g)


def test_iota_along_another_axis_is_left_alone():
    g = pool_graph(size=(6, 6), kernel=(2, 2), iota_axis=3)
    assert "reduce_max" not in [n.op for n in select_max(g).nodes]
    check(g)


def test_select_of_another_value_is_left_alone():
    b = GraphBuilder()
    x = b.input("x", T(3, 4))
    y = b.input("y", T(3, 4))
    first = b.argmax(x, axis=1)
    hit = b.eq(b.expand(b.reshape(first, shape=(3, 1)), shape=(3, 4)),
               b.expand(b.iota(shape=(1, 4), axis=1, dtype="int64"), shape=(3, 4)))
    g = b.build([b.reduce_sum(b.where(hit, y, full_like(b, y, 0.0)), axes=(1,))])
    assert "reduce_max" not in [n.op for n in select_max(g).nodes]
    s = check(g)
    assert sorted(k.reduce_op for k in s.kernels) == ["argmax", "sum"]


def eltwise_chain():
    """gelu_tanh(x * a + b) * sigmoid(x), a and b broadcast over the rows."""
    b = GraphBuilder()
    x = b.input("x", T(8, 16))
    a = b.input("a", T(16))
    c = b.input("c", T(16))
    row = (1, 16)
    v = b.add(b.mul(x, b.expand(b.reshape(a, shape=row), shape=(8, 16))),
              b.expand(b.reshape(c, shape=row), shape=(8, 16)))
    cube = b.mul(b.mul(v, v), v)
    inner = b.mul(b.add(v, b.mul(cube, full_like(b, v, 0.044715))),
                  full_like(b, v, 0.7978845608))
    cdf = b.mul(b.add(b.tanh(inner), full_like(b, v, 1.0)), full_like(b, v, 0.5))
    return b.build([b.mul(b.mul(v, cdf), b.sigmoid(x))]), v


def test_merged_elementwise_kernel_stores_no_dead_intermediate():
    g, v = eltwise_chain()
    plan = plan_fusion(g)
    assert v not in plan.materialised
    s = check(g)
    (k,) = s.kernels
    assert [st.buffer for st in k.stores] == ["out0"]
    assert not [name for name in s.buffers if name.startswith("t")]
    data = [np.random.default_rng(3).standard_normal(n.type.shape).astype(np.float32)
            for n in g.inputs]
    ((got, want),) = compile_graphs([(g, data)])
    assert_outputs_match(got, want, "elementwise chain", loose=True)


def test_a_merged_root_read_by_another_kernel_is_still_stored():
    b = GraphBuilder()
    x = b.input("x", T(8, 16))
    w = b.add(b.add(b.exp(x), b.log(b.abs(x))), b.sqrt(b.abs(x)))
    g = b.build([b.exp(w), b.tanh(w), b.reduce_sum(w, axes=(1,))])
    plan = plan_fusion(g)
    assert w in plan.materialised
    assert any(w in grp.roots for grp in plan.groups)
    check(g)
