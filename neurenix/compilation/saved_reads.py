"""What a traced backward reads, and eager autograd's answer when it was written in place since.

Eager autograd saves, per recorded operation, the inputs its VJP reads (`autograd.VJP_READS`)
with their versions; a backward through it raises "modified in place" when one was written
since, except through `.data`, whose writes bump no version: the backward then reads the
storage as it is, new values and all (PyTorch's rules).  A trace is functional: the graph
keeps every value, so a backward inside a compiled function would silently use the old one.
`SavedReads` keeps the same books for the trace: the reads of each operation on the gradient's
path (the tensor, which input, when), and every rebinding of a tensor by an in-place write
(when, and whether it counts as a version bump: not when it came through a `.data` alias).
Before a traced backward runs, `check` raises eager's error for a read written since, or gives
the current values the VJPs must read in place of the old ones for reads written only through
`.data`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from neurenix.compiler.graph.ir import Node

from ..autograd import CROSS, SHAPE_ONLY, VJP_READS
from ..tensor import Tensor


@dataclass
class SavedReads:
    """The trace's books: saved reads per graph node, rebindings per tensor."""

    clock: int = 0
    # id(node) -> [(input index, tensor, clock when recorded)]: what its VJP reads
    reads: dict[int, list[tuple[int, Tensor, int]]] = field(default_factory=dict)
    # id(tensor) -> [(clock, counted)]: its in-place rebindings (counted: a version bump)
    rebinds: dict[int, list[tuple[int, bool]]] = field(default_factory=dict)
    unversioned: set[int] = field(default_factory=set)  # ids of `.data` aliases

    def record(self, node: Node, op: str, inputs: tuple[Tensor, ...],
               differentiable: list[bool]) -> None:
        """Keep the inputs `op`'s VJP reads (as eager's `_record` keeps their versions)."""
        if op in SHAPE_ONLY:
            return
        reads = VJP_READS.get(op)
        if reads is None:
            read = [True] * len(inputs)
        elif reads is CROSS:
            read = [differentiable[1], differentiable[0]]
        else:
            read = list(reads) + [False] * (len(inputs) - len(reads))
        kept = [(i, t, self.clock) for i, (t, r) in enumerate(zip(inputs, read)) if r]
        if kept:
            self.reads[id(node)] = kept

    def rebind(self, tensor: Tensor, counted: bool) -> None:
        """`tensor` took a new value in place (`counted`: eager bumps its version)."""
        self.clock += 1
        self.rebinds.setdefault(id(tensor), []).append((self.clock, counted))

    def check(self, nodes: list[Node], current) -> dict[int, Node]:
        """Before a backward through `nodes` (reversed graph order, the nodes whose VJPs it
        runs): raise eager's RuntimeError for a read whose tensor a counted write changed
        since; else {id(old input node): its tensor's value now} for reads changed only
        through `.data` (`current(tensor)` gives that value)."""
        substitute: dict[int, Node] = {}
        for node in nodes:
            for index, tensor, when in self.reads.get(id(node), ()):
                later = [counted for clock, counted in self.rebinds.get(id(tensor), ())
                         if clock > when]
                if any(later):
                    raise RuntimeError(
                        f"backward: a tensor of shape {tuple(tensor.shape)} used by "
                        f"{node.op}_backward was modified in place after it was used; its "
                        "gradient would be wrong. Use an out-of-place operation (or .clone() "
                        "before modifying)")
                if later:
                    substitute[id(node.inputs[index])] = current(tensor)
        return substitute
