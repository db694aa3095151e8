"""The one dispatch function every tensor operation goes through.

`apply(op, *tensors, **attrs)` checks the op's type rule, runs it on the tensors' device (on the
CPU: the registry's NumPy reference), wraps the result and, under grad mode, records it on the
autograd tape.  While a trace is active (`neurenix.compile`), it appends a graph node instead.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from neurenix.compiler.graph.builder import Builder
from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.ops.registry import non_differentiable
from neurenix.compiler.types import DType, TensorType

from . import autograd
from .tensor import Tensor


class _NoTrace:
    state = None


_ACTIVE = _NoTrace()  # replaced by neurenix.tracing.ACTIVE when tracing is imported


def apply(op: str, *inputs: Tensor, **attrs: Any) -> Tensor:
    """Apply primitive `op` to tensors eagerly, recording it for autograd when needed."""
    prim = REGISTRY[op]
    state = _ACTIVE.state
    if state is not None:
        from .tracing import apply_traced
        return apply_traced(state, op, inputs, attrs)
    out_type = prim.infer(tuple(TensorType(t._data.shape, t._dtype) for t in inputs), attrs)
    with np.errstate(all="ignore"):
        out = prim.impl(*(t._data for t in inputs), **attrs)
    want = out_type.dtype.np_type
    if not isinstance(out, np.ndarray) or out.dtype != want:
        out = np.asarray(out, dtype=want)
    result = Tensor._wrap(out, out_type.dtype)
    if autograd._MODE.enabled and out_type.dtype.is_floating and prim.vjp is not None \
            and prim.vjp is not non_differentiable:
        for t in inputs:
            if t.requires_grad:
                result.requires_grad = True
                result._node = autograd.TapeNode(prim, inputs, attrs,
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
    return np.ones(shape, dtype=dtype.np_type)
