"""The graph IR: `Node`s in topological (SSA) order, each with a static `TensorType`.

Graph inputs are data inputs, parameters and buffers (pseudo-op ``input``); constant arrays
captured from user code are pseudo-op ``constant`` with their array in `Graph.constants`.  Every
other node applies a registered primitive.  `str(graph)` prints a jaxpr-like text form that
`compiler.graph.text.parse_graph` reads back.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ops import REGISTRY
from ..symbolic import DynamicSizeError
from ..types import TensorType

if TYPE_CHECKING:
    import networkx as nx

INPUT = "input"
CONSTANT = "constant"
INPUT_KINDS = ("data", "param", "buffer")


class IRError(ValueError):
    """A malformed graph: names the node and what is wrong with it."""


_PLAIN = (int, float, str, bool, type(None))


def freeze(value: Any) -> Any:
    """Make an attribute value hashable (lists become tuples, recursively)."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is tuple and all(type(v) is int for v in value):
        return value  # a shape or an axis list: already frozen
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True, eq=False)
class Node:
    """One SSA value: the op that computes it, its inputs, attributes and type."""

    op: str
    inputs: tuple[Node, ...]
    attrs: tuple[tuple[str, Any], ...]
    type: TensorType
    name: str | None = None  # set for inputs, constants and named values
    source: str | None = None  # user file:line that created the node, when known

    @property
    def attr(self) -> dict[str, Any]:
        return dict(self.attrs)

    def __repr__(self) -> str:
        return f"Node({self.op}, {self.type}{', ' + self.name if self.name else ''})"


def make_node(op: str, inputs, attrs: dict, name: str | None = None,
              source: str | None = None) -> Node:
    """Create a primitive node, inferring its type from the registry's type rule."""
    prim = REGISTRY.get(op)
    if prim is None:
        raise IRError(f"unknown op {op!r}")
    frozen = {k: freeze(v) for k, v in attrs.items()}
    try:
        out_type = prim.infer(tuple(i.type for i in inputs), frozen)
    except DynamicSizeError as e:  # name the op for the caller that falls back to static
        if str(e).startswith(f"{op}:"):
            raise
        raise DynamicSizeError(f"{op}: {e}") from e
    return Node(op, tuple(inputs), tuple(sorted(frozen.items())), out_type, name, source)


def ancestors(outputs: Iterable[Node]) -> set[Node]:
    """The given nodes and every node they depend on (nodes hash by identity)."""
    seen: set[Node] = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.inputs)
    return seen


@dataclass
class Graph:
    """A function from `inputs` to `outputs`; `nodes` lists every node in topological order."""

    inputs: list[Node]
    nodes: list[Node]
    outputs: list[Node]
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "main"

    def __str__(self) -> str:
        return print_graph(self)

    def verify(self) -> None:
        """Check SSA order, input declarations, constants and every node's type against its rule."""
        seen: set[int] = set()
        input_ids = {id(n) for n in self.inputs}
        for n in self.inputs:
            if n.op != INPUT or n.attr.get("kind") not in INPUT_KINDS:
                raise IRError(f"graph input {n.name!r} must be an input node of a kind in "
                              f"{INPUT_KINDS}")
        for n in self.nodes:
            for i in n.inputs:
                if id(i) not in seen:
                    raise IRError(f"{n.op} node {self._label(n)} uses {self._label(i)} before "
                                  "it is defined")
            if n.op == INPUT:
                if id(n) not in input_ids:
                    raise IRError(f"input node {n.name!r} is not listed in graph.inputs")
            elif n.op == CONSTANT:
                arr = self.constants.get(n.name)
                if arr is None or arr.shape != n.type.shape or \
                        arr.dtype != np.dtype(n.type.dtype.np_type):
                    raise IRError(f"constant {n.name!r} is missing or does not match {n.type}")
            else:
                expected = make_node(n.op, n.inputs, n.attr).type
                if expected != n.type:
                    raise IRError(f"{n.op} node {self._label(n)} has type {n.type}, its rule "
                                  f"gives {expected}")
            seen.add(id(n))
        for n in self.inputs:
            if id(n) not in seen:
                raise IRError(f"graph input {n.name!r} does not appear in graph.nodes")
        for o in self.outputs:
            if id(o) not in seen:
                raise IRError(f"output {self._label(o)} is not a node of the graph")

    def _label(self, node: Node) -> str:
        return node.name or f"<{node.op} {node.type}>"

    def to_networkx(self) -> nx.DiGraph:
        """The data-flow graph: one vertex per node index, edges from producer to consumer."""
        import networkx as nx  # only here: importing it costs more than the rest of Neurenix
        index = {id(n): i for i, n in enumerate(self.nodes)}
        g = nx.DiGraph()
        for i, n in enumerate(self.nodes):
            g.add_node(i, op=n.op, type=str(n.type), name=n.name,
                       output=any(o is n for o in self.outputs))
        for i, n in enumerate(self.nodes):
            for src in n.inputs:
                g.add_edge(index[id(src)], i)
        return g

    def ops_count(self) -> int:
        """The number of primitive nodes (inputs and constants excluded)."""
        return sum(1 for n in self.nodes if n.op not in (INPUT, CONSTANT))


# ---- the text form's printer (the parser is in text.py) -----------------------------------


def _names(graph: Graph) -> dict[int, str]:
    names: dict[int, str] = {}
    counter = 0
    for n in graph.nodes:
        if n.op in (INPUT, CONSTANT):
            names[id(n)] = n.name
        else:
            names[id(n)] = str(counter)
            counter += 1
    return names


def _attr_text(node: Node) -> str:
    if not node.attrs:
        return ""
    return " {" + ", ".join(f"{k}={v!r}" for k, v in node.attrs) + "}"


def print_graph(graph: Graph, where: Callable[[str], str | None] | None = None) -> str:
    """The graph as text, one node a line.  `where` maps a node's source (the user's
    file:line) to the text shown after `#` (None: nothing shown); by default it is shown as is."""
    names = _names(graph)
    params = []
    for n in graph.inputs:
        kind = n.attr["kind"]
        params.append(f"%{n.name}: {n.type}" + ("" if kind == "data" else f" {kind}"))
    lines = [f"graph {graph.name}({', '.join(params)}) {{"]
    for n in graph.nodes:
        if n.op == INPUT:
            continue
        if n.op == CONSTANT:
            lines.append(f"  %{n.name} = constant : {n.type}")
            continue
        args = ", ".join(f"%{names[id(i)]}" for i in n.inputs)
        shown = where(n.source) if where is not None and n.source else n.source
        comment = f"  # {shown}" if shown else ""
        lines.append(f"  %{names[id(n)]} = {n.op}({args}){_attr_text(n)} : {n.type}{comment}")
    lines.append("  return " + ", ".join(f"%{names[id(o)]}" for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
