"""The graph IR: building by hand, the reference evaluator, the text form, verify(), networkx,
type-rule errors, and VJP rules run symbolically through GraphBuilder."""
from __future__ import annotations

import networkx
import numpy as np
import pytest
from neurenix.compiler import (
    Graph,
    GraphBuilder,
    IRError,
    Node,
    TensorType,
    evaluate,
    parse_graph,
    print_graph,
    structurally_equal,
)
from neurenix.compiler.graph.ir import INPUT, make_node
from neurenix.compiler.ops import REGISTRY, OpError
from neurenix.compiler.types import bool_, dtype_from_numpy, float32, float64, int64
from test_vjp_rules import CASES

import neurenix as nx
from neurenix.dispatch import EAGER, apply

F32 = float32


def _t(*shape, dtype=F32):
    return TensorType(tuple(shape), dtype)


def _mlp_graph():
    """x @ w^T + b, tanh, summed over the features: the kind of graph a Linear layer traces to."""
    gb = GraphBuilder("mlp")
    x = gb.input("x", _t(4, 3))
    w = gb.input("w", _t(2, 3), kind="param")
    b = gb.input("b", _t(2), kind="param")
    h = gb.matmul(x, gb.permute(w, perm=(1, 0)))
    h = gb.add(h, gb.broadcast_to(b, (4, 2)))
    y = gb.tanh(h)
    s = gb.reduce_sum(y, axes=(1,))
    return gb.build([y, s])


def _mlp_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((4, 3)).astype(np.float32),
            "w": rng.standard_normal((2, 3)).astype(np.float32),
            "b": rng.standard_normal(2).astype(np.float32)}


# ---- building and evaluating --------------------------------------------------------------


def test_hand_built_graph_evaluates_like_numpy():
    graph = _mlp_graph()
    inputs = _mlp_inputs()
    y, s = evaluate(graph, inputs)
    want = np.tanh(inputs["x"] @ inputs["w"].T + inputs["b"])
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s, want.sum(1), rtol=1e-5, atol=1e-6)
    assert y.dtype == np.float32 and s.shape == (4,)
    positional = evaluate(graph, [inputs["x"], inputs["w"], inputs["b"]])
    np.testing.assert_array_equal(positional[0], y)


def test_node_types_are_inferred():
    graph = _mlp_graph()
    assert [str(n.type) for n in graph.nodes] == [
        "f32[4,3]", "f32[2,3]", "f32[2]", "f32[3,2]", "f32[4,2]", "f32[1,2]", "f32[4,2]",
        "f32[4,2]", "f32[4,2]", "f32[4]"]
    assert graph.ops_count() == 7
    assert [n.attr["kind"] for n in graph.inputs] == ["data", "param", "param"]


def test_constants_and_sources():
    gb = GraphBuilder()
    x = gb.input("x", _t(3))
    c = gb.constant(np.array([1.0, 2.0, 3.0], np.float32), name="scale")
    gb.source = "model.py:12"
    y = gb.mul(x, c)
    graph = gb.build([y])
    (out,) = evaluate(graph, {"x": np.ones(3, np.float32)})
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0])
    assert y.source == "model.py:12"
    assert "# model.py:12" in str(graph)


def test_source_and_cast_and_compare_ops():
    gb = GraphBuilder()
    x = gb.input("x", _t(2, 3))
    ramp = gb.iota(shape=(2, 3), axis=1, dtype="float32")
    mask = gb.lt(x, ramp)
    filled = gb.full(shape=(2, 3), value=-1.0, dtype="float32")
    y = gb.where(mask, filled, x)
    idx = gb.argmax(y, axis=1)
    as_f = gb.cast(idx, dtype="float64")
    graph = gb.build([y, as_f])
    a = np.array([[0.5, 0.5, 3.0], [-1.0, 4.0, 0.0]], np.float32)
    y_val, idx_val = evaluate(graph, {"x": a})
    want = np.where(a < np.arange(3), -1.0, a)
    np.testing.assert_array_equal(y_val, want)
    np.testing.assert_array_equal(idx_val, want.argmax(1).astype(np.float64))
    assert idx_val.dtype == np.float64


def test_evaluate_rejects_bad_inputs():
    graph = _mlp_graph()
    inputs = _mlp_inputs()
    with pytest.raises(ValueError, match="takes 3 inputs, got 1"):
        evaluate(graph, [inputs["x"]])
    with pytest.raises(ValueError, match="missing input 'b'"):
        evaluate(graph, {"x": inputs["x"], "w": inputs["w"]})
    with pytest.raises(ValueError, match="input 'x' expects f32\\[4,3\\], got float64"):
        evaluate(graph, {**inputs, "x": inputs["x"].astype(np.float64)})


