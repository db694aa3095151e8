"""Reverse-mode autograd over the op registry's VJP rules: grad mode, the tape, `backward`.

Every differentiable primitive applied eagerly under grad mode records a `TapeNode` on its
output.  `backward` walks those nodes in reverse topological order and applies each
primitive's VJP rule through the eager builder, so eager gradients and the compiler's
graph-level autodiff share one set of rules.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from neurenix.compiler.ops import Primitive

if TYPE_CHECKING:
    from .tensor import Tensor


class _GradMode(threading.local):
    enabled = True


_MODE = _GradMode()


def is_grad_enabled() -> bool:
    """Whether operations are being recorded for autograd."""
    return _MODE.enabled


class set_grad_enabled(contextlib.ContextDecorator):
    """Turn gradient recording on or off inside a `with` block (or a decorated function)."""

    def __init__(self, mode: bool) -> None:
        self.mode = bool(mode)
        self.prev: list[bool] = []

    def __enter__(self) -> None:
        self.prev.append(_MODE.enabled)
        _MODE.enabled = self.mode

    def __exit__(self, *exc: Any) -> None:
        _MODE.enabled = self.prev.pop()


class no_grad(set_grad_enabled):
    """Context manager and decorator: run without recording gradients."""

    def __init__(self) -> None:
        super().__init__(False)


class enable_grad(set_grad_enabled):
    """Context manager and decorator: record gradients even inside `no_grad`."""

    def __init__(self) -> None:
        super().__init__(True)


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
        self.versions = tuple(t._version for t in inputs)

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


def _dependencies(root_node: Any) -> dict[int, int]:
    """For every node reachable from root_node, how many edges lead into it."""
    deps: dict[int, int] = {id(root_node): 0}
    stack = [root_node]
    while stack:
        node = stack.pop()
        for edge in node.edges():
            if edge is None or edge[0] != "node":
                continue
            target = edge[1]
            if id(target) not in deps:
                deps[id(target)] = 0
                stack.append(target)
            deps[id(target)] += 1
    return deps


def backward(root: Tensor, gradient: Tensor | None = None, create_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) into `.grad` of every leaf that requires grad.

    Nodes run in dependency order (Kahn's algorithm): a node runs once every edge into it
    has delivered its gradient, so a multi-output node sees all its outputs' cotangents.
    """
    from . import dispatch
    from .tensor import Tensor

    if root._value is not None:
        from .trace_effects import backward_traced
        if create_graph:
            from neurenix.compiler.trace import TraceError
            raise TraceError("backward(create_graph=True) inside a compiled function is not "
                             "supported: higher-order gradients run eagerly")
        backward_traced(root, gradient)
        return
    if not root.requires_grad:
        raise RuntimeError("backward: the tensor does not require grad and has no grad_fn; "
                           "did you call it inside no_grad() or on a detached tensor?")
    if gradient is None:
        if root.numel() != 1:
            raise RuntimeError(f"backward: grad can be implicitly created only for scalar "
                               f"outputs; got shape {tuple(root.shape)}; pass gradient=")
        gradient = Tensor._wrap(dispatch.ones_array(root.shape, root.dtype))
    elif not isinstance(gradient, Tensor):
        gradient = Tensor(gradient, dtype=root.dtype)
    if tuple(gradient.shape) != tuple(root.shape):
        raise ValueError(f"backward: gradient of shape {tuple(gradient.shape)} does not match "
                         f"the tensor's shape {tuple(root.shape)}")
    builder = dispatch.EAGER
    with set_grad_enabled(create_graph):
        if root._node is None:
            _accumulate(root, gradient, create_graph)
            return
        if root._retains_grad:
            _accumulate(root, gradient, create_graph)
        deps = _dependencies(root._node)
        pending: dict[int, list] = {id(root._node): [gradient]}
        ready = [root._node]
        while ready:
            node = ready.pop()
            grads = pending.pop(id(node), None) or [None] * node.num_outputs
            outs = node.run(grads, builder) if any(g is not None for g in grads) \
                else [None] * len(node.edges())
            for edge, g in zip(node.edges(), outs):
                if edge is None:
                    continue
                if edge[0] == "leaf":
                    if g is not None:
                        _accumulate(edge[1], g, create_graph)
                    continue
                _, target, slot, tensor = edge
                if g is not None:
                    if tensor is not None and tensor._retains_grad:
                        _accumulate(tensor, g, create_graph)
                    slots = pending.setdefault(id(target), [None] * target.num_outputs)
                    slots[slot] = g if slots[slot] is None else builder.add(slots[slot], g)
                deps[id(target)] -= 1
                if deps[id(target)] == 0:
                    ready.append(target)


def _check_versions(node: Any) -> None:
    for t, v in zip(node.inputs, node.versions):
        if t._version != v:
            raise RuntimeError(f"backward: a tensor of shape {tuple(t.shape)} used by "
                               f"{node.name} was modified in place after it was used; "
                               "its gradient would be wrong. Use an out-of-place operation "
                               "(or .clone() before modifying)")


def _accumulate(t: Tensor, g: Tensor, create_graph: bool) -> None:
    # the stored gradient itself: an eager backward never goes through a trace's .grad
    if not create_graph:
        g = g.detach()
    if t._grad is None:
        t._grad = g if create_graph else g.clone()
    elif create_graph:
        t._grad = t._grad + g
    else:
        t._grad._data = t._grad._data + g._data


def zero_grads(params: Iterable[Tensor], set_to_none: bool = True) -> None:
    """Reset the gradients of `params`: to None, or to zeros in place (detached first).

    Inside a trace (a compiled training step) the gradients are assigned anew after every
    call, so both forms set None there, without reading the old ones.
    """
    from . import dispatch
    traced = dispatch._ACTIVE.state is not None
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

