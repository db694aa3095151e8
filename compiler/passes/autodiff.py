"""Reverse-mode autodiff as a graph transform: `grad_graph` builds one joint forward+backward graph.

The forward is replayed node for node into a `GraphBuilder`, so the joint graph contains it
unchanged.  Then the forward nodes are walked in reverse topological order: each primitive's VJP
rule (the same rules eager autograd applies, see `neurenix.autograd`) is called with the builder
as `b`, and the cotangents reaching one value are summed with `add`.  Only floating values that
depend on an input named in `wrt` through differentiable primitives receive a cotangent;
`stop_gradient` and every `non_differentiable` primitive end the flow, and integer or bool values
never carry one.  `compiler.passes.partition` splits the joint graph into the forward and backward
graphs a training step runs (AOTAutograd's idea).
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..graph.graph_builder import GraphBuilder
from ..graph.ir import CONSTANT, INPUT, Graph, IRError, Node, ancestors
from ..ops import REGISTRY
from ..ops.registry import non_differentiable


@dataclass(frozen=True)
class JointGraph:
    """A forward graph and its backward in one graph.

    `graph.inputs` are the forward's inputs followed by the cotangent inputs (named in
    `cotangent_inputs`, one per floating forward output, in output order); `graph.outputs` are
    the `num_outputs` forward outputs followed by one gradient per name in `wrt`.
    """

    graph: Graph
    num_outputs: int
    wrt: tuple[str, ...]
    cotangent_inputs: tuple[str, ...]

    @property
    def forward_outputs(self) -> list[Node]:
        return self.graph.outputs[:self.num_outputs]

    @property
    def gradients(self) -> list[Node]:
        return self.graph.outputs[self.num_outputs:]


def fresh_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... : the first name not in `taken` (which it joins)."""
    name = base
    k = 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def replay(b: GraphBuilder, nodes: Iterable[Node], env: dict[int, Node],
           constants: dict[str, np.ndarray]) -> None:
    """Append copies of `nodes` (topologically ordered) to `b`, mapping old node ids in `env`.

    Nodes already in `env` are skipped; every input node must already be mapped.  Source lines
    travel with the copies.
    """
    for node in nodes:
        if id(node) in env:
            continue
        if node.op == INPUT:
            raise IRError(f"replay: input {node.name!r} is not mapped to a value of the new graph")
        if node.op == CONSTANT:
            env[id(node)] = b.constant(constants[node.name], node.name)
            continue
        b.source = node.source
        env[id(node)] = b.apply(node.op, *(env[id(i)] for i in node.inputs), **node.attr)
    b.source = None


def differentiable(node: Node) -> bool:
    """Whether a gradient can flow through `node` to its inputs."""
    if node.op in (INPUT, CONSTANT) or not node.type.dtype.is_floating:
        return False
    return REGISTRY[node.op].vjp not in (None, non_differentiable)


def _active(graph: Graph, wrt_ids: set[int]) -> set[int]:
    """Ids of the nodes whose value depends on a `wrt` input through differentiable primitives."""
    active = set(wrt_ids)
    for node in graph.nodes:
        if differentiable(node) and any(id(i) in active for i in node.inputs):
            active.add(id(node))
    return active


def reaching_outputs(graph: Graph, wrt: Sequence[str],
                     outputs: Sequence[int]) -> list[frozenset[int]]:
    """For each input in `wrt`, which of the outputs at positions `outputs` a gradient flows
    back to it from (through differentiable primitives): eager autograd gives an input no
    gradient at all (`.grad` stays None) when none of those outputs took one."""
    wrt_nodes = _check_wrt(graph, wrt)
    active = _active(graph, {id(n) for n in wrt_nodes})
    reached: dict[int, set[int]] = {id(n): set() for n in wrt_nodes}
    for j in outputs:
        stack, seen = [graph.outputs[j]], set()
        while stack:
            n = stack.pop()
            if id(n) in seen or id(n) not in active:
                continue
            seen.add(id(n))
            if id(n) in reached:
                reached[id(n)].add(j)
            if n.op not in (INPUT, CONSTANT):
                stack.extend(n.inputs)
    return [frozenset(reached[id(n)]) for n in wrt_nodes]


def _check_wrt(graph: Graph, wrt: Sequence[str]) -> list[Node]:
    by_name = {n.name: n for n in graph.inputs}
    nodes = []
    for name in wrt:
        node = by_name.get(name)
        if node is None:
            raise ValueError(f"grad_graph: {name!r} is not an input of graph {graph.name!r}; "
                             f"inputs: {', '.join(by_name)}")
        if not node.type.dtype.is_floating:
            raise TypeError(f"grad_graph: input {name!r} has type {node.type}; only "
                            "floating-point inputs have gradients")
        nodes.append(node)
    return nodes


