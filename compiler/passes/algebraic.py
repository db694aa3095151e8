"""Algebraic simplification: local identities, written as data (a list of pattern rules).

Tracing and autodiff leave many no-ops behind: a multiply by a `full` of ones from a VJP rule, a
transpose of a transpose from `swap_last`, reshape chains from keepdim reductions, a `cast` to
the same dtype (the frontend's `clone`), a slice or a pad that changes nothing.  Each rule below
removes one such pattern; each is exact on every input, which is why some tempting ones are
missing: `x * 0 -> 0` holds for integers only (a float `x` may be inf or nan), and
`stop_gradient` stays (autodiff needs it; `strip_stop_gradient` removes it afterwards, for
code generation).  `x + 0 -> x` is exact except that it keeps the sign of a `-0.0` input,
which every compiler that folds it accepts.

A "constant 1" or "constant 0" is a `full` of that value or a constant array of nothing else
(`compiler.graph.pattern.splat_value`); constant folding first turns `expand(full)` and the
like into plain `full`s, so the rules need not look through layout changes.
"""
from __future__ import annotations

from collections import Counter

from ..graph.ir import Graph, Node, make_node
from ..graph.pattern import P, PatternMatcher, RewriteContext, Rule, Var, full_node, is_splat
from ..graph.rewrite import rebuild
from ..types import same_shape

X = Var("x")
Y = Var("y")
ONE = Var("one", is_splat(1))
ZERO = Var("zero", is_splat(0))
TRUE = Var("cond", is_splat(True))
FALSE = Var("cond", is_splat(False))

# ---- predicates on the matched node ------------------------------------------------------


def integer_result(ctx: RewriteContext, node: Node) -> bool:
    return node.type.dtype.is_integer


def shape_unchanged(ctx: RewriteContext, node: Node) -> bool:
    # for slice: an output as large as the input can only be the whole input
    return same_shape(node.type.shape, node.inputs[0].type.shape)


def dtype_unchanged(ctx: RewriteContext, node: Node) -> bool:
    return node.type.dtype == node.inputs[0].type.dtype


def identity_permutation(ctx: RewriteContext, node: Node) -> bool:
    return tuple(node.attr["perm"]) == tuple(range(node.type.ndim))


def zero_widths(ctx: RewriteContext, node: Node) -> bool:
    attr = node.attr
    return not any((*attr["lo"], *attr["hi"], *attr["interior"]))


def single_input(ctx: RewriteContext, node: Node) -> bool:
    return len(node.inputs) == 1


# ---- rewrites ----------------------------------------------------------------------------


def to_x(ctx: RewriteContext, root: Node, x: Node, **_: Node) -> Node:
    """The node is x itself."""
    return x


def to_y(ctx: RewriteContext, root: Node, y: Node, **_: Node) -> Node:
    """The node is y itself."""
    return y


def to_zeros(ctx: RewriteContext, root: Node, **_: Node) -> Node:
    """The node is all zeros of its type."""
    return full_node(root.type, 0, root.source)


def compose_permutes(ctx: RewriteContext, root: Node, x: Node, inner: Node) -> Node:
    """permute(permute(x, p), q) = permute(x, p[q[i]]), or x when that is the identity."""
    p = inner.attr["perm"]
    perm = tuple(p[q] for q in root.attr["perm"])
    if perm == tuple(range(len(perm))):
        return x
    return make_node("permute", (x,), {"perm": perm}, source=root.source)


def collapse_reshapes(ctx: RewriteContext, root: Node, x: Node, inner: Node) -> Node:
    """reshape(reshape(x, s), t) = reshape(x, t), or x when t is x's shape."""
    if same_shape(root.type.shape, x.type.shape):
        return x
    return make_node("reshape", (x,), {"shape": root.type.shape}, source=root.source)


def collapse_expands(ctx: RewriteContext, root: Node, x: Node, inner: Node) -> Node:
    """expand(expand(x, s), t) = expand(x, t): both only grow size-1 axes of x."""
    return make_node("expand", (x,), {"shape": root.type.shape}, source=root.source)


RULES: list[Rule] = [
    Rule("mul_one_right", P("mul", X, ONE), to_x),
    Rule("mul_one_left", P("mul", ONE, X), to_x),
    Rule("mul_zero_right_int", P("mul", X, ZERO, pred=integer_result), to_zeros),
    Rule("mul_zero_left_int", P("mul", ZERO, X, pred=integer_result), to_zeros),
    Rule("add_zero_right", P("add", X, ZERO), to_x),
    Rule("add_zero_left", P("add", ZERO, X), to_x),
    Rule("sub_zero", P("sub", X, ZERO), to_x),
    Rule("div_one", P("div", X, ONE), to_x),
    Rule("neg_neg", P("neg", P("neg", X)), to_x),
    Rule("where_same", P("where", Var("cond"), X, X), to_x),
    Rule("where_true", P("where", TRUE, X, Y), to_x),
    Rule("where_false", P("where", FALSE, X, Y), to_y),
    Rule("cast_same_dtype", P("cast", X, pred=dtype_unchanged), to_x),
    Rule("permute_identity", P("permute", X, pred=identity_permutation), to_x),
    Rule("permute_permute", P("permute", P("permute", X, name="inner")), compose_permutes),
    Rule("reshape_same_shape", P("reshape", X, pred=shape_unchanged), to_x),
    Rule("reshape_reshape", P("reshape", P("reshape", X, name="inner")), collapse_reshapes),
    Rule("expand_same_shape", P("expand", X, pred=shape_unchanged), to_x),
    Rule("expand_expand", P("expand", P("expand", X, name="inner")), collapse_expands),
    Rule("slice_whole", P("slice", X, pred=shape_unchanged), to_x),
    Rule("pad_zero_widths", P("pad", X, pred=zero_widths), to_x),
    Rule("concat_single", P("concat", X, pred=single_input), to_x),
]

MATCHER = PatternMatcher(RULES)


def algebraic(graph: Graph, *, matcher: PatternMatcher = MATCHER,
              fired: Counter | None = None) -> Graph:
    """The graph with every node rewritten by the rules until none applies.

    `fired`, when given, is incremented by the number of times each rule fired (by rule name).
    """
    ctx = RewriteContext(graph.constants)
    out = rebuild(graph, lambda node: matcher.rewrite(node, ctx))
    if fired is not None:
        fired.update(ctx.fired)
    return out


def _drop_stop_gradient(node: Node) -> Node | None:
    return node.inputs[0] if node.op == "stop_gradient" else None


def strip_stop_gradient(graph: Graph) -> Graph:
    """The graph without `stop_gradient` nodes, which are the identity once autodiff is done."""
    return rebuild(graph, _drop_stop_gradient)
