"""Reverse-mode autograd over the op registry's VJP rules: grad mode, the tape, `backward`.

Every differentiable primitive applied eagerly under grad mode records a `TapeNode` on its
output.  `backward` walks those nodes in reverse topological order and applies each
primitive's VJP rule through the eager builder, so eager gradients and the compiler's
graph-level autodiff share one set of rules.
"""
from __future__ import annotations

import contextlib
import threading
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

    @property
    def name(self) -> str:
        return f"{self.prim.name}_backward"


def _topological(root: Tensor) -> list[Tensor]:
    """Tensors reachable from root through the tape, each after everything that uses it."""
    order: list[Tensor] = []
    seen: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t._node is not None:
            for i in t._node.inputs:
                if i.requires_grad and id(i) not in seen:
                    stack.append((i, False))
    order.reverse()
    return order


def backward(root: Tensor, gradient: Tensor | None = None, create_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) into `.grad` of every leaf that requires grad."""
    from . import dispatch
    from .tensor import Tensor

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
    grads: dict[int, Tensor] = {id(root): gradient}
    with set_grad_enabled(create_graph):
        for t in _topological(root):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            node = t._node
            if node is None or t._retains_grad:
                _accumulate(t, g, create_graph)
            if node is None:
                continue
            _check_versions(node)
            for i, inp in enumerate(node.inputs):
                if not inp.requires_grad:
                    continue
                gi = node.prim.vjp(builder, g, node.out, node.inputs, node.attrs, i)
                if gi is None:
                    continue
                prev = grads.get(id(inp))
                grads[id(inp)] = gi if prev is None else builder.add(prev, gi)


def _check_versions(node: TapeNode) -> None:
    for t, v in zip(node.inputs, node.versions):
        if t._version != v:
            raise RuntimeError(f"backward: a tensor of shape {tuple(t.shape)} used by "
                               f"{node.prim.name} was modified in place after it was used; "
                               "its gradient would be wrong. Use an out-of-place operation "
                               "(or .clone() before modifying)")


def _accumulate(t: Tensor, g: Tensor, create_graph: bool) -> None:
    if not create_graph:
        g = g.detach()
    if t.grad is None:
        t.grad = g if create_graph else g.clone()
    elif create_graph:
        t.grad = t.grad + g
    else:
        t.grad._data = t.grad._data + g._data


def grad_function_name(t: Tensor) -> str | None:
    """The name of the backward function that produced t (PyTorch's grad_fn), or None."""
    return t._node.name if t._node is not None else None

