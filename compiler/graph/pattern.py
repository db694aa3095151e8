"""Local rewrites as data: patterns over graph nodes, and rules that rewrite what they match.

In the spirit of tinygrad's `PatternMatcher` and TVM's dataflow patterns, a rewriting pass is a
list of `Rule(name, pattern, rewrite)`.  A pattern names the op it expects at each position
(`P("neg", P("neg", Var("x")))`) and binds sub-nodes to names; a name bound twice must bind the
same node (`P("where", Var("c"), Var("x"), Var("x"))`).  The rewrite is a named function called
with the context, the matched root and the bindings as keywords; it returns the replacement, or
None when the rule does not apply after all.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..symbolic import is_dynamic
from ..types import TensorType
from .ir import CONSTANT, Node, make_node

Predicate = Callable[["RewriteContext", Node], bool]


@dataclass(frozen=True)
class Pat:
    """Matches a node whose op is in `ops` (any op when None), whose inputs match `src` (any
    inputs when None) and that satisfies `pred`; binds it to `name`."""

    ops: tuple[str, ...] | None = None
    src: tuple[Pat, ...] | None = None
    name: str | None = None
    pred: Predicate | None = None


def P(op: str | tuple[str, ...] | None, *src: Pat, name: str | None = None,
      pred: Predicate | None = None) -> Pat:
    """A pattern for a node of op `op` (or one of several) over inputs matching `src`."""
    ops = (op,) if isinstance(op, str) else op
    return Pat(ops, tuple(src) if src else None, name, pred)


def Var(name: str, pred: Predicate | None = None) -> Pat:
    """A pattern matching any node, bound to `name`."""
    return Pat(None, None, name, pred)


def uniform(array: np.ndarray) -> bool:
    """Whether every element of a non-empty array has the same bits (so -0.0 differs from 0.0
    and a nan matches the same nan)."""
    if array.size == 0:
        return False
    flat = np.asarray(array, order="C").reshape(-1)
    if flat.dtype == np.bool_:
        return bool(flat.all() or not flat.any())
    as_bytes = flat.view(np.uint8).reshape(flat.size, flat.dtype.itemsize)
    return bool((as_bytes == as_bytes[0]).all())


def splat_value(node: Node, constants: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The one value every element of `node` has, as a 0-d array of its dtype, when that is
    known statically: a `full` (not of a dynamic size), or a constant whose array is uniform.
    None otherwise."""
    if node.op == "full":
        value = node.attr["value"]
        if is_dynamic(value):  # a dynamic size (the count of a mean): known per call only
            return None
        return np.array(value, dtype=node.type.dtype.np_type)
    if node.op == CONSTANT:
        array = constants.get(node.name)
        if array is not None and uniform(array):
            return np.array(array.reshape(-1)[0])
    return None


def full_node(type_: TensorType, value: np.ndarray | float | bool,
              source: str | None = None) -> Node:
    """A `full` node of `type_` holding `value` (a 0-d array or a Python scalar)."""
    scalar = np.asarray(value, dtype=type_.dtype.np_type).item()
    return make_node("full", (), {"shape": type_.shape, "value": scalar,
                                  "dtype": type_.dtype.name}, source=source)


@dataclass
class RewriteContext:
    """What rules may consult: the graph's constant arrays; counts the rules that fired."""

    constants: Mapping[str, np.ndarray]
    fired: Counter = field(default_factory=Counter)
    _splats: dict[str, np.ndarray | None] = field(default_factory=dict)

    def splat(self, node: Node) -> np.ndarray | None:
        """`splat_value(node)`, cached per constant array."""
        if node.op != CONSTANT:
            return splat_value(node, self.constants)
        if node.name not in self._splats:
            self._splats[node.name] = splat_value(node, self.constants)
        return self._splats[node.name]


def is_splat(value: float | bool) -> Predicate:
    """A predicate: the node is known to hold `value` in every element."""

    def pred(ctx: RewriteContext, node: Node) -> bool:
        known = ctx.splat(node)
        return known is not None and bool(known == value)

    pred.__name__ = f"is_splat_{value}"
    return pred


def match(pat: Pat, node: Node, ctx: RewriteContext, bound: dict[str, Node]) -> bool:
    """Whether `node` matches `pat`, extending `bound` with the names it binds."""
    if pat.ops is not None and node.op not in pat.ops:
        return False
    if pat.name is not None:
        if pat.name in bound and bound[pat.name] is not node:
            return False
        bound[pat.name] = node
    if pat.src is not None:
        if len(pat.src) != len(node.inputs):
            return False
        if not all(match(p, i, ctx, bound) for p, i in zip(pat.src, node.inputs)):
            return False
    return pat.pred is None or pat.pred(ctx, node)


Rewrite = Callable[..., "Node | None"]


@dataclass(frozen=True)
class Rule:
    """A named local rewrite: when `pattern` matches a node, `rewrite(ctx, root, **bound)`."""

    name: str
    pattern: Pat
    rewrite: Rewrite


class PatternMatcher:
    """Tries rules in order on a node (rules are indexed by the op at their root)."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = list(rules)
        self._by_op: dict[str | None, list[Rule]] = {}
        for rule in self.rules:
            for op in rule.pattern.ops or (None,):
                self._by_op.setdefault(op, []).append(rule)

    def rewrite_once(self, node: Node, ctx: RewriteContext) -> Node | None:
        """The first rule's replacement for `node`, or None when no rule applies."""
        for rule in self._by_op.get(node.op, []) + self._by_op.get(None, []):
            bound: dict[str, Node] = {}
            if not match(rule.pattern, node, ctx, bound):
                continue
            repl = rule.rewrite(ctx, node, **bound)
            if repl is not None and repl is not node:
                ctx.fired[rule.name] += 1
                return repl
        return None

    def rewrite(self, node: Node, ctx: RewriteContext, limit: int = 64) -> Node | None:
        """Rewrite `node` until no rule applies (at most `limit` times); None if none did."""
        current = node
        for _ in range(limit):
            repl = self.rewrite_once(current, ctx)
            if repl is None:
                break
            current = repl
        return None if current is node else current
