"""The builder interface VJP rules and layer compositions are written against.

`Builder.apply(op, *inputs, **attrs)` is the only abstract operation; every registered primitive
is also reachable as a method (`b.mul(x, y)`, `b.reduce_sum(x, axes=(0,))`).  The frontend's
eager builder applies ops to tensors; `GraphBuilder` (in `compiler.graph.graph_builder`)
appends nodes.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from ..ops import REGISTRY
from ..types import TensorType, same_shape


class Builder:
    """Base of the eager and symbolic builders: primitives as methods, plus shape helpers."""

    def apply(self, op: str, *inputs: Any, **attrs: Any) -> Any:
        raise NotImplementedError

    def type_of(self, value: Any) -> TensorType:
        raise NotImplementedError

    def __getattr__(self, name: str):
        if name in REGISTRY:
            return partial(self.apply, name)
        raise AttributeError(f"{type(self).__name__} has no primitive or helper {name!r}")

    def transposed_layout(self, value: Any) -> bool:
        """Whether `value` is stored as a transposed matrix (column-major), so a gradient for
        it is best computed transposed and swapped back (PyTorch's mm backward does the
        same): only eager arrays have a layout; graph values have none."""
        return False

    def full_like(self, value: Any, fill: float) -> Any:
        t = self.type_of(value)
        return self.apply("full", shape=t.shape, value=fill, dtype=t.dtype.name)

    def zeros_like(self, value: Any) -> Any:
        return self.full_like(value, 0)

    def broadcast_to(self, value: Any, shape: tuple[int, ...]) -> Any:
        """NumPy-style broadcast: add leading axes, then grow size-1 axes."""
        src = self.type_of(value).shape
        shape = tuple(shape)
        if same_shape(src, shape):
            return value
        if len(src) < len(shape):
            value = self.apply("reshape", value, shape=(1,) * (len(shape) - len(src)) + src)
        return self.apply("expand", value, shape=shape)

    def sum_to(self, value: Any, shape: tuple[int, ...]) -> Any:
        """Sum a broadcast result back down to `shape` (the transpose of broadcast_to)."""
        src = self.type_of(value).shape
        shape = tuple(shape)
        if same_shape(src, shape):
            return value
        lead = len(src) - len(shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, d in enumerate(shape) if d == 1 and src[lead + i] != 1)
        if axes:
            value = self.apply("reduce_sum", value, axes=axes)
        return self.apply("reshape", value, shape=shape)
