"""Convolution over any number of spatial axes, as pad -> unfold -> grouped matmul -> bias.

`unfold` lays every window out as (N, C, *kernel, *windows); grouping the channels and
flattening the taps turns the convolution into one batched matrix product per group, which the
compiler can later fuse back into an implicit-GEMM kernel. Nothing here has a gradient rule of
its own: input, weight and bias gradients come from the primitives' VJPs.  Eagerly on host
arrays the same convolution runs as one kernel (`neurenix.eager_kernels.conv`: im2col and one
GEMM, a hand-written backward) unless `neurenix.backends.eager_kernels` is off.
"""
from __future__ import annotations

import math
from typing import Any

from ...dispatch import apply
from ...eager_kernels import conv as kernels
from ...eager_kernels import eligible
from ...elementwise import add
from ...linalg import matmul
from ...shapes import flip, permute
from ...tensor import Tensor
from ._utils import batched, ntuple, unbatched
from .padding import pad_axes

Padding = int | tuple[int, ...] | str


def conv_nd(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
            padding: Padding = 0, dilation: Any = 1, groups: int = 1) -> Tensor:
    """Convolution with as many spatial axes as the weight (out, in / groups, *kernel) has."""
    if not isinstance(weight, Tensor) or weight.ndim < 3:
        raise ValueError(f"conv_nd: expected a weight of shape (out_channels, "
                         f"in_channels / groups, *kernel), got "
                         f"{_shape_of(weight)}")
    return convolution(input, weight, bias, stride, padding, dilation, groups, "conv_nd")


def conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
           padding: Padding = 0, dilation: Any = 1, groups: int = 1) -> Tensor:
    """1-D convolution of (N, C, L) or unbatched (C, L) with a (out, in / groups, k) weight."""
    _check_weight(weight, 1, "conv1d")
    return convolution(input, weight, bias, stride, padding, dilation, groups, "conv1d")


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
           padding: Padding = 0, dilation: Any = 1, groups: int = 1) -> Tensor:
    """2-D convolution of (N, C, H, W) or unbatched (C, H, W) with a (out, in / groups, kH, kW)
    weight."""
    _check_weight(weight, 2, "conv2d")
    return convolution(input, weight, bias, stride, padding, dilation, groups, "conv2d")


def conv3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
           padding: Padding = 0, dilation: Any = 1, groups: int = 1) -> Tensor:
    """3-D convolution of (N, C, D, H, W) or unbatched (C, D, H, W)."""
    _check_weight(weight, 3, "conv3d")
    return convolution(input, weight, bias, stride, padding, dilation, groups, "conv3d")


def _shape_of(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)}"
    return type(value).__name__


def _check_weight(weight: Any, dims: int, name: str) -> None:
    if not isinstance(weight, Tensor) or weight.ndim != dims + 2:
        kernel = ", ".join(f"k{i}" for i in range(dims)) if dims > 1 else "k"
        raise ValueError(f"{name}: expected a {dims + 2}-D weight (out_channels, "
                         f"in_channels / groups, {kernel}), got {_shape_of(weight)}")


def same_padding(kernel: tuple[int, ...], dilation: tuple[int, ...]
                 ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(before, after) widths that keep the size at stride 1: the odd extra tap goes after,
    as PyTorch splits it for even effective kernels."""
    total = tuple(d * (k - 1) for k, d in zip(kernel, dilation))
    lo = tuple(t // 2 for t in total)
    return lo, tuple(t - a for t, a in zip(total, lo))


def resolve_padding(padding: Padding, kernel: tuple[int, ...], stride: tuple[int, ...],
                    dilation: tuple[int, ...], name: str
                    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-axis (before, after) widths from an int, a tuple, 'valid' or 'same'."""
    dims = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * dims, (0,) * dims
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{name}: padding='same' is not supported for strided "
                                 f"convolutions (stride {stride}); use an explicit padding")
            return same_padding(kernel, dilation)
        raise ValueError(f"{name}: padding must be an int, a tuple of ints, 'valid' or 'same', "
                         f"got {padding!r}")
    widths = ntuple(padding, dims, "padding", name, minimum=0)
    return widths, widths


