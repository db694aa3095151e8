"""A kernel's range: which leading axes form it, whether it is worth splitting over threads,
and which full reductions are split in parts instead (a range of one point has nothing else
to split)."""
from __future__ import annotations

import math

from ..kernel.ir import Kernel
from ..targets import Capabilities

PARALLEL_MIN_WORK = 1 << 17  # element operations from which a kernel is split over threads
MIN_RANGE = 256  # outer axes flattened into a kernel's range: enough chunks for any pool


def range_axes(domain: tuple[int, ...]) -> tuple[int, int]:
    """How many leading axes of a loop nest's domain form its range, and the range's size:
    as few as give at least `MIN_RANGE` points, at most all but the innermost (the other outer
    axes are counted loops inside); a 1-D domain's axis itself; nothing for no domain."""
    if len(domain) <= 1:
        return len(domain), math.prod(domain)
    last = len(domain) - 1
    ranged = next((p for p in range(1, last) if math.prod(domain[:p]) >= MIN_RANGE), last)
    return ranged, math.prod(domain[:ranged])


def worth_splitting(kernel: Kernel, caps: Capabilities) -> bool:
    """Whether the target has threads, the kernel is safe to split across them (marked
    parallel, no accumulating store) and big enough to gain from it."""
    if caps.threads == "none" or not kernel.parallel:
        return False
    if any(s.accumulate for s in kernel.stores):
        return False
    return math.prod(kernel.domain + kernel.reduce) >= PARALLEL_MIN_WORK


def splits_reduction(kernel: Kernel, caps: Capabilities) -> bool:
    """Whether a kernel is a full reduction (no domain axes) big enough to split across the
    target's threads in parts."""
    if caps.threads == "none" or kernel.domain or kernel.reduce_value is None:
        return False
    return kernel.parallel and math.prod(kernel.reduce) >= PARALLEL_MIN_WORK
