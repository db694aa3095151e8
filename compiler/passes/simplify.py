"""Simplification: constant folding, algebraic identities, CSE and DCE, to a fixed point.

Each pass exposes work for the others: folding turns `expand(full)` into a `full` an identity
recognises, an identity makes two nodes equal for CSE, and CSE and the identities leave dead
nodes for DCE.  `simplify` repeats the four until the graph stops shrinking (bounded, so a rule
set that oscillated could not hang the compiler).
"""
from __future__ import annotations

from ..graph.ir import Graph
from .algebraic import algebraic, strip_stop_gradient
from .constant_fold import constant_fold
from .cse import cse
from .dce import dce
from .manager import Stage

SIMPLIFY_STAGES: list[Stage] = [
    Stage("constant_fold", constant_fold, "compute once what depends on no input"),
    Stage("algebraic", algebraic, "remove no-ops: x*1, x+0, transpose of transpose, ..."),
    Stage("cse", cse, "compute each distinct value once"),
    Stage("dce", dce, "drop what no output needs"),
]

MAX_ROUNDS = 8

__all__ = ["SIMPLIFY_STAGES", "MAX_ROUNDS", "simplify", "strip_stop_gradient"]


def _size(graph: Graph) -> tuple[int, int]:
    return graph.ops_count(), len(graph.nodes)


def simplify(graph: Graph, max_rounds: int = MAX_ROUNDS) -> Graph:
    """Run `SIMPLIFY_STAGES` repeatedly until the graph stops shrinking (at most `max_rounds`)."""
    for _ in range(max_rounds):
        before = _size(graph)
        for stage in SIMPLIFY_STAGES:
            graph = stage.fn(graph)
        if _size(graph) >= before:
            break
    return graph
