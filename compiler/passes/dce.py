"""Dead code elimination: drop every node no output depends on.

What is never used costs memory and kernel launches; autodiff and the other rewrites leave such
nodes behind freely because this pass removes them.  Every graph input stays, used or not, so
the signature a caller binds arguments to never changes; unused constant arrays are dropped.
"""
from __future__ import annotations

from ..graph.ir import CONSTANT, INPUT, Graph, Node


def live_nodes(graph: Graph) -> set[Node]:
    """The nodes some output depends on (the outputs included)."""
    live: set[Node] = set()
    stack = list(graph.outputs)
    while stack:
        node = stack.pop()
        if node in live:
            continue
        live.add(node)
        stack.extend(node.inputs)
    return live


def dce(graph: Graph) -> Graph:
    """The graph without the nodes no output depends on (inputs are always kept)."""
    live = live_nodes(graph)
    nodes = [n for n in graph.nodes if n.op == INPUT or n in live]
    used = {n.name for n in nodes if n.op == CONSTANT}
    constants = {k: v for k, v in graph.constants.items() if k in used}
    return Graph(list(graph.inputs), nodes, list(graph.outputs), constants, graph.name)
