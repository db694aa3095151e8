"""`Flatten` (merge a range of dimensions), `Unflatten` (split one) and `Identity`
(pass-through placeholder)."""
from __future__ import annotations

import math
from typing import Any

from .. import shapes
from ..tensor import Tensor
from .module import Module


class Flatten(Module):
    """Merge dims start_dim..end_dim into one; the default keeps the batch dimension."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x: Tensor) -> Tensor:
        return shapes.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Split dimension dim into unflattened_size (a tuple of ints; one may be -1)."""

    def __init__(self, dim: int, unflattened_size: Any) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise TypeError(f"Unflatten: dim must be an int, got {type(dim).__name__}")
        if not isinstance(unflattened_size, (tuple, list)) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in unflattened_size):
            raise TypeError(f"Unflatten: unflattened_size must be a tuple of ints, got "
                            f"{unflattened_size!r}")
        self.dim = dim
        self.unflattened_size = tuple(unflattened_size)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"Unflatten: expected a Tensor, got {type(x).__name__}")
        dim = shapes.normalize_dim(self.dim, x.ndim, "Unflatten")
        size = x.shape[dim]
        sizes = self.unflattened_size
        known = math.prod(s for s in sizes if s != -1)
        if sizes.count(-1) > 1 or (-1 in sizes and (known == 0 or size % known)) \
                or (-1 not in sizes and known != size) or any(s < -1 for s in sizes):
            raise ValueError(f"Unflatten: unflattened_size {sizes} does not fit dimension "
                             f"{self.dim} of size {size} in shape {tuple(x.shape)}")
        part = tuple(size // known if s == -1 else s for s in sizes)
        return shapes.reshape(x, tuple(x.shape[:dim]) + part + tuple(x.shape[dim + 1:]))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


class Identity(Module):
    """Return the input unchanged; constructor arguments are accepted and ignored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        return x
