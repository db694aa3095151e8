"""Run a layer as one eager kernel: its NumPy outputs as tensors, one autograd node for them."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from neurenix.compiler.types import float32, float64

from .. import autograd, state, view_writes
from ..backends import eager_kernels_enabled
from ..backward import mark_fresh
from ..dispatch import apply, wrap
from ..tensor import Tensor

Arrays = list[np.ndarray | None]


def eligible(*tensors: Tensor | None) -> bool:
    """Whether a layer over these tensors (None: an absent optional one) may run as an eager
    kernel: `neurenix.backends.eager_kernels` on, outside a trace, every tensor a host array
    of one dtype, float32 or float64 (kernels read them through `np.asarray`)."""
    if not eager_kernels_enabled() or state.read_trace() is not None:
        return False
    dtype = None
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t._data, np.ndarray) or t._value is not None:  # host constants too
            return False
        if dtype is None:
            dtype = t._dtype
            if dtype is not float32 and dtype is not float64:
                return False
        elif t._dtype is not dtype:
            return False
    return True


NOT_BIAS = (True, True, False)
"""`record`'s `reads` for a layer of (input, weight, bias) whose backward never reads the
bias (its gradient is a sum of the output's): the bias may change in place before backward."""


def wanted(*tensors: Tensor | None) -> list[bool]:
    """Which inputs a backward may be asked a gradient for (none outside grad mode), so the
    forward keeps only what those need."""
    on = state.is_grad_enabled()
    return [on and t is not None and t.requires_grad for t in tensors]


def record(name: str, inputs: Sequence[Tensor | None], outputs: Sequence[np.ndarray],
           backward: Callable[[Arrays], Arrays],
           composite: Callable[..., Sequence[Tensor]],
           reads: Sequence[bool] | None = None) -> tuple[Tensor, ...]:
    """The kernel's `outputs` as tensors, recorded for autograd as one node when grad mode is
    on and an input requires grad.

    `backward(output_grads)` gets one array (None: no gradient) per output and returns one
    array (or None) per input, arrays nothing else holds (a leaf adopts them as `.grad`);
    `composite(*inputs)` is the same layer as primitives (its outputs, or its one output as a
    tensor), run again when the backward itself must be differentiable.  `reads`: per input,
    whether `backward` reads its values (default: all do); an input it does not read may be
    written in place before the backward without error, as in the composition.
    """
    dtype = next(t._dtype for t in inputs if t is not None)
    outs = tuple(wrap(np.asarray(o), dtype) for o in outputs)
    present = [t for t in inputs if t is not None]
    if not state.is_grad_enabled() or not any(t.requires_grad for t in present):
        return outs
    for t in present:
        if t._view is not None:
            view_writes.refresh(t, apply)
    positions = [i for i, t in enumerate(inputs) if t is not None]

    def backward_fn(grads: list[Tensor | None]) -> list[Tensor | None]:
        if state.is_grad_enabled():  # create_graph: differentiate the primitives instead
            return _differentiable(inputs, positions, composite, grads)
        with np.errstate(all="ignore"):  # inf and nan as the primitives give them, silently
            got = backward([None if g is None else g._host() for g in grads])
        result: list[Tensor | None] = []
        given: list[np.ndarray] = []
        for i in positions:
            g, t = got[i], inputs[i]
            if g is None or not t.requires_grad:
                result.append(None)
                continue
            g = np.asarray(g, t._dtype.np_type)
            if not g.flags.c_contiguous:  # (np.ascontiguousarray would make 0-d arrays 1-d)
                g = g.copy()
            if any(np.may_share_memory(g, other) for other in given):
                g = g.copy()  # each gradient its own storage: a leaf may adopt it
            given.append(g)
            result.append(mark_fresh(wrap(g, t._dtype)))
        return result

    checked = None if reads is None else \
        tuple(r for r, t in zip(reads, inputs) if t is not None)
    node = autograd.FunctionNode(f"{name}Backward", tuple(present), len(outs), backward_fn,
                                 checked)
    for slot, o in enumerate(outs):
        o.requires_grad = True
        o._node = autograd.OutputNode(node, slot)
    return outs


def _differentiable(inputs: Sequence[Tensor | None], positions: list[int],
                    composite: Callable[..., Sequence[Tensor]],
                    grads: list[Tensor | None]) -> list[Tensor | None]:
    """The input gradients as differentiable tensors: the primitive composition, run again on
    the inputs and differentiated with create_graph."""
    wanted = [inputs[i] for i in positions if inputs[i].requires_grad]
    made = composite(*inputs)
    outs = [made] if isinstance(made, Tensor) else list(made)  # one output may come bare
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    found = autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                          create_graph=True, allow_unused=True) if pairs else [None] * len(wanted)
    by_id = {id(t): g for t, g in zip(wanted, found)}
    return [by_id.get(id(inputs[i])) for i in positions]
