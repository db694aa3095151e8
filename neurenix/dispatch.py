"""The one dispatch function every tensor operation goes through.

`apply(op, *tensors, **attrs)` checks the op's type rule, runs it on the tensors' device (on the
CPU: the registry's NumPy reference), wraps the result and, under grad mode, records it on the
autograd tape.  While a trace is active (`neurenix.compile`), the trace `neurenix.state` holds
gets the operation instead (`trace.process_primitive`, JAX's `bind`) and appends a graph node.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from neurenix.compiler.graph.builder import Builder
from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.ops.registry import non_differentiable
from neurenix.compiler.types import DType, TensorType

from .autograd import TapeNode
from .state import current_trace, is_grad_enabled
from .tensor import Tensor


def apply(op: str, *inputs: Tensor, **attrs: Any) -> Tensor:
    """Apply primitive `op` to tensors eagerly, recording it for autograd when needed."""
    prim = REGISTRY[op]
    trace = current_trace()
    if trace is not None:
        return trace.process_primitive(op, inputs, attrs)
    # the storage itself on the CPU; a device buffer's host values elsewhere
    arrays = [t._data if type(t._data) is np.ndarray else t._host() for t in inputs]
    out_type = prim.infer(tuple(TensorType(a.shape, t._dtype) for a, t in zip(arrays, inputs)),
                          attrs)
    with np.errstate(all="ignore"):
        out = prim.impl(*arrays, **attrs)
    want = out_type.dtype.np_type
    if not isinstance(out, np.ndarray) or out.dtype != want:
        out = np.asarray(out, dtype=want)
    result = Tensor._wrap(out, out_type.dtype)
    if is_grad_enabled() and out_type.dtype.is_floating and prim.vjp is not None \
            and prim.vjp is not non_differentiable:
        for t in inputs:
            if t.requires_grad:
                result.requires_grad = True
                result._node = TapeNode(prim, inputs, attrs,
                                        Tensor._wrap(out, out_type.dtype),
                                        tuple(t._version for t in inputs))
                break
    return result


class EagerBuilder(Builder):
    """The builder VJP rules and compositions use on concrete tensors."""

    def apply(self, op: str, *inputs: Tensor, **attrs: Any) -> Tensor:
        return apply(op, *inputs, **attrs)

    def type_of(self, value: Tensor) -> TensorType:
        return TensorType(value.shape, value._dtype)


EAGER = EagerBuilder()


def ones_array(shape: tuple[int, ...], dtype: DType) -> np.ndarray:
    """The seed gradient of a backward: ones of the root's shape and dtype."""
    return np.ones(shape, dtype=dtype.np_type)
