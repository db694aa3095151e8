"""Padding layers (`ReflectionPad1d/2d`, `ReplicationPad1d/2d`, `ZeroPad2d`, `ConstantPad1d/2d`):
`F.pad` with a fixed mode and PyTorch's padding tuple (left, right[, top, bottom])."""
from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from .functional._utils import ntuple
from .functional.padding import pad
from .module import Module


class _PadNd(Module):
    """Pads the last `dims` axes of a (N, C, *) or unbatched (C, *) input."""

    dims: int = 0
    mode: str = "constant"

    def __init__(self, padding: Any, value: float = 0.0) -> None:
        super().__init__()
        self.padding = ntuple(padding, 2 * self.dims, "padding", type(self).__name__,
                              minimum=-(1 << 62))
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
        if x.ndim not in (self.dims + 1, self.dims + 2):
            raise ValueError(f"{name}: expected a {self.dims + 1}-D (unbatched) or "
                             f"{self.dims + 2}-D input, got shape {tuple(x.shape)}")
        value = self.value if self.mode == "constant" else None
        return pad(x, self.padding, self.mode, value)

    def extra_repr(self) -> str:
        if self.mode == "constant":
            return f"padding={self.padding}, value={self.value}"
        return f"{self.padding}"


class ReflectionPad1d(_PadNd):
    """Pad (N, C, L) by mirroring the values next to each edge (the edge itself excluded)."""

    dims = 1
    mode = "reflect"

    def __init__(self, padding: Any) -> None:
        super().__init__(padding)


class ReflectionPad2d(ReflectionPad1d):
    """Pad (N, C, H, W) by mirroring; padding is an int or (left, right, top, bottom)."""

    dims = 2


class ReplicationPad1d(_PadNd):
    """Pad (N, C, L) by repeating the edge values."""

    dims = 1
    mode = "replicate"

    def __init__(self, padding: Any) -> None:
        super().__init__(padding)


class ReplicationPad2d(ReplicationPad1d):
    """Pad (N, C, H, W) by repeating the edge values; padding as ReflectionPad2d's."""

    dims = 2


class ConstantPad1d(_PadNd):
    """Pad (N, C, L) with a constant value."""

    dims = 1

    def __init__(self, padding: Any, value: float) -> None:
        super().__init__(padding, value)


class ConstantPad2d(ConstantPad1d):
    """Pad (N, C, H, W) with a constant value."""

    dims = 2


class ZeroPad2d(ConstantPad2d):
    """Pad (N, C, H, W) with zeros."""

    def __init__(self, padding: Any) -> None:
        super().__init__(padding, 0.0)

    def extra_repr(self) -> str:
        return f"{self.padding}"
