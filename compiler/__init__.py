"""The Neurenix compiler: op registry, graph IR, builders and the reference evaluator.

Installed as `neurenix.compiler`; it never imports the frontend (`neurenix`), and of the runtime
only the plain-data `Program`.
"""
from . import ops
from .graph.graph_builder import GraphBuilder, evaluate
from .graph.ir import Graph, IRError, Node
from .graph.text import parse_graph, print_graph, structurally_equal
from .types import DType, TensorType

__all__ = ["ops", "Graph", "Node", "IRError", "GraphBuilder", "evaluate", "parse_graph",
           "print_graph", "structurally_equal", "DType", "TensorType"]
