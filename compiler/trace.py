"""The compiler side of tracing: a `Tracer` records primitives applied to symbolic values.

The frontend (neurenix/tracing.py) owns the symbolic tensors and calls this recorder; the
compiler never sees a frontend object.  A trace produces a `Graph` whose inputs are the data
inputs, parameters, buffers and random seeds of one call signature, and whose outputs are the
function's outputs followed by the new values of buffers the function updated in place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .debug import spec_enabled
from .graph.graph_builder import GraphBuilder
from .graph.ir import Graph, Node
from .types import TensorType


class TraceError(RuntimeError):
    """Something a trace cannot capture (a Python value read from a traced tensor)."""


@dataclass
class TraceResult:
    """A finished trace: the graph and what its outputs mean."""

    graph: Graph
    num_outputs: int  # the function's own outputs come first
    updates: list[str] = field(default_factory=list)  # buffer inputs updated, in output order


class Tracer:
    """Record the primitives of one traced call into a graph."""

    def __init__(self, name: str = "main") -> None:
        self.builder = GraphBuilder(name)
        self._constants: dict[int, Node] = {}
        self._keep_alive: list[Any] = []
        self.updates: dict[str, Node] = {}

    def input(self, name: str, type_: TensorType, kind: str = "data") -> Node:
        """Declare an input of the traced function (data, param or buffer)."""
        return self.builder.input(name, type_, kind)

    def has_input(self, name: str) -> bool:
        return any(n.name == name for n in self.builder.inputs)

    def constant(self, array: np.ndarray) -> Node:
        """Capture an array used by the function as a graph constant (once per array)."""
        key = id(array)
        node = self._constants.get(key)
        if node is None:
            node = self.builder.constant(np.array(array, copy=True))
            self._constants[key] = node
            self._keep_alive.append(array)  # keep id() unique while the trace lives
        return node

    def apply(self, op: str, inputs: list[Node], attrs: dict, source: str | None) -> Node:
        """Append one primitive node; `source` is the user's file:line that applied it."""
        self.builder.source = source
        try:
            return self.builder.apply(op, *inputs, **attrs)
        finally:
            self.builder.source = None

    def record_update(self, input_name: str, value: Node) -> None:
        """The traced function assigned `value` to the buffer input `input_name` in place."""
        target = next((n for n in self.builder.inputs if n.name == input_name), None)
        if target is None:
            raise TraceError(f"in-place update of {input_name!r}, which is not a traced input")
        if target.type != value.type:
            raise TraceError(f"in-place update of {input_name!r}: expected {target.type}, got "
                             f"{value.type}")
        self.updates[input_name] = value

    def finish(self, outputs: list[Node]) -> TraceResult:
        """The graph: the function's outputs, then every updated buffer's new value."""
        names = list(self.updates)
        # every node was type-checked as it was recorded; NEURENIX_SPEC checks the whole graph
        graph = self.builder.build(list(outputs) + [self.updates[n] for n in names],
                                   verify=spec_enabled())
        return TraceResult(graph, len(outputs), names)
