"""Errors that depend on tensor values (an index out of range, an integer division by zero),
raised alike by eager and compiled code.

Eager code reads the values at once.  A trace cannot: it makes the values extra outputs of the
compiled program (`neurenix.compilation.value_checks`), and after every call the same `test`
runs on what the program computed, before any state (parameters, buffers, gradients) is
written back, so a compiled call raises eager's error with eager's message and leaves the
model as eager would.  The values are small summaries (a minimum and a maximum, a flag),
computed without gradients; generated code itself never reads out of bounds (loads are
masked), the check only decides what to raise.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from neurenix.compiler.symbolic import Dim, DynamicSizeError

from .state import current_trace, no_grad
from .tensor import Tensor


def check_values(values: tuple[Tensor, ...], test: Callable[..., None]) -> None:
    """Run `test(*arrays)` on the NumPy values of `values`: now when eager, after every call
    of the compiled program when traced.  `test` raises the error (or returns)."""
    trace = current_trace()
    if trace is None:
        test(*(v._host() for v in values))
        return
    trace.check_values(values, test)


class RangeTest:
    """The test of `check_range`: raise `error(v)` for the smallest value below `low` or the
    largest at or above `high` (above, with `high_inclusive`).  Also describes itself as data
    (`portable()`), so that an exported program can run the same check without Python."""

    def __init__(self, low: int | float, high: int | float,
                 error: Callable[[int | float], Exception], high_inclusive: bool) -> None:
        self.low, self.high, self.error = low, high, error
        self.high_inclusive = high_inclusive

    def __call__(self, lo: np.ndarray, hi: np.ndarray) -> None:
        lo, hi = lo.item(), hi.item()
        if lo < self.low:
            raise self.error(lo)
        if hi > self.high or (hi == self.high and not self.high_inclusive):
            raise self.error(hi)

    def portable(self) -> dict:
        """The check as an artifact's manifest states it (docs/deploy/README.md): bounds,
        the error's type and its message with "{}" where the offending value goes."""
        example = self.error("{}")
        message = str(example)
        if "{}" not in message:
            message += " (value {})"
        return {"kind": "range", "low": self.low, "high": self.high,
                "high_inclusive": self.high_inclusive, "error": type(example).__name__,
                "message": message}


def check_range(x: Tensor, low: int | float, high: int | float,
                error: Callable[[int | float], Exception], *,
                high_inclusive: bool = False) -> None:
    """Raise `error(v)` when an element of `x` lies outside [low, high) (or [low, high] with
    `high_inclusive`): `v` is the smallest element when it is below `low`, else the largest.
    An empty `x` passes; NaN never counts as outside (as NumPy's comparisons)."""
    if x.numel() == 0:
        return
    test = RangeTest(low, high, error, high_inclusive)
    if x._data is not None:  # eager: straight from the array, no tensor operations
        values = x._host()
        test(values.min(), values.max())
        return
    if isinstance(low, Dim) or isinstance(high, Dim):  # only while tracing
        raise DynamicSizeError(f"a value check against the dynamic size "
                               f"{high if isinstance(high, Dim) else low}")
    with no_grad():
        check_values((x.detach().amin(), x.detach().amax()), test)
