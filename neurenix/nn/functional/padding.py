"""`pad`: constant, reflect, replicate and circular padding with PyTorch's pad tuple.

The pad tuple lists (before, after) widths starting from the last dimension, as in PyTorch:
`pad(x, (1, 2))` pads the last axis, `pad(x, (1, 1, 2, 2))` the last two. Constant padding is
one `pad` primitive (negative widths crop with `slice` first); the other modes are `slice`s
joined by `concat`, so every mode traces into a graph without a primitive of its own.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...dispatch import apply
from ...shapes import broadcast_to, cat, narrow
from ...tensor import Tensor

MODES = ("constant", "reflect", "replicate", "circular")


def pad(input: Tensor, pad: Sequence[int], mode: str = "constant",
        value: float | None = None) -> Tensor:
    """Pad (or, with negative widths in constant mode, crop) the trailing dimensions."""
    if not isinstance(input, Tensor):
        raise TypeError(f"pad: expected a Tensor input, got {type(input).__name__}")
    widths = _parse(input, pad)
    lo = [0] * input.ndim
    hi = [0] * input.ndim
    for i, (before, after) in enumerate(widths):
        lo[input.ndim - 1 - i] = before
        hi[input.ndim - 1 - i] = after
    return pad_axes(input, lo, hi, mode, 0.0 if value is None else value, "pad")


def _parse(x: Tensor, pad: Sequence[int]) -> list[tuple[int, int]]:
    if not isinstance(pad, (tuple, list)) or not all(
            isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in pad):
        raise TypeError(f"pad: expected a tuple of ints, got {pad!r}")
    if len(pad) % 2:
        raise ValueError(f"pad: the pad tuple must have an even length (before, after per "
                         f"dimension), got {len(pad)} entries {tuple(pad)}")
    if len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: {tuple(pad)} pads {len(pad) // 2} dimensions but the input has "
                         f"shape {tuple(x.shape)}")
    return [(int(pad[2 * i]), int(pad[2 * i + 1])) for i in range(len(pad) // 2)]


def pad_axes(x: Tensor, lo: Sequence[int], hi: Sequence[int], mode: str, value: float,
             name: str) -> Tensor:
    """Pad axis i of x by lo[i] before and hi[i] after (one entry per axis)."""
    if mode not in MODES:
        raise ValueError(f"{name}: padding mode must be one of {', '.join(MODES)}, "
                         f"got {mode!r}")
    if mode == "constant":
        return _constant(x, lo, hi, value, name)
    if value not in (None, 0, 0.0):
        raise ValueError(f"{name}: a padding value is only used in constant mode, got "
                         f"value={value} with mode {mode!r}")
    out = x
    for axis, (before, after) in enumerate(zip(lo, hi)):
        if before or after:
            out = _edges(out, axis, before, after, mode, name)
    return out


def _constant(x: Tensor, lo: Sequence[int], hi: Sequence[int], value: float,
              name: str) -> Tensor:
    starts = tuple(max(-a, 0) for a in lo)
    stops = tuple(n - max(-b, 0) for n, b in zip(x.shape, hi))
    if any(stop < start for start, stop in zip(starts, stops)):
        raise ValueError(f"{name}: negative padding lo={tuple(lo)} hi={tuple(hi)} crops more "
                         f"than the input of shape {tuple(x.shape)} holds")
    if starts != (0,) * x.ndim or stops != tuple(x.shape):
        x = apply("slice", x, starts=starts, stops=stops, steps=(1,) * x.ndim)
    grow_lo = tuple(max(a, 0) for a in lo)
    grow_hi = tuple(max(b, 0) for b in hi)
    if not any(grow_lo) and not any(grow_hi):
        return x
    if x.dtype.is_floating:
        fill = float(value)
    elif x.dtype.is_integer:
        fill = int(value)
    else:
        fill = bool(value)
    return apply("pad", x, lo=grow_lo, hi=grow_hi, interior=(0,) * x.ndim, value=fill)


def _edges(x: Tensor, axis: int, before: int, after: int, mode: str, name: str) -> Tensor:
    """Grow one axis from x's own values: its mirror image, its edge, or its other end."""
    n = x.shape[axis]
    if before < 0 or after < 0:
        raise ValueError(f"{name}: {mode} padding needs non-negative widths, got "
                         f"({before}, {after}) for dimension {axis} of shape {tuple(x.shape)}")
    limit = {"reflect": n - 1, "circular": n, "replicate": None}[mode]
    if n == 0 or (limit is not None and max(before, after) > limit):
        raise ValueError(f"{name}: {mode} padding of ({before}, {after}) is too large for "
                         f"dimension {axis} of size {n} in shape {tuple(x.shape)}"
                         + (f" (at most {limit})" if limit is not None else ""))
    if mode == "circular":
        left = [narrow(x, axis, n - before, before)]
        right = [narrow(x, axis, 0, after)]
    elif mode == "replicate":
        left = [_repeat_edge(narrow(x, axis, 0, 1), axis, before)]
        right = [_repeat_edge(narrow(x, axis, n - 1, 1), axis, after)]
    else:
        # reflect: the mirror image excluding the edge, built from unit slices in reverse order
        left = [narrow(x, axis, i, 1) for i in range(before, 0, -1)]
        right = [narrow(x, axis, n - 1 - i, 1) for i in range(1, after + 1)]
    parts = [p for p in left + [x] + right if p.shape[axis] > 0]
    return cat(parts, axis)


def _repeat_edge(edge: Tensor, axis: int, times: int) -> Tensor:
    shape = tuple(times if i == axis else s for i, s in enumerate(edge.shape))
    return broadcast_to(edge, shape)
