"""Convolution layers `Conv1d/2d/3d` and `ConvTranspose1d/2d/3d` with PyTorch's arguments,
parameter layouts (weight (out, in / groups, *kernel), transposed (in, out / groups, *kernel);
bias (out,)) and default initialisation."""
from __future__ import annotations

from typing import Any

from neurenix.compiler.types import DType, float32

from ..creation import zeros
from ..tensor import Tensor
from . import init
from .functional._utils import ntuple
from .functional.conv import conv_transpose, convolution
from .module import Module
from .parameter import Parameter

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _check_channels(name: str, in_channels: int, out_channels: int, groups: int) -> None:
    """PyTorch's checks of a convolution's channel counts and groups."""
    for what, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("groups", groups)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: {what} must be a positive int, got {value!r}")
    if in_channels % groups:
        raise ValueError(f"{name}: in_channels ({in_channels}) must be divisible by groups "
                         f"({groups})")
    if out_channels % groups:
        raise ValueError(f"{name}: out_channels ({out_channels}) must be divisible by "
                         f"groups ({groups})")


def _parameters(layer: Module, shape: tuple[int, ...], out_channels: int, bias: bool,
                dtype: DType | None, device: Any) -> None:
    """The layer's weight of `shape` and bias (out_channels,), initialised as PyTorch's."""
    dtype = dtype or float32
    layer.weight = Parameter(zeros(shape, dtype=dtype, device=device))
    if bias:
        layer.bias = Parameter(zeros((out_channels,), dtype=dtype, device=device))
    else:
        layer.register_parameter("bias", None)
    layer.reset_parameters()


def _repr(layer: Module, optional: tuple[str, ...]) -> str:
    """PyTorch's repr of a convolution: the `optional` tuples where not all zero or one."""
    s = (f"{layer.in_channels}, {layer.out_channels}, kernel_size={layer.kernel_size}, "
         f"stride={layer.stride}")
    for what in optional:
        value = getattr(layer, what)
        if value != ((1,) if what == "dilation" else (0,)) * layer.dims:
            s += f", {what}={value}"
    if layer.groups != 1:
        s += f", groups={layer.groups}"
    if layer.bias is None:
        s += ", bias=False"
    if layer.padding_mode != "zeros":
        s += f", padding_mode={layer.padding_mode}"
    return s


