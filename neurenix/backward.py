"""`Tensor.backward`: walk the autograd tape applying the registry's VJP rules.

Nodes run in dependency order (Kahn's algorithm) through the eager builder, so a multi-output
node sees all its outputs' cotangents at once.  A symbolic root (inside `neurenix.compile`)
is handed to the active trace, which appends the backward to its graph instead.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from neurenix.compiler.trace import TraceError

from . import state
from .dispatch import EAGER, apply, ones
from .tensor import HostConstant, Tensor, move_storage


def backward(root: Tensor, gradient: Tensor | None = None, retain_graph: bool | None = None,
             create_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) into `.grad` of every leaf that requires grad."""
    if root._value is not None:
        if create_graph:
            raise TraceError("backward(create_graph=True) inside a compiled function is not "
                             "supported: higher-order gradients run eagerly")
        trace = state.current_trace()
        if trace is None:
            raise TraceError("backward: the tensor is a traced value of a compiled function "
                             "that has finished; call backward() inside it")
        trace.backward(root, gradient)
        return
    if not root.requires_grad:
        raise RuntimeError("backward: the tensor does not require grad and has no grad_fn; "
                           "did you call it inside no_grad() or on a detached tensor?")
    if gradient is None:
        if root.numel() != 1:
            raise RuntimeError(f"backward: grad can be implicitly created only for scalar "
                               f"outputs; got shape {tuple(root.shape)}; pass gradient=")
        gradient = ones(root.shape, root.dtype, root._device)
    elif not isinstance(gradient, Tensor):
        gradient = Tensor(gradient, dtype=root.dtype, device=root._device)
    if tuple(gradient.shape) != tuple(root.shape):
        raise ValueError(f"backward: gradient of shape {tuple(gradient.shape)} does not match "
                         f"the tensor's shape {tuple(root.shape)}")
    builder = EAGER
    with state.set_grad_enabled(create_graph):
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


def _accumulate(t: Tensor, g: Tensor, create_graph: bool) -> None:
    """Add `g` to t's gradient, which lives on t's device (`g` is moved there first)."""
    # the stored gradient itself: an eager backward never goes through a trace's .grad
    if g._device != t._device or type(g._data) is HostConstant:
        g = _placed(g, t)
    if not create_graph:
        g = g.detach()
    if t._grad is None:
        t._grad = g if create_graph else g.clone()
    elif create_graph:
        t._grad = t._grad + g
    elif type(t._grad._data) is np.ndarray:
        t._grad._set_host(t._grad._host() + g._host())
    else:
        t._grad._set_storage(apply("add", t._grad, g)._data)


def _placed(g: Tensor, t: Tensor) -> Tensor:
    """A gradient that is not where its tensor is (a fill a gradient rule made for a device
    tensor): its values on t's device, as a plain tensor there."""
    return Tensor._wrap(move_storage(np.array(g._host()), t._device), g._dtype, t._device)
