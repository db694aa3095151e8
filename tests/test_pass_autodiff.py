"""Graph autodiff (`grad_graph`) and the forward/backward partition, on hand-built graphs.

Oracles: central finite differences in float64 for every differentiable primitive (the input
generators are `test_vjp_rules.CASES`, whose meta-test keeps them in step with the registry);
PyTorch and Neurenix's eager autograd for multi-node graphs; the joint graph itself for the
partition (forward, then backward on the saved values, must reproduce it bit for bit).
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
import torch
from neurenix.compiler import Graph, GraphBuilder, IRError, TensorType, evaluate
from neurenix.compiler.graph.ir import INPUT
from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.ops.registry import non_differentiable
from neurenix.compiler.passes import simplify
from neurenix.compiler.passes.autodiff import JointGraph, grad_graph
from neurenix.compiler.passes.partition import Partition, partition
from neurenix.compiler.types import dtype_from_numpy
from test_vjp_rules import CASES

import neurenix as nx
from neurenix.dispatch import EAGER

EPS = 1e-6

# ---- helpers ----------------------------------------------------------------------------------


def trace(fn, inputs: dict[str, np.ndarray], params: tuple[str, ...] = ()) -> Graph:
    """The graph of `fn(b, *values)`, one input per entry of `inputs` (typed by its array)."""
    b = GraphBuilder()
    values = [b.input(name, TensorType(a.shape, dtype_from_numpy(a.dtype)),
                      "param" if name in params else "data") for name, a in inputs.items()]
    out = fn(b, *values)
    return b.build(list(out) if isinstance(out, (tuple, list)) else [out])


def random_cotangents(graph: Graph, rng) -> list[np.ndarray]:
    return [rng.standard_normal(o.type.shape).astype(o.type.dtype.np_type)
            for o in graph.outputs if o.type.dtype.is_floating]


def run_joint(joint: JointGraph, inputs: dict, cotangents: list) -> list[np.ndarray]:
    return evaluate(joint.graph, {**inputs, **dict(zip(joint.cotangent_inputs, cotangents))})


def run_partition(part: Partition, inputs: dict, cotangents: list) -> list[np.ndarray]:
    fwd = evaluate(part.forward, inputs)
    bwd = evaluate(part.backward, part.backward_feed(inputs, fwd, cotangents))
    return fwd[:part.num_outputs] + bwd


def check_partition(joint: JointGraph, inputs: dict, cotangents: list) -> Partition:
    """Partition `joint`, check the two halves reproduce it exactly, and check the interface."""
    part = partition(joint)
    want = run_joint(joint, inputs, cotangents)
    got = run_partition(part, inputs, cotangents)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(g, w, err_msg=f"output {k}")
    input_names = {n.name for n in joint.graph.inputs}
    saved_nodes = part.forward.outputs[part.num_outputs:]
    assert all(n.op != INPUT for n in saved_nodes), "a graph input is saved"
    assert [n.type for n in saved_nodes] == [t for _, t in part.saved]
    assert part.saved_bytes == sum(n.type.nbytes for n in saved_nodes)
    used = {id(i) for n in part.backward.nodes for i in n.inputs}
    used |= {id(o) for o in part.backward.outputs}
    for node in part.backward.inputs:
        if node.name in part.cotangent_inputs:
            continue
        assert id(node) in used, f"backward input {node.name} is never read"
    assert set(part.reused_inputs) <= input_names
    assert [n.name for n in part.forward.inputs] == [
        n.name for n in joint.graph.inputs if n.name not in joint.cotangent_inputs]
    return part


def eager_grads(fn, inputs: dict, wrt, cotangents) -> tuple[list, list]:
    """Outputs and input gradients of `fn` run on Neurenix tensors with eager autograd."""
    tensors = [nx.tensor(a, requires_grad=name in wrt) for name, a in inputs.items()]
    outs = fn(EAGER, *tensors)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    floats = [o for o in outs if o.dtype.is_floating]
    for o, g in zip(floats, cotangents):
        if o.requires_grad:
            o.backward(gradient=nx.tensor(g))
    by_name = dict(zip(inputs, tensors))
    grads = [by_name[n].grad.numpy() if by_name[n].grad is not None
             else np.zeros(inputs[n].shape) for n in wrt]
    return [o.detach().numpy() for o in outs], grads


# ---- every primitive against finite differences ---------------------------------------------

DIFFERENTIABLE = sorted(n for n, p in REGISTRY.items() if p.vjp is not non_differentiable)
FLAT = [(name, k) for name in DIFFERENTIABLE for k in range(len(CASES.get(name) or ()))]


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_every_differentiable_primitive_has_cases(name):
    assert CASES.get(name), f"{name}: no input generator in test_vjp_rules.CASES"


def _one_node(name, inputs, attrs):
    names = {f"x{i}": a for i, a in enumerate(inputs)}
    graph = trace(lambda b, *xs: b.apply(name, *xs, **attrs), names)
    wrt = [n for n, a in names.items() if a.dtype.kind == "f"]
    return graph, names, wrt


def _finite_difference(graph, names, wrt_name, cotangent):
    x = names[wrt_name]
    grad = np.zeros_like(x)
    for j in np.ndindex(x.shape):
        plus = {k: v.copy() for k, v in names.items()}
        minus = {k: v.copy() for k, v in names.items()}
        plus[wrt_name][j] += EPS
        minus[wrt_name][j] -= EPS
        diff = evaluate(graph, plus)[0] - evaluate(graph, minus)[0]
        grad[j] = np.sum(diff * cotangent) / (2 * EPS)
    return grad


@pytest.mark.parametrize("name, case", FLAT, ids=[f"{n}-{k}" for n, k in FLAT])
def test_one_node_gradient_matches_finite_differences(name, case):
    rng = np.random.default_rng(zlib.crc32(name.encode()) + case)
    inputs, attrs = CASES[name][case](rng)
    inputs = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in inputs]
    graph, names, wrt = _one_node(name, inputs, attrs)
    joint = grad_graph(graph, wrt)
    joint.graph.verify()
    cot = random_cotangents(graph, rng)
    assert len(joint.cotangent_inputs) == 1
    results = run_joint(joint, names, cot)
    np.testing.assert_array_equal(results[0], evaluate(graph, names)[0])
    for k, wrt_name in enumerate(wrt):
        got = results[1 + k]
        assert got.shape == names[wrt_name].shape and got.dtype == np.float64
        want = _finite_difference(graph, names, wrt_name, cot[0])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name} {wrt_name}")
    check_partition(joint, names, cot)


# ---- multi-node graphs against PyTorch and eager autograd ------------------------------------


def relu(b, h):
    """ReLU as `where(h > 0, h, 0)`: its gradient at 0 is 0, as PyTorch's."""
    zero = b.zeros_like(h)
    return b.where(b.gt(h, zero), h, zero)


