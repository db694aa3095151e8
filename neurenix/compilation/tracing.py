"""The frontend side of tracing: the active trace the layers below hand their work to.

While a trace is active (`tracing(state)`), `neurenix.state` holds a `TraceState`, and
operations on tensors reach it through `dispatch.apply` (`process_primitive`): they append
nodes to the tracer's graph instead of computing.  A symbolic tensor has no data
(`_data is None`) and holds its graph node in `_value`; eager tensors it meets become graph
inputs (parameters, registered buffers) or constants.  Reading a Python value out of a
symbolic tensor (`.item()`, `bool()`, `.numpy()`) raises `TraceError` naming the user's line.
`TraceState` implements `neurenix.state.Trace`; what a traced function does besides computing
(its backward, gradients, optimizer state, per-call values and guards) is in
`trace_effects`, the value checks in `value_checks`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from neurenix.compiler.graph.ir import Node
from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.ops.registry import non_differentiable
from neurenix.compiler.trace import TraceError, Tracer
from neurenix.compiler.types import TensorType, int64

from .. import state as ambient
from .. import view_writes
from ..call_site import user_source
from ..device import CPU, Device
from ..dispatch import apply
from ..elementwise import as_tensor
from ..shapes import broadcast_to
from ..tensor import Tensor
from . import trace_effects, value_checks
from .saved_reads import SavedReads
from .trace_effects import GradSlot
from .trace_guards import Guard


class TraceState:
    """One active trace: the tracer and the eager tensors registered as its inputs."""

    def __init__(self, tracer: Tracer, device: Device = CPU) -> None:
        self.tracer = tracer
        self.device = device  # where the program runs: every symbolic tensor's device
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
        self.steps_taken: dict[int, int] = {}  # per step count: steps so far in the trace
        self.helpers: dict = {}  # the user's functions the trace ran: {code: globals}
        self.step_counts: dict[int, Tensor] = {}  # per step count: its tensor (export)
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
        # views taken in the trace: id(view) -> (view, base, primitive, attrs); id(base) -> its
        # views (held for the trace's life, so ids stay theirs): a write through a view is a
        # write into its base, and views of a written tensor are derived again
        self.view_of: dict[int, tuple[Tensor, Tensor, Any, dict]] = {}
        self.views: dict[int, list[Tensor]] = {}
        self.backward_called = False
        self.saved = SavedReads()  # what the gradient's path reads, and writes since
        self.modules: dict[int, Any] = {}  # id -> every Module called in the trace
        self.snapshots: list[tuple[Any, dict]] = []  # each one's attributes before its call
        self.epoch = -1  # the trace epoch while tracing: tensors made then are constants
        # value checks (neurenix.value_checks): graph values and the test run on them per call
        self.checks: list[tuple[list[Node], Callable[..., None]]] = []
        # a trace for export: step-dependent host values computed in the graph (host_values)
        self.capture_steps = False

    def symbol(self, node: Node) -> Tensor:
        """A symbolic tensor for a graph value, on the device the program runs on (so that
        `x.device` in traced code names it, and eager's device rules hold in the trace)."""
        t = Tensor._symbolic(node)
        t._device = self.device
        return t

    def register(self, tensor: Tensor, name: str, kind: str) -> Node:
        """Make an eager tensor (parameter, buffer) an input of the graph."""
        node = self.tracer.input(name, TensorType(tensor.shape, tensor.dtype), kind)
        self.inputs[id(tensor)] = (tensor, node)
        self.sources[name] = ("tensor", tensor)
        if tensor.requires_grad:
            self.leaves[id(node)] = tensor
        return node

    def register_arg(self, tensor: Tensor, name: str, index: int,
                     shape: tuple | None = None) -> Tensor:
        """A symbolic tensor for the call's `index`-th tensor argument (eager `tensor`), of
        `shape` when given (with dynamic sizes: neurenix.compilation.dynamic)."""
        shape = tuple(tensor.shape) if shape is None else shape
        node = self.tracer.input(name, TensorType(shape, tensor.dtype), "data")
        self.sources[name] = ("arg", index)
        t = self.symbol(node)
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
            return self.tracer.constant(t._host())  # made by the traced function itself
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


    # ---- neurenix.state.Trace: what the layers below hand to the trace ---------------------

    def process_primitive(self, op: str, inputs: tuple[Tensor, ...], attrs: dict,
                          view: bool = True) -> Tensor:
        """The traced form of `dispatch.apply`: append a node, return a symbolic tensor (a
        view primitive's result recorded as a view of its input unless `view` is False).

        A result computed from values a gradient flows back to is itself on the gradient's
        path under grad mode; under `no_grad` it is not, and where such a value is used under
        grad mode it is cut with `stop_gradient`, so that autodiff of the finished graph sees
        the graph eager autograd would have recorded.
        """
        nodes = [self.node_of(t) for t in inputs]
        grad = ambient.is_grad_enabled()
        if grad and self.tainted:
            nodes = [self.cut(n) for n in nodes]
        node = self.tracer.apply(op, nodes, attrs, user_source())
        if (self.leaves or self.tainted) and node.type.dtype.is_floating \
                and REGISTRY[op].vjp not in (None, non_differentiable):
            if grad and any(self.differentiable(n) for n in nodes):
                self.active.add(id(node))
                self.saved.record(node, op, inputs, [self.differentiable(n) for n in nodes])
            elif not grad and any(self.differentiable(n) or id(n) in self.tainted
                                  for n in nodes):
                self.tainted.add(id(node))
        out = self.symbol(node)
        if view and op in _VIEWS and inputs:
            base = inputs[0]
            self.view_of[id(out)] = (out, base, REGISTRY[op], attrs)
            self.views.setdefault(id(base), []).append(out)
        return out

    def detached(self, t: Tensor, counted: bool = True) -> Tensor:
        """`t.detach()` (or `t.data`, `counted` False) in the trace: a view of t's value now,
        taken under no_grad, so that autodiff does not go through it (it is cut where grad
        mode uses it), a later call reads the tensor's value then rather than the one it had
        when traced, and writes through either are seen by both, as eager's shared storage
        is; a write through `.data` counts as no version bump of t (`saved_reads`)."""
        with ambient.no_grad():
            out = self.process_primitive("reshape", (t,), {"shape": tuple(t.shape)})
        if not counted:
            self.saved.unversioned.add(id(out))
        return out

    def made_here(self, t: Tensor) -> bool:
        """Whether `t` is an eager tensor the traced function made itself (a constant of the
        trace, which it may write to eagerly), rather than one that outlives the call."""
        return t._value is None and t._born == self.epoch and \
            id(t) not in self.inputs and id(t) not in self.current

    def value_of(self, t: Tensor) -> Tensor:
        """A symbolic tensor for `t`'s value in the trace now (input, argument, or value)."""
        return self.symbol(self.node_of(t))

    def write(self, target: Tensor, value: Any, counted: bool = True) -> bool:
        """`target` takes `value` (broadcast and cast to its type) in place; False when the
        write is an eager one (a tensor the traced function made itself, written with
        constants).

        A traced function's write to a tensor that outlives the call (a parameter, a buffer,
        a captured tensor, an argument) becomes an output of the program written back after
        every call; later reads in the trace see the new value.  A tensor sharing memory with a
        view taken in the trace cannot be followed (the view would keep the old value) and is
        refused.
        """
        value = value if isinstance(value, Tensor) else Tensor(value)
        self.saved.rebind(target, counted)
        own = self.made_here(target)
        if own and value._value is None:
            return False
        self._refuse_overlapping(target)
        v = broadcast_to(as_tensor(value, target.dtype), target.shape)
        node = self.cut(self.node_of(v))
        if own:
            target._data, target._value = None, node  # a constant of the trace becomes a value
            return True
        leaf = target.requires_grad and target._node is None and (
            id(target) in self.args or target._value is None)
        if leaf:  # a leaf updated under no_grad stays a leaf: gradients collect at its new value
            node = self.tracer.apply("stop_gradient", [node], {}, user_source())
            self.leaves[id(node)] = target
        if id(target) in self.args:
            self.tracer.record_update(self.args[id(target)][1].name, node)
            target._value = node
        elif target._value is not None:
            target._value = node  # a value of the trace: rebound
        else:
            self.node_of(target)  # lifts a captured tensor
            self.tracer.record_update(self.inputs[id(target)][1].name, node)
            self.current[id(target)] = node
        self._write_through(target, counted)
        return True

    def _write_through(self, target: Tensor, counted: bool) -> None:
        """After `target` took a new value: its base takes it too when it is a view (written
        like any tensor: through its own base, into an input written back), and the views
        taken of it are derived again (as eager views see their base's memory)."""
        entry = self.view_of.get(id(target))
        if entry is not None and entry[0] is target:
            _, base, prim, attrs = entry
            self.write(base, view_writes.write_view(self.value_of(base), prim, attrs,
                                                    self.value_of(target), apply),
                       counted and id(target) not in self.saved.unversioned)
        self._derive_views(target, counted)

    def _derive_views(self, base: Tensor, counted: bool) -> None:
        for view in self.views.get(id(base), ()):
            _, _, prim, attrs = self.view_of[id(view)]
            view._value = self.process_primitive(prim.name, (base,), attrs, view=False)._value
            self.saved.rebind(view, counted)
            self._derive_views(view, counted)

    def _refuse_overlapping(self, target: Tensor) -> None:
        """Raise for a write into an expanded view (its elements repeat), as PyTorch does."""
        entry = self.view_of.get(id(target))
        if entry is not None and entry[0] is target and \
                entry[2].name not in view_writes.TRACKED:
            raise TraceError(f"in-place write at {user_source()} into an expanded view: more "
                             f"than one element refers to a single memory location; clone() "
                             f"it before the in-place operation")

    def seed(self) -> Tensor:
        """An int64 seed for a random primitive: a graph input given a fresh value per call."""
        name = f"seed{len(self.seeds)}"
        self.seeds.append(name)
        self.sources[name] = ("seed", None)
        return self.symbol(self.tracer.input(name, TensorType((), int64), "data"))

    def read_grad(self, t: Tensor) -> Tensor | None:
        return trace_effects.read_grad(self, t)

    def write_grad(self, t: Tensor, value: Tensor | None) -> None:
        trace_effects.write_grad(self, t, value)

    def reset_grad(self, t: Tensor, set_to_none: bool) -> None:
        trace_effects.reset_grad(self, t, set_to_none)

    def backward(self, root: Tensor, gradient: Any) -> None:
        trace_effects.backward_traced(self, root, gradient)

    def check_values(self, values: tuple[Tensor, ...], test: Callable[..., None]) -> None:
        value_checks.record(self, values, test)

    def enter_module(self, module: Any) -> None:
        trace_effects.lift_module(self, module)

    def host_values(self, compute: Callable[[], tuple], like: Tensor, count: int,
                    commit: Callable[[], None] | None,
                    per_step: tuple[int, Callable[[Tensor], tuple]] | None = None) -> tuple:
        return trace_effects.host_values(self, compute, like, count, commit, per_step)

    def lift(self, tensor: Tensor, name: str) -> None:
        trace_effects.lift(self, tensor, name)

    def guard(self, what: str, read: Callable[[list[Tensor]], Any]) -> None:
        self.guards.append(Guard(what, read, read([])))

    def store_item(self, container: dict, key: Any, value: Tensor) -> None:
        trace_effects.store_item(self, container, key, value)


_VIEWS = frozenset({"reshape", "permute", "expand", "slice"})  # NumPy views when eager


@contextlib.contextmanager
def tracing(state: TraceState) -> Iterator[TraceState]:
    """Route tensor operations in this thread into `state`'s tracer."""
    if ambient.is_tracing():
        raise TraceError("a trace is already active in this thread (nested neurenix.compile "
                         "calls are traced as part of the outer one)")
    with ambient.use_trace(state):
        state.epoch = ambient.trace_epoch()
        yield state
