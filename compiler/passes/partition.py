"""Split a joint forward+backward graph into a forward and a backward graph (AOTAutograd's idea).

The backward is every node that depends on a cotangent input (the *tangent* nodes) and that a
gradient needs.  What those nodes read from the rest of the joint graph is the boundary, and each
boundary value reaches the backward in one of four ways:

- a graph input (a parameter, a data input): the backward takes it as an input of its own;
- a constant, or a source with no inputs (`full`, `iota`): the backward rebuilds it;
- a cheap value (an elementwise or movement primitive, or `rng_uniform`) that can be rebuilt
  from values the backward has anyway: the backward recomputes it (rule below);
- anything else is *saved*: the forward returns it as an extra output.

Recompute rule.  Boundary values are visited consumers first (reverse topological order).  A
cheap value `v` is recomputed when making its inputs available costs fewer bytes than saving `v`
(for a movement, no more bytes: a layout change costs no arithmetic).  An input costs nothing when
it is free (above) or already needed by the backward; a cheap input costs the lesser of its own
bytes and its inputs' cost, recursively; any other input costs its bytes.  Recomputed values pull
their inputs into the boundary, which are visited in turn, and the sweep repeats until no
decision changes.  So `exp(x)` of an input `x` is recomputed rather than saved, an `expand` of a
small saved value is rebuilt rather than saving the large result, dropout's mask is regenerated
from its seed, but ReLU's bool mask (1 byte an element) is saved rather than the float
pre-activation it came from.  Reductions, matmuls, windows and gathers are never recomputed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..graph.graph_builder import GraphBuilder
from ..graph.ir import CONSTANT, INPUT, Graph, IRError, Node, ancestors
from ..ops import ELEMENTWISE, MOVEMENT, REGISTRY, SOURCE
from ..types import TensorType
from .autodiff import JointGraph, fresh_name, replay

_CHEAP_KINDS = (ELEMENTWISE, MOVEMENT, SOURCE)


@dataclass(frozen=True)
class Partition:
    """A forward graph, a backward graph, and how values pass from one to the other.

    `forward` takes the original inputs and returns the `num_outputs` original outputs followed
    by the saved values.  `backward` takes the saved values (named as in `saved`), then the
    cotangent inputs (`cotangent_inputs`), then the original inputs it reads directly
    (`reused_inputs`), and returns one gradient per name in `wrt`.
    """

    forward: Graph
    backward: Graph
    num_outputs: int
    saved: tuple[tuple[str, TensorType], ...]
    cotangent_inputs: tuple[str, ...]
    reused_inputs: tuple[str, ...]
    wrt: tuple[str, ...]

    @property
    def saved_bytes(self) -> int:
        """Bytes the forward keeps alive for the backward (graph inputs not counted)."""
        return sum(t.nbytes for _, t in self.saved)

    def backward_feed(self, inputs: Mapping[str, Any], forward_results: Sequence[Any],
                      cotangents: Sequence[Any]) -> dict[str, Any]:
        """The backward's inputs by name, from the forward's inputs and results and the
        cotangents (one per name in `cotangent_inputs`, in order)."""
        if len(cotangents) != len(self.cotangent_inputs):
            raise ValueError(f"backward_feed: expected {len(self.cotangent_inputs)} cotangents, "
                             f"got {len(cotangents)}")
        feed = {name: v for (name, _), v in zip(self.saved, forward_results[self.num_outputs:])}
        feed.update(zip(self.cotangent_inputs, cotangents))
        feed.update((name, inputs[name]) for name in self.reused_inputs)
        return feed


def _is_free(node: Node) -> bool:
    """Values the backward can have without the forward's help: inputs, constants, sources."""
    return node.op in (INPUT, CONSTANT) or (not node.inputs and REGISTRY[node.op].kind == SOURCE)


def _is_cheap(node: Node) -> bool:
    return node.op not in (INPUT, CONSTANT) and REGISTRY[node.op].kind in _CHEAP_KINDS


def _inputs_cost(node: Node, need: Mapping[int, Node], memo: dict[int, int]) -> int:
    """Bytes that would have to be saved so the backward can recompute `node`."""
    total = 0
    seen: set[int] = set()
    for i in node.inputs:
        if id(i) in seen or _is_free(i) or id(i) in need:
            continue
        seen.add(id(i))
        if id(i) not in memo:
            own = i.type.nbytes
            memo[id(i)] = min(own, _inputs_cost(i, need, memo)) if _is_cheap(i) else own
        total += memo[id(i)]
    return total


