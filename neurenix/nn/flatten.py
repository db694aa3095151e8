"""`Flatten` (merge a range of dimensions) and `Identity` (pass-through placeholder)."""
from __future__ import annotations

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


class Identity(Module):
    """Return the input unchanged; constructor arguments are accepted and ignored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        return x
