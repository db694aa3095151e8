"""The generic loop nest: how its innermost loop is vectorised, and the fallback.

The innermost domain loop of a kernel without accumulating stores is forced to vectorise
when it is plain (no nested reduction loop: none, or a short one unrolled at each point) and
runs at least `MIN_FORCED_TRIP` times; a short row of `MIN_MASKED_TRIP` up to a few vectors
that no vector divides (14 or 28 wide) is also tail-folded — one masked vector iteration for
the remainder — where the target has masked vector loads.  Longer reductions are left to the
code generator's cost model.  Anything else (a scatter) gets the same nest with nothing forced.
"""
from __future__ import annotations

from ..kernel.ir import Kernel
from ..targets import Capabilities
from .ranges import range_axes, worth_splitting
from .reduction import is_small
from .sizes import hint
from .types import Elementwise, Fallback

MIN_FORCED_TRIP = 16  # shorter inner loops are left to the cost model (often fully unrolled)
MIN_MASKED_TRIP = 8  # inner loops from here up to a few vectors long run tail-masked


def elementwise_rule(kernel: Kernel, caps: Capabilities) -> Elementwise | None:
    """The loop nest of a kernel without accumulating stores."""
    if any(s.accumulate for s in kernel.stores):
        return None
    domain = kernel.domain
    ranged, count = range_axes(domain)
    unroll = is_small(kernel)
    plain = caps.vector_bits > 0 and (kernel.reduce_value is None or unroll)
    fold = False
    if len(domain) <= 1:  # a short flat loop is left to the cost model, as a short row is
        vectorize = plain and bool(domain) and hint(domain[0]) >= MIN_FORCED_TRIP
    else:
        n, lanes = hint(domain[-1]), caps.vector_bits // 32
        fold = (caps.masked_loads and lanes > 0 and MIN_MASKED_TRIP <= n < 4 * lanes
                and n % lanes != 0 and isinstance(domain[-1], int))
        vectorize = plain and (n >= MIN_FORCED_TRIP or fold)
    return Elementwise(count=count, threaded=worth_splitting(kernel, caps), ranged=ranged,
                       vector_bits=caps.vector_bits, vectorize=vectorize,
                       fold_tail=fold and vectorize, unroll=unroll)


def fallback_rule(kernel: Kernel, caps: Capabilities) -> Fallback:
    """The loop nest with nothing forced; applies to every kernel."""
    ranged, count = range_axes(kernel.domain)
    return Fallback(count=count, threaded=worth_splitting(kernel, caps), ranged=ranged,
                    unroll=is_small(kernel))