class _ConvNd(Module):
    """Shared body of the convolution layers; subclasses fix the number of spatial axes."""

    dims: int = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", dtype: DType | None = None,
                 device: Any = None) -> None:
        super().__init__()
        name = type(self).__name__
        _check_channels(name, in_channels, out_channels, groups)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {', '.join(PADDING_MODES)}, "
                             f"got {padding_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ntuple(kernel_size, self.dims, "kernel_size", name)
        self.stride = ntuple(stride, self.dims, "stride", name)
        self.dilation = ntuple(dilation, self.dims, "dilation", name)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding must be an int, a tuple, 'valid' or 'same', "
                                 f"got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"{name}: padding='same' is not supported for strided "
                                 f"convolutions (stride {self.stride})")
            self.padding: tuple[int, ...] | str = padding
        else:
            self.padding = ntuple(padding, self.dims, "padding", name, minimum=0)
        self.groups = groups
        self.padding_mode = padding_mode
        _parameters(self, (out_channels, in_channels // groups) + self.kernel_size,
                    out_channels, bias, dtype, device)

    def reset_parameters(self) -> None:
        """PyTorch's default: kaiming_uniform_(a=sqrt(5)) weights, bias U(+-1/sqrt(fan_in))."""
        init.layer_default_(self.weight, self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return convolution(input, self.weight, self.bias, self.stride, self.padding,
                           self.dilation, self.groups, type(self).__name__, self.padding_mode)

    def extra_repr(self) -> str:
        return _repr(self, ("padding", "dilation"))


class Conv1d(_ConvNd):
    """1-D convolution over (N, C, L) or unbatched (C, L) inputs."""

    dims = 1


class Conv2d(_ConvNd):
    """2-D convolution over (N, C, H, W) or unbatched (C, H, W) inputs."""

    dims = 2


class Conv3d(_ConvNd):
    """3-D convolution over (N, C, D, H, W) or unbatched (C, D, H, W) inputs."""

    dims = 3


class _ConvTransposeNd(Module):
    """Shared body of the transposed convolutions; the weight is (in, out / groups, *kernel)
    as in PyTorch, initialised as its convolutions are (fan-in from that layout)."""

    dims: int = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, output_padding: Any = 0, groups: int = 1, bias: bool = True,
                 dilation: Any = 1, padding_mode: str = "zeros", device: Any = None,
                 dtype: DType | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        _check_channels(name, in_channels, out_channels, groups)
        if padding_mode != "zeros":
            raise ValueError(f'{name}: only "zeros" padding mode is supported, got '
                             f"{padding_mode!r}")
        if isinstance(padding, str):
            raise ValueError(f"{name}: padding must be an int or a tuple of ints, got "
                             f"{padding!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ntuple(kernel_size, self.dims, "kernel_size", name)
        self.stride = ntuple(stride, self.dims, "stride", name)
        self.padding = ntuple(padding, self.dims, "padding", name, minimum=0)
        self.dilation = ntuple(dilation, self.dims, "dilation", name)
        self.output_padding = ntuple(output_padding, self.dims, "output_padding", name,
                                     minimum=0)
        if any(o >= max(s, d) for o, s, d in zip(self.output_padding, self.stride,
                                                   self.dilation)):
            raise ValueError(f"{name}: output_padding {self.output_padding} must be smaller "
                             f"than either stride {self.stride} or dilation {self.dilation}")
        self.groups = groups
        self.padding_mode = padding_mode
        _parameters(self, (in_channels, out_channels // groups) + self.kernel_size,
                    out_channels, bias, dtype, device)

    def reset_parameters(self) -> None:
        """PyTorch's default: kaiming_uniform_(a=sqrt(5)) weights, bias U(+-1/sqrt(fan_in)),
        fan-in read from the (in, out / groups, *kernel) layout as PyTorch reads it."""
        init.layer_default_(self.weight, self.bias)

    def _output_padding(self, input: Tensor, output_size: Any) -> tuple[int, ...]:
        if output_size is None:
            return self.output_padding
        name = type(self).__name__
        size = tuple(output_size)
        if len(size) == self.dims + 2 or (len(size) == self.dims + 1
                                          and input.ndim == self.dims + 1):
            size = size[-self.dims:]
        if len(size) != self.dims:
            raise ValueError(f"{name}: output_size must have {self.dims} or {self.dims + 2} "
                             f"elements, got {tuple(output_size)}")
        spatial = tuple(input.shape[-self.dims:])
        extra = []
        for n, want, s, p, d, k in zip(spatial, size, self.stride, self.padding,
                                        self.dilation, self.kernel_size):
            smallest = (n - 1) * s - 2 * p + d * (k - 1) + 1
            if not smallest <= want <= smallest + s - 1:
                raise ValueError(f"{name}: requested an output size of {tuple(size)}, but "
                                 f"valid sizes range from {smallest} to {smallest + s - 1} "
                                 f"per axis for an input of {spatial}")
            extra.append(want - smallest)
        return tuple(extra)

    def forward(self, input: Tensor, output_size: Any = None) -> Tensor:
        if not isinstance(input, Tensor):
            raise TypeError(f"{type(self).__name__}: expected a Tensor input, got "
                            f"{type(input).__name__}")
        return conv_transpose(input, self.weight, self.bias, self.stride, self.padding,
                              self._output_padding(input, output_size), self.groups,
                              self.dilation, type(self).__name__)

    def extra_repr(self) -> str:
        return _repr(self, ("padding", "dilation", "output_padding"))


class ConvTranspose1d(_ConvTransposeNd):
    """Transposed 1-D convolution over (N, C, L) or unbatched (C, L) inputs."""

    dims = 1


class ConvTranspose2d(_ConvTransposeNd):
    """Transposed 2-D convolution over (N, C, H, W) or unbatched (C, H, W) inputs."""

    dims = 2


class ConvTranspose3d(_ConvTransposeNd):
    """Transposed 3-D convolution over (N, C, D, H, W) or unbatched (C, D, H, W) inputs."""

    dims = 3
