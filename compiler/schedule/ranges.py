"""A kernel's range: which leading axes form it, whether it is worth splitting over threads,
and which full reductions are split in parts instead (a range of one point has nothing else
to split).  Dynamic sizes decide by their hints (schedule/sizes.py); a range's size stays
symbolic."""
from __future__ import annotations

import math

from ..kernel.ir import Kernel
from ..targets import Capabilities
from .sizes import hint, hints, is_static

PARALLEL_MIN_WORK = 1 << 17  # element operations from which a kernel is split over threads
MIN_RANGE = 256  # outer axes flattened into a kernel's range: enough chunks for any pool


def range_axes(domain: tuple) -> tuple[int, object]:
    """How many leading axes of a loop nest's domain form its range, and the range's size:
    as few as give at least `MIN_RANGE` points, at most all but the innermost (the other outer
    axes are counted loops inside); a 1-D domain's axis itself; nothing for no domain.
    Dynamic extents count at their hints; the range's size is then a polynomial."""
    if len(domain) <= 1:
        return len(domain), math.prod(domain)
    last = len(domain) - 1
    sizes = hints(domain)
    ranged = next((p for p in range(1, last) if math.prod(sizes[:p]) >= MIN_RANGE), last)
    return ranged, math.prod(domain[:ranged])


def worth_splitting(kernel: Kernel, caps: Capabilities, least: int = 1,
                    most: float = math.inf) -> bool:
    """Whether the target has threads, the kernel is safe to split across them (marked
    parallel, no accumulating store) and big enough to gain from it (dynamic extents at their
    hints, kept within [`least`, `most`]: a variant run only for such sizes)."""
    if caps.threads == "none" or not kernel.parallel:
        return False
    if any(s.accumulate for s in kernel.stores):
        return False
    sizes = [n if is_static(n) else min(max(hint(n), least), most)
             for n in kernel.domain + kernel.reduce]
    return math.prod(sizes) >= PARALLEL_MIN_WORK


def splits_reduction(kernel: Kernel, caps: Capabilities) -> bool:
    """Whether a kernel is a full reduction (no domain axes) big enough to split across the
    target's threads in parts."""
    if caps.threads == "none" or kernel.domain or kernel.reduce_value is None:
        return False
    return kernel.parallel and math.prod(hints(kernel.reduce)) >= PARALLEL_MIN_WORK
