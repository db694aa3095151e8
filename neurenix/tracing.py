"""The frontend side of tracing: symbolic tensors and the hook `dispatch.apply` calls.

While a trace is active (`tracing(tracer)`), operations on tensors append nodes to the tracer's
graph instead of computing.  A symbolic tensor has no data (`_data is None`) and holds its
graph node in `_value`; eager tensors it meets become graph inputs (parameters, registered
buffers) or constants.  Reading a Python value out of a symbolic tensor (`.item()`, `bool()`,
`.numpy()`) raises `TraceError` naming the user's line.

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

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from neurenix.compiler.ir import Node
from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.ops.registry import non_differentiable
from neurenix.compiler.passes.autodiff import backprop
from neurenix.compiler.trace import TraceError, Tracer
from neurenix.compiler.types import TensorType, int64

from . import autograd, dispatch
from .tensor import Tensor

_PACKAGE_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                      for m in (sys.modules["neurenix"], sys.modules["neurenix.compiler"],
                                sys.modules["neurenix.runtime"]))


class Guard(NamedTuple):
    """A value the trace baked in: `read(args)` must give `value` again for the program to
    be reused (`args` are the call's tensors, flattened)."""

    what: str
    read: Callable[[list[Tensor]], Any]
    value: Any


@dataclass
class GradSlot:
    """A `.grad` the trace read or wrote: whose it is and what it held before the trace."""

    tensor: Tensor
    original: Tensor | None
    target: tuple[str, Any]  # ("tensor", eager tensor) or ("arg", index of the call's tensor)
    label: str


@dataclass
class Store:
    """An assignment to a Python object the traced function made, replayed after every call:
    `kind` "grad" sets `target`'s .grad; "item" sets `target[key]`.  `output` is the index of
    the value among the trace's store outputs, or None to assign None."""

    kind: str
    target: Any
    key: Any
    output: int | None


class TraceState:
    """One active trace: the tracer and the eager tensors registered as its inputs."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.inputs: dict[int, tuple[Tensor, Node]] = {}  # id(eager tensor) -> input node
        self.current: dict[int, Node] = {}  # id(input tensor) -> its value after in-place updates
        self.seeds: list[str] = []
        self.lifted = 0
        # where each input registered during the trace gets its value on every call
        self.sources: dict[str, tuple[str, Any]] = {}
        self.args: dict[int, tuple[int, Node]] = {}  # id(symbolic argument) -> (index, node)
        self.arg_tensors: list[tuple[Tensor, Node]] = []  # the symbolic arguments
        self.host: list[Callable[[], tuple]] = []
        self.guards: list[Guard] = []
        self.grads: dict[int, GradSlot] = {}
        self.items: list[tuple[dict, Any, Any]] = []  # (container, key, previous) symbolic items
        self.grad_mode = autograd.is_grad_enabled()
        self.active: set[int] = set()  # ids of nodes a gradient can flow back from
        self.backward_called = False

    def register(self, tensor: Tensor, name: str, kind: str) -> Node:
        """Make an eager tensor (parameter, buffer) an input of the graph."""
        node = self.tracer.input(name, TensorType(tensor.shape, tensor.dtype), kind)
        self.inputs[id(tensor)] = (tensor, node)
        self.sources[name] = ("tensor", tensor)
        if self.grad_mode and tensor.requires_grad:
            self.active.add(id(node))
        return node

    def register_arg(self, tensor: Tensor, name: str, index: int) -> Tensor:
        """A symbolic tensor for the call's `index`-th tensor argument (eager `tensor`)."""
        node = self.tracer.input(name, TensorType(tuple(tensor.shape), tensor.dtype), "data")
        self.sources[name] = ("arg", index)
        t = symbolic(node)
        self.args[id(t)] = (index, node)
        self.arg_tensors.append((t, node))
        if self.grad_mode and tensor.requires_grad:
            self.active.add(id(node))
            t.requires_grad = True
        return t

    def label(self, t: Tensor) -> str:
        """A name for a tensor of the trace: its input name, else a fresh one."""
        if id(t) in self.args:
            return self.args[id(t)][1].name
        entry = self.inputs.get(id(t))
        return entry[1].name if entry is not None else f"tensor{len(self.grads)}"

    def node_of(self, t: Tensor) -> Node:
        """The graph value of a tensor used in the trace."""
        if t._value is not None:
            return t._value
        updated = self.current.get(id(t))
        if updated is not None:  # read after an in-place update in this trace
            return updated
        entry = self.inputs.get(id(t))
        if entry is not None:
            return entry[1]
        if t.requires_grad and t._node is None:
            # a free-standing learnable tensor (a closure over a parameter): lift it
            self.lifted += 1
            return self.register(t, f"param{self.lifted}", "param")
        return self.tracer.constant(t._data)


class _Active(threading.local):
    state: TraceState | None = None


ACTIVE = _Active()
dispatch._ACTIVE = ACTIVE  # the one hook: dispatch.apply asks ACTIVE.state


@contextlib.contextmanager
def tracing(state: TraceState) -> Iterator[TraceState]:
    """Route tensor operations in this thread into `state`'s tracer."""
    if ACTIVE.state is not None:
        raise TraceError("a trace is already active in this thread (nested neurenix.compile "
                         "calls are traced as part of the outer one)")
    ACTIVE.state = state
    try:
        yield state
    finally:
        ACTIVE.state = None


@contextlib.contextmanager
def suspended(what: str) -> Iterator[None]:
    """Run eagerly inside a trace (for values that are plain data, e.g. index positions);
    a symbolic tensor met there raises TraceError naming `what`."""
    state = ACTIVE.state
    ACTIVE.state = None
    try:
        yield
    except AttributeError as e:
        if state is None:
            raise
        raise TraceError(f"{what} at {user_source()} cannot be traced") from e
    finally:
        ACTIVE.state = state


_FILES: dict[str, str | None] = {}  # co_filename -> its display path, None inside Neurenix


def _display_path(filename: str) -> str | None:
    shown = _FILES.get(filename, "")
    if shown == "":
        name = os.path.abspath(filename)
        if name.startswith(_PACKAGE_DIRS):
            shown = None
        else:
            shown = filename if filename.startswith("<") else os.path.relpath(name)
        _FILES[filename] = shown
    return shown


def user_source() -> str | None:
    """file:line of the innermost frame outside Neurenix itself (the user's code)."""
    frame = sys._getframe(1)
    while frame is not None:
        shown = _display_path(frame.f_code.co_filename)
        if shown is not None:
            return f"{shown}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def symbolic(node: Node) -> Tensor:
    """A tensor standing for a graph value."""
    t = Tensor._wrap(None, node.type.dtype)  # type: ignore[arg-type]
    t._value = node
    return t


def apply_traced(state: TraceState, op: str, inputs: tuple[Tensor, ...], attrs: dict) -> Tensor:
    """The traced form of dispatch.apply: append a node, return a symbolic tensor.

    A result computed from values a gradient flows back to is itself on the gradient's path
    under grad mode; under `no_grad` it is cut with `stop_gradient`, so that autodiff of the
    finished graph sees the same graph eager autograd would have recorded.
    """
    nodes = [state.node_of(t) for t in inputs]
    where = user_source()
    node = state.tracer.apply(op, nodes, attrs, where)
    if state.active and any(id(n) in state.active for n in nodes) \
            and node.type.dtype.is_floating \
            and REGISTRY[op].vjp not in (None, non_differentiable):
        if autograd.is_grad_enabled():
            state.active.add(id(node))
        elif op != "stop_gradient":
            node = state.tracer.apply("stop_gradient", [node], {}, where)
    return symbolic(node)


def is_symbolic(t: Any) -> bool:
    return isinstance(t, Tensor) and t._value is not None


def refuse(t: Tensor, what: str) -> TraceError:
    """The error for reading a Python value out of a traced tensor."""
    where = user_source() or "<unknown>"
    return TraceError(f"{what} on a traced tensor ({t._value.type}) at {where}: neurenix.compile "
                      f"cannot capture a Python value computed from a traced input. Keep the "
                      f"computation in tensor operations, or run that part outside the "
                      f"compiled function")


def seed_tensor() -> Tensor:
    """An int64 seed for a random primitive: fresh eagerly, a per-call graph input traced."""
    from .random import next_seed
    state = ACTIVE.state
    if state is None:
        return Tensor._wrap(np.asarray(next_seed(), dtype=np.int64), int64)
    name = f"seed{len(state.seeds)}"
    state.seeds.append(name)
    state.sources[name] = ("seed", None)
    return symbolic(state.tracer.input(name, TensorType((), int64), "data"))


def record_update(target: Tensor, value: Tensor) -> bool:
    """Record `target.copy_(value)` in the active trace; False when no trace is active."""
    state = ACTIVE.state
    if state is None:
        return False
    entry = state.inputs.get(id(target))
    if entry is None:
        raise TraceError(f"in-place update of a tensor that is not an input of the trace at "
                         f"{user_source()}; only parameters and buffers can be updated")
    from .elementwise import as_tensor
    from .shapes import broadcast_to
    v = broadcast_to(as_tensor(value, target.dtype), target.shape)
    node = state.node_of(v)
    state.tracer.record_update(entry[1].name, node)
    state.current[id(target)] = node
    return True


def is_tracing() -> bool:
    """Whether tensor operations in this thread are being traced."""
    return ACTIVE.state is not None


def host_values(compute: Callable[[], tuple], like: Tensor, count: int) -> tuple:
    """`count` scalars computed in Python on every call: `compute()` eagerly; inside a trace,
    0-d inputs of `like`'s dtype whose values `compute` gives before each run of the program.

    For what changes between calls without changing the graph: a learning rate a scheduler
    sets, an optimizer's step count and its bias corrections.  `compute` may have side effects
    (count a step); it runs once per call.
    """
    state = ACTIVE.state
    if state is None:
        return tuple(compute())
    k = len(state.host)
    state.host.append(compute)
    values = []
    for j in range(count):
        name = f"host{k}_{j}"
        state.sources[name] = ("host", (k, j))
        values.append(symbolic(state.tracer.input(name, TensorType((), like.dtype), "data")))
    return tuple(values)


def lift(tensor: Tensor, name: str) -> None:
    """Inside a trace, make an eager tensor (an optimizer's state) an input read on every
    call, so that in-place updates of it become outputs (a no-op if it is one already)."""
    state = ACTIVE.state
    if state is not None and id(tensor) not in state.inputs:
        state.register(tensor, name, "buffer")


def lift_module(module: Any) -> None:
    """A module called inside a trace: its parameters and buffers not yet inputs become
    inputs named by their paths (buffer updates, such as running statistics, then become
    outputs instead of being baked in as constants)."""
    state = ACTIVE.state
    for kind, items in (("param", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, t in items:
            if id(t) not in state.inputs:
                state.register(t, _fresh_input_name(state, name), kind)


def _fresh_input_name(state: TraceState, name: str) -> str:
    taken = {n.name for n in state.tracer.builder.inputs}
    base, k = name, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def guard(what: str, read: Callable[[list[Tensor]], Any]) -> None:
    """Inside a trace, check `read(args)` on every call: the program is reused only while it
    gives what it gives now (a hyper-parameter a Python branch of the trace depended on)."""
    state = ACTIVE.state
    if state is not None:
        state.guards.append(Guard(what, read, read([])))


def _slot(state: TraceState, t: Tensor) -> tuple[GradSlot, bool]:
    slot = state.grads.get(id(t))
    if slot is not None:
        return slot, False
    target = ("arg", state.args[id(t)][0]) if id(t) in state.args else ("tensor", t)
    slot = GradSlot(t, t._grad, target, state.label(t))
    state.grads[id(t)] = slot
    return slot, True


def _grad_now(target: tuple[str, Any], args: list[Tensor]) -> Tensor | None:
    kind, ref = target
    return ref._grad if kind == "tensor" else args[ref]._grad


def read_grad(t: Tensor) -> Tensor | None:
    """`t.grad` inside a trace.  A gradient that exists before the call (accumulated by an
    eager backward) becomes an input read on every call; whether one exists is guarded."""
    state = ACTIVE.state
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
                t._grad = symbolic(node)
    return t._grad


def write_grad(t: Tensor, value: Tensor | None) -> None:
    """`t.grad = value` inside a trace: assigned again after every call."""
    if value is not None and not isinstance(value, Tensor):
        raise TypeError(f"grad: expected a Tensor or None, got {type(value).__name__}")
    _slot(ACTIVE.state, t)
    t._grad = value


def store_item(container: dict, key: Any, value: Tensor) -> None:
    """Inside a trace, `container[key] = value` for a value computed in the trace (an
    optimizer's new state): assigned the computed tensor after every call."""
    state = ACTIVE.state
    state.items.append((container, key, container.get(key, _ABSENT)))
    container[key] = value


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def backward_traced(root: Tensor, gradient: Any) -> None:
    """`root.backward(gradient)` inside a trace: append the backward to the graph and add the
    gradients of the trace's leaves (parameters, lifted tensors, arguments) to their .grad."""
    from .elementwise import add, as_tensor
    state = ACTIVE.state
    b = state.tracer.builder
    node = state.node_of(root)
    if id(node) not in state.active:
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
    leaves = [(t, n) for t, n in state.inputs.values() if id(n) in state.active]
    leaves += [(t, n) for t, n in state.arg_tensors if id(n) in state.active]
    cot = backprop(b, list(b.nodes), {id(node): seed}, state.active)
    with autograd.no_grad():
        for t, n in leaves:
            g = cot.get(id(n))
            if g is None:
                continue
            current = read_grad(t)
            g = symbolic(g)
            write_grad(t, g if current is None else add(current, g))
    state.backward_called = True


def finish_stores(state: TraceState) -> tuple[list[Node], list[Store]]:
    """The assignments to replay after each call, the graph values they assign, and Python
    objects put back as they were before the trace (the first run assigns real values)."""
    nodes: list[Node] = []
    stores: list[Store] = []
    for slot in state.grads.values():
        value = slot.tensor._grad
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
