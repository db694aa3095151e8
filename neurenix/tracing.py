"""The frontend side of tracing: symbolic tensors and the hook `dispatch.apply` calls.

While a trace is active (`tracing(tracer)`), operations on tensors append nodes to the tracer's
graph instead of computing.  A symbolic tensor has no data (`_data is None`) and holds its
graph node in `_value`; eager tensors it meets become graph inputs (parameters, registered
buffers) or constants.  Reading a Python value out of a symbolic tensor (`.item()`, `bool()`,
`.numpy()`) raises `TraceError` naming the user's line.  What a traced function does besides
computing (its backward, gradients, optimizer state, per-call values and guards) is handled by
`neurenix.trace_effects`.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from neurenix.compiler.graph.ir import Node
from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.ops.registry import non_differentiable
from neurenix.compiler.trace import TraceError, Tracer
from neurenix.compiler.types import TensorType, int64

from . import autograd, dispatch
from .tensor import TRACE_EPOCH, Tensor

if TYPE_CHECKING:
    from .trace_effects import GradSlot, Guard

_PACKAGE_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                      for m in (sys.modules["neurenix"], sys.modules["neurenix.compiler"],
                                sys.modules["neurenix.runtime"]))


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
        self.commits: list[Callable[[], None]] = []  # host side effects, run after each call
        self.guards: list[Guard] = []
        self.grads: dict[int, GradSlot] = {}
        self.items: list[tuple[dict, Any, Any]] = []  # (container, key, previous) symbolic items
        # gradient flow, as eager autograd would record it: `leaves` are the nodes gradients
        # are collected at (inputs that require grad, and the new values of such inputs
        # updated in place), `active` the nodes computed from them under grad mode, `tainted`
        # those computed from them under no_grad (cut with stop_gradient where used later)
        self.leaves: dict[int, Tensor] = {}
        self.active: set[int] = set()
        self.tainted: set[int] = set()
        self.cuts: dict[int, Node] = {}  # id(tainted node) -> its stop_gradient
        # views taken in the trace: id(view) -> (view, base), weakly; id(base) -> its views
        self.view_of: dict[int, tuple[Any, Any]] = {}
        self.views: dict[int, list[Any]] = {}
        self.backward_called = False
        self.modules: dict[int, Any] = {}  # id -> every Module called in the trace
        self.snapshots: list[tuple[Any, dict]] = []  # each one's attributes before its call
        self.epoch = -1  # TRACE_EPOCH while tracing: tensors made then are constants
        # value checks (neurenix.value_checks): graph values and the test run on them per call
        self.checks: list[tuple[list[Node], Callable[..., None]]] = []

    def register(self, tensor: Tensor, name: str, kind: str) -> Node:
        """Make an eager tensor (parameter, buffer) an input of the graph."""
        node = self.tracer.input(name, TensorType(tensor.shape, tensor.dtype), kind)
        self.inputs[id(tensor)] = (tensor, node)
        self.sources[name] = ("tensor", tensor)
        if tensor.requires_grad:
            self.leaves[id(node)] = tensor
        return node

    def register_arg(self, tensor: Tensor, name: str, index: int) -> Tensor:
        """A symbolic tensor for the call's `index`-th tensor argument (eager `tensor`)."""
        node = self.tracer.input(name, TensorType(tuple(tensor.shape), tensor.dtype), "data")
        self.sources[name] = ("arg", index)
        t = symbolic(node)
        self.args[id(t)] = (index, node)
        self.arg_tensors.append((t, node))
        if tensor.requires_grad:
            self.leaves[id(node)] = t
            t.requires_grad = True
        return t

    def differentiable(self, node: Node) -> bool:
        """Whether a gradient flows back from `node` (eager: `requires_grad`)."""
        return id(node) in self.active or id(node) in self.leaves

    def cut(self, node: Node) -> Node:
        """`node` as a graph output or an operand under grad mode: a value computed from a
        leaf under no_grad is cut with `stop_gradient`, as eager autograd never saw it."""
        if id(node) not in self.tainted:
            return node
        if id(node) not in self.cuts:
            self.cuts[id(node)] = self.tracer.apply("stop_gradient", [node], {}, None)
        return self.cuts[id(node)]

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
        if t._born == self.epoch and not t.requires_grad:
            return self.tracer.constant(t._data)  # made by the traced function itself
        # a tensor that existed before the trace (captured from an enclosing scope, a plain
        # attribute of a module): an input read on every call, so that a later in-place
        # change, or a new value of `.data`, is seen; a learnable one is a parameter
        self.lifted += 1
        if t.requires_grad and t._node is None:
            return self.register(t, self.fresh_name(f"param{self.lifted}"), "param")
        return self.register(t, self.fresh_name(f"captured{self.lifted}"), "buffer")

    def fresh_name(self, name: str) -> str:
        """`name`, or `name_1`, `name_2`, ...: the first not taken by an input of the trace."""
        taken = {n.name for n in self.tracer.builder.inputs}
        base, k = name, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        return name


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
    TRACE_EPOCH[0] += 1
    state.epoch = TRACE_EPOCH[0]
    try:
        yield state
    finally:
        ACTIVE.state = None
        TRACE_EPOCH[0] += 1


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


