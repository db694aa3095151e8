"""The autograd tape: how each tensor was computed, recorded for `backward`.

Every differentiable primitive applied eagerly under grad mode records a `TapeNode` on its
output (`dispatch.apply` does); a compiled call records one `FunctionNode` for all its outputs.
`neurenix.backward` walks these nodes applying the registry's VJP rules, so eager gradients
and the compiler's graph-level autodiff share one set of rules.  Grad mode lives in
`neurenix.state`.

The public API, as `torch.autograd`: `grad(outputs, inputs, ...)` (the walk itself lives in
`neurenix.backward`, which registers it here) and custom operations, `Function` subclasses with
static `forward(ctx, ...)` and `backward(ctx, ...)` run through `Function.apply`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neurenix.compiler.ops import Primitive
from neurenix.compiler.trace import TraceError

from . import state
from .call_site import user_source
from .tensor import Tensor, move_storage, version_of

_object_new = object.__new__

SHAPE_ONLY = frozenset({"reshape", "slice", "permute", "expand"})
"""Primitives whose gradient reads no input value: a later write into an input cannot make it
wrong (the edges were taken when the node was recorded), so no version check."""

CROSS = "cross"  # a product's factors: each one's gradient reads the other

VJP_READS: dict[str, tuple[bool, ...] | str] = {
    **dict.fromkeys(("add", "sub", "neg", "exp", "sqrt", "tanh", "reciprocal", "cast",
                     "reduce_sum", "pad", "concat"), ()),
    "mul": CROSS,
    "div": (False, True),  # g / y, and -g * out / y
    "where": (True, False, False),  # routed by the condition
}
"""Which inputs a primitive's VJP reads, where that is not all of them: a tuple of flags
(empty: none), or `CROSS` (a product: x is read when y requires grad, and y when x does).  The
others may change in place before the backward runs (`c * 2` then `c.mul_(3)`), as in
PyTorch, which saves only what a backward reads.  Rules that read the output (`exp`) read
the node's own copy of it."""


@dataclass(eq=False)
class TapeNode:
    """How a tensor was computed: the primitive, its inputs, attributes and its own output."""

    prim: Primitive
    inputs: tuple[Tensor, ...]
    attrs: dict
    out: Tensor  # the output's value, detached (no reference cycle back to the tensor)
    versions: tuple[int, ...] = ()  # the inputs' versions when recorded, to catch in-place edits

    num_outputs = 1

    def __post_init__(self) -> None:
        # where gradients go, as the inputs are now: a later in-place write rebinds an input
        # to a new node, which this one must not follow (it used the old value)
        self._edges = [_edge(t) for t in self.inputs]

    @classmethod
    def record(cls, prim: Primitive, inputs: tuple[Tensor, ...], attrs: dict, out: Tensor,
               versions: tuple[int, ...]) -> TapeNode:
        """`TapeNode(prim, inputs, attrs, out, versions)`, made without the dataclass's
        `__init__` and `__post_init__` calls (`dispatch.apply` records one per operation)."""
        node = _object_new(cls)
        node.prim = prim
        node.inputs = inputs
        node.attrs = attrs
        node.out = out
        node.versions = versions
        node._edges = [None if not t.requires_grad else ("leaf", t) if t._node is None
                       else ("node", t._node, 0, t) for t in inputs]  # `_edge`'s, inlined
        return node

    @property
    def name(self) -> str:
        return f"{self.prim.name}_backward"

    def edges(self) -> list[tuple | None]:
        return self._edges

    def run(self, grads: list[Tensor | None], builder: Any) -> list[Tensor | None]:
        g = grads[0]
        if self.prim.name not in SHAPE_ONLY:
            _check_versions(self)
        out = self.out
        if state.is_grad_enabled():
            # create_graph: the output a rule reads (exp's, div's) must be differentiable too,
            # or the second derivative misses its term; the saved one is detached
            out = builder.apply(self.prim.name, *self.inputs, **self.attrs)
        return [self.prim.vjp(builder, g, out, self.inputs, self.attrs, i)
                if t.requires_grad else None for i, t in enumerate(self.inputs)]


