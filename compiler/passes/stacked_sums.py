"""Stacked sums: sums that autodiff writes term by term, rewritten as one stacked value.

Unrolled loops (a recurrent layer traced step by step) leave two sums in their gradients:

- the gradient of a tensor read one slice per step is a sum of zero-padded slices, one per
  step, whose nonzero parts do not overlap.  That sum is a `concat` of the slices (zeros
  where no slice lands), which lowering writes piece by piece instead of choosing among
  every step's value at every element;
- the gradient of a weight used once per step is a sum of small matrix products,
  ``sum_t A_t @ B_t`` (for a recurrent weight: the step's gate gradients against its
  hidden state, a contraction over the batch only).  It equals one product over the
  concatenated contraction axis, ``concat(A_t, -1) @ concat(B_t, 0)``: one large GEMM
  instead of many tiny ones.

Both run right before lowering (`lower(fuse=True)`), after autodiff and simplification.
The concat form is exact (each element sums one value and zeros, up to the sign of a
``-0.0``); the single product adds the same terms in another order, as any GEMM blocking does.
"""
from __future__ import annotations

from collections import Counter

from ..graph.ir import Graph, IRError, Node, make_node
from ..graph.rewrite import substitute
from ..ops.registry import OpError
from ..symbolic import DynamicSizeError, hint
from .dce import dce

MIN_PRODUCT_SIDE = 16
"""A product's rows and columns must both be at least this for the single product to pay:
the concatenation copies each term's operands, which a product this wide reads back many
times; a thin one (a matrix-vector product) would only be copied."""
MAX_STACKED_BYTES = 64 << 20
"""The concatenated operands of one rewritten sum hold at most this many bytes."""


def stacked_sums(graph: Graph) -> Graph:
    """The graph with each sum of disjoint pads as a concat and each sum of two or more
    matrix products (wide enough, see `MIN_PRODUCT_SIDE`) as one product."""
    uses: Counter = Counter(i for n in graph.nodes for i in n.inputs)
    uses.update(graph.outputs)
    inner: set[Node] = set()
    mapping: dict[Node, Node] = {}
    for root in reversed(graph.nodes):  # a whole sum before the partial sums inside it
        if root.op != "add" or root in inner:
            continue
        terms = _terms(root, uses, inner)
        if len(terms) < 2:
            continue
        try:
            new = _as_concat(root, terms) or _as_one_product(root, terms, uses)
        except (IRError, OpError, DynamicSizeError):
            new = None  # a shape the ops refuse (dynamic gaps, say): leave the sum as it is
        if new is not None:
            mapping[root] = new
    return dce(substitute(graph, mapping)) if mapping else graph


def _terms(root: Node, uses: Counter, inner: set[Node]) -> list[Node]:
    """The terms of the sum rooted at `root`, left to right: through every add of root's
    type that nothing else reads (each added to `inner`)."""
    terms: list[Node] = []
    stack = [root]
    while stack:
        n = stack.pop()
        if n.op == "add" and (n is root or (uses[n] == 1 and n.type == root.type)):
            inner.add(n)
            stack.extend(reversed(n.inputs))
        else:
            terms.append(n)
    return terms


def _as_concat(root: Node, terms: list[Node]) -> Node | None:
    """`root` (the sum of `terms`) as a concat, when every term zero-pads a value along one
    common axis and no two padded values overlap; None otherwise."""
    if not all(t.op == "pad" for t in terms):
        return None
    axes = set()
    for t in terms:
        a = t.attr
        if a["value"] != 0 or any(a["interior"]) or not all(
                isinstance(w, int) and w >= 0 for w in (*a["lo"], *a["hi"])):
            return None
        axes.update(i for i, (lo, hi) in enumerate(zip(a["lo"], a["hi"])) if lo or hi)
    if len(axes) != 1:
        return None
    (axis,) = axes
    pieces = sorted(terms, key=lambda t: t.attr["lo"][axis])
    shape = root.type.shape
    parts: list[Node] = []
    at = 0
    for t in pieces:
        lo = t.attr["lo"][axis]
        if lo < at:
            return None  # two slices overlap: a real sum
        if lo > at:
            parts.append(_zeros(root, axis, lo - at))
        parts.append(t.inputs[0])
        at = lo + t.inputs[0].type.shape[axis]
    if at < shape[axis]:
        parts.append(_zeros(root, axis, shape[axis] - at))
    return make_node("concat", tuple(parts), {"axis": axis}, source=root.source)


def _zeros(like: Node, axis: int, size: int) -> Node:
    shape = like.type.shape[:axis] + (size,) + like.type.shape[axis + 1:]
    value = 0.0 if like.type.dtype.is_floating else 0
    return make_node("full", (), {"shape": shape, "value": value, "dtype": like.type.dtype.name},
                     source=like.source)


def _as_one_product(root: Node, terms: list[Node], uses: Counter) -> Node | None:
    """`root` with its matrix-product terms (two or more, each read by this sum only, of
    root's type, `MIN_PRODUCT_SIDE` wide) as one product over the stacked contraction axis,
    plus the other terms; None when fewer than two terms qualify."""
    products = [t for t in terms if _stackable(t, root, uses)]
    if len(products) < 2:
        return None
    m, n = root.type.shape
    k = sum(hint(t.inputs[0].type.shape[1]) for t in products)
    if k * (hint(m) + hint(n)) * root.type.dtype.itemsize > MAX_STACKED_BYTES:
        return None
    a = make_node("concat", tuple(t.inputs[0] for t in products), {"axis": 1},
                  source=root.source)
    b = make_node("concat", tuple(t.inputs[1] for t in products), {"axis": 0},
                  source=root.source)
    total = make_node("matmul", (a, b), {}, source=root.source)
    for t in terms:
        if t not in products:
            total = make_node("add", (total, t), {}, source=root.source)
    return total


def _stackable(t: Node, root: Node, uses: Counter) -> bool:
    if t.op != "matmul" or uses[t] != 1 or t.type != root.type or root.type.ndim != 2:
        return False
    a, b = t.inputs
    if a.type.ndim != 2 or b.type.ndim != 2 or a.type.dtype != b.type.dtype \
            or not t.type.dtype.is_floating:
        return False
    m, n = t.type.shape
    return isinstance(m, int) and isinstance(n, int) and min(m, n) >= MIN_PRODUCT_SIDE