def _add_cotangent(b: GraphBuilder, cot: dict[int, Node], key: int, g: Node) -> None:
    prev = cot.get(key)
    cot[key] = g if prev is None else b.add(prev, g)


def backprop(b: GraphBuilder, nodes: Sequence[Node], cot: dict[int, Node], active: set[int],
             env: dict[int, Node] | None = None, leaves: Collection[int] = (),
             substitute: dict[int, Node] | None = None) -> dict[int, Node]:
    """Walk `nodes` in reverse, pushing each node's cotangent (in `cot`) to its active inputs.

    `env` maps the nodes to their copies in `b` (as `grad_graph` replays a forward); without it
    the nodes are `b`'s own (a trace differentiating what it recorded so far).  Nodes in
    `leaves` collect their cotangent like inputs and pass nothing on.  `substitute` gives the
    values VJPs read in place of some inputs (a trace's backward reading a tensor written
    through `.data` since, as eager's does).  Returns `cot`, which then holds the cotangents
    of the inputs, constants and leaves the walk reached.
    """
    for node in reversed(nodes):
        g = cot.get(id(node))
        if g is None or node.op in (INPUT, CONSTANT) or id(node) in leaves:
            continue
        prim = REGISTRY[node.op]
        out = env[id(node)] if env is not None else node
        args = tuple(env[id(i)] for i in node.inputs) if env is not None else tuple(node.inputs)
        if substitute:
            args = tuple(substitute.get(id(i), a) for i, a in zip(node.inputs, args))
        b.source = node.source
        for index, inp in enumerate(node.inputs):
            if id(inp) not in active:
                continue
            gi = prim.vjp(b, g, out, args, node.attr, index)
            if gi is None:
                continue
            if gi.type != inp.type:
                raise IRError(f"grad_graph: the VJP of {node.op} gave a cotangent of type "
                              f"{gi.type} for input {index} of type {inp.type}")
            _add_cotangent(b, cot, id(inp), gi)
        del cot[id(node)]
    b.source = None
    return cot


def grad_graph(graph: Graph, wrt: Sequence[str], *, output_cotangents: bool = True) -> JointGraph:
    """The joint graph computing `graph`'s outputs and the gradients w.r.t. the inputs in `wrt`.

    With `output_cotangents` (the default) every floating output `i` gets a cotangent input
    `grad_<i>` of its type and the gradients are vector-Jacobian products with them: what a
    backward pass needs when the loss is computed outside the graph.  Without it every floating
    output is seeded with ones (the gradient of the sum of the outputs; for a scalar loss, its
    gradient) and the graph takes no extra inputs: what a whole training step needs.  An input
    that no gradient reaches gets zeros.
    """
    wrt_nodes = _check_wrt(graph, wrt)
    b = GraphBuilder(f"{graph.name}_joint")
    env: dict[int, Node] = {}
    for node in graph.inputs:
        env[id(node)] = b.input(node.name, node.type, node.attr["kind"])
    replay(b, graph.nodes, env, graph.constants)
    forward_ids = {id(n) for n in b.nodes}

    active = _active(graph, {id(n) for n in wrt_nodes})
    taken = {n.name for n in graph.inputs}
    cot_names: list[str] = []
    cot: dict[int, Node] = {}
    for i, out in enumerate(graph.outputs):
        if not out.type.dtype.is_floating:
            continue
        if output_cotangents:
            name = fresh_name(f"grad_{i}", taken)
            cot_names.append(name)
            seed = b.input(name, out.type)
        else:
            seed = b.full_like(env[id(out)], 1.0)
        if id(out) in active:
            _add_cotangent(b, cot, id(out), seed)

    backprop(b, graph.nodes, cot, active, env)
    grads = [cot[id(n)] if id(n) in cot else b.zeros_like(env[id(n)]) for n in wrt_nodes]
    outputs = [env[id(o)] for o in graph.outputs] + grads
    # drop what the VJP rules built but no gradient uses; the forward stays whole
    keep = {id(n) for n in ancestors(outputs)} | forward_ids | {id(n) for n in b.inputs}
    b.nodes = [n for n in b.nodes if id(n) in keep]
    return JointGraph(b.build(outputs), len(graph.outputs), tuple(wrt), tuple(cot_names))