def _worth_recomputing(node: Node, need: Mapping[int, Node]) -> bool:
    cost = _inputs_cost(node, need, {})
    if cost == 0 or cost < node.type.nbytes:
        return True
    return REGISTRY[node.op].kind == MOVEMENT and cost <= node.type.nbytes


def _tangent_ids(joint: JointGraph) -> set[int]:
    roots = set(joint.cotangent_inputs)
    tangent: set[int] = set()
    for n in joint.graph.nodes:
        if (n.op == INPUT and n.name in roots) or any(id(i) in tangent for i in n.inputs):
            tangent.add(id(n))
    return tangent


def _backward_region(joint: JointGraph, tangent: set[int]) -> tuple[set[int], dict[int, Node]]:
    """The tangent nodes the gradients need, and the non-tangent values they read."""
    region: set[int] = set()
    need: dict[int, Node] = {}
    stack = list(joint.gradients)
    while stack:
        n = stack.pop()
        if id(n) not in tangent:
            need[id(n)] = n
        elif id(n) not in region:
            region.add(id(n))
            stack.extend(n.inputs)
    return region, need


def _plan_recompute(nodes: Sequence[Node], need: dict[int, Node]) -> set[int]:
    """Apply the recompute rule; `need` is updated in place to the values the backward reads.

    Sweeps repeat until nothing changes: a value first judged worth saving may become cheap to
    rebuild once a later decision makes its inputs needed anyway (tanh's `1 - out**2` once `out`
    is needed by the next layer's weight gradient).
    """
    recompute: set[int] = set()
    changed = True
    while changed:
        changed = False
        for n in reversed(nodes):
            if id(n) not in need or _is_free(n) or not _is_cheap(n):
                continue
            if _worth_recomputing(n, need):
                recompute.add(id(n))
                del need[id(n)]
                for i in n.inputs:
                    need.setdefault(id(i), i)
                changed = True
    return recompute


def _forward_graph(joint: JointGraph, saved: list[Node], name: str) -> Graph:
    g = joint.graph
    cot = set(joint.cotangent_inputs)
    inputs = [n for n in g.inputs if n.name not in cot]
    outputs = joint.forward_outputs + saved
    keep = {id(n) for n in ancestors(outputs)} | {id(n) for n in inputs}
    nodes = [n for n in g.nodes if id(n) in keep]
    constants = {n.name: g.constants[n.name] for n in nodes if n.op == CONSTANT}
    fwd = Graph(inputs, nodes, outputs, constants, name)
    fwd.verify()
    return fwd


def _backward_graph(joint: JointGraph, saved: list[Node], reused: list[Node], body: set[int],
                    name: str) -> tuple[Graph, list[str]]:
    g = joint.graph
    b = GraphBuilder(name)
    env: dict[int, Node] = {}
    taken = {n.name for n in g.inputs}
    saved_names = []
    for n in saved:
        saved_names.append(fresh_name(f"saved_{len(saved_names)}", taken))
        env[id(n)] = b.input(saved_names[-1], n.type)
    for n in g.inputs:
        if n.name in joint.cotangent_inputs:
            env[id(n)] = b.input(n.name, n.type)
    for n in reused:
        env[id(n)] = b.input(n.name, n.type, n.attr["kind"])
    replay(b, (n for n in g.nodes if id(n) in body), env, g.constants)
    return b.build([env[id(o)] for o in joint.gradients]), saved_names


def partition(joint: JointGraph) -> Partition:
    """Split `joint` into a forward graph and a backward graph, saving as little as the rule in
    this module's docstring allows.  Running the forward, then the backward on its saved values,
    gives exactly what evaluating the joint graph gives."""
    g = joint.graph
    tangent = _tangent_ids(joint)
    if any(id(o) in tangent for o in joint.forward_outputs):
        raise IRError("partition: a forward output depends on a cotangent input")
    region, need = _backward_region(joint, tangent)
    recompute = _plan_recompute(g.nodes, need)
    saved = [n for n in g.nodes if id(n) in need and not _is_free(n)]
    reused = [n for n in g.inputs if id(n) in need]
    rebuilt = {k for k, n in need.items() if _is_free(n) and n.op != INPUT}
    body = region | recompute | rebuilt
    base = g.name.removesuffix("_joint")
    fwd = _forward_graph(joint, saved, f"{base}_forward")
    bwd, saved_names = _backward_graph(joint, saved, reused, body, f"{base}_backward")
    return Partition(fwd, bwd, joint.num_outputs,
                     tuple((nm, n.type) for nm, n in zip(saved_names, saved)),
                     joint.cotangent_inputs, tuple(n.name for n in reused), joint.wrt)