def test_builder_rejects_bad_inputs():
    gb = GraphBuilder()
    gb.input("x", _t(2))
    with pytest.raises(IRError, match="declared twice"):
        gb.input("x", _t(2))
    with pytest.raises(IRError, match="kind must be one of"):
        gb.input("y", _t(2), kind="weights")
    with pytest.raises(AttributeError, match="no primitive or helper 'conv9d'"):
        gb.conv9d()


def test_attributes_are_frozen_and_hashable():
    gb = GraphBuilder()
    x = gb.input("x", _t(2, 3))
    y = gb.permute(x, perm=[1, 0])
    z = gb.reduce_sum(y, axes=[np.int64(0)])
    assert y.attr["perm"] == (1, 0) and isinstance(z.attr["axes"][0], int)
    hash(y.attrs)


# ---- text form ------------------------------------------------------------------------------

DOC_EXAMPLE = """graph main(%x: f32[4,3], %w: f32[2,3] param) {
  %0 = permute(%w) {perm=(1, 0)} : f32[3,2]
  %1 = matmul(%x, %0) : f32[4,2]
  return %1
}"""


def test_printed_form_is_the_documented_one():
    graph = parse_graph(DOC_EXAMPLE)
    assert print_graph(graph) == DOC_EXAMPLE
    assert str(graph) == DOC_EXAMPLE


def _graph_with_everything():
    gb = GraphBuilder("everything")
    x = gb.input("x", _t(2, 3))
    w = gb.input("w", _t(3, 3), kind="param")
    r = gb.input("running", _t(3), kind="buffer")
    idx = gb.input("idx", _t(2, dtype=int64))
    c = gb.constant(np.full((2, 3), 0.5, np.float32), name="half")
    h = gb.matmul(x, w)
    h = gb.sub(h, gb.broadcast_to(r, (2, 3)))
    h = gb.maximum(h, c)
    gb.source = "net.py:7"
    p = gb.pad(h, lo=(0, 1), hi=(1, 0), interior=(0, 1), value=-1.5)
    sl = gb.slice(p, starts=(0, 1), stops=(3, 6), steps=(2, 2))
    gb.source = None
    g = gb.gather(x, idx, axis=0)
    cat = gb.concat(sl, g, axis=0)
    d = gb.cast(cat, dtype="float64")
    m = gb.reduce_max(d, axes=(0, 1))
    return gb.build([d, m, idx])


def test_print_parse_round_trip():
    graph = _graph_with_everything()
    text = print_graph(graph)
    again = parse_graph(text, constants=graph.constants)
    assert structurally_equal(graph, again)
    assert print_graph(again) == text
    assert [n.attr["kind"] for n in again.inputs] == ["data", "param", "buffer", "data"]
    rng = np.random.default_rng(1)
    inputs = {"x": rng.standard_normal((2, 3)).astype(np.float32),
              "w": rng.standard_normal((3, 3)).astype(np.float32),
              "running": rng.standard_normal(3).astype(np.float32),
              "idx": np.array([1, 0])}
    for a, b in zip(evaluate(graph, inputs), evaluate(again, inputs)):
        np.testing.assert_array_equal(a, b)


def test_structural_equality_sees_differences():
    def build(op, axis):
        gb = GraphBuilder()
        x = gb.input("x", _t(2, 3))
        return gb.build([gb.reduce_sum(getattr(gb, op)(x), axes=(axis,))])

    assert structurally_equal(build("exp", 0), build("exp", 0))
    assert not structurally_equal(build("exp", 0), build("tanh", 0))
    assert not structurally_equal(build("exp", 0), build("exp", 1))


def test_parse_checks_types_and_syntax():
    with pytest.raises(IRError, match="rule gives f32\\[4,2\\]"):
        parse_graph(DOC_EXAMPLE.replace("matmul(%x, %0) : f32[4,2]", "matmul(%x, %0) : f32[4,3]"))
    with pytest.raises(IRError, match="cannot parse node line"):
        parse_graph(DOC_EXAMPLE.replace("%1 = matmul(%x, %0)", "%1 = = matmul"))
    with pytest.raises(IRError, match="expected 'graph NAME"):
        parse_graph("function main() {\n}")
    with pytest.raises(IRError, match="bad type"):
        parse_graph(DOC_EXAMPLE.replace("%x: f32[4,3]", "%x: f32(4,3)"))
    with pytest.raises(OpError, match="matmul"):
        parse_graph(DOC_EXAMPLE.replace("%x: f32[4,3]", "%x: f32[4,5]"))


def test_parse_refuses_a_missing_constant():
    graph = _graph_with_everything()
    with pytest.raises(IRError, match="constant 'half' is missing"):
        parse_graph(print_graph(graph))


