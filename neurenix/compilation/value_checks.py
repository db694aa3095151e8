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