def linear(b, x, w, bias):
    y = b.matmul(x, w)
    return b.add(y, b.broadcast_to(bias, b.type_of(y).shape))


def cross_entropy(b, logits, onehot):
    """Mean softmax cross-entropy over the batch, from primitives (max shifted, not
    differentiated: the shift cancels)."""
    n, c = b.type_of(logits).shape
    m = b.stop_gradient(b.reduce_max(logits, axes=(1,)))
    z = b.sub(logits, b.broadcast_to(b.reshape(m, shape=(n, 1)), (n, c)))
    lse = b.log(b.reduce_sum(b.exp(z), axes=(1,)))
    logp = b.sub(z, b.broadcast_to(b.reshape(lse, shape=(n, 1)), (n, c)))
    total = b.reduce_sum(b.mul(onehot, logp), axes=(0, 1))
    return b.mul(total, b.full_like(total, -1.0 / n))


def mlp(b, x, onehot, w1, b1, w2, b2, w3, b3):
    h = relu(b, linear(b, x, w1, b1))
    h = relu(b, linear(b, h, w2, b2))
    return cross_entropy(b, linear(b, h, w3, b3), onehot)


def _mlp_inputs(rng, n=8, sizes=(6, 16, 16, 4)):
    inputs = {"x": rng.standard_normal((n, sizes[0])),
              "onehot": np.eye(sizes[-1])[rng.integers(0, sizes[-1], n)]}
    for k, (i, o) in enumerate(zip(sizes, sizes[1:]), 1):
        inputs[f"w{k}"] = rng.standard_normal((i, o)) / np.sqrt(i)
        inputs[f"b{k}"] = rng.standard_normal(o) * 0.1
    return inputs


PARAMS = ("w1", "b1", "w2", "b2", "w3", "b3")