def convolution(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Padding,
                dilation: Any, groups: int, name: str, padding_mode: str = "zeros") -> Tensor:
    """The convolution every public form calls; `name` is the layer named in errors."""
    dims = weight.ndim - 2
    x, was_unbatched = batched(x, dims, name)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
    out_channels, group_in = weight.shape[0], weight.shape[1]
    in_channels = group_in * groups
    if out_channels % groups:
        raise ValueError(f"{name}: out_channels ({out_channels}) must be divisible by groups "
                         f"({groups})")
    if x.shape[1] != in_channels:
        per_group = f" = {groups} groups x {group_in}" if groups > 1 else ""
        raise ValueError(f"{name}: expected input with {in_channels} channels "
                         f"(in_channels{per_group}), got {x.shape[1]} in shape "
                         f"{tuple(x.shape) if not was_unbatched else tuple(x.shape[1:])}")
    if not x.dtype.is_floating or x.dtype != weight.dtype:
        raise TypeError(f"{name}: expected a floating input of the weight's dtype "
                        f"{weight.dtype.name}, got {x.dtype.name}")
    if bias is not None:
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (out_channels,):
            raise ValueError(f"{name}: expected a bias of shape ({out_channels},), got "
                             f"{_shape_of(bias)}")
    kernel = tuple(weight.shape[2:])
    stride = ntuple(stride, dims, "stride", name)
    dilation = ntuple(dilation, dims, "dilation", name)
    lo, hi = resolve_padding(padding, kernel, stride, dilation, name)
    spatial = tuple(x.shape[2:])
    padded = tuple(s + a + b for s, a, b in zip(spatial, lo, hi))
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    if any(p < s for p, s in zip(padded, span)):
        raise ValueError(f"{name}: kernel size {kernel} (dilated extent {span}) is larger than "
                         f"the padded input size {padded} (input {spatial}, padding "
                         f"{tuple(zip(lo, hi))})")
    if padding_mode != "zeros" and (any(lo) or any(hi)):
        x = pad_axes(x, (0, 0) + lo, (0, 0) + hi, padding_mode, 0.0, name)
        lo = hi = (0,) * dims
    if eligible(x, weight, bias):
        def composite(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor]:
            return (_primitives(x, weight, bias, stride, dilation, lo, hi, groups, name),)
        out = kernels.conv(x, weight, bias, stride, dilation, lo, hi, groups, composite)
    else:
        out = _primitives(x, weight, bias, stride, dilation, lo, hi, groups, name)
    return unbatched(out, was_unbatched)


def _primitives(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, ...],
                dilation: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...],
                groups: int, name: str) -> Tensor:
    """The convolution of batched x as primitives, zero padding lo before and hi after."""
    dims = weight.ndim - 2
    kernel = tuple(weight.shape[2:])
    out_channels, group_in = weight.shape[0], weight.shape[1]
    if any(lo) or any(hi):
        x = pad_axes(x, (0, 0) + lo, (0, 0) + hi, "constant", 0.0, name)
    cols = apply("unfold", x, kernel=kernel, stride=stride, dilation=dilation)
    windows = tuple(cols.shape[2 + dims:])
    batch = x.shape[0]
    taps = group_in * math.prod(kernel)
    # (N, C, *kernel, *windows) -> (N, groups, C/groups * taps, windows): channels split by group
    cols = cols.reshape((batch, groups, taps, math.prod(windows)))
    w = weight.reshape((groups, out_channels // groups, taps))
    out = matmul(w, cols).reshape((batch, out_channels) + windows)
    if bias is not None:
        out = add(out, bias.reshape((1, out_channels) + (1,) * dims))
    return out


def conv_transpose1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                     dilation: Any = 1) -> Tensor:
    """Transposed 1-D convolution of (N, C, L) with a (in, out / groups, k) weight."""
    _check_transposed_weight(weight, 1, "conv_transpose1d")
    return conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                          dilation, "conv_transpose1d")


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                     dilation: Any = 1) -> Tensor:
    """Transposed 2-D convolution (the gradient of conv2d with respect to its input) of
    (N, C, H, W) or unbatched (C, H, W) with a (in, out / groups, kH, kW) weight."""
    _check_transposed_weight(weight, 2, "conv_transpose2d")
    return conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                          dilation, "conv_transpose2d")