class FunctionNode:
    """A node with many inputs and outputs and a backward of its own (a compiled call).

    Each output tensor gets an `OutputNode` pointing here, so every tensor still has exactly
    one producing node; `backward_fn` receives one cotangent per output (None where an output
    got no gradient) and returns one gradient per input (None where there is none).
    """

    def __init__(self, name: str, inputs: tuple[Tensor, ...], num_outputs: int,
                 backward_fn: Callable[[list[Tensor | None]], list[Tensor | None]],
                 checked: tuple[bool, ...] | None = None) -> None:
        self.name = name
        self.inputs = inputs
        self.num_outputs = num_outputs
        self.backward_fn = backward_fn
        # `checked`: per input, whether the backward reads it (so a later in-place write
        # must be refused); None where it does not (`_check_versions` skips it)
        self.versions = tuple(version_of(t) if checked is None or checked[i] else None
                              for i, t in enumerate(inputs))
        self._edges = [_edge(t) for t in inputs]  # as the inputs are now (see TapeNode)

    def edges(self) -> list[tuple | None]:
        return self._edges

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
        if v is not None and version_of(t) != v:
            raise RuntimeError(f"backward: a tensor of shape {tuple(t.shape)} used by "
                               f"{node.name} was modified in place after it was used; "
                               "its gradient would be wrong. Use an out-of-place operation "
                               "(or .clone() before modifying)")


def zero_grads(params: Iterable[Tensor], set_to_none: bool = True) -> None:
    """Reset the gradients of `params`: to None, or to zeros in place (detached first).

    Inside a trace (a compiled training step) the gradients are assigned anew after every
    call: None, or zeros where a gradient exists (whether one does is guarded), so that an
    optimizer still steps a parameter the backward does not reach (a frozen one, with weight
    decay or momentum), as eagerly.
    """
    traced = state.is_tracing()
    for p in params:
        if traced:
            state.current_trace().reset_grad(p, set_to_none)
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



_GRAD: list[Callable[..., tuple]] = []  # the engine's grad(), registered by neurenix.backward


def register_grad(fn: Callable[..., tuple]) -> None:
    """Install the function `grad` delegates to (`neurenix.backward` does, on import)."""
    _GRAD[:] = [fn]


def grad(outputs: Tensor | Sequence[Tensor], inputs: Tensor | Sequence[Tensor],
         grad_outputs: Tensor | Sequence[Tensor | None] | None = None,
         retain_graph: bool | None = None, create_graph: bool = False,
         allow_unused: bool | None = None, materialize_grads: bool = False
         ) -> tuple[Tensor | None, ...]:
    """The sums of gradients of `outputs` with respect to `inputs`, as `torch.autograd.grad`.

    Nothing is accumulated into any `.grad`. `grad_outputs` are the cotangents of the outputs
    (None for a one-element output: ones). With `create_graph` the gradients are themselves
    differentiable (higher-order derivatives). An input the outputs do not depend on raises
    unless `allow_unused` (None) or `materialize_grads` (zeros). `retain_graph` is accepted for
    PyTorch compatibility: the tape is never freed, so a graph can always be walked again.
    Eager only: inside `neurenix.compile`, call `backward()` and read `.grad`.
    """
    return _GRAD[0](outputs, inputs, grad_outputs, retain_graph, create_graph, allow_unused,
                    materialize_grads)


class FunctionCtx:
    """What `Function.forward` hands to `Function.backward`: saved tensors and flags."""

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self.materialize_grads = True
        self._saved: tuple[Any, ...] = ()
        self._saved_versions: tuple[int | None, ...] = ()
        self._non_differentiable: set[int] = set()

    def save_for_backward(self, *tensors: Tensor | None) -> None:
        """Keep tensors (inputs or outputs) for backward, read back as `saved_tensors`."""
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_backward: expected Tensors or None, got "
                                f"{type(t).__name__}; keep other values as ctx attributes")
        self._saved = tensors
        self._saved_versions = tuple(None if t is None else version_of(t) for t in tensors)

    @property
    def saved_tensors(self) -> tuple[Tensor | None, ...]:
        """The tensors given to `save_for_backward`; refused if one was modified in place."""
        for i, (t, v) in enumerate(zip(self._saved, self._saved_versions)):
            if t is not None and version_of(t) != v:
                raise RuntimeError(f"saved_tensors: saved tensor {i} of shape "
                                   f"{tuple(t.shape)} was modified in place after it was "
                                   "saved; its gradient would be wrong")
        return tuple(self._saved)

    def mark_non_differentiable(self, *outputs: Tensor) -> None:
        """Outputs that get no gradient (indices, masks): they do not require grad."""
        self._non_differentiable.update(id(t) for t in outputs)

    def set_materialize_grads(self, value: bool) -> None:
        """Whether backward receives zeros (True, the default) or None for outputs that got
        no gradient."""
        self.materialize_grads = bool(value)


