"""Graphs through the whole CPU path: lower -> plan memory -> LLVM -> run, against evaluate().

Every registry primitive alone (the cases of tests/test_lower.py) and the composite models
there (MLP, softmax, layer norm, GELU, convolution, pooling, LSTM) are lowered, merged into a
few programs (one LLVM compile each) and compared output by output with the NumPy reference
evaluator of the graph.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from kernel_helpers import merge
from neurenix.compiler import GraphBuilder, evaluate
from neurenix.compiler.codegen import generate
from neurenix.compiler.kernel.memory import plan_memory
from neurenix.compiler.lowering.lower import lower
from neurenix.runtime.cpu import CpuExecutable
from test_lower import (
    CASES,
    FLAT,
    T,
    conv_graph,
    data_for,
    gelu,
    layer_norm,
    log_softmax,
    lstm_cell_graph,
    maxpool_graph,
    mlp_graph,
    one_node_graph,
    softmax,
)

# float32 transcendental routines of the backend are within a few ulp of NumPy's
TOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}


def compile_graphs(graphs_and_inputs):
    """Lower each graph, merge the schedules, compile once; returns per-graph (got, want)."""
    schedules = [lower(g) for g, _ in graphs_and_inputs]
    merged = merge(schedules)
    exe = CpuExecutable(generate(merged, plan_memory(merged)))
    flat_inputs = [x for _, inputs in graphs_and_inputs for x in inputs]
    outputs = iter(exe.run(flat_inputs))
    results = []
    for (g, inputs), s in zip(graphs_and_inputs, schedules):
        got = [next(outputs) for _ in s.outputs]
        results.append((got, evaluate(g, inputs)))
    return results


def assert_outputs_match(got, want, label, loose=False):
    assert len(got) == len(want), label
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"{label} output {i}"
        if w.dtype.kind == "f":
            tol = TOL[w.dtype] * (50 if loose else 1)
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, equal_nan=True,
                                       err_msg=f"{label} output {i}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"{label} output {i}")


@pytest.fixture(scope="module")
def primitives():
    cases = []
    for name, k in FLAT:
        rng = np.random.default_rng(zlib.crc32(name.encode()) + k)
        inputs, attrs = CASES[name][k](rng)
        cases.append((one_node_graph(name, inputs, attrs), inputs))
    return dict(zip(FLAT, compile_graphs(cases)))


@pytest.mark.parametrize("name, case", FLAT, ids=[f"{n}-{k}" for n, k in FLAT])
def test_every_primitive_compiles_and_matches_the_reference(primitives, name, case):
    got, want = primitives[(name, case)]
    assert_outputs_match(got, want, f"{name}-{case}")


def composite_graphs():
    out = {"mlp": mlp_graph(), "conv": conv_graph(False), "conv_pad": conv_graph(True),
           "conv_groups": conv_graph(True, groups=2), "maxpool": maxpool_graph(),
           "lstm_cell": lstm_cell_graph()}
    for fn in (softmax, log_softmax):
        for axis in (-1, 0):
            b = GraphBuilder()
            x = b.input("x", T(5, 37))
            out[f"{fn.__name__}_{axis}"] = b.build([fn(b, x, axis)])
    b = GraphBuilder()
    x = b.input("x", T(2, 3, 40))
    w = b.input("ln.weight", T(40), "param")
    bias = b.input("ln.bias", T(40), "param")
    out["layer_norm"] = b.build([layer_norm(b, x, w, bias)])
    for approximate in ("none", "tanh"):
        b = GraphBuilder()
        x = b.input("x", T(4, 93))
        out[f"gelu_{approximate}"] = b.build([gelu(b, x, approximate)])
    b = GraphBuilder()
    x = b.input("x", T(64, 784))
    w = b.input("w", T(784, 96), "param")
    out["gemm_64x784x96"] = b.build([b.matmul(x, w)])
    return out


@pytest.fixture(scope="module")
def composites():
    graphs = composite_graphs()
    cases = [(g, data_for(g, np.random.default_rng(i))) for i, g in enumerate(graphs.values())]
    return dict(zip(graphs, compile_graphs(cases)))


@pytest.mark.parametrize("name", list(composite_graphs()))
def test_composite_models_compile_and_match_the_reference(composites, name):
    got, want = composites[name]
    # a 784-term float32 dot product summed in another order differs by ~1e-6 * sqrt(784) * |x|
    assert_outputs_match(got, want, name, loose=name.startswith("gemm"))


def test_softmax_of_inf_and_nan_rows():
    b = GraphBuilder()
    x = b.input("x", T(3, 4))
    g = b.build([log_softmax(b, x), softmax(b, x)])
    data = [np.array([[0, 1, 2, 3], [-np.inf, 0, 1, 1], [np.nan, 1, 2, 3]], np.float32)]
    ((got, want),) = compile_graphs([(g, data)])
    assert_outputs_match(got, want, "softmax of inf and nan")
