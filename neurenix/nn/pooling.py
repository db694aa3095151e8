"""Pooling layers: `MaxPool1d/2d/3d`, `AvgPool1d/2d`, `AdaptiveAvgPool1d/2d`,
`AdaptiveMaxPool1d/2d`."""
from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from .functional._utils import ntuple
from .functional.pooling import adaptive_avg_pool, adaptive_max_pool, avg_pool, max_pool
from .module import Module


class _MaxPoolNd(Module):
    dims: int = 0

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 dilation: Any = 1, return_indices: bool = False,
                 ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return max_pool(input, self.dims, self.kernel_size, self.stride, self.padding,
                        self.dilation, self.ceil_mode, self.return_indices, type(self).__name__)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class MaxPool1d(_MaxPoolNd):
    """The maximum of each window over (N, C, L) or unbatched (C, L) inputs."""

    dims = 1


class MaxPool2d(_MaxPoolNd):
    """The maximum of each window over (N, C, H, W) or unbatched (C, H, W) inputs."""

    dims = 2


class MaxPool3d(_MaxPoolNd):
    """The maximum of each window over (N, C, D, H, W) or unbatched (C, D, H, W) inputs."""

    dims = 3


class AvgPool1d(Module):
    """The mean of each window over (N, C, L) or unbatched (C, L) inputs."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = ntuple(kernel_size, 1, "kernel_size", name)
        self.stride = ntuple(stride if stride is not None else kernel_size, 1, "stride", name)
        self.padding = ntuple(padding, 1, "padding", name, minimum=0)
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad

    def forward(self, input: Tensor) -> Tensor:
        return avg_pool(input, 1, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                        self.count_include_pad, None, type(self).__name__)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """The mean of each window over (N, C, H, W) or unbatched (C, H, W) inputs."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override

    def forward(self, input: Tensor) -> Tensor:
        return avg_pool(input, 2, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                        self.count_include_pad, self.divisor_override, type(self).__name__)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size (H_out, W_out), whatever the input size."""

    dims = 2

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, input: Tensor) -> Tensor:
        return adaptive_avg_pool(input, self.output_size, type(self).__name__, self.dims)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveAvgPool1d(AdaptiveAvgPool2d):
    """Average pooling to a fixed output length, whatever the input length."""

    dims = 1


class AdaptiveMaxPool2d(Module):
    """Max pooling to a fixed output size (H_out, W_out); with return_indices also the flat
    index of each maximum in its channel's plane."""

    dims = 2

    def __init__(self, output_size: Any, return_indices: bool = False) -> None:
        super().__init__()
        self.output_size = output_size
        self.return_indices = return_indices

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return adaptive_max_pool(input, self.output_size, self.return_indices,
                                 type(self).__name__, self.dims)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxPool1d(AdaptiveMaxPool2d):
    """Max pooling to a fixed output length."""

    dims = 1
