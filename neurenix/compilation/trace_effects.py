"""What a traced function does besides computing values, and how each call replays it.

A whole training step can be traced: `loss.backward()` on a symbolic loss appends the backward
to the same graph (the registry's VJP rules, as in `compiler.passes.autodiff`), `.grad` reads
and writes go through the trace, and an optimizer's step lifts its state tensors as inputs
whose in-place updates become outputs.  What such a function does to Python objects is replayed
on every call of the compiled program: gradients are assigned (`stores`), values that change
between calls without changing the graph (a scheduler's learning rate, a step count) are
computed on the host per call (`host_values`), and what was baked into the graph as a constant
is checked per call (`guards`) so that a change recompiles instead of running stale code.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from neurenix.compiler.graph.ir import Node
from neurenix.compiler.passes.autodiff import backprop
from neurenix.compiler.trace import TraceError
from neurenix.compiler.types import TensorType

from ..call_site import user_source
from ..creation import zeros_like
from ..elementwise import add, as_tensor
from ..state import no_grad
from ..tensor import Tensor
from .trace_guards import Guard, module_snapshot

if TYPE_CHECKING:
    from .tracing import TraceState


@dataclass
class GradSlot:
    """A `.grad` the trace read or wrote: whose it is and what it held before the trace."""

    tensor: Tensor
    original: Tensor | None
    target: tuple[str, Any]  # ("tensor", eager tensor) or ("arg", index of the call's tensor)
    label: str
    read_as: Tensor | None = None  # the symbolic input an existing gradient was read as


@dataclass
class Store:
    """An assignment to a Python object the traced function made, replayed after every call:
    `kind` "grad" sets `target`'s .grad; "item" sets `target[key]`.  `output` is the index of
    the value among the trace's store outputs, or None to assign None."""

    kind: str
    target: Any
    key: Any
    output: int | None


def host_values(state: TraceState, compute: Callable[[], tuple], like: Tensor, count: int,
                commit: Callable[[], None] | None = None,
                per_step: tuple[int, Callable[[Tensor], tuple]] | None = None) -> tuple:
    """`count` 0-d inputs of `like`'s dtype whose values `compute()` gives before each run of
    the program (see `neurenix.optim.optimizer.host_values`); `commit` runs after a call
    that raised no error.  In a trace for export (`state.capture_steps`), values that change
    with the step count (`per_step`: the steps done so far and a function of this step's
    number) are computed in the graph from a step-count tensor the program updates, as
    PyTorch's `capturable` optimizers do: an artifact runs without Python."""
    counted = getattr(commit, "counts", None)  # a step count (optim.optimizer.CountStep)
    if per_step is not None and state.capture_steps:
        done, values_of = per_step
        step = state.step_counts.get(id(counted)) if counted is not None else None
        if step is None:  # the count's first step in the call
            step = Tensor(np.asarray(done, dtype=like.dtype.np_type))
            lift(state, step, state.fresh_name(f"step{len(state.host)}"))
            if counted is not None:
                state.step_counts[id(counted)] = step
        state.host.append(compute)  # keeps the numbering of the other host values
        with no_grad():
            step.add_(1)
            return tuple(values_of(step))
    if counted is not None:  # stepped before in this call: its values are n steps ahead
        before = state.steps_taken.get(id(counted), 0)
        state.steps_taken[id(counted)] = before + 1
        if before:
            compute = _ahead(commit, before, compute)
    k = len(state.host)
    state.host.append(compute)
    if commit is not None:
        state.commits.append(commit)
    values = []
    for j in range(count):
        name = f"host{k}_{j}"
        state.sources[name] = ("host", (k, j))
        node = state.tracer.input(name, TensorType((), like.dtype), "data")
        values.append(state.symbol(node))
    return tuple(values)


def _ahead(commit: Any, n: int, compute: Callable[[], tuple]) -> Callable[[], tuple]:
    """`compute` run as the count `commit` advances stands after n more steps."""
    def run() -> tuple:
        with commit.ahead(n):
            return tuple(compute())
    return run


