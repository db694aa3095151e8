"""`x[mask] = value` with a traced bool mask, as a select: `x = where(mask, value, x)`.

Assigning one value (or a row broadcast over the mask's trailing dimensions) through a bool
mask changes no shape, so inside `neurenix.compile` it needs no values: the mask is broadcast
over x's remaining dimensions and x is rebound to the select.  `indexing.setitem` hands such
assignments here; eagerly the ordinary scatter runs (the same values).
"""
from __future__ import annotations

from typing import Any

from neurenix.compiler.trace import TraceError
from neurenix.compiler.types import bool_

from .call_site import user_source
from .elementwise import as_tensor, where
from .shapes import reshape
from .state import current_trace
from .tensor import Tensor


def masked_assign(x: Tensor, index: Any, value: Any) -> bool:
    """Do `x[index] = value` as a select when index is a traced bool mask inside a trace;
    False (nothing done) for every other assignment."""
    trace = current_trace()
    if trace is None or not isinstance(index, Tensor) or index.dtype != bool_ \
            or index._data is not None or index.ndim == 0:
        return False
    shape, mask_shape = tuple(x.shape), tuple(index.shape)
    if mask_shape != shape[:len(mask_shape)]:
        raise IndexError(f"the shape of the bool mask {mask_shape} does not match the shape "
                         f"{shape[:len(mask_shape)]} of the indexed tensor's leading "
                         "dimensions")
    rest = shape[len(mask_shape):]
    v = as_tensor(value if isinstance(value, Tensor) else Tensor(value), x.dtype)
    v_shape = tuple(v.shape)
    if len(v_shape) > len(rest) or any(a not in (1, b) for a, b in
                                       zip(reversed(v_shape), reversed(rest))):
        raise TraceError(f"x[mask] = value at {user_source()} inside a compiled function: a "
                         f"value of shape {v_shape} must broadcast to {rest or '()'} (one "
                         "value for every selected element), since how many elements the "
                         "traced mask selects is known only when it runs")
    mask = reshape(index, mask_shape + (1,) * len(rest))
    x._version += 1
    trace.write(x, where(mask, v, trace.value_of(x)))
    return True
