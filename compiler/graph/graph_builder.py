"""Build graphs by hand (tests, autodiff, tracing) and evaluate them with the reference ops."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ops import REGISTRY
from ..types import TensorType, dtype_from_numpy
from .builder import Builder
from .ir import CONSTANT, INPUT, INPUT_KINDS, Graph, IRError, Node, make_node


class GraphBuilder(Builder):
    """A symbolic builder: every primitive applied appends a node to the graph under way."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Node] = []
        self.nodes: list[Node] = []
        self.constants: dict[str, np.ndarray] = {}
        self.source: str | None = None

    def input(self, name: str, type_: TensorType, kind: str = "data") -> Node:
        """Declare a graph input (a data input, a parameter or a buffer)."""
        if kind not in INPUT_KINDS:
            raise IRError(f"input {name!r}: kind must be one of {INPUT_KINDS}, got {kind!r}")
        if any(i.name == name for i in self.inputs):
            raise IRError(f"input {name!r} declared twice")
        node = Node(INPUT, (), (("kind", kind),), type_, name)
        self.inputs.append(node)
        self.nodes.append(node)
        return node

    def constant(self, array: np.ndarray, name: str | None = None) -> Node:
        """Capture an array as a constant of the graph."""
        array = np.asarray(array, order="C")
        name = name or f"c{len(self.constants)}"
        self.constants[name] = array
        node = Node(CONSTANT, (), (), TensorType(array.shape, dtype_from_numpy(array.dtype)),
                    name)
        self.nodes.append(node)
        return node

    def apply(self, op: str, *inputs: Node, **attrs: Any) -> Node:
        node = make_node(op, inputs, attrs, source=self.source)
        self.nodes.append(node)
        return node

    def type_of(self, value: Node) -> TensorType:
        return value.type

    def build(self, outputs: Sequence[Node], verify: bool = True) -> Graph:
        """Finish: the graph of every node appended so far, returning `outputs`.

        `verify=False` skips re-checking every node's type (each was checked when it was
        made); for large traced graphs, where the check costs as much as the trace.
        """
        graph = Graph(list(self.inputs), list(self.nodes), list(outputs), dict(self.constants),
                      self.name)
        if verify:
            graph.verify()
        return graph


def evaluate(graph: Graph,
             inputs: dict[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run a graph with the registry's NumPy reference implementations.

    `inputs` maps input names to arrays, or lists arrays in the order of `graph.inputs`.  This is
    the oracle every compiled graph is compared against.
    """
    if not isinstance(inputs, dict):
        if len(inputs) != len(graph.inputs):
            raise ValueError(f"evaluate: graph {graph.name!r} takes {len(graph.inputs)} inputs, "
                             f"got {len(inputs)}")
        inputs = {n.name: a for n, a in zip(graph.inputs, inputs)}
    env: dict[int, np.ndarray] = {}
    for node in graph.nodes:
        if node.op == INPUT:
            if node.name not in inputs:
                raise ValueError(f"evaluate: missing input {node.name!r}")
            arr = np.asarray(inputs[node.name])
            want = node.type
            if arr.shape != want.shape or arr.dtype != np.dtype(want.dtype.np_type):
                raise ValueError(f"evaluate: input {node.name!r} expects {want}, got "
                                 f"{arr.dtype}{list(arr.shape)}")
            env[id(node)] = arr
        elif node.op == CONSTANT:
            env[id(node)] = graph.constants[node.name]
        else:
            args = [env[id(i)] for i in node.inputs]
            with np.errstate(all="ignore"):
                out = REGISTRY[node.op].impl(*args, **node.attr)
            env[id(node)] = np.asarray(out, dtype=node.type.dtype.np_type)
    return [env[id(o)] for o in graph.outputs]
