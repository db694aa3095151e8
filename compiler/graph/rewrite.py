"""Rebuild a graph node by node: the one traversal every rewriting pass shares.

Nodes are immutable, so a pass never edits a graph: it walks the old nodes in topological order,
re-creates each one over its (possibly replaced) inputs, lets a visitor propose a replacement,
and collects the result into a new `Graph`.  Replacements may be fresh expressions (several new
nodes); they are placed in topological order automatically.  Graph inputs are always kept, as the
same `Node` objects in the same order, so a pass never changes a graph's signature.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from .ir import CONSTANT, INPUT, Graph, IRError, Node, make_node

# A visitor sees a node already rebuilt over its new inputs and returns its replacement, or None
# (or the node itself) to keep it.  The replacement must have the node's type.
Visitor = Callable[[Node], "Node | None"]


def with_inputs(node: Node, inputs: tuple[Node, ...]) -> Node:
    """`node` over new inputs; the node itself when they are the same objects."""
    if len(inputs) == len(node.inputs) and all(a is b for a, b in zip(inputs, node.inputs)):
        return node
    same_types = len(inputs) == len(node.inputs) and all(
        a.type == b.type for a, b in zip(inputs, node.inputs))
    if same_types:
        return dataclasses.replace(node, inputs=tuple(inputs))
    return make_node(node.op, inputs, node.attr, name=node.name, source=node.source)


class _Placer:
    """Collects nodes in topological order, importing fresh expressions as they are placed."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.placed: set[Node] = set()
        # what a node stands for in the new graph: an old node maps to its rebuilt form
        self.env: dict[Node, Node] = {}

    def add(self, node: Node) -> None:
        if node not in self.placed:
            self.nodes.append(node)
            self.placed.add(node)

    def place(self, node: Node) -> Node:
        """The node standing for `node` in the new graph, placed after its inputs."""
        if node in self.placed:
            return node
        target = self.env.get(node)
        if target is not None and target is not node:
            return self.place(target)
        new = with_inputs(node, tuple(self.place(i) for i in node.inputs))
        self.add(new)
        self.env[node] = new
        return new


Replacer = Callable[[Node, Node], "Node | None"]


def _run(graph: Graph, replace: Replacer, pool: Mapping[str, np.ndarray]) -> Graph:
    placer = _Placer()
    for old in graph.nodes:
        if old.op == INPUT:
            placer.add(old)  # every input stays, in its place, whatever replaces its uses
            new = old
        else:
            new = with_inputs(old, tuple(placer.env[i] for i in old.inputs))
        placer.env[old] = new
        repl = replace(old, new)
        if repl is not None and repl is not new:
            if repl.type != old.type:
                raise IRError(f"rewriting a {old.op} node of type {old.type} produced a "
                              f"{repl.op} node of type {repl.type}")
            new = repl
        # `old` still reads as its rebuilt self while a replacement that wraps it is placed
        placed = placer.place(new)
        placer.env[old] = placed
    outputs = [placer.env[o] for o in graph.outputs]
    used = {n.name for n in placer.nodes if n.op == CONSTANT}
    arrays = {name: pool[name] for name in pool if name in used}
    return Graph(list(graph.inputs), placer.nodes, outputs, arrays, graph.name)


def rebuild(graph: Graph, visit: Visitor | None = None,
            constants: Mapping[str, np.ndarray] | None = None) -> Graph:
    """A new graph with every node rebuilt over its new inputs and offered to `visit`.

    `constants` is the pool of arrays the new graph may reference (default: the old graph's);
    a visitor that creates constant nodes adds their arrays to the pool it passed.  The new
    graph keeps only the arrays its constant nodes use.  A replaced node is dropped, but nodes
    that merely become unused stay (dead code elimination is its own pass).
    """
    pool = graph.constants if constants is None else constants
    if visit is None:
        return _run(graph, lambda old, new: None, pool)
    return _run(graph, lambda old, new: visit(new), pool)


def substitute(graph: Graph, mapping: Mapping[Node, Node],
               constants: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Replace each node of `graph` in `mapping` by its value, everywhere it is used.

    A value is an expression over nodes of `graph` defined before the node it replaces, or over
    that node itself (to wrap it: ``{x: relu(x)}``); the nodes it mentions are read as their
    rebuilt versions.  `constants` adds arrays for new constant nodes.  Replacing a graph input
    rewires its uses; the input itself stays in the signature.
    """
    pool = dict(graph.constants)
    pool.update(constants or {})
    return _run(graph, lambda old, new: mapping.get(old), pool)


def fresh_names(taken: Iterable[str], prefix: str) -> Callable[[], str]:
    """A generator of names `prefix0, prefix1, ...` that skips every name in `taken`."""
    used = set(taken)
    counter = 0

    def fresh() -> str:
        nonlocal counter
        while f"{prefix}{counter}" in used:
            counter += 1
        name = f"{prefix}{counter}"
        used.add(name)
        return name

    return fresh
