"""`Tensor.backward`: walk the autograd tape applying the registry's VJP rules.

Nodes run in dependency order (Kahn's algorithm) through the eager builder, so a multi-output
node sees all its outputs' cotangents at once.  A symbolic root (inside `neurenix.compile`)
is handed to the active trace, which appends the backward to its graph instead.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from neurenix.compiler.trace import TraceError

from . import autograd, state
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
    with state.set_grad_enabled(create_graph):
        if root._node is None:
            _accumulate(root, gradient, create_graph)
            return
        if root._retains_grad:
            _accumulate(root, gradient, create_graph)

        def deliver(t: Tensor, g: Tensor, leaf: bool) -> None:
            if leaf or t._retains_grad:
                _accumulate(t, g, create_graph, adopt=leaf)

        run_graph([(root, gradient)], deliver)


def run_graph(roots: list[tuple[Tensor, Tensor]],
              deliver: Callable[[Tensor, Tensor, bool], None]) -> None:
    """Propagate each root's cotangent through the tape (roots with a producing node only).

    `deliver(t, g, leaf)` receives every gradient that reaches a tensor: for a leaf once per
    edge into it, for a non-leaf once per use of it (the caller sums them).
    """
    builder = EAGER
    deps: dict[int, int] = {}
    pending: dict[int, list] = {}
    for root, gradient in roots:
        _dependencies(root._node, deps)
        slots = pending.setdefault(id(root._node), [None] * root._node.num_outputs)
        slots[0] = gradient if slots[0] is None else builder.add(slots[0], gradient)
    ready = list({id(r._node): r._node for r, _ in roots if deps[id(r._node)] == 0}.values())
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
                    deliver(edge[1], g, True)
                continue
            _, target, slot, tensor = edge
            if g is not None:
                if tensor is not None:
                    deliver(tensor, g, False)
                slots = pending.setdefault(id(target), [None] * target.num_outputs)
                slots[slot] = g if slots[slot] is None else builder.add(slots[slot], g)
            deps[id(target)] -= 1
            if deps[id(target)] == 0:
                ready.append(target)


def _dependencies(root_node: Any, deps: dict[int, int]) -> dict[int, int]:
    """For every node reachable from root_node, how many edges lead into it (added to deps,
    which may already count the nodes reachable from other roots)."""
    if id(root_node) in deps:
        return deps
    deps[id(root_node)] = 0
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


_FRESH: dict[int, weakref.ref] = {}
"""Gradients in arrays no one else holds (a compiled backward's outputs), by id: a leaf's
first gradient takes such a tensor as it is instead of a copy (tensors compare elementwise,
so they are kept by identity, each entry dropped when its tensor is collected)."""


def mark_fresh(g: Tensor) -> Tensor:
    """Say that `g` (no autograd history) is the only holder of its storage, so that a
    backward may make it a leaf's `.grad` without copying it; returns `g`."""
    key = id(g)
    _FRESH[key] = weakref.ref(g, lambda _, key=key: _FRESH.pop(key, None))
    return g


def _take_fresh(g: Tensor) -> bool:
    """Whether `g` was marked fresh (it is unmarked: only one gradient takes it)."""
    ref = _FRESH.get(id(g))
    if ref is None or ref() is not g:
        return False
    del _FRESH[id(g)]
    return True


def _accumulate(t: Tensor, g: Tensor, create_graph: bool, adopt: bool = False) -> None:
    """Add `g` to t's gradient, which lives on t's device (`g` is moved there first).
    `adopt`: a fresh `g` (`mark_fresh`) may become the gradient itself."""
    # the stored gradient itself: an eager backward never goes through a trace's .grad
    if g._device != t._device or type(g._data) is HostConstant:
        g = _placed(g, t)
    if t._grad is None and adopt and not create_graph and g._dtype == t._dtype \
            and g._node is None and _take_fresh(g):
        t._grad = g
        return
    if not create_graph:
        g = g.detach()
    if t._grad is None and not create_graph and type(g._data) is np.ndarray:
        # a copy in C order: a weight's gradient is often a transposed view, which a fused
        # optimizer step would otherwise copy again on every step to pass it to its program
        t._grad = Tensor._wrap(np.array(g._data, order="C", copy=True), g._dtype, g._device)
    elif t._grad is None:
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


def grad(outputs: Tensor | Sequence[Tensor], inputs: Tensor | Sequence[Tensor],
         grad_outputs: Tensor | Sequence[Tensor | None] | None = None,
         retain_graph: bool | None = None, create_graph: bool = False,
         allow_unused: bool | None = None, materialize_grads: bool = False
         ) -> tuple[Tensor | None, ...]:
    """The gradients of `outputs` with respect to `inputs` (see `neurenix.autograd.grad`)."""
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    ins = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if grad_outputs is None or isinstance(grad_outputs, Tensor):
        seeds = [grad_outputs] * len(outs) if grad_outputs is None else [grad_outputs]
    else:
        seeds = list(grad_outputs)
    if len(seeds) != len(outs):
        raise ValueError(f"grad: got {len(seeds)} grad_outputs for {len(outs)} outputs")
    for i, t in enumerate(outs + ins):
        if not isinstance(t, Tensor):
            what = f"output {i}" if i < len(outs) else f"input {i - len(outs)}"
            raise TypeError(f"grad: {what} is a {type(t).__name__}, not a Tensor")
    if any(t._value is not None for t in outs + ins):
        raise TraceError("neurenix.autograd.grad inside a compiled function is not supported: "
                         "call loss.backward() there and read .grad, or call grad() eagerly")
    for i, t in enumerate(ins):
        if not t.requires_grad:
            raise RuntimeError(f"grad: input {i} does not require grad")
    roots: list[tuple[Tensor, Tensor]] = []
    for i, (out, seed) in enumerate(zip(outs, seeds)):
        if not out.requires_grad:
            raise RuntimeError(f"grad: output {i} does not require grad and has no grad_fn; "
                               "was it computed under no_grad() or from detached tensors?")
        if seed is None:
            if out.numel() != 1:
                raise RuntimeError(f"grad: grad can be implicitly created only for scalar "
                                   f"outputs; output {i} has shape {tuple(out.shape)}; pass "
                                   "grad_outputs=")
            seed = ones(out.shape, out.dtype, out._device)
        elif not isinstance(seed, Tensor):
            seed = Tensor(seed, dtype=out.dtype, device=out._device)
        if tuple(seed.shape) != tuple(out.shape):
            raise ValueError(f"grad: grad_outputs[{i}] has shape {tuple(seed.shape)}, output "
                             f"{i} has shape {tuple(out.shape)}")
        roots.append((out, seed))
    wanted = {id(t): i for i, t in enumerate(ins)}
    found: list[Tensor | None] = [None] * len(ins)

    def collect(t: Tensor, g: Tensor, leaf: bool) -> None:
        i = wanted.get(id(t))
        if i is not None:
            g = g if g._device == t._device and type(g._data) is not HostConstant \
                else _placed(g, t)
            found[i] = g if found[i] is None else EAGER.add(found[i], g)

    with state.set_grad_enabled(create_graph):
        for out, seed in roots:
            if id(out) in wanted:
                collect(out, seed, out._node is None)
        run_graph([(o, s) for o, s in roots if o._node is not None], collect)
    result: list[Tensor | None] = []
    for i, (t, g) in enumerate(zip(ins, found)):
        if g is None:
            if not (allow_unused or materialize_grads):
                raise RuntimeError(f"grad: input {i} was not used to compute the outputs; "
                                   "pass allow_unused=True to get None for it")
            if materialize_grads:
                g = zeros_like_on(t)
        elif not create_graph:
            g = g.detach()
        result.append(g)
    return tuple(result)


def zeros_like_on(t: Tensor) -> Tensor:
    """Zeros with t's shape and dtype, on t's device."""
    return Tensor._wrap(move_storage(np.zeros(tuple(t.shape), t.dtype.np_type), t._device),
                        t._dtype, t._device)


autograd.register_grad(grad)
