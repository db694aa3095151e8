"""Constant folding: compute at compile time what depends on no graph input.

A node whose inputs are all constants or the attribute-only sources `full` and `iota` has the
same value on every call, so it is evaluated once with the registry's NumPy reference and
replaced: by a `full` when every element of the result is the same (codegen makes a `full` for
free and the algebraic rules recognise it), otherwise by a constant array.  Graph inputs
(including parameters: a weight update must never force a recompile) and `rng_uniform` (whose
seed changes per call) are never folded through.

Memory stays bounded.  `full` and `iota` themselves are kept, never turned into arrays.  When
every input is uniform, an elementwise op, a layout change (reshape, permute, expand, slice,
concat, pad with the same value) or a max/min reduction is folded by computing one element, so
`expand(full)` becomes a bigger `full` at no cost.  Anything else is evaluated only when its
result has at most `MAX_FOLD_ELEMENTS` elements and its inputs at most `MAX_INPUT_ELEMENTS`
together; `expand` and `pad` of a non-uniform array are not materialised at all, since that only
makes a bigger array the kernels could have read through an index.
"""
from __future__ import annotations

import numpy as np

from ..graph.ir import CONSTANT, INPUT, Graph, Node
from ..graph.pattern import RewriteContext, full_node, uniform
from ..graph.rewrite import fresh_names, rebuild
from ..ops import ELEMENTWISE, REGISTRY, SOURCE
from ..symbolic import is_dynamic
from ..types import same_shape

MAX_FOLD_ELEMENTS = 1 << 16
MAX_INPUT_ELEMENTS = 1 << 20

# inputs that are known at compile time (after folding, every known value is one of these)
_KNOWN = ("full", "iota", CONSTANT)
# movement ops that only rearrange or repeat elements: a uniform input gives a uniform output
_SPLAT_MOVEMENT = ("reshape", "permute", "expand", "slice", "concat")
# ops whose result is not worth materialising from a non-uniform array: it is only bigger
_GROWING = ("expand", "pad")


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _splat_result(node: Node, splats: list[np.ndarray]) -> np.ndarray | None:
    """The single value of `node`'s result when its inputs are all uniform, or None when the
    result need not be uniform (or the op is not one this shortcut handles)."""
    prim = REGISTRY[node.op]
    if prim.kind == ELEMENTWISE:
        with np.errstate(all="ignore"):
            out = prim.impl(*splats, **node.attr)
        return np.asarray(out, dtype=node.type.dtype.np_type)
    if node.op in _SPLAT_MOVEMENT or node.op in ("reduce_max", "reduce_min"):
        if all(_same_bits(s, splats[0]) for s in splats):
            return splats[0]
        return None
    if node.op == "pad":
        value = np.asarray(node.attr["value"], dtype=node.type.dtype.np_type)
        if same_shape((node.type.numel,), (node.inputs[0].type.numel,)) \
                or _same_bits(value, splats[0]):
            return splats[0]
    return None


def _dynamic(node: Node) -> bool:
    """Whether `node` or an input has a dynamic size, or an input is a `full` of one: there is
    no array to materialise at compile time."""
    return any(is_dynamic(d) for t in (node, *node.inputs) for d in t.type.shape) or any(
        i.op == "full" and is_dynamic(i.attr["value"]) for i in node.inputs)


def _evaluate(node: Node, constants: dict[str, np.ndarray]) -> np.ndarray | None:
    """`node`'s value from its known inputs with the reference implementation, or None when it
    is too large to materialise or its evaluation fails (the error is then left for run time)."""
    if _dynamic(node):
        return None
    if node.type.numel > MAX_FOLD_ELEMENTS:
        return None
    if sum(i.type.numel for i in node.inputs) > MAX_INPUT_ELEMENTS:
        return None
    if node.op in _GROWING and node.type.numel > sum(i.type.numel for i in node.inputs):
        return None
    args = []
    for i in node.inputs:
        if i.op == CONSTANT:
            args.append(constants[i.name])
        else:
            args.append(REGISTRY[i.op].impl(**i.attr))
    try:
        with np.errstate(all="ignore"):
            out = REGISTRY[node.op].impl(*args, **node.attr)
    except (ArithmeticError, IndexError, ValueError):
        return None
    # a copy: the reference may return a view of an input array (reshape, slice, unfold)
    return np.array(out, dtype=node.type.dtype.np_type, order="C", copy=True)


def constant_fold(graph: Graph) -> Graph:
    """The graph with every node computable at compile time replaced by its value."""
    constants = dict(graph.constants)
    fresh = fresh_names(list(constants) + [n.name for n in graph.inputs], "k")
    ctx = RewriteContext(constants)  # caches which constant arrays are uniform

    def visit(node: Node) -> Node | None:
        if node.op in (INPUT, CONSTANT) or REGISTRY[node.op].kind == SOURCE:
            return None
        if not node.inputs or any(i.op not in _KNOWN for i in node.inputs):
            return None
        splats = [ctx.splat(i) for i in node.inputs]
        if all(s is not None for s in splats):
            value = _splat_result(node, splats)
            if value is not None:
                return full_node(node.type, value, node.source)
        array = _evaluate(node, constants)
        if array is None:
            return None
        if uniform(array):
            return full_node(node.type, array.reshape(-1)[0], node.source)
        name = fresh()
        constants[name] = array
        return Node(CONSTANT, (), (), node.type, name, node.source)

    return rebuild(graph, visit, constants)