def lift(state: TraceState, tensor: Tensor, name: str) -> None:
    """Make an eager tensor (an optimizer's state) an input read on every call, so that
    in-place updates of it become outputs (a no-op if it is one already)."""
    if id(tensor) not in state.inputs:
        state.register(tensor, name, "buffer")


def lift_module(state: TraceState, module: Any) -> None:
    """A module called inside a trace: its parameters and buffers not yet inputs become
    inputs named by their paths (buffer updates, such as running statistics, then become
    outputs instead of being baked in as constants)."""
    if id(module) not in state.modules:
        state.modules[id(module)] = module
        state.snapshots.append((module, module_snapshot(module)))
    for kind, items in (("param", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, t in items:
            if id(t) not in state.inputs:
                state.register(t, state.fresh_name(name), kind)


def _slot(state: TraceState, t: Tensor) -> tuple[GradSlot, bool]:
    slot = state.grads.get(id(t))
    if slot is not None:
        return slot, False
    target = ("arg", state.args[id(t)][0]) if id(t) in state.args else ("tensor", t)
    slot = GradSlot(t, t._grad, target, state.label(t))
    state.grads[id(t)] = slot
    return slot, True


def read_grad(state: TraceState, t: Tensor) -> Tensor | None:
    """`t.grad` inside a trace.  A gradient that exists before the call (accumulated by an
    eager backward) becomes an input read on every call; whether one exists is guarded."""
    slot, first = _slot(state, t)
    if first:
        if slot.target[0] == "arg":
            state.guards.append(Guard(f"{slot.label}.grad is None", lambda args, k=slot.target[1]:
                                      args[k]._grad is None if k < len(args) else True, True))
            slot.original = t._grad = None
        else:
            before = t._grad
            state.guards.append(Guard(f"{slot.label}.grad is None",
                                      lambda args, p=t: p._grad is None, before is None))
            if before is not None:
                name = f"{slot.label}.grad"
                node = state.tracer.input(name, TensorType(tuple(before.shape), before.dtype),
                                          "buffer")
                state.sources[name] = ("grad", slot.target)
                t._grad = slot.read_as = state.symbol(node)
    return t._grad


def write_grad(state: TraceState, t: Tensor, value: Tensor | None) -> None:
    """`t.grad = value` inside a trace: assigned again after every call."""
    if value is not None and not isinstance(value, Tensor):
        raise TypeError(f"grad: expected a Tensor or None, got {type(value).__name__}")
    _slot(state, t)
    t._grad = value


def reset_grad(state: TraceState, t: Tensor, set_to_none: bool) -> None:
    """`zero_grad` inside a trace: None without reading the gradient, or, with
    `set_to_none=False`, zeros where a gradient exists (whether one does is guarded), so
    that an optimizer still steps a parameter the backward does not reach, as eagerly."""
    if set_to_none:
        write_grad(state, t, None)
        return
    g = read_grad(state, t)
    write_grad(state, t, None if g is None else zeros_like(g))


def store_item(state: TraceState, container: dict, key: Any, value: Tensor) -> None:
    """Inside a trace, `container[key] = value` for a value computed in the trace (an
    optimizer's new state): assigned the computed tensor after every call."""
    state.items.append((container, key, container.get(key, _ABSENT)))
    container[key] = value


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def backward_traced(state: TraceState, root: Tensor, gradient: Any) -> None:
    """`root.backward(gradient)` inside a trace: append the backward to the graph and add the
    gradients of the trace's leaves (parameters, lifted tensors, arguments) to their .grad."""
    b = state.tracer.builder
    node = state.node_of(root)
    if not state.differentiable(node):
        raise RuntimeError("backward: the tensor does not require grad and has no grad_fn; "
                           "did you call it inside no_grad() or on a detached tensor?")
    if gradient is None:
        if int(np.prod(root.shape)) != 1:
            raise RuntimeError(f"backward: grad can be implicitly created only for scalar "
                               f"outputs; got shape {tuple(root.shape)}; pass gradient=")
        b.source = user_source()
        seed = b.full_like(node, 1.0)
        b.source = None
    else:
        seed = state.node_of(as_tensor(gradient, root.dtype))
        if seed.type.shape != node.type.shape:
            raise ValueError(f"backward: gradient of shape {seed.type.shape} does not match "
                             f"the tensor's shape {node.type.shape}")
    flows = state.active | set(state.leaves)
    substitute = state.saved.check(_reached(b.nodes, node, flows, state.leaves), state.node_of)
    cot = backprop(b, list(b.nodes), {id(node): seed}, flows, leaves=state.leaves,
                   substitute=substitute)
    gradients: dict[int, tuple[Tensor, Node]] = {}  # a tensor updated in place has two leaves
    for n_id, t in state.leaves.items():
        g = cot.get(n_id)
        if g is not None:
            prev = gradients.get(id(t))
            gradients[id(t)] = (t, g if prev is None else b.apply("add", prev[1], g))
    with no_grad():
        for t, g in gradients.values():
            current = read_grad(state, t)
            g = state.symbol(g)
            write_grad(state, t, g if current is None else add(current, g))
    state.backward_called = True


def stale_outputs(state: TraceState, outputs: list[Node], active: list[int]) -> dict[int, str]:
    """For outputs differentiated after the call: {output index: eager's "modified in place"
    error} where a backward from it reads a value written in place since (the compiled
    backward raises it when that output gets a gradient, as eager's backward would).  A read
    written only through `.data`, which eager's backward would read anew, cannot be
    followed by a backward program built now: refused."""
    nodes = state.tracer.builder.nodes
    flows = state.active | set(state.leaves)
    stale = {}
    for i in active:
        try:
            followed = state.saved.check(_reached(nodes, outputs[i], flows, state.leaves),
                                         state.node_of)
        except RuntimeError as e:
            stale[i] = str(e)
            continue
        if followed:
            raise TraceError(f"neurenix.compile: output {i} is differentiated after the call "
                             f"through a value written through .data since it was used; a "
                             f"backward outside the compiled function cannot read the new "
                             f"value as eager's would: call backward() inside the compiled "
                             f"function, or write outside it")
    return stale


def _reached(nodes: list[Node], root: Node, flows: set[int], leaves: dict) -> list[Node]:
    """The nodes a backward from `root` runs the VJPs of, latest first (as eager's backward
    meets them): those a gradient reaches through values that carry one, leaves aside."""
    seen = {id(root)}
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) in leaves:
            continue
        for inp in n.inputs:
            if id(inp) in flows and id(inp) not in seen:
                seen.add(id(inp))
                stack.append(inp)
    return [n for n in reversed(nodes) if id(n) in seen and id(n) not in leaves]


def finish_stores(state: TraceState) -> tuple[list[Node], list[Store]]:
    """The assignments to replay after each call, the graph values they assign, and Python
    objects put back as they were before the trace (the first run assigns real values)."""
    nodes: list[Node] = []
    stores: list[Store] = []
    for slot in state.grads.values():
        value = slot.tensor._grad
        if value is not None and value is slot.read_as:
            continue  # read, never written: the gradient stays as it is (no copy per call)
        index = None
        if value is not None:
            index = len(nodes)
            nodes.append(state.node_of(value))
        stores.append(Store("grad", slot.target, None, index))
    for container, key, _ in state.items:
        stores.append(Store("item", container, key, len(nodes)))
        nodes.append(state.node_of(container[key]))
    return nodes, stores


def restore(state: TraceState) -> None:
    """Undo what the trace assigned to Python objects (gradients, optimizer state)."""
    for slot in state.grads.values():
        slot.tensor._grad = slot.original
    for container, key, previous in reversed(state.items):
        if previous is _ABSENT:
            container.pop(key, None)
        else:
            container[key] = previous
