"""The autograd tape: how each tensor was computed, recorded for `backward`.

Every differentiable primitive applied eagerly under grad mode records a `TapeNode` on its
output (`dispatch.apply` does); a compiled call records one `FunctionNode` for all its outputs.
`neurenix.backward` walks these nodes applying the registry's VJP rules, so eager gradients
and the compiler's graph-level autodiff share one set of rules.  Grad mode lives in
`neurenix.state`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from neurenix.compiler.ops import Primitive

from . import state
from .tensor import version_of

if TYPE_CHECKING:
    from .tensor import Tensor


@dataclass(eq=False)
class TapeNode:
    """How a tensor was computed: the primitive, its inputs, attributes and its own output."""

    prim: Primitive
    inputs: tuple[Tensor, ...]
    attrs: dict
    out: Tensor  # the output's value, detached (no reference cycle back to the tensor)
    versions: tuple[int, ...] = ()  # the inputs' versions when recorded, to catch in-place edits

    num_outputs = 1

    @property
    def name(self) -> str:
        return f"{self.prim.name}_backward"

    def edges(self) -> list[tuple | None]:
        return [_edge(t) for t in self.inputs]

    def run(self, grads: list[Tensor | None], builder: Any) -> list[Tensor | None]:
        g = grads[0]
        _check_versions(self)
        return [self.prim.vjp(builder, g, self.out, self.inputs, self.attrs, i)
                if t.requires_grad else None for i, t in enumerate(self.inputs)]


class FunctionNode:
    """A node with many inputs and outputs and a backward of its own (a compiled call).

    Each output tensor gets an `OutputNode` pointing here, so every tensor still has exactly
    one producing node; `backward_fn` receives one cotangent per output (None where an output
    got no gradient) and returns one gradient per input (None where there is none).
    """

    def __init__(self, name: str, inputs: tuple[Tensor, ...], num_outputs: int,
                 backward_fn: Callable[[list[Tensor | None]], list[Tensor | None]]) -> None:
        self.name = name
        self.inputs = inputs
        self.num_outputs = num_outputs
        self.backward_fn = backward_fn
        self.versions = tuple(version_of(t) for t in inputs)

    def edges(self) -> list[tuple | None]:
        return [_edge(t) for t in self.inputs]

    def run(self, grads: list[Tensor | None], builder: Any) -> list[Tensor | None]:
        _check_versions(self)
        return self.backward_fn(grads)


class OutputNode:
    """Output `index` of a FunctionNode."""

    num_outputs = 1

    def __init__(self, parent: FunctionNode, index: int) -> None:
        self.parent = parent
        self.index = index

    @property
    def name(self) -> str:
        return self.parent.name

    def edges(self) -> list[tuple | None]:
        return [("node", self.parent, self.index, None)]

    def run(self, grads: list[Tensor | None], builder: Any) -> list[Tensor | None]:
        return grads


def _edge(t: Tensor) -> tuple | None:
    """Where a gradient for input t goes: ('leaf', t) or ('node', producer, slot, t)."""
    if not t.requires_grad:
        return None
    if t._node is None:
        return ("leaf", t)
    return ("node", t._node, 0, t)


def _check_versions(node: Any) -> None:
    """Refuse a node whose input changed in place since it was recorded (on a device: through
    any alias of the input's storage, `tensor.version_of`)."""
    for t, v in zip(node.inputs, node.versions):
        if (t._version if type(t._data) is np.ndarray else version_of(t)) != v:
            raise RuntimeError(f"backward: a tensor of shape {tuple(t.shape)} used by "
                               f"{node.name} was modified in place after it was used; "
                               "its gradient would be wrong. Use an out-of-place operation "
                               "(or .clone() before modifying)")


def zero_grads(params: Iterable[Tensor], set_to_none: bool = True) -> None:
    """Reset the gradients of `params`: to None, or to zeros in place (detached first).

    Inside a trace (a compiled training step) the gradients are assigned anew after every
    call, so both forms set None there, without reading the old ones.
    """
    traced = state.is_tracing()
    for p in params:
        if traced:
            p.grad = None
            continue
        g = p._grad
        if g is None:
            continue
        if set_to_none:
            p._grad = None
            continue
        if g.grad_fn is not None:
            g = p._grad = g.detach()
        g.requires_grad = False
        g.zero_()


def grad_function_name(t: Tensor) -> str | None:
    """The name of the backward function that produced t (PyTorch's grad_fn), or None."""
    return t._node.name if t._node is not None else None