class Function:
    """A differentiable operation with a hand-written backward, as `torch.autograd.Function`.

    Subclasses define `forward(ctx, *args)` and `backward(ctx, *grad_outputs)` as static
    methods and are called through `apply(*args)`. forward runs without recording (under
    `no_grad`); backward receives one gradient per output of forward and returns one per
    argument of forward (None for non-tensor arguments and tensors that need none).
    Inside `neurenix.compile` a Function runs its forward when no gradient is needed; a
    Function that takes part in autograd there raises a `TraceError`, because the compiled
    program's backward would come from forward's operations, not from `backward`.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, *args: Any, **kwargs: Any) -> Any:
        """Compute the outputs from the inputs; save what backward needs on ctx."""
        raise NotImplementedError("a Function subclass must define forward(ctx, ...)")

    @staticmethod
    def backward(ctx: FunctionCtx, *grad_outputs: Any) -> Any:
        """Gradients with respect to forward's arguments, given those of its outputs."""
        raise NotImplementedError("a Function subclass must define backward(ctx, ...) to be "
                                  "differentiated")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{type(self).__name__}: a Function is not instantiated; call "
                           f"{type(self).__name__}.apply(...)")

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        """Run forward on the arguments, recording backward for autograd when an argument
        requires grad and grad mode is on."""
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        record = state.is_grad_enabled() and any(needs)
        trace = state.current_trace()
        if trace is not None and state.is_grad_enabled() and any(
                isinstance(a, Tensor) and a._value is not None
                and trace.differentiable(a._value) for a in args):
            record = True
        if record and trace is not None:
            raise TraceError(f"{cls.__name__}.apply at {user_source()} inside a compiled "
                             "function: a custom autograd.Function's backward cannot be "
                             "traced; call it outside neurenix.compile, under no_grad(), or "
                             "write it with tensor operations (a plain function) so the "
                             "compiler differentiates it")
        ctx = FunctionCtx(needs)
        with state.no_grad():
            result = cls.forward(ctx, *args, **kwargs)
        if not record:
            return result
        single = not isinstance(result, tuple)
        outs = (result,) if single else result
        positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        inputs = tuple(args[i] for i in positions)
        wrapped = []
        for o in outs:
            if isinstance(o, Tensor) and any(o is t for t in inputs):
                o = Tensor._wrap(o._data, o._dtype, o._device)  # a fresh output, not the input
            wrapped.append(o)
        tensors = [(k, o) for k, o in enumerate(wrapped) if isinstance(o, Tensor)]
        name = f"{cls.__name__}Backward"

        def backward_fn(grads: list[Tensor | None]) -> list[Tensor | None]:
            full: list[Any] = [None] * len(wrapped)
            for (k, o), g in zip(tensors, grads):
                if g is None and ctx.materialize_grads:
                    g = Tensor._wrap(move_storage(np.zeros(tuple(o.shape), o.dtype.np_type),
                                                  o._device), o._dtype, o._device)
                full[k] = g
            got = cls.backward(ctx, *full)
            got = got if isinstance(got, tuple) else (got,)
            if len(got) < len(args) or any(g is not None for g in got[len(args):]):
                raise RuntimeError(f"{cls.__name__}.backward returned {len(got)} gradients; "
                                   f"forward took {len(args)} arguments (return one per "
                                   "argument, None for those without a gradient)")
            out: list[Tensor | None] = []
            for i in positions:
                g, t = got[i], args[i]
                if g is None or not t.requires_grad:
                    out.append(None)
                    continue
                if not isinstance(g, Tensor):
                    raise TypeError(f"{cls.__name__}.backward: the gradient of argument {i} is "
                                    f"a {type(g).__name__}, not a Tensor")
                if tuple(g.shape) != tuple(t.shape):
                    raise RuntimeError(f"{cls.__name__}.backward: the gradient of argument {i} "
                                       f"has shape {tuple(g.shape)}, the argument "
                                       f"{tuple(t.shape)}")
                out.append(g)
            return out

        node = FunctionNode(name, inputs, len(tensors), backward_fn)
        for slot, (k, o) in enumerate(tensors):
            if id(outs[k]) in ctx._non_differentiable:
                continue
            o.requires_grad = True
            o._node = OutputNode(node, slot)
        return wrapped[0] if single else tuple(wrapped)
