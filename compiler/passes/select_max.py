"""Max-select: a one-hot select of an argmax, summed, is the maximum itself.

Max pooling is written so that its gradient goes to the first maximum only; its forward value
is a plain maximum, which this rewrite lets lowering compute with one max reduction.  It runs
right before lowering (`lower(fuse=True)`), after autodiff has used the select form.
"""
from __future__ import annotations

from ..graph.ir import Graph, Node, make_node
from ..graph.rewrite import rebuild
from ..symbolic import is_dynamic
from ..types import same_shape


def select_max(graph: Graph) -> Graph:
    """Replace each one-hot select of an argmax by a max reduction.

    Max pooling picks every window's value as `reduce_sum(where(eq(argmax(F, a), iota_a), F,
    0), a)` so that its gradient goes to the first maximum only.  That value is F's maximum
    over axis a (NaN when the window holds one: argmax takes the first NaN), so one
    `reduce_max` computes it, with no argmax kernel unless something else reads the argmax
    (the backward pass of training).  When F reshapes an `unfold`, the max reduces over the
    window's kernel axes themselves, so the kernel indexes the taps without division.
    """
    return rebuild(graph, _select_max_node)


def _select_max_node(n: Node) -> Node | None:
    if n.op != "reduce_sum" or len(n.attr["axes"]) != 1 or n.inputs[0].op != "where":
        return None
    (axis,) = n.attr["axes"]
    cond, picked, other = n.inputs[0].inputs
    if not _is_zero(other) or cond.op != "eq" or not picked.type.dtype.is_floating:
        return None
    for arg, iota in (cond.inputs, cond.inputs[::-1]):
        if _is_argmax_of(arg, picked, axis) and _is_iota_along(iota, axis, n.inputs[0]):
            return _max_over(picked, axis, n.source)
    return None


def _is_zero(n: Node) -> bool:
    while n.op == "expand":
        n = n.inputs[0]
    return n.op == "full" and not is_dynamic(n.attr["value"]) and n.attr["value"] == 0


def _is_argmax_of(n: Node, x: Node, axis: int) -> bool:
    """Whether n is argmax(x, axis) with axis `axis` kept as size 1, broadcast over x."""
    if n.op != "expand" or n.inputs[0].op != "reshape":
        return False
    arg = n.inputs[0].inputs[0]
    shape = arg.type.shape
    return arg.op == "argmax" and arg.inputs[0] is x and arg.attr["axis"] == axis \
        and same_shape(n.inputs[0].type.shape, shape[:axis] + (1,) + shape[axis:])


def _is_iota_along(n: Node, axis: int, like: Node) -> bool:
    """Whether n holds, at every index of `like`'s shape, that index's position along
    `axis`."""
    while n.op == "expand":
        n = n.inputs[0]
    return n.op == "iota" and n.attr["axis"] == axis and n.type.ndim == like.type.ndim \
        and same_shape((n.type.shape[axis],), (like.type.shape[axis],))


def _max_over(x: Node, axis: int, source: str | None) -> Node:
    """reduce_max of x over `axis`, or over the kernel axes of the unfold x reshapes."""
    u = x.inputs[0] if x.op == "reshape" else None
    if u is not None and u.op == "unfold":
        dims = len(u.attr["kernel"])
        lead = x.type.shape[:axis]
        if axis == len(lead) and u.type.shape[:axis] == lead \
                and u.type.shape[axis + dims:] == x.type.shape[axis + 1:] \
                and tuple(u.type.shape[axis:axis + dims]) == tuple(u.attr["kernel"]):
            axes = tuple(range(axis, axis + dims))
            return make_node("reduce_max", (u,), {"axes": axes}, source=source)
    return make_node("reduce_max", (x,), {"axes": (axis,)}, source=source)
