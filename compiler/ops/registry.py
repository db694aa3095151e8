"""The primitive registry: one record per primitive holding every rule for it.

A primitive is declared once with its kind, its type rule (input types + attributes -> output
type, raising a clear error on bad input), its NumPy reference implementation, and its
vector-Jacobian product.  VJP rules are written against a `Builder` (see `compiler.builder`), so
the same rule runs eagerly on tensors and symbolically on graph values.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..types import TensorType

# The kinds of primitive, as group names rather than a class hierarchy.
ELEMENTWISE = "elementwise"
REDUCE = "reduce"
MOVEMENT = "movement"
CONTRACTION = "contraction"
WINDOW = "window"
INDEXING = "indexing"
SOURCE = "source"
KINDS = (ELEMENTWISE, REDUCE, MOVEMENT, CONTRACTION, WINDOW, INDEXING, SOURCE)

# A VJP rule for input `index`: (builder, cotangent, output, inputs, attrs, index) -> cotangent
# of that input, or None when the input is not differentiable.
VjpRule = Callable[..., Any]


class OpError(ValueError):
    """Bad input to a primitive: names the op, what it expected and what came."""


@dataclass(frozen=True)
class Primitive:
    """Everything Neurenix knows about one primitive operation."""

    name: str
    kind: str
    arity: int  # number of tensor inputs; -1 for variadic
    type_rule: Callable[..., TensorType]
    impl: Callable[..., Any]
    vjp: VjpRule | None
    doc: str = ""

    def infer(self, in_types: tuple[TensorType, ...], attrs: dict) -> TensorType:
        """Apply the type rule after checking the number of inputs."""
        if self.arity >= 0 and len(in_types) != self.arity:
            raise OpError(f"{self.name}: expected {self.arity} inputs, got {len(in_types)}")
        if self.arity < 0 and not in_types:
            raise OpError(f"{self.name}: expected at least one input, got none")
        return self.type_rule(*in_types, **attrs)

    def __repr__(self) -> str:
        return f"Primitive({self.name})"


REGISTRY: dict[str, Primitive] = {}


def register(name: str, kind: str, arity: int, type_rule, impl, vjp=None,
             doc: str = "") -> Primitive:
    """Declare a primitive; every name is declared exactly once."""
    if name in REGISTRY:
        raise RuntimeError(f"primitive {name!r} declared twice")
    if kind not in KINDS:
        raise RuntimeError(f"primitive {name!r}: unknown kind {kind!r}")
    prim = Primitive(name, kind, arity, type_rule, impl, vjp, doc)
    REGISTRY[name] = prim
    return prim


def get(name: str) -> Primitive:
    """The primitive called `name`, or a KeyError naming the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise KeyError(f"no primitive named {name!r}; known: {known}") from None


def per_input(*rules: VjpRule | None) -> VjpRule:
    """Build a VJP from one rule per input; each rule is (b, g, out, *inputs, **attrs)."""

    def vjp(b, g, out, inputs, attrs, index):
        rule = rules[index]
        if rule is None:
            return None
        return rule(b, g, out, *inputs, **attrs)

    return vjp


def non_differentiable(b, g, out, inputs, attrs, index):
    """The VJP of a primitive whose output is piecewise constant or integral: no gradient."""
    return None