def _torch_mlp(inputs):
    t = {k: torch.tensor(v, requires_grad=k in PARAMS + ("x",)) for k, v in inputs.items()}
    h = torch.relu(t["x"] @ t["w1"] + t["b1"])
    h = torch.relu(h @ t["w2"] + t["b2"])
    loss = torch.nn.functional.cross_entropy(h @ t["w3"] + t["b3"], t["onehot"].argmax(1))
    loss.backward()
    return loss.detach().numpy(), {k: t[k].grad.numpy() for k in PARAMS + ("x",)}


@pytest.mark.parametrize("output_cotangents", [True, False])
def test_mlp_with_cross_entropy_matches_torch(output_cotangents):
    rng = np.random.default_rng(0)
    inputs = _mlp_inputs(rng)
    graph = trace(mlp, inputs, PARAMS)
    wrt = ("x",) + PARAMS
    joint = grad_graph(graph, wrt, output_cotangents=output_cotangents)
    cot = [np.array(2.5)] if output_cotangents else []
    assert len(joint.cotangent_inputs) == len(cot)
    loss, *grads = run_joint(joint, inputs, cot)
    want_loss, want = _torch_mlp(inputs)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    scale = 2.5 if output_cotangents else 1.0
    for name, got in zip(wrt, grads):
        np.testing.assert_allclose(got, scale * want[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    check_partition(joint, inputs, cot)


def _value_used_twice(b, x, w):
    y = b.mul(x, w)
    return b.add(b.mul(y, y), b.exp(y))


def _stop_gradient(b, x, w):
    return b.mul(b.mul(x, b.stop_gradient(x)), b.tanh(w))


def _unused_input(b, x, w):
    return b.sigmoid(x)


def _argmax_in_the_middle(b, x, w):
    """Pick each row's largest element through integer index arithmetic, then scale it."""
    n, c = b.type_of(x).shape
    idx = b.argmax(x, axis=1)
    row = b.mul(b.iota(shape=(n,), axis=0, dtype="int64"), b.full_like(idx, c))
    picked = b.gather(b.reshape(x, shape=(n * c,)), b.add(idx, row), axis=0)
    return b.mul(picked, b.reduce_sum(w, axes=(1,))), idx


def _two_outputs_of_one_value(b, x, w):
    y = b.mul(x, b.tanh(w))
    return y, b.reduce_sum(y, axes=(0, 1)), y


GRAPHS = {
    "used-twice": (_value_used_twice,
                   lambda t: (lambda y: y * y + torch.exp(y))(t["x"] * t["w"])),
    "stop-gradient": (_stop_gradient, lambda t: t["x"] * t["x"].detach() * torch.tanh(t["w"])),
    "unused-input": (_unused_input, lambda t: torch.sigmoid(t["x"])),
    "argmax-in-the-middle": (
        _argmax_in_the_middle,
        lambda t: (t["x"].gather(1, t["x"].argmax(1, keepdim=True))[:, 0] * t["w"].sum(1),
                   t["x"].argmax(1))),
    "outputs-sharing-a-value": (
        _two_outputs_of_one_value,
        lambda t: (lambda y: (y, y.sum(), y))(t["x"] * torch.tanh(t["w"]))),
}


def _torch_reference(torch_fn, inputs, cotangents):
    t = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    outs = torch_fn(t)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    floats = [o for o in outs if o.is_floating_point()]
    total = sum((o * torch.tensor(g)).sum() for o, g in zip(floats, cotangents))
    grads = torch.autograd.grad(total, [t["x"], t["w"]], allow_unused=True)
    grads = [np.zeros(inputs[k].shape) if g is None else g.numpy()
             for k, g in zip(("x", "w"), grads)]
    return [o.detach().numpy() for o in outs], grads


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_multi_node_graph_matches_torch_and_eager(name):
    fn, torch_fn = GRAPHS[name]
    rng = np.random.default_rng(1)
    inputs = {"x": rng.standard_normal((4, 5)), "w": rng.uniform(0.5, 1.5, (4, 5))}
    graph = trace(fn, inputs)
    joint = grad_graph(graph, ["x", "w"])
    cot = random_cotangents(graph, rng)
    results = run_joint(joint, inputs, cot)
    outs, grads = results[:joint.num_outputs], results[joint.num_outputs:]
    want_outs, want_grads = _torch_reference(torch_fn, inputs, cot)
    eager_outs, eager = eager_grads(fn, inputs, ("x", "w"), cot)
    for k, (got, want, ea) in enumerate(zip(outs, want_outs, eager_outs)):
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=f"output {k}")
        np.testing.assert_allclose(got, ea, rtol=1e-12, err_msg=f"output {k} vs eager")
    for wrt_name, got, want, ea in zip(("x", "w"), grads, want_grads, eager):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=wrt_name)
        np.testing.assert_allclose(got, ea, rtol=1e-10, atol=1e-12, err_msg=f"{wrt_name} eager")
    check_partition(joint, inputs, cot)