# ---- verify ---------------------------------------------------------------------------------


def test_verify_catches_use_before_def():
    gb = GraphBuilder()
    x = gb.input("x", _t(3))
    y = gb.exp(x)
    z = gb.neg(y)
    graph = Graph([x], [x, z, y], [z])
    with pytest.raises(IRError, match="neg node .* uses <exp f32\\[3\\]> before it is defined"):
        graph.verify()
    Graph([x], [x, y, z], [z]).verify()


def test_verify_catches_a_wrong_type():
    gb = GraphBuilder()
    x = gb.input("x", _t(3))
    bad = Node("exp", (x,), (), _t(3, dtype=float64))
    with pytest.raises(IRError, match="exp node .* has type f64\\[3\\], its rule gives f32\\[3\\]"):
        Graph([x], [x, bad], [bad]).verify()
    shape_bad = Node("reduce_sum", (x,), (("axes", (0,)),), _t(3))
    with pytest.raises(IRError, match="its rule gives f32\\[\\]"):
        Graph([x], [x, shape_bad], [shape_bad]).verify()


def test_verify_catches_malformed_graphs():
    gb = GraphBuilder()
    x = gb.input("x", _t(3))
    y = gb.exp(x)
    stray = Node(INPUT, (), (("kind", "data"),), _t(3), "stray")
    with pytest.raises(IRError, match="'stray' is not listed in graph.inputs"):
        Graph([x], [x, stray, y], [y]).verify()
    with pytest.raises(IRError, match="output .* is not a node of the graph"):
        Graph([x], [x], [y]).verify()
    with pytest.raises(IRError, match="does not appear in graph.nodes"):
        Graph([x], [], []).verify()
    with pytest.raises(IRError, match="must be an input node"):
        Graph([y], [x, y], [y]).verify()
    c = gb.constant(np.zeros(3, np.float32), name="c0")
    with pytest.raises(IRError, match="constant 'c0' is missing or does not match"):
        Graph([x], [x, c], [c], {"c0": np.zeros(4, np.float32)}).verify()


# ---- networkx -------------------------------------------------------------------------------


def test_to_networkx_counts():
    graph = _mlp_graph()
    g = graph.to_networkx()
    assert g.number_of_nodes() == len(graph.nodes) == 10
    assert g.number_of_edges() == sum(len(n.inputs) for n in graph.nodes) == 9
    assert networkx.is_directed_acyclic_graph(g)
    assert [g.nodes[i]["op"] for i in networkx.topological_sort(g)][:1] == ["input"]
    outputs = [i for i, d in g.nodes(data=True) if d["output"]]
    assert [g.nodes[i]["op"] for i in outputs] == ["tanh", "reduce_sum"]
    assert g.nodes[0]["type"] == "f32[4,3]" and g.nodes[0]["name"] == "x"


def test_to_networkx_merges_a_repeated_operand():
    gb = GraphBuilder()
    x = gb.input("x", _t(3))
    y = gb.mul(x, x)
    g = gb.build([y]).to_networkx()
    assert g.number_of_nodes() == 2 and g.number_of_edges() == 1
    assert list(g.predecessors(1)) == [0]


# ---- type rules -----------------------------------------------------------------------------

