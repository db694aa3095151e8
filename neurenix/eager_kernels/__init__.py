"""Eager kernels: whole layers (recurrent layers, convolution, pooling) run as a few NumPy calls
with a hand-written backward, instead of hundreds of dispatched primitives.

The primitives stay the semantics: a kernel computes the same operations in the same order on
the same arrays, records one autograd node for the layer, and its backward is the primitives'
VJPs composed by hand.  A backward that must itself be differentiable (`create_graph=True`)
runs the layer's primitive composition again and differentiates that, so higher-order
gradients are the primitives'.  Inside `neurenix.compile`, on a device, for dtypes other than
float32/float64, or with `neurenix.backends.eager_kernels = False`, layers run as primitives.
See docs/architecture.md, "Eager kernels".
"""
from __future__ import annotations

from .record import eligible, record

__all__ = ["eligible", "record"]
