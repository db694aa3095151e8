"""Common subexpression elimination: compute each distinct value once.

Two nodes are the same value when they apply the same op with the same attributes to the same
inputs (by identity, after their own inputs were merged), so one walk in topological order
finds every duplicate.  Tracing produces many (the same `expand` of a bias, the same mask per
time step, VJP rules rebuilding `full` constants), and each merged node is a kernel or a buffer
saved.  Graph inputs are never merged, not even with each other; constants are merged when
their arrays are equal bit for bit.  Every primitive is deterministic (`rng_uniform` is a hash
of its seed), so merging never changes a result.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..graph.ir import CONSTANT, INPUT, Graph, Node
from ..graph.rewrite import rebuild


def _attr_key(value: Any) -> Any:
    # floats by their bits, so -0.0 and 0.0 (or two nans) are never confused; 1 vs True differ
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, (tuple, list)):
        return tuple(_attr_key(v) for v in value)
    return (type(value).__name__, value)


def _array_key(array: np.ndarray) -> tuple:
    data = np.asarray(array, order="C")
    return (data.dtype.str, data.shape, hashlib.sha256(data.tobytes()).hexdigest())


def cse(graph: Graph) -> Graph:
    """The graph with structurally equal nodes merged into the first of them."""
    seen: dict[tuple, Node] = {}

    def visit(node: Node) -> Node | None:
        if node.op == INPUT:
            return None
        if node.op == CONSTANT:
            key: tuple = (CONSTANT, _array_key(graph.constants[node.name]))
        else:
            key = (node.op, tuple(id(i) for i in node.inputs), _attr_key(node.attrs),
                   node.type)
        first = seen.setdefault(key, node)
        return None if first is node else first

    return rebuild(graph, visit)
