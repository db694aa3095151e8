"""The fusion plan (compiler/lowering/fusion.py): its invariants and its decisions.

Invariants on every graph: the kernel graph is acyclic and launch order respects it, every
reduction is computed by exactly one kernel, every materialised value is stored by exactly one
kernel.  Decisions: epilogues, prologues, recomputation of cheap values, materialisation of
matmul operands and of broadcast values, merging of independent elementwise kernels.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from neurenix.compiler import GraphBuilder
from neurenix.compiler.lowering.fusion import (
    DUPLICATE_COST_LIMIT,
    is_reduction,
    plan_fusion,
)
from neurenix.compiler.lowering.lower import lower
from test_lower import (
    T,
    assert_matches,
    check,
    conv_graph,
    full_like,
    gelu,
    layer_norm,
    linear,
    log_softmax,
    lstm_cell_graph,
    maxpool_graph,
    mlp_graph,
    relu,
    softmax,
)


def assert_plan_invariants(graph, plan):
    dg = plan.group_graph()
    assert nx.is_directed_acyclic_graph(dg)
    for a, b in dg.edges:  # vertices are positions in launch order
        assert a < b, "a kernel runs before one it reads from"
    reductions = [n for n in graph.nodes if is_reduction(n)]
    for r in reductions:
        owners = [g for g in plan.groups if r in g.nodes]
        live = any(r in g.nodes for g in plan.groups)
        if live:
            assert len(owners) == 1, f"{r.op} computed by {len(owners)} kernels"
            assert owners[0].reduction is r
    for n in plan.materialised:
        assert sum(n in g.roots for g in plan.groups) == 1
    for g in plan.groups:
        for r in g.reads:
            assert plan.is_loaded(r)


def simple_graphs():
    def single(fn, *shapes):
        b = GraphBuilder()
        xs = [b.input(f"x{i}", T(*s)) for i, s in enumerate(shapes)]
        return b.build([fn(b, *xs)])

    return {
        "mlp": mlp_graph(),
        "softmax": single(lambda b, x: softmax(b, x), (4, 5)),
        "log_softmax": single(lambda b, x: log_softmax(b, x, 0), (4, 5)),
        "layer_norm": single(layer_norm, (3, 6), (6,), (6,)),
        "gelu": single(lambda b, x: gelu(b, x, "tanh"), (3, 4)),
        "conv": conv_graph(True),
        "maxpool": maxpool_graph(),
        "lstm_cell": lstm_cell_graph(),
    }


GRAPHS = simple_graphs()
EXPECTED_KERNELS = {"mlp": 2, "softmax": 3, "log_softmax": 3, "layer_norm": 3, "gelu": 1,
                    "conv": 1, "maxpool": 2, "lstm_cell": 3}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_composite_plans_keep_the_invariants(name):
    graph = GRAPHS[name]
    for fuse in (False, True):
        assert_plan_invariants(graph, plan_fusion(graph, fuse=fuse))
    assert len(lower(graph).kernels) == EXPECTED_KERNELS[name]


def test_a_reduction_read_by_many_consumers_is_computed_once():
    b = GraphBuilder()
    x = b.input("x", T(4, 5))
    s = b.reduce_sum(x, axes=(1,))
    scaled = b.div(x, b.expand(b.reshape(s, shape=(4, 1)), shape=(4, 5)))
    g = b.build([scaled, b.exp(s), b.mul(s, s), b.reduce_max(s, axes=(0,))])
    plan = plan_fusion(g)
    assert_plan_invariants(g, plan)
    assert sum(s in grp.nodes for grp in plan.groups) == 1
    assert s in plan.materialised
    check(g)


def test_cheap_values_are_recomputed_in_each_consumer():
    b = GraphBuilder()
    x = b.input("x", T(4, 5))
    e = b.exp(b.neg(x))
    g = b.build([b.reduce_sum(e, axes=(1,)), b.reduce_max(e, axes=(0,))])
    plan = plan_fusion(g)
    assert e not in plan.materialised
    assert sum(e in grp.nodes for grp in plan.groups) == 2
    check(g)


def test_an_expensive_value_with_two_consumers_is_materialised():
    b = GraphBuilder()
    x = b.input("x", T(4, 5))
    v = x
    for _ in range(DUPLICATE_COST_LIMIT + 1):
        v = b.tanh(v)
    g = b.build([b.reduce_sum(v, axes=(1,)), b.reduce_max(v, axes=(1,))])
    plan = plan_fusion(g)
    assert v in plan.materialised
    assert len(lower(g).kernels) == 3
    check(g)


def test_a_value_reading_many_inputs_is_stored_with_its_elementwise_consumer():
    # recomputing v would read four buffers in each consumer: store it instead, in the
    # kernel of its same-shape elementwise consumer
    b = GraphBuilder()
    xs = [b.input(f"x{i}", T(3, 4)) for i in range(4)]
    v = b.add(b.add(xs[0], xs[1]), b.add(xs[2], xs[3]))
    g = b.build([b.exp(v), b.reduce_sum(v, axes=(1,))])
    plan = plan_fusion(g)
    assert v in plan.materialised
    assert len(plan.groups) == 2
    assert set(plan.groups[0].roots) == {v, g.outputs[0]}
    check(g)


def test_a_transposed_read_does_not_merge_kernels():
    b = GraphBuilder()
    xs = [b.input(f"x{i}", T(4, 4)) for i in range(4)]
    v = b.add(b.add(xs[0], xs[1]), b.add(xs[2], xs[3]))
    g = b.build([b.exp(b.permute(v, perm=(1, 0))), b.reduce_sum(v, axes=(1,))])
    assert len(plan_fusion(g).groups) == 3
    check(g)


def test_a_computed_value_is_not_recomputed_per_broadcast_copy():
    b = GraphBuilder()
    x = b.input("x", T(4, 1))
    y = b.input("y", T(4, 64))
    gate = b.sigmoid(b.tanh(x))
    g = b.build([b.mul(y, b.expand(gate, shape=(4, 64)))])
    plan = plan_fusion(g)
    assert gate in plan.materialised
    check(g)
    # a bare input broadcast is just a load: nothing to materialise
    b = GraphBuilder()
    x = b.input("x", T(4, 1))
    y = b.input("y", T(4, 64))
    g = b.build([b.mul(y, b.expand(x, shape=(4, 64)))])
    assert len(lower(g).kernels) == 1


def test_epilogue_stops_where_a_consumer_depends_on_the_reduction_another_way():
    # c = r + sum(x * r): fusing c into r's kernel would need r's kernel to run after the
    # kernel that reads r: a cycle.  The plan must refuse it.
    b = GraphBuilder()
    x = b.input("x", T(3, 4))
    r = b.reduce_sum(x, axes=(1,))
    inner = b.reduce_sum(b.mul(x, b.expand(b.reshape(r, shape=(3, 1)), shape=(3, 4))),
                         axes=(1,))
    c = b.add(r, inner)
    g = b.build([c])
    plan = plan_fusion(g)
    assert_plan_invariants(g, plan)
    owner = next(grp for grp in plan.groups if grp.reduction is r)
    assert c not in owner.nodes
    assert len(plan.groups) == 2  # r alone; inner with c as its epilogue
    check(g)


def test_epilogue_absorbs_a_relu_that_reads_its_input_twice():
    b = GraphBuilder()
    x = b.input("x", T(2, 3))
    w = b.input("w", T(4, 3))
    bias = b.input("b", T(4))
    pre = linear(b, x, w, bias)
    act = relu(b, pre)
    g = b.build([act, pre])  # pre is also an output: a second store of the same kernel
    plan = plan_fusion(g)
    assert len(plan.groups) == 1
    assert set(plan.groups[0].roots) == {pre, act}
    check(g)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_after_a_matmul_is_its_epilogue(approximate):
    # x is read by several GELU nodes, some of which join the epilogue only after others
    b = GraphBuilder()
    x = b.input("x", T(3, 4))
    w = b.input("w", T(5, 4))
    bias = b.input("b", T(5))
    g = b.build([gelu(b, linear(b, x, w, bias), approximate)])
    assert len(plan_fusion(g).groups) == 1
    check(g)


def test_matmul_reads_weights_through_a_transpose_but_materialises_other_operands():
    b = GraphBuilder()
    x = b.input("x", T(3, 4))
    w = b.input("w", T(5, 4))
    padded = b.pad(x, lo=(0, 1), hi=(0, 0), interior=(0, 0), value=0.0)    # (3, 5): masked
    w_padded_t = b.permute(b.pad(w, lo=(0, 1), hi=(0, 0), interior=(0, 0), value=0.0),
                           perm=(1, 0))                                  # (5, 5): masked
    w_t = b.permute(w, perm=(1, 0))                                      # strided: free
    rows = b.slice(x, starts=(1, 0), stops=(3, 4), steps=(1, 1))         # offset 4
    g = b.build([b.matmul(padded, w_padded_t), b.matmul(x, w_t), b.matmul(rows, w_t)])
    plan = plan_fusion(g)
    # the transposed pad is stored as the pad itself, then read through the transpose
    assert {padded, w_padded_t.inputs[0], rows} <= plan.materialised
    assert w_t not in plan.materialised and w_padded_t not in plan.materialised
    s = check(g)
    gemms = [k for k in s.kernels if k.contraction is not None]
    assert len(gemms) == 3
    z_kernel = next(k for k in gemms if k.contraction["a"] == "x")
    assert z_kernel.contraction["b"] == "w" and z_kernel.contraction["b_strides"] == (0, 1, 4)


def test_weight_gradient_is_stored_transposed_by_its_matmul():
    # dW of a Linear: permute(x^T @ g) -- one kernel, no separate transpose
    b = GraphBuilder()
    x = b.input("x", T(8, 3))
    g = b.input("g", T(8, 5))
    dw = b.permute(b.matmul(b.permute(x, perm=(1, 0)), g), perm=(1, 0))
    graph = b.build([dw, b.reshape(dw, shape=(15,))])
    s = check(graph)
    assert len(s.kernels) == 2  # the GEMM storing out0 transposed, then a copy for out1
    assert s.kernels[0].contraction is not None
    assert s.kernels[0].stores[0].buffer == "out0"


def test_lstm_cell_outputs_share_one_elementwise_kernel():
    g = lstm_cell_graph()
    plan = plan_fusion(g)
    elementwise = [grp for grp in plan.groups if grp.kind == "elementwise"]
    assert len(elementwise) == 1
    assert set(elementwise[0].roots) == set(g.outputs)


def test_independent_kernels_without_a_common_input_stay_apart():
    b = GraphBuilder()
    x = b.input("x", T(3, 4))
    y = b.input("y", T(3, 4))
    assert len(plan_fusion(b.build([b.exp(x), b.exp(y)])).groups) == 2
    g = b.build([b.exp(x), b.exp(y), b.add(b.exp(x), y)])  # the sum shares x and y: one kernel
    assert len(plan_fusion(g).groups) == 1
    check(g)


def test_one_kernel_per_node_without_fusion():
    g = GRAPHS["softmax"]
    plan = plan_fusion(g, fuse=False)
    assert len(plan.groups) == g.ops_count()
    assert all(len(grp.nodes) == 1 for grp in plan.groups)


def test_dead_nodes_get_no_kernel():
    b = GraphBuilder()
    x = b.input("x", T(3))
    b.reduce_sum(b.exp(x), axes=(0,))
    g = b.build([b.neg(x)])
    assert len(lower(g).kernels) == 1


# ---- random graphs ------------------------------------------------------------------------

OPS = ["exp", "tanh", "neg", "add", "mul", "sub", "sum", "max", "matmul", "shift", "perm",
       "argmax", "tmatmul", "gather", "scatter"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 99), st.integers(0, 99)),
                min_size=1, max_size=14),
       st.lists(st.integers(0, 99), min_size=1, max_size=3))
def test_random_graphs_fuse_correctly(program, outs):
    """Random DAGs of (4, 6) values: plan invariants hold and kernels match the reference."""
    b = GraphBuilder()
    x = b.input("x", T(4, 6))
    w = b.input("w", T(6, 6))
    pool = [x]
    cols = b.constant(np.array([5, 0, 0, 3, 2, 5]), name="cols")
    for op, i, j in program:
        a, c = pool[i % len(pool)], pool[j % len(pool)]
        if op in ("exp", "tanh", "neg"):
            v = getattr(b, op)(b.tanh(a) if op == "exp" else a)
        elif op in ("add", "mul", "sub"):
            v = getattr(b, op)(a, c)
        elif op in ("sum", "max"):
            r = b.reduce_sum(a, axes=(1,)) if op == "sum" else b.reduce_max(a, axes=(0,))
            shape = (4, 1) if op == "sum" else (1, 6)
            v = b.expand(b.reshape(r, shape=shape), shape=(4, 6))
        elif op == "matmul":
            v = b.matmul(a, w if j % 2 else b.tanh(w))
        elif op == "shift":
            v = b.pad(b.slice(a, starts=(1, 0), stops=(4, 6), steps=(1, 1)), lo=(0, 0),
                      hi=(1, 0), interior=(0, 0), value=0.5)
        elif op == "tmatmul":  # a matmul stored transposed
            v = b.permute(b.matmul(w, b.permute(a, perm=(1, 0))), perm=(1, 0))
        elif op == "gather":
            v = b.gather(a, cols, axis=1)
        elif op == "scatter":
            v = b.scatter_add(a, cols, c, axis=1)
        elif op == "perm":
            v = b.reshape(b.permute(b.reshape(a, shape=(4, 2, 3)), perm=(0, 2, 1)),
                          shape=(4, 6))
        else:
            picked = b.argmax(a, axis=1)
            v = b.where(b.eq(b.expand(b.reshape(picked, shape=(4, 1)), shape=(4, 6)),
                             b.iota(shape=(4, 6), axis=1, dtype="int64")), a,
                        full_like(b, a, 0.0))
        pool.append(v)
    outputs = [pool[k % len(pool)] for k in outs]
    g = b.build(outputs)
    for fuse in (False, True):
        assert_plan_invariants(g, plan_fusion(g, fuse=fuse))
    rng = np.random.default_rng(len(program))
    data = [rng.uniform(-1, 1, (4, 6)).astype(np.float32),
            rng.uniform(-0.5, 0.5, (6, 6)).astype(np.float32)]
    assert_matches(g, data, fuse=True)


# ---- a target's limit of buffers per kernel ------------------------------------------------------


def _wide_graph():
    """Eight inputs summed elementwise (one kernel would read 8 buffers), two outputs that
    would merge, and a row sum whose epilogue reads five more inputs."""
    b = GraphBuilder("wide")
    xs = [b.input(f"x{k}", T(4, 5)) for k in range(8)]
    total = xs[0]
    for x in xs[1:]:
        total = b.add(total, b.mul(x, x))
    other = b.sub(xs[0], xs[1])
    epilogue = b.reduce_sum(total, axes=(1,))
    for k in range(5):
        epilogue = b.mul(epilogue, b.input(f"y{k}", T(4)))
    return b.build([total, other, epilogue])


@pytest.mark.parametrize("limit", [4, 5, 8])
def test_kernels_keep_within_a_buffer_limit(limit):
    from neurenix.compiler.targets import Capabilities
    graph = _wide_graph()
    caps = Capabilities(max_kernel_buffers=limit)
    plan = plan_fusion(graph, caps=caps)
    assert_plan_invariants(graph, plan)
    for g in plan.groups:
        assert len(g.reads) + len(g.roots) <= limit, g
    schedule = lower(graph, caps=caps)
    assert all(len(k.buffers()) <= limit for k in schedule.kernels), str(schedule)
    unlimited = plan_fusion(graph)
    assert max(len(g.reads) + len(g.roots) for g in unlimited.groups) > limit
    inputs = [np.random.default_rng(k).standard_normal(n.type.shape).astype(np.float32)
              for k, n in enumerate(graph.inputs)]
    from neurenix.compiler import evaluate
    from neurenix.compiler.kernel.eval import run_schedule
    for got, want in zip(run_schedule(schedule, inputs), evaluate(graph, inputs)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
