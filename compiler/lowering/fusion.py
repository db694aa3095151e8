"""Fusion: which nodes of a graph share a kernel (a pure analysis; `lowering.lower` builds them).

A kernel computes its *roots* (the values it stores) by inlining everything they need down to
values that live in memory: graph inputs, constants and the roots of earlier kernels.  So the
whole decision is which values to materialise, made in four steps:

1. Each reduction (reduce_*, argmax/argmin, matmul, fold) is the core of exactly one kernel.
   Its *epilogue* grows over elementwise consumers and reshapes of its result (bias, scale,
   activation: `relu(x @ w + b)` is one kernel) as long as each new node reads the epilogue
   only at the kernel's own index and no other operand depends on the epilogue (so no cycle);
   a permute may end it (a transposed store, as a weight gradient needs).  The epilogue's
   nodes read from outside it, or graph outputs, are its roots.
2. A matmul reads its operands through plain strided views only (what a fast GEMM needs);
   an operand that is not one (padding masks, computed values) is materialised first, except
   a convolution's window gather (pad, unfold, reshape of a value in memory) against few output
   channels (the target's `Capabilities.inline_unfold_limit`, through `FusionPolicy`): the GEMM
   packs that masked operand itself, so no im2col kernel writes it.
3. Elementwise, movement, source and gather nodes are inlined into every consumer (their
   *prologue* when the consumer is a reduction); a value with several consumers is computed
   again in each unless that costs more than `DUPLICATE_COST_LIMIT` ops or
   `DUPLICATE_LOAD_LIMIT` loads, and a computed value broadcast to a larger shape is
   materialised rather than recomputed per copy, and a chain deeper than `INLINE_DEPTH_LIMIT`
   nodes is stored every so often (expressions are walked recursively).  Reductions
   are never recomputed.  Graph outputs are stored; a cheap one is still inlined downstream.
4. Elementwise kernels of one shape merge into one kernel with several stores when they share
   an input and do not depend on each other, or when one reads the other's values only
   elementwise (an LSTM cell's `h` and `c`, stored together).  A merged kernel's root that no
   other kernel loads and no output needs is then not stored at all (it is computed inline).
   Under a target's limit of buffers per kernel (WebGPU's storage buffers per shader stage)
   kernels merge only within it, and a kernel that would read more has inlined values
   materialised until it fits.

The result is checked: the kernel graph is acyclic (networkx) and every reduction belongs to
exactly one kernel.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import networkx as nx

from ..graph.ir import CONSTANT, INPUT, Graph, Node, ancestors
from ..ops import ELEMENTWISE, REGISTRY
from ..symbolic import hint
from ..targets import Capabilities
from ..types import same_shape
from .index import (
    MOVEMENT_OPS,
    IndexAlgebra,
    matmul_domain,
    matmul_operand_indices,
    strided_view,
)
from .sizes import is_zero

REDUCTIONS = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
              "matmul", "fold")
DUPLICATE_COST_LIMIT = 8  # ops a multi-consumer value may cost and still be recomputed per use
DUPLICATE_LOAD_LIMIT = 2  # loads it may make (recomputing more reads more than storing it)
BROADCAST_COST_LIMIT = 2  # ops from which a broadcast value is materialised, not recomputed
EPILOGUE_LIMIT = 64  # nodes a reduction's epilogue may absorb
INLINE_DEPTH_LIMIT = 128  # nodes deep an inlined expression may grow before it is stored
MERGE_LIMIT = 8  # stores one merged elementwise kernel may hold


@dataclass(frozen=True)
class FusionPolicy:
    """What fusion asks of the target: how far its code generator takes operands inline."""

    inline_unfold_limit: int
    """A matmul keeps an unfolded (im2col) operand inline while the other operand's free
    extent is at most this (the CPU's register-tiled GEMM: 64 output channels)."""
    max_buffers: int = 0
    """The most buffers one kernel may bind (WebGPU: storage buffers per shader stage); 0
    for no limit.  Kernels merge only within it, and a kernel reading more has inlined
    values materialised until it fits."""

    @classmethod
    def from_capabilities(cls, caps: Capabilities) -> FusionPolicy:
        return cls(inline_unfold_limit=caps.inline_unfold_limit,
                   max_buffers=caps.max_kernel_buffers)


class FusionError(RuntimeError):
    """An internal inconsistency of the fusion plan (a cycle, a reduction in two kernels)."""


def is_reduction(node: Node) -> bool:
    """Whether the node is the core of a reduction kernel (a sum over no axes is not)."""
    if node.op.startswith("reduce_"):
        return bool(node.attr["axes"])
    return node.op in REDUCTIONS


def is_elementwise(node: Node) -> bool:
    """Elementwise primitives, and reductions over no axes (identities)."""
    if node.op.startswith("reduce_"):
        return not node.attr["axes"]
    prim = REGISTRY.get(node.op)
    return prim is not None and prim.kind == ELEMENTWISE


def is_buffer(node: Node) -> bool:
    """Graph inputs and constants: values that are in memory before any kernel runs."""
    return node.op in (INPUT, CONSTANT)


@dataclass(eq=False)
class Group:
    """One kernel (two for scatter_add: initialise, then accumulate).

    `kind` is "elementwise", "reduce" or "scatter"; `roots` are the values it stores, in graph
    order; `reduction` is the node at its core (reduce kinds); `nodes` every primitive it
    evaluates, in graph order; `reads` the graph inputs, constants and materialised values it
    loads.
    """

    kind: str
    roots: tuple[Node, ...]
    reduction: Node | None
    nodes: tuple[Node, ...]
    reads: tuple[Node, ...]

    def __repr__(self) -> str:
        roots = ", ".join(f"{r.op} {r.type}" for r in self.roots)
        return f"Group({self.kind}: {' + '.join(n.op for n in self.nodes)} -> {roots})"


@dataclass
class FusionPlan:
    """The kernels of a graph in launch order, and the values that live in memory.

    `materialised` holds the computed values consumers load from memory; every one is a root
    of exactly one group.  Graph inputs and constants are in memory too (`is_buffer`).
    """

    groups: list[Group]
    materialised: set[Node] = field(default_factory=set)

    def group_graph(self) -> nx.DiGraph:
        """Kernels as vertices (indices into `groups`), an edge where one loads another's
        root."""
        return _group_graph(self.groups, self.materialised)

    def is_loaded(self, node: Node) -> bool:
        """Whether consumers read `node` from memory rather than computing it inline."""
        return is_buffer(node) or node in self.materialised


def plan_fusion(graph: Graph, fuse: bool = True,
                caps: Capabilities | None = None) -> FusionPlan:
    """Group the graph's live nodes into kernels for a target with `caps` (default: the
    default record's fusion limits, the CPU's); `fuse=False` gives one kernel per node."""
    caps = Capabilities() if caps is None else caps
    ctx = _Context(graph, FusionPolicy.from_capabilities(caps))
    if not fuse:
        return ctx.unfused()
    return ctx.fused()


class _Context:
    """The graph facts fusion consults: liveness, order, consumers, outputs."""

    def __init__(self, graph: Graph, policy: FusionPolicy) -> None:
        self.graph = graph
        self.policy = policy
        self.order = {n: i for i, n in enumerate(graph.nodes)}
        self.outputs = set(graph.outputs)
        self.live = ancestors(graph.outputs)
        self.consumers: dict[Node, list[Node]] = defaultdict(list)
        for n in graph.nodes:
            if n in self.live:
                for i in n.inputs:
                    self.consumers[i].append(n)
        self.computed = [n for n in graph.nodes if n in self.live and not is_buffer(n)]
        self.deep: set[Node] = set()  # stored because inlining them grew too deep

    def distinct_consumers(self, n: Node) -> list[Node]:
        return list(dict.fromkeys(self.consumers[n]))

    def uses(self, n: Node) -> int:
        """How many times `n` is read at its own index pattern: an elementwise consumer counts
        once, any other once per operand position."""
        return sum(1 if is_elementwise(c) else self.consumers[n].count(c)
                   for c in self.distinct_consumers(n))

    # ---- one kernel per node --------------------------------------------------------------

    def unfused(self) -> FusionPlan:
        materialised = set(self.computed)
        groups = []
        for n in self.computed:
            kind = "scatter" if n.op == "scatter_add" else \
                "reduce" if is_reduction(n) else "elementwise"
            reads = tuple(dict.fromkeys(n.inputs))
            groups.append(Group(kind, (n,), n if kind == "reduce" else None, (n,), reads))
        return _finish(groups, materialised)

    # ---- fused ----------------------------------------------------------------------------

    def fused(self) -> FusionPlan:
        forced: set[Node] = set()  # values materialised to respect a buffer limit
        bare: set[Node] = set()  # reductions kept without an epilogue, for the same reason
        while True:
            groups, materialised, owner = self._fused_groups(forced, bare)
            if not self._narrow(groups, owner, materialised, forced, bare):
                break
        groups = _merge_elementwise(groups, materialised, self.order, self.deep,
                                    self.policy.max_buffers)
        groups = _drop_dead_stores(groups, materialised, self.outputs)
        return _finish(groups, materialised)

    def _fused_groups(self, forced: set[Node],
                      bare: set[Node]) -> tuple[list[Group], set[Node], dict[Node, Node]]:
        """Steps 1-3 (module docstring): the kernels before merging, the values they store,
        and each epilogue node's reduction."""
        materialised: set[Node] = {n for n in self.computed if n.op == "scatter_add"}
        materialised |= forced
        owner: dict[Node, Node] = {}
        epilogues: dict[Node, list[Node]] = {}
        for r in self.computed:
            if is_reduction(r):
                nodes = [r] if r in bare else self._epilogue(r, owner)
                epilogues[r] = nodes
                for n in nodes:
                    owner[n] = r
                for root in self._roots(nodes):
                    materialised.add(root)
        for n in self.computed:
            if n.op == "matmul":
                self._materialise_operands(n, materialised)
        stored = self._cheap_values(owner, materialised)
        groups = []
        for n in self.computed:
            if n in epilogues:
                own = set(epilogues[n])
                roots = tuple(m for m in epilogues[n] if m in materialised or m in self.outputs)
                groups.append(self._group("reduce", roots, n, own, materialised))
            elif n.op == "scatter_add":
                groups.append(self._group("scatter", (n,), None, {n}, materialised))
            elif n in stored and n not in owner:
                groups.append(self._group("elementwise", (n,), None, {n}, materialised))
        return groups, materialised, owner

    def _narrow(self, groups: list[Group], owner: dict[Node, Node], materialised: set[Node],
                forced: set[Node], bare: set[Node]) -> bool:
        """Under a buffer limit, narrow each kernel that binds too many buffers: a reduction
        drops its epilogue (which becomes kernels of its own), otherwise the inlined value
        whose own loads are the most is materialised (a kernel of its own, read as one
        buffer).  Whether anything changed (the groups are then built again); a kernel that
        nothing narrows is left to the code generator's clear error."""
        limit = self.policy.max_buffers
        changed = False
        for g in groups:
            if not limit or g.kind == "scatter" or len(g.reads) + len(g.roots) <= limit:
                continue
            if g.reduction is not None and g.reduction not in bare \
                    and any(owner.get(n) is g.reduction for n in g.nodes
                            if n is not g.reduction):
                bare.add(g.reduction)
                changed = True
                continue
            best, gain = None, 1
            for n in g.nodes:
                if n in g.roots or n in owner or is_reduction(n) or is_buffer(n) \
                        or n in materialised:
                    continue
                _, reads = _members((n,), set(), materialised)
                if len(reads) - 1 > gain or (best is None and len(reads) - 1 == gain):
                    best, gain = n, len(reads) - 1
            if best is not None:
                forced.add(best)
                changed = True
        return changed

    def _epilogue(self, r: Node, owner: dict[Node, Node]) -> list[Node]:
        """The nodes a reduction's kernel computes after the reduction itself (r first)."""
        nodes = [r]
        inside = {r}
        rejected: set[Node] = set()
        grew = True
        while grew and len(nodes) < EPILOGUE_LIMIT:
            grew = False
            for n in list(nodes):
                if n.op == "permute":
                    continue  # a transposed store ends the epilogue
                for c in self.distinct_consumers(n):
                    if c in inside or c in rejected:
                        continue
                    verdict = self._joins_epilogue(c, inside, owner, r)
                    if verdict is None:
                        rejected.add(c)
                    elif verdict:
                        nodes.append(c)
                        inside.add(c)
                        grew = True
        nodes.sort(key=self.order.__getitem__)
        # a view stored next to its own (stored) operand is a second copy: read it as a view
        pruned = True
        while pruned:
            pruned = False
            roots = set(self._roots(nodes))
            for n in nodes[1:]:
                if n.op in ("reshape", "permute") and n in roots and n.inputs[0] in roots \
                        and n not in self.outputs \
                        and not any(c in inside for c in self.consumers[n]):
                    nodes.remove(n)
                    inside.discard(n)
                    pruned = True
                    break
        return nodes

    def _joins_epilogue(self, c: Node, inside: set[Node], owner: dict[Node, Node],
                        r: Node) -> bool | None:
        """Whether consumer `c` can join the epilogue now; None if it never can.

        An operand from outside that depends on the epilogue would make a cycle; it may join
        later (and the question be asked again), so that answer is only "not now"."""
        if c in owner or not (is_elementwise(c) or c.op in ("reshape", "permute")):
            return None
        floor = self.order[r]
        return not any(i not in inside and self._depends_on(i, inside, floor) for i in c.inputs)

    def _depends_on(self, n: Node, targets: set[Node], floor: int) -> bool:
        """Whether `n` has an ancestor in `targets` (all of which come at or after `floor`)."""
        stack, seen = [n], set()
        while stack:
            m = stack.pop()
            if m in targets:
                return True
            if m in seen or self.order[m] < floor:
                continue
            seen.add(m)
            stack.extend(m.inputs)
        return False

    def _roots(self, nodes: Iterable[Node]) -> list[Node]:
        inside = set(nodes)
        return [n for n in nodes
                if n in self.outputs or any(c not in inside for c in self.consumers[n])]

    def _materialise_operands(self, mm: Node, materialised: set[Node]) -> None:
        """Make each matmul operand a plain strided view (offset 0) of a value in memory.

        A view of a computed value (a broadcast or transpose of an activation) materialises
        that value, not the view: `expand(h)` read by a batched matmul stores h once and reads
        it with a zero batch stride."""
        domain, reduce = matmul_domain(mm)
        alg = IndexAlgebra(domain + reduce)
        def in_memory(m: Node) -> bool:
            return is_buffer(m) or m in materialised

        for operand, idx in zip(mm.inputs, matmul_operand_indices(alg, mm)):
            if self._im2col_operand(mm, operand, in_memory):
                continue
            view = strided_view(operand, in_memory, alg, idx)
            if view is None:
                base = _view_base(operand, in_memory)
                if base is not operand:
                    view = strided_view(operand, _or_is(in_memory, base), alg, idx)
            if view is not None and is_zero(view[2]):
                if not is_buffer(view[0]):
                    materialised.add(view[0])
            else:
                materialised.add(operand)

    def _im2col_operand(self, mm: Node, operand: Node,
                        in_memory: Callable[[Node], bool]) -> bool:
        """Whether matmul `mm` reads `operand` inline as a window gather (im2col): a chain
        of movement ops through an `unfold` down to a value in memory, each read by this
        chain only, while the other operand's free extent is at most the policy's
        `inline_unfold_limit` (a convolution's output channels), so that a GEMM that packs the
        gathered operand computes each element of it at most twice instead of writing and
        reading it back."""
        a_shape, b_shape = mm.inputs[0].type.shape, mm.inputs[1].type.shape
        other = b_shape[-1] if operand is mm.inputs[0] else a_shape[-2]
        if operand is mm.inputs[0] and operand is mm.inputs[1]:
            return False
        if hint(other) > self.policy.inline_unfold_limit or not mm.type.dtype.is_floating:
            return False
        n, chain = operand, []
        while not in_memory(n):
            if n.op not in MOVEMENT_OPS or n.op == "concat":
                return False
            chain.append(n)
            n = n.inputs[0]
        if not any(c.op == "unfold" for c in chain):
            return False
        return all(c not in self.outputs and len(self.distinct_consumers(c)) == 1
                   and self.consumers[c].count(self.distinct_consumers(c)[0]) == 1
                   for c in chain)

    def _cheap_values(self, owner: dict[Node, Node], materialised: set[Node]) -> set[Node]:
        """Decide which inlined values to materialise; return every value a kernel stores."""
        cost: dict[Node, int] = {}
        loads: dict[Node, int] = {}
        depth: dict[Node, int] = {}
        for n in self.computed:
            if n in owner or is_reduction(n) or n.op == "scatter_add":
                continue
            inlined = [i for i in n.inputs if i in cost and i not in materialised]
            cost[n] = _own_cost(n) + sum(cost[i] for i in inlined)
            loads[n] = len(n.inputs) - len(inlined) + sum(loads[i] for i in inlined)
            depth[n] = 1 + max((depth[i] for i in inlined), default=0)
            if n in materialised:
                continue
            if depth[n] >= INLINE_DEPTH_LIMIT:  # a 300-op chain is stored every so often
                materialised.add(n)
                self.deep.add(n)
                continue
            if n.op == "expand" and hint(n.type.numel) > 2 * hint(n.inputs[0].type.numel):
                self._materialise_broadcast(n, cost, materialised)
            cheap = cost[n] <= DUPLICATE_COST_LIMIT and loads[n] <= DUPLICATE_LOAD_LIMIT
            if not cheap and (self.uses(n) > 1 or n in self.outputs):
                materialised.add(n)
        return materialised | (self.outputs & set(self.computed))

    def _materialise_broadcast(self, n: Node, cost: dict[Node, int],
                               materialised: set[Node]) -> None:
        chain = [n]
        p = n.inputs[0]
        while p.op in ("reshape", "permute", "expand", "slice") and p not in materialised:
            chain.append(p)
            p = p.inputs[0]
        if p in cost and p not in materialised and cost[p] >= BROADCAST_COST_LIMIT:
            materialised.add(p)
            for c in chain:
                cost[c] = 0

    def _group(self, kind: str, roots: tuple[Node, ...], reduction: Node | None,
               own: set[Node], materialised: set[Node]) -> Group:
        nodes, reads = _members(roots, own, materialised)
        nodes.sort(key=self.order.__getitem__)
        return Group(kind, roots, reduction, tuple(nodes), tuple(reads))


def _or_is(pred: Callable[[Node], bool], node: Node) -> Callable[[Node], bool]:
    """`pred`, also accepting `node` itself."""
    return lambda m: m is node or pred(m)


def _view_base(n: Node, in_memory: Callable[[Node], bool]) -> Node:
    """The value a chain of one-input movement ops (reshape, permute, expand, slice) views:
    the first node down the chain that is computed by something else or in memory."""
    while n.op in ("reshape", "permute", "expand", "slice") and not in_memory(n):
        n = n.inputs[0]
    return n


def _own_cost(n: Node) -> int:
    if n.op in MOVEMENT_OPS or n.op in ("full", "iota", "stop_gradient"):
        return 0
    if n.op == "rng_uniform":
        return 4
    if n.op.startswith("reduce_"):
        return 0
    return 1


def _members(roots: Iterable[Node], own: set[Node],
             materialised: set[Node]) -> tuple[list[Node], list[Node]]:
    """The nodes a kernel evaluates for `roots`, and the values it loads."""
    nodes: list[Node] = []
    reads: dict[Node, None] = {}
    seen: set[Node] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        nodes.append(n)
        for i in n.inputs:
            if is_buffer(i) or (i in materialised and i not in own):
                reads[i] = None
            elif is_reduction(i) and i not in own:
                raise FusionError(f"{i.op} would be recomputed inside another kernel")
            else:
                stack.append(i)
    return nodes, list(reads)


def _group_graph(groups: list[Group], materialised: set[Node]) -> nx.DiGraph:
    producer: dict[Node, int] = {}
    for k, g in enumerate(groups):
        for r in g.roots:
            if r in materialised:
                producer[r] = k
    dg = nx.DiGraph()
    dg.add_nodes_from(range(len(groups)))
    for k, g in enumerate(groups):
        for r in g.reads:
            if r in producer and producer[r] != k:
                dg.add_edge(producer[r], k)
    return dg


def _merge_elementwise(groups: list[Group], materialised: set[Node],
                       order: dict[Node, int], deep: set[Node],
                       max_buffers: int = 0) -> list[Group]:
    """Merge elementwise kernels of one shape that load a common value, or where one reads
    the other's roots only elementwise (it then computes them inline and stores them too),
    unless those roots were stored to keep expressions shallow (`deep`).

    Kernels joined by a path through a third kernel never merge (that would be a cycle); the
    kernel graph is updated as kernels merge."""
    dg = _group_graph(groups, materialised)  # vertices: ints, so failed path queries stay cheap
    vertex = {g: k for k, g in enumerate(groups)}
    alive = list(groups)
    by_read: dict[Node, list[Group]] = defaultdict(list)
    for g in groups:
        if g.kind == "elementwise":
            for r in g.reads:
                by_read[r].append(g)
            for r in g.roots:
                by_read[r].append(g)
    replaced: dict[Group, Group] = {}

    def current(g: Group) -> Group:
        while g in replaced:
            g = replaced[g]
        return g

    for g0 in groups:
        g = current(g0)
        if g.kind != "elementwise":
            continue
        for r in list(g.reads) + list(g.roots):
            for h0 in by_read[r]:
                h = current(h0)
                if h is g or h.kind != "elementwise" \
                        or len(g.roots) + len(h.roots) > MERGE_LIMIT \
                        or not same_shape(h.roots[0].type.shape, g.roots[0].type.shape):
                    continue
                vg, vh = vertex[g], vertex[h]
                if dg.has_edge(vg, vh) or dg.has_edge(vh, vg):
                    first, second = (g, h) if dg.has_edge(vg, vh) else (h, g)
                    if not _reads_aligned(second, first.roots) or deep.intersection(first.roots):
                        continue
                    a, b = vertex[first], vertex[second]
                    dg.remove_edge(a, b)
                    blocked = nx.has_path(dg, a, b)
                    dg.add_edge(a, b)
                    if blocked:
                        continue
                elif nx.has_path(dg, vg, vh) or nx.has_path(dg, vh, vg):
                    continue
                roots = tuple(sorted(g.roots + h.roots, key=order.__getitem__))
                reads = tuple(n for n in dict.fromkeys(g.reads + h.reads) if n not in roots)
                if max_buffers and len(reads) + len(roots) > max_buffers:
                    continue
                nodes = sorted(set(g.nodes) | set(h.nodes), key=order.__getitem__)
                m = Group("elementwise", roots, None, tuple(nodes), reads)
                vertex[m] = vm = len(vertex)
                dg.add_node(vm)
                for old in (vg, vh):
                    dg.add_edges_from((p, vm) for p in dg.predecessors(old) if p not in (vg, vh))
                    dg.add_edges_from((vm, s) for s in dg.successors(old) if s not in (vg, vh))
                    dg.remove_node(old)
                replaced[g] = replaced[h] = m
                alive[alive.index(g)] = m
                alive.remove(h)
                g = m
    return alive


def _drop_dead_stores(groups: list[Group], materialised: set[Node],
                      outputs: set[Node]) -> list[Group]:
    """Stop storing what no other kernel loads: a merged elementwise kernel computes the roots
    it took over inline, so a root that is not a graph output and that no other kernel reads
    is a dead store (gelu(x * a + b) used to write x * a + b to a buffer nobody read)."""
    loaded = {r for g in groups for r in g.reads}
    out = []
    for g in groups:
        if g.kind == "elementwise" and len(g.roots) > 1:
            live = tuple(r for r in g.roots if r in outputs or r in loaded)
            if live and len(live) < len(g.roots):
                materialised.difference_update(r for r in g.roots if r not in live)
                g = Group(g.kind, live, None, g.nodes, g.reads)
        out.append(g)
    return out


def _reads_aligned(group: Group, values: tuple[Node, ...]) -> bool:
    """Whether `group` reads `values` only through elementwise nodes, i.e. each at the very
    index it computes (so a merged kernel can compute them inline at that index)."""
    reached = set(values)
    for n in group.nodes:
        if any(i in reached for i in n.inputs):
            if not is_elementwise(n):
                return False
            reached.add(n)
    return True


def _finish(groups: list[Group], materialised: set[Node]) -> FusionPlan:
    """Order the groups for launch and check the plan's invariants."""
    dg = _group_graph(groups, materialised)
    if not nx.is_directed_acyclic_graph(dg):
        raise FusionError(f"fusion made a cycle between kernels: {nx.find_cycle(dg)}")
    order = list(nx.lexicographical_topological_sort(dg, key=lambda k: k))
    groups = [groups[k] for k in order]
    seen: dict[Node, int] = {}
    for g in groups:
        for n in g.nodes:
            if is_reduction(n) or n.op == "scatter_add":
                if n in seen:
                    raise FusionError(f"{n.op} {n.type} is computed by two kernels")
                seen[n] = 1
    for n in materialised:
        if not any(n in g.roots for g in groups):
            raise FusionError(f"materialised {n.op} {n.type} is stored by no kernel")
    return FusionPlan(groups, materialised)