BAD_TYPES = [
    ("add", [_t(2, 3), _t(3)], {}, ["add", "f32[2,3]", "f32[3]"]),
    ("add", [_t(2), _t(2, dtype=float64)], {}, ["add", "f32[2]", "f64[2]"]),
    ("sub", [_t(2, dtype=bool_), _t(2, dtype=bool_)], {}, ["sub", "numeric", "i1[2]"]),
    ("exp", [_t(2, dtype=int64)], {}, ["exp", "floating", "i64[2]"]),
    ("logical_not", [_t(2)], {}, ["logical_not", "bool", "f32[2]"]),
    ("matmul", [_t(2, 3), _t(4, 5)], {}, ["matmul", "f32[2,3] @ f32[4,5]"]),
    ("matmul", [_t(3), _t(3)], {}, ["matmul", "f32[3] @ f32[3]"]),
    ("reshape", [_t(2, 3)], {"shape": (4, 2)}, ["reshape", "(4, 2)", "6 elements vs 8"]),
    ("permute", [_t(2, 3)], {"perm": (0, 0)}, ["permute", "(0, 0)", "f32[2,3]"]),
    ("expand", [_t(2, 3)], {"shape": (4, 3)}, ["expand", "f32[2,3]", "(4, 3)"]),
    ("slice", [_t(4)], {"starts": (1,), "stops": (5,), "steps": (1,)}, ["slice", "[1:5:1]"]),
    ("pad", [_t(4)], {"lo": (-1,), "hi": (0,), "interior": (0,), "value": 0.0},
     ["pad", "non-negative"]),
    ("concat", [_t(2, 3), _t(2, 4)], {"axis": 0}, ["concat", "axis 0", "f32[2,3]", "f32[2,4]"]),
    ("reduce_sum", [_t(2, 3)], {"axes": (2,)}, ["reduce_sum", "(2,)", "f32[2,3]"]),
    ("reduce_max", [_t(0, 3)], {"axes": (0,)}, ["reduce_max", "empty", "f32[0,3]"]),
    ("argmax", [_t(2, 3)], {"axis": 3}, ["argmax", "(3,)"]),
    ("where", [_t(2), _t(2), _t(2)], {}, ["where", "bool condition", "f32[2]"]),
    ("gather", [_t(4, 3), _t(2)], {"axis": 0}, ["gather", "integer index", "f32[2]"]),
    ("gather", [_t(4, 3), _t(2, dtype=int64)], {"axis": 2}, ["gather", "axis 2", "f32[4,3]"]),
    ("scatter_add", [_t(4, 3), _t(2, dtype=int64), _t(3, 3)], {"axis": 0},
     ["scatter_add", "f32[2,3]", "f32[3,3]"]),
    ("unfold", [_t(1, 1, 2, 2)], {"kernel": (3, 3), "stride": (1, 1), "dilation": (1, 1)},
     ["unfold", "(3, 3)", "does not fit"]),
    ("unfold", [_t(1, 1, 5)], {"kernel": (2,), "stride": (0,), "dilation": (1,)},
     ["unfold", ">= 1"]),
    ("rng_uniform", [_t(dtype=int64)], {"shape": (2,), "dtype": "int64"},
     ["rng_uniform", "floating", "int64"]),
    ("full", [], {"shape": (-1,), "value": 0.0, "dtype": "float32"}, ["full", "(-1,)"]),
    ("neg", [_t(2), _t(2)], {}, ["neg", "expected 1 inputs, got 2"]),
    ("concat", [], {"axis": 0}, ["concat", "at least one input"]),
]


@pytest.mark.parametrize("op, types, attrs, parts", BAD_TYPES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_TYPES)])
def test_type_rule_errors_name_the_op_and_types(op, types, attrs, parts):
    with pytest.raises(OpError) as info:
        REGISTRY[op].infer(tuple(types), attrs)
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"


def test_graph_builder_raises_the_type_rule_error():
    gb = GraphBuilder()
    x = gb.input("x", _t(2, 3))
    with pytest.raises(OpError, match="matmul: expected"):
        gb.matmul(x, x)
    with pytest.raises(IRError, match="unknown op 'conv'"):
        make_node("conv", [x], {})
    assert len(gb.nodes) == 1  # nothing appended by the failures


def test_errors_are_value_errors():
    assert issubclass(OpError, ValueError) and issubclass(IRError, ValueError)


# ---- VJP rules through GraphBuilder -------------------------------------------------------

FLAT = [(name, k) for name, gens in CASES.items() if gens for k in range(len(gens))]


@pytest.mark.parametrize("name, case", FLAT, ids=[f"{n}-{k}" for n, k in FLAT])
def test_vjp_through_graph_builder_matches_eager(name, case):
    rng = np.random.default_rng(100 + case)
    inputs, attrs = CASES[name][case](rng)
    inputs = [a.astype(np.float64) if a.dtype.kind == "f" else np.asarray(a) for a in inputs]
    prim = REGISTRY[name]
    # eager
    tensors = [nx.tensor(a) for a in inputs]
    out = apply(name, *tensors, **attrs)
    g = rng.standard_normal(out.shape)
    diff = [i for i, a in enumerate(inputs) if a.dtype.kind == "f"]
    eager = [prim.vjp(EAGER, nx.tensor(g), out, tensors, attrs, i).numpy() for i in diff]
    # symbolic
    gb = GraphBuilder(f"{name}_vjp")
    nodes = [gb.input(f"in{i}", TensorType(a.shape, dtype_from_numpy(a.dtype)))
             for i, a in enumerate(inputs)]
    g_node = gb.input("g", TensorType(g.shape, float64))
    out_node = gb.apply(name, *nodes, **attrs)
    grads = [prim.vjp(gb, g_node, out_node, nodes, attrs, i) for i in diff]
    graph = gb.build(grads)
    assert all(isinstance(n, Node) for n in grads)
    assert [n.type.shape for n in grads] == [inputs[i].shape for i in diff]
    feed = {f"in{i}": a for i, a in enumerate(inputs)} | {"g": g}
    for i, got, want in zip(diff, evaluate(graph, feed), eager):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12,
                                   err_msg=f"{name} input {i}")
    again = parse_graph(print_graph(graph))
    assert structurally_equal(graph, again)
