"""The trace's side of value checks (`neurenix.checks`): errors that depend on tensor values.

A trace cannot read values, so `record` makes the values a check needs extra outputs of the
compiled program; after every call `run` gives the same test what the program computed, before
any state (parameters, buffers, gradients) is written back, so a compiled call raises eager's
error with eager's message and leaves the model as eager would.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..checks import RangeTest
from ..state import no_grad
from ..tensor import Tensor

if TYPE_CHECKING:
    from .tracing import TraceState


def record(state: TraceState, values: tuple[Tensor, ...], test: Callable[..., None]) -> None:
    """Make `values` outputs of the traced program, to be given to `test` after every call."""
    with no_grad():
        nodes = [state.node_of(v.detach()) for v in values]
    state.checks.append((nodes, test))


def run(checks: Sequence[tuple[int, Callable[..., None]]], results: Sequence[np.ndarray],
        start: int) -> int:
    """Run each (count, test) on its `count` outputs of `results` from `start` on (raising
    eager's error); the index after the last one read."""
    n = start
    for count, test in checks:
        test(*results[n:n + count])
        n += count
    return n


def guard_updates(state: TraceState, out_nodes: list, cpu: bool) -> bool:
    """Make every in-place update of the trace keep the old value when a value check fails
    (`where(failed, old, new)`, the checks' range tests computed in the graph), so that the
    program may write the updates into the tensors' own memory (`memory.donations`): a
    failing call then writes back what was there, and raises eager's error as before.  Only
    for a CPU program without a backward of its own, whose checks are all range tests;
    whether it did so."""
    if not cpu or not state.checks or not state.tracer.updates:
        return False
    if not state.backward_called and any(state.differentiable(n) for n in out_nodes):
        return False
    if not all(isinstance(test, RangeTest) and len(nodes) == 2 for nodes, test in state.checks):
        return False
    b = state.tracer.builder
    failed = None
    for (lo, hi), test in state.checks:
        dtype = lo.type.dtype
        if not dtype.is_floating and not all(isinstance(v, int) for v in (test.low, test.high)):
            return False

        def bound(value: float, dtype=dtype):
            return b.full(shape=(), value=value, dtype=dtype.name)

        fails = b.logical_or(b.lt(lo, bound(test.low)), b.gt(hi, bound(test.high)))
        if not test.high_inclusive:
            fails = b.logical_or(fails, b.eq(hi, bound(test.high)))
        failed = fails if failed is None else b.logical_or(failed, fails)
    inputs = {n.name: n for n in b.inputs}
    for name, value in list(state.tracer.updates.items()):
        condition = b.broadcast_to(failed, value.type.shape)
        state.tracer.updates[name] = b.where(condition, inputs[name], value)
    return True