def test_integer_outputs_get_no_cotangent_input():
    inputs = {"x": np.ones((4, 5)), "w": np.ones((4, 5))}
    graph = trace(_argmax_in_the_middle, inputs)
    joint = grad_graph(graph, ["x"])
    assert joint.cotangent_inputs == ("grad_0",)
    assert [n.name for n in joint.graph.inputs] == ["x", "w", "grad_0"]


def test_unused_input_gets_zeros_and_is_not_read_by_backward():
    rng = np.random.default_rng(2)
    inputs = {"x": rng.standard_normal((3, 2)), "w": rng.standard_normal((3, 2))}
    joint = grad_graph(trace(_unused_input, inputs), ["w", "x"])
    results = run_joint(joint, inputs, [np.ones((3, 2))])
    np.testing.assert_array_equal(results[1], np.zeros((3, 2)))
    part = check_partition(joint, inputs, [np.ones((3, 2))])
    assert "w" not in part.reused_inputs


def test_stop_gradient_blocks_the_whole_branch():
    inputs = {"x": np.full((2, 2), 3.0), "w": np.ones((2, 2))}
    graph = trace(lambda b, x, w: b.add(b.stop_gradient(b.exp(x)), w), inputs)
    joint = grad_graph(graph, ["x", "w"])
    assert not any(n.op == "exp" for n in joint.graph.nodes[len(graph.nodes):])
    _, gx, gw = run_joint(joint, inputs, [np.full((2, 2), 7.0)])
    np.testing.assert_array_equal(gx, np.zeros((2, 2)))
    np.testing.assert_array_equal(gw, np.full((2, 2), 7.0))


def test_joint_graph_contains_the_forward_and_no_dead_backward_nodes():
    rng = np.random.default_rng(3)
    inputs = _mlp_inputs(rng)
    graph = trace(mlp, inputs, PARAMS)
    joint = grad_graph(graph, ["w1"])
    assert [n.op for n in joint.graph.nodes[:len(graph.nodes)]] == [n.op for n in graph.nodes]
    kinds = {n.name: n.attr["kind"] for n in joint.graph.inputs}
    assert kinds["w1"] == "param" and kinds["grad_0"] == "data"
    live: set[int] = set()
    stack = list(joint.graph.outputs)
    while stack:
        n = stack.pop()
        if id(n) not in live:
            live.add(id(n))
            stack.extend(n.inputs)
    dead = [n for n in joint.graph.nodes[len(graph.nodes):]
            if id(n) not in live and n.op != INPUT]
    assert dead == []
    # only w1's gradient is asked for: no matmul computes a gradient of x, w2 or w3
    backward_matmuls = [n for n in joint.graph.nodes[len(graph.nodes):] if n.op == "matmul"]
    assert len(backward_matmuls) == 3


def test_seeds_of_outputs_no_gradient_reaches_are_dropped():
    inputs = {"x": np.ones((2, 3)), "u": np.ones((2, 3))}
    graph = trace(lambda b, x, u: (b.exp(x), b.tanh(u)), inputs)
    joint = grad_graph(graph, ["x"], output_cotangents=False)
    assert [n.op for n in joint.graph.nodes[len(graph.nodes):]] == ["full", "mul"]
    np.testing.assert_allclose(run_joint(joint, inputs, [])[2], np.exp(np.ones((2, 3))))


def test_float32_graph_keeps_float32_gradients():
    rng = np.random.default_rng(4)
    inputs = {"x": rng.standard_normal((3, 4)).astype(np.float32),
              "w": rng.standard_normal((4, 2)).astype(np.float32)}
    graph = trace(lambda b, x, w: b.tanh(b.matmul(x, w)), inputs)
    joint = grad_graph(graph, ["x", "w"])
    assert joint.graph.inputs[-1].type == TensorType((3, 2), nx.float32)
    cot = random_cotangents(graph, rng)
    _, gx, gw = run_joint(joint, inputs, cot)
    assert gx.dtype == np.float32 and gw.dtype == np.float32
    _, (ex, ew) = eager_grads(lambda b, x, w: b.tanh(b.matmul(x, w)), inputs, ("x", "w"), cot)
    np.testing.assert_allclose(gx, ex, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw, ew, rtol=1e-5, atol=1e-6)