def conv_transpose3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                     dilation: Any = 1) -> Tensor:
    """Transposed 3-D convolution of (N, C, D, H, W) with a (in, out / groups, kD, kH, kW)
    weight."""
    _check_transposed_weight(weight, 3, "conv_transpose3d")
    return conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                          dilation, "conv_transpose3d")


def _check_transposed_weight(weight: Any, dims: int, name: str) -> None:
    if not isinstance(weight, Tensor) or weight.ndim != dims + 2:
        kernel = ", ".join(f"k{i}" for i in range(dims)) if dims > 1 else "k"
        raise ValueError(f"{name}: expected a {dims + 2}-D weight (in_channels, "
                         f"out_channels / groups, {kernel}), got {_shape_of(weight)}")


def conv_transpose(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any,
                   output_padding: Any, groups: int, dilation: Any, name: str) -> Tensor:
    """A transposed convolution as a plain one: the input spread out by stride (stride - 1
    zeros between elements, the `pad` primitive's interior padding), padded by
    dilation * (k - 1) - padding on both sides (plus output_padding after; negative widths
    crop), then convolved at stride 1 with the kernel flipped and its channel axes swapped
    per group. The output size is (n - 1) * stride - 2 padding + dilation (k - 1) +
    output_padding + 1, as PyTorch's."""
    dims = weight.ndim - 2
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
    in_channels, group_out = weight.shape[0], weight.shape[1]
    if in_channels % groups:
        raise ValueError(f"{name}: the weight's in_channels ({in_channels}) must be divisible "
                         f"by groups ({groups})")
    kernel = tuple(weight.shape[2:])
    stride = ntuple(stride, dims, "stride", name)
    dilation = ntuple(dilation, dims, "dilation", name)
    padding = ntuple(padding, dims, "padding", name, minimum=0)
    extra = ntuple(output_padding, dims, "output_padding", name, minimum=0)
    if any(o >= max(s, d) for o, s, d in zip(extra, stride, dilation)):
        raise ValueError(f"{name}: output_padding {extra} must be smaller than either stride "
                         f"{stride} or dilation {dilation}")
    x, was_unbatched = batched(x, dims, name)
    if x.shape[1] != in_channels:
        raise ValueError(f"{name}: expected input with {in_channels} channels (the weight's "
                         f"in_channels), got {x.shape[1]} in shape {tuple(x.shape)}")
    out_size = tuple((n - 1) * s - 2 * p + d * (k - 1) + o + 1 for n, s, p, d, k, o
                     in zip(x.shape[2:], stride, padding, dilation, kernel, extra))
    if any(n < 1 for n in out_size):
        raise ValueError(f"{name}: the output size {out_size} for input shape "
                         f"{tuple(x.shape)} would be empty")
    if any(s > 1 for s in stride):
        x = apply("pad", x, lo=(0,) * x.ndim, hi=(0,) * x.ndim,
                  interior=(0, 0) + tuple(s - 1 for s in stride), value=0.0)
    lo = tuple(d * (k - 1) - p for d, k, p in zip(dilation, kernel, padding))
    hi = tuple(w + o for w, o in zip(lo, extra))
    if any(lo) or any(hi):
        x = pad_axes(x, (0, 0) + lo, (0, 0) + hi, "constant", 0.0, name)
    # (in, out / g, *k) -> (g, in / g, out / g, *k) -> (out, in / g, *k), flipped spatially
    w = weight.reshape((groups, in_channels // groups, group_out) + kernel)
    w = permute(w, (0, 2, 1) + tuple(range(3, 3 + dims)))
    w = w.reshape((groups * group_out, in_channels // groups) + kernel)
    w = flip(w, tuple(range(2, 2 + dims)))
    out = convolution(x, w, bias, 1, 0, dilation, groups, name)
    return unbatched(out, was_unbatched)