_VIEWS = frozenset({"reshape", "permute", "expand", "slice"})  # NumPy views when eager


def apply_traced(state: TraceState, op: str, inputs: tuple[Tensor, ...], attrs: dict) -> Tensor:
    """The traced form of dispatch.apply: append a node, return a symbolic tensor.

    A result computed from values a gradient flows back to is itself on the gradient's path
    under grad mode; under `no_grad` it is not, and where such a value is used under grad
    mode it is cut with `stop_gradient`, so that autodiff of the finished graph sees the graph
    eager autograd would have recorded.
    """
    nodes = [state.node_of(t) for t in inputs]
    grad = autograd.is_grad_enabled()
    if grad and state.tainted:
        nodes = [state.cut(n) for n in nodes]
    where = user_source()
    node = state.tracer.apply(op, nodes, attrs, where)
    if (state.leaves or state.tainted) and node.type.dtype.is_floating \
            and REGISTRY[op].vjp not in (None, non_differentiable):
        if grad and any(state.differentiable(n) for n in nodes):
            state.active.add(id(node))
        elif not grad and any(state.differentiable(n) or id(n) in state.tainted
                              for n in nodes):
            state.tainted.add(id(node))
    out = symbolic(node)
    if op in _VIEWS and inputs:
        base = inputs[0]
        state.view_of[id(out)] = (weakref.ref(out), weakref.ref(base))
        state.views.setdefault(id(base), []).append(weakref.ref(out))
    return out


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


def write(target: Tensor, value: Any) -> bool:
    """`target` takes `value` (broadcast and cast to its type) in place, inside the active
    trace; False when no trace is active or the write is an eager one (a tensor the traced
    function made itself, written with constants).

    A traced function's write to a tensor that outlives the call (a parameter, a buffer, a
    captured tensor, an argument) becomes an output of the program written back after every
    call; later reads in the trace see the new value.  A tensor sharing memory with a view
    taken in the trace cannot be followed (the view would keep the old value) and is refused.
    """
    state = ACTIVE.state
    if state is None:
        return False
    from .elementwise import as_tensor
    from .shapes import broadcast_to
    value = value if isinstance(value, Tensor) else Tensor(value)
    own = made_in_trace(target)
    if own and value._value is None:
        return False
    _refuse_aliased(state, target)
    v = broadcast_to(as_tensor(value, target.dtype), target.shape)
    node = state.cut(state.node_of(v))
    if own:
        target._data, target._value = None, node  # a constant of the trace becomes a value
        return True
    leaf = target.requires_grad and target._node is None and (
        id(target) in state.args or target._value is None)
    if leaf:  # a leaf updated under no_grad stays a leaf: gradients collect at its new value
        node = state.tracer.apply("stop_gradient", [node], {}, user_source())
        state.leaves[id(node)] = target
    if id(target) in state.args:
        state.tracer.record_update(state.args[id(target)][1].name, node)
        target._value = node
    elif target._value is not None:
        target._value = node  # a value of the trace: rebound
    else:
        input_node = state.node_of(target)  # lifts a captured tensor
        state.tracer.record_update(state.inputs[id(target)][1].name, node)
        del input_node
        state.current[id(target)] = node
    return True


def made_in_trace(t: Tensor) -> bool:
    """Whether `t` is an eager tensor the active traced function made itself (a constant of
    the trace, which it may write to eagerly), rather than one that outlives the call."""
    state = ACTIVE.state
    return state is not None and t._value is None and t._born == state.epoch and \
        id(t) not in state.inputs and id(t) not in state.current


def _refuse_aliased(state: TraceState, target: Tensor) -> None:
    """Raise for a write to a view taken in the trace, or to a tensor that has a live view."""
    pair = state.view_of.get(id(target))
    shared = pair is not None and pair[0]() is target and pair[1]() is not None
    shared = shared or any(ref() is not None for ref in state.views.get(id(target), ()))
    if shared:
        raise TraceError(f"in-place write at {user_source()} to a tensor that shares memory "
                         f"with a view (reshape, view, slice, transpose, expand) taken in the "
                         f"compiled function: neurenix.compile cannot follow a write through a "
                         f"view. Write to a copy (clone()) or build the value out of place")


def is_tracing() -> bool:
    """Whether tensor operations in this thread are being traced."""
    return ACTIVE.state is not None