def test_cotangent_names_avoid_existing_inputs():
    inputs = {"grad_0": np.ones(3)}
    joint = grad_graph(trace(lambda b, x: b.exp(x), inputs), ["grad_0"])
    assert joint.cotangent_inputs == ("grad_0_1",)
    got = run_joint(joint, inputs, [np.full(3, 2.0)])
    np.testing.assert_allclose(got[1], 2.0 * np.exp(1.0) * np.ones(3))


def test_bad_wrt_is_refused_with_the_input_named():
    inputs = {"x": np.ones(3), "i": np.arange(3)}
    graph = trace(lambda b, x, i: b.gather(x, i, axis=0), inputs)
    with pytest.raises(ValueError, match="'y' is not an input"):
        grad_graph(graph, ["y"])
    with pytest.raises(TypeError, match="'i' has type i64"):
        grad_graph(graph, ["i"])


# ---- what the partition saves ------------------------------------------------------------------


def _relu_mlp(b, x, w1, w2, w3, w4):
    h = x
    for w in (w1, w2, w3):
        h = relu(b, b.matmul(h, w))
    return b.matmul(h, w4)


def test_relu_mlp_saves_only_masks_and_relu_outputs():
    rng = np.random.default_rng(5)
    inputs = {"x": rng.standard_normal((16, 32)).astype(np.float32)}
    for k, (i, o) in enumerate(((32, 64), (64, 64), (64, 64), (64, 8)), 1):
        inputs[f"w{k}"] = rng.standard_normal((i, o)).astype(np.float32)
    graph = trace(_relu_mlp, inputs, ("w1", "w2", "w3", "w4"))
    joint = grad_graph(graph, ["w1", "w2", "w3", "w4"])
    part = check_partition(joint, inputs, random_cotangents(graph, rng))
    relu_outputs = [n for n in graph.nodes if n.op == "where"]
    masks = [n for n in graph.nodes if n.op == "gt"]
    activations = [n for n in graph.nodes if n.op != INPUT and n.type.dtype.is_floating
                   and n.op != "full"]
    assert part.saved_bytes <= sum(n.type.nbytes for n in activations)
    # each hidden layer keeps its float output (for the next weight's gradient) and a 1-byte mask
    assert part.saved_bytes == sum(n.type.nbytes for n in relu_outputs + masks)
    assert sorted(str(t) for _, t in part.saved) == sorted(
        str(n.type) for n in relu_outputs + masks)
    assert set(part.reused_inputs) == {"x", "w2", "w3", "w4"}


def test_tanh_mlp_saves_each_tanh_output_once():
    """tanh's VJP needs `1 - out**2` and the next weight's gradient needs `out`: only `out` is
    saved, and `1 - out**2` is rebuilt from it."""
    rng = np.random.default_rng(8)
    inputs = {"x": rng.standard_normal((6, 5)), "w1": rng.standard_normal((5, 7)),
              "w2": rng.standard_normal((7, 7)), "w3": rng.standard_normal((7, 3))}

    def fn(b, x, w1, w2, w3):
        return b.matmul(b.tanh(b.matmul(b.tanh(b.matmul(x, w1)), w2)), w3)

    graph = trace(fn, inputs)
    part = check_partition(grad_graph(graph, ["w1", "w2", "w3"]), inputs,
                           random_cotangents(graph, rng))
    assert [n.op for n in part.forward.outputs[1:]] == ["tanh", "tanh"]
    assert part.saved_bytes == 2 * 6 * 7 * 8


def test_elementwise_of_inputs_is_recomputed_not_saved():
    inputs = {"x": np.linspace(-1, 1, 12).reshape(3, 4), "w": np.ones((3, 4))}
    graph = trace(lambda b, x, w: b.mul(b.tanh(b.exp(x)), w), inputs)
    joint = grad_graph(graph, ["x", "w"])
    part = check_partition(joint, inputs, [np.ones((3, 4))])
    assert part.saved == ()
    assert set(part.reused_inputs) == {"x", "w"}


