"""Argument parsing shared by the convolution and pooling functions."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...tensor import Tensor

_LAYOUTS = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def ntuple(value: Any, n: int, what: str, name: str, minimum: int = 1) -> tuple[int, ...]:
    """An int or a sequence of n ints as an n-tuple, each at least `minimum`."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = (int(value),) * n
    elif isinstance(value, (tuple, list)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        values = tuple(int(v) for v in value)
        if len(values) == 1 and n > 1:
            values = values * n
        if len(values) != n:
            raise ValueError(f"{name}: {what} must be an int or a tuple of {n} ints, got "
                             f"{tuple(value)}")
    else:
        raise TypeError(f"{name}: {what} must be an int or a tuple of {n} ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name}: {what} must be >= {minimum}, got {values}")
    return values


def batched(x: Any, dims: int, name: str) -> tuple[Tensor, bool]:
    """x with a batch axis (added for an unbatched input) and whether one was added.

    A layer over `dims` spatial axes takes (N, C, *spatial) or unbatched (C, *spatial).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor input, got {type(x).__name__}")
    if x.ndim == dims + 2:
        return x, False
    if x.ndim == dims + 1:
        return x.reshape((1,) + tuple(x.shape)), True
    layout = _LAYOUTS.get(dims, f"(N, C, {dims} spatial dims)")
    raise ValueError(f"{name}: expected {dims + 2}-D input {layout} or {dims + 1}-D unbatched, "
                     f"got shape {tuple(x.shape)}")


def unbatched(out: Tensor, was_unbatched: bool) -> Tensor:
    """Drop the batch axis `batched` added."""
    return out.reshape(tuple(out.shape[1:])) if was_unbatched else out
