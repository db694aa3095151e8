"""Small strided window reductions (max or average pooling): the deinterleaving schedule.

A small max/min/sum of one plain float load whose index steps by 2 to `MAX_STRIDE` along the
last domain axis would vectorise into gathers; on a target with masked vector loads each
chunk of one vector of outputs loads contiguous elements instead and picks every tap's
elements apart (codegen: llvm_window.py).
"""
from __future__ import annotations

import itertools

from ..kernel.ir import Kernel, Load
from ..targets import Capabilities
from .ranges import range_axes, worth_splitting
from .reduction import is_small
from .sizes import is_static, static_affine
from .types import Window

MAX_STRIDE = 4  # wider strides waste most of each loaded vector
OPS = ("max", "min", "sum")


def window_rule(kernel: Kernel, caps: Capabilities) -> Window | None:
    """The window schedule when `kernel` is a small max/min/sum of one plain strided load."""
    load = kernel.reduce_value
    if (not caps.masked_loads or kernel.reduce_op not in OPS or len(kernel.domain) < 2
            or not is_small(kernel) or not isinstance(load, Load) or load.mask is not None
            or not load.dtype.is_floating or any(s.accumulate for s in kernel.stores)
            or not is_static(kernel.domain[-1])):
        return None
    coeffs = static_affine(load.index)
    nd = len(kernel.domain)
    if coeffs is None or not 2 <= coeffs.get(nd - 1, 0) <= MAX_STRIDE:
        return None
    offsets = tuple(sum(coeffs.get(nd + j, 0) * r for j, r in enumerate(point))
                    for point in itertools.product(*(range(n) for n in kernel.reduce)))
    if min(offsets) < 0:
        return None
    ranged, count = range_axes(kernel.domain)
    return Window(count=count, threaded=worth_splitting(kernel, caps), ranged=ranged,
                  stride=coeffs[nd - 1], offsets=offsets,
                  lanes=max(4, caps.vector_bits // (8 * load.dtype.itemsize)))