def test_large_value_rebuilt_from_a_small_saved_one():
    """exp(x - max(x)) is recomputed from x (an input) and the saved row maxima; only row
    vectors are saved (the maxima, and the tie counts reduce_max's VJP divides by)."""
    rng = np.random.default_rng(6)
    inputs = {"x": rng.standard_normal((8, 32)), "w": rng.standard_normal((8, 32))}

    def fn(b, x, w):
        m = b.reduce_max(x, axes=(1,))
        e = b.exp(b.sub(x, b.broadcast_to(b.reshape(m, shape=(8, 1)), (8, 32))))
        return b.mul(e, w)

    joint = grad_graph(trace(fn, inputs), ["x", "w"])
    part = check_partition(joint, inputs, [rng.standard_normal((8, 32))])
    assert [t for _, t in part.saved] == [TensorType((8,), nx.float64)] * 2
    part = check_partition(grad_graph(trace(fn, inputs), ["w"]), inputs,
                           [rng.standard_normal((8, 32))])
    assert [t for _, t in part.saved] == [TensorType((8,), nx.float64)]
    assert [n.op for n in part.forward.outputs[1:]] == ["reduce_max"]


def test_dropout_mask_is_regenerated_from_the_seed():
    inputs = {"x": np.linspace(-1, 1, 24).reshape(4, 6), "seed": np.array(42)}

    def dropout(b, x, seed):
        keep = b.lt(b.rng_uniform(seed, shape=(4, 6), dtype="float64"), b.full_like(x, 0.5))
        return b.where(keep, b.mul(x, b.full_like(x, 2.0)), b.zeros_like(x))

    joint = grad_graph(trace(dropout, inputs), ["x"])
    part = check_partition(joint, inputs, [np.ones((4, 6))])
    assert part.saved == () and part.reused_inputs == ("seed",)
    mask = evaluate(part.backward, part.backward_feed(inputs, [], [np.ones((4, 6))]))[0]
    assert set(np.unique(mask)) == {0.0, 2.0}


def test_matmul_backward_reads_its_operands_as_inputs():
    inputs = {"x": np.ones((2, 3)), "w": np.ones((3, 4))}
    joint = grad_graph(trace(lambda b, x, w: b.matmul(x, w), inputs, ("w",)), ["w"])
    part = check_partition(joint, inputs, [np.ones((2, 4))])
    assert part.saved == () and part.reused_inputs == ("x",)
    assert [n.attr["kind"] for n in part.backward.inputs] == ["data", "data"]


def test_expensive_values_are_saved_not_recomputed():
    rng = np.random.default_rng(7)
    inputs = {"x": rng.standard_normal((4, 6)), "w": rng.standard_normal((6, 6))}
    graph = trace(lambda b, x, w: b.tanh(b.matmul(b.matmul(x, w), w)), inputs)
    part = check_partition(grad_graph(graph, ["w"]), inputs, random_cotangents(graph, rng))
    assert not any(n.op == "matmul" and n.inputs[0].op == INPUT and n.inputs[0].name == "x"
                   for n in part.backward.nodes), "the backward recomputes x @ w"
    assert part.saved_bytes == 2 * 4 * 6 * 8  # x @ w and tanh's output


def test_partition_after_simplify():
    """The pipeline may CSE the joint graph first (merging the forward's and the backward's
    `full` zeros); the partition of the simplified graph still reproduces it."""
    rng = np.random.default_rng(9)
    inputs = _mlp_inputs(rng)
    joint = grad_graph(trace(mlp, inputs, PARAMS), PARAMS)
    simplified = dataclasses.replace(joint, graph=simplify(joint.graph))
    assert simplified.graph.ops_count() < joint.graph.ops_count()
    part = check_partition(simplified, inputs, [np.array(1.0)])
    want = run_joint(joint, inputs, [np.array(1.0)])
    for got, w in zip(run_partition(part, inputs, [np.array(1.0)]), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-15)


def test_partition_refuses_a_forward_output_that_reads_a_cotangent():
    inputs = {"x": np.ones(2)}
    joint = grad_graph(trace(lambda b, x: b.exp(x), inputs), ["x"])
    bad = JointGraph(joint.graph, 2, joint.wrt, joint.cotangent_inputs)
    with pytest.raises(IRError, match="forward output depends on a cotangent"):
        partition(bad)
