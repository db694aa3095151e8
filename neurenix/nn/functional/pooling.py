"""Pooling as pad -> unfold -> a reduction over each window's taps.

Max pooling picks each window's value with `argmax` and a one-hot `where` + sum rather than
`reduce_max`: the gradient then goes to the first maximum only, as in PyTorch, instead of being
shared among ties. Average pooling divides window sums by a count computed the same way from a
tensor of ones, so the divisor is part of the graph rather than a NumPy constant.  Eagerly on
host arrays max pooling (without return_indices) runs as one kernel with the same values and
gradient routing (`neurenix.eager_kernels.conv.max_pool`) unless
`neurenix.backends.eager_kernels` is off.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...creation import tensor
from ...dispatch import apply
from ...eager_kernels import conv as kernels
from ...eager_kernels import eligible
from ...elementwise import add, div, eq, mul, where
from ...reductions import mean
from ...shapes import cat, narrow
from ...tensor import Tensor
from ._utils import batched, ntuple, unbatched


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int,
                     ceil_mode: bool) -> int:
    """Windows along one axis, PyTorch's rule: with ceil_mode a last partial window counts
    only if it starts inside the input or its left padding."""
    num = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (num + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pool_args(x: Tensor, dims: int, kernel_size: Any, stride: Any, padding: Any,
               dilation: Any, ceil_mode: bool, name: str):
    """Checked per-axis arguments, output sizes and the right padding the windows need."""
    kernel = ntuple(kernel_size, dims, "kernel_size", name)
    stride = kernel if stride is None or stride == [] else ntuple(stride, dims, "stride", name)
    padding = ntuple(padding, dims, "padding", name, minimum=0)
    dilation = ntuple(dilation, dims, "dilation", name)
    if any(p > k // 2 for k, p in zip(kernel, padding)):
        raise ValueError(f"{name}: padding should be at most half of the kernel size, got "
                         f"padding {padding} for kernel_size {kernel}")
    spatial = tuple(x.shape[2:])
    out = tuple(pool_output_size(s, k, st, p, d, ceil_mode)
                for s, k, st, p, d in zip(spatial, kernel, stride, padding, dilation))
    if any(o < 1 for o in out):
        raise ValueError(f"{name}: input of shape {tuple(x.shape)} is too small for "
                         f"kernel_size {kernel} (dilation {dilation}, padding {padding}); "
                         f"the output size would be {out}")
    # the right padding the last window reaches (more than `padding` only with ceil_mode)
    hi = tuple(max((o - 1) * st + d * (k - 1) + 1 - s - p, 0)
               for o, st, d, k, s, p in zip(out, stride, dilation, kernel, spatial, padding))
    return kernel, stride, padding, dilation, hi


def _pad_windows(x: Tensor, kernel, stride, dilation, lo, hi, fill: float) -> Tensor:
    """(N, C, *S) padded with `fill` -> (N, C, *kernel, *windows)."""
    if any(lo) or any(hi):
        x = apply("pad", x, lo=(0, 0) + tuple(lo), hi=(0, 0) + tuple(hi),
                  interior=(0,) * x.ndim, value=fill)
    return apply("unfold", x, kernel=tuple(kernel), stride=tuple(stride),
                 dilation=tuple(dilation))


def _iota(shape: tuple[int, ...], axis: int) -> Tensor:
    return apply("iota", shape=shape, axis=axis, dtype="int64")


def max_pool_nd(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
                dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False,
                dims: int | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Max pooling over `dims` spatial axes (default: len(kernel_size), else input.ndim - 2).

    With return_indices, also the flat index (within each channel's unpadded spatial plane)
    of every maximum, as PyTorch returns it.
    """
    if dims is None:
        if isinstance(kernel_size, (tuple, list)):
            dims = len(kernel_size)
        elif isinstance(input, Tensor):
            dims = input.ndim - 2
    if not isinstance(dims, int) or dims < 1:
        raise ValueError(f"max_pool_nd: cannot tell the number of spatial axes; pass dims "
                         f"(got dims={dims!r})")
    return max_pool(input, dims, kernel_size, stride, padding, dilation, ceil_mode,
                    return_indices, "max_pool_nd")


def max_pool1d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False
               ) -> Tensor | tuple[Tensor, Tensor]:
    """Max pooling of (N, C, L) or unbatched (C, L)."""
    return max_pool(input, 1, kernel_size, stride, padding, dilation, ceil_mode,
                    return_indices, "max_pool1d")


def max_pool2d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False
               ) -> Tensor | tuple[Tensor, Tensor]:
    """Max pooling of (N, C, H, W) or unbatched (C, H, W)."""
    return max_pool(input, 2, kernel_size, stride, padding, dilation, ceil_mode,
                    return_indices, "max_pool2d")


def max_pool(x: Tensor, dims: int, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
             ceil_mode: bool, return_indices: bool, name: str) -> Tensor | tuple[Tensor, Tensor]:
    """Max pooling every public form calls; `name` is the layer named in errors."""
    x, was_unbatched = batched(x, dims, name)
    if not x.dtype.is_floating:
        raise TypeError(f"{name}: expected a floating-point input, got {x.dtype.name}")
    kernel, stride, padding, dilation, hi = _pool_args(
        x, dims, kernel_size, stride, padding, dilation, ceil_mode, name)
    if not return_indices and eligible(x):
        def composite(x: Tensor) -> tuple[Tensor]:
            return (_max_pool_primitives(x, kernel, stride, padding, dilation, hi, False),)
        values = kernels.max_pool(x, kernel, stride, dilation, padding, hi, composite)
        return unbatched(values, was_unbatched)
    out = _max_pool_primitives(x, kernel, stride, padding, dilation, hi, return_indices)
    if not return_indices:
        return unbatched(out, was_unbatched)
    values, indices = out
    return unbatched(values, was_unbatched), unbatched(indices, was_unbatched)


def _max_pool_primitives(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
                         padding: tuple[int, ...], dilation: tuple[int, ...],
                         hi: tuple[int, ...], return_indices: bool
                         ) -> Tensor | tuple[Tensor, Tensor]:
    """Max pooling of batched x as primitives: the first maximum of each window picked by
    `argmax` and a one-hot selection (and its flat input index with return_indices)."""
    dims = len(kernel)
    cols = _pad_windows(x, kernel, stride, dilation, padding, hi, float("-inf"))
    windows = tuple(cols.shape[2 + dims:])
    taps = math.prod(kernel)
    flat = cols.reshape(tuple(x.shape[:2]) + (taps,) + windows)
    # argmax takes the first maximum (and the first NaN, so NaN propagates as in PyTorch)
    first = apply("argmax", flat, axis=2)
    hit = eq(first.reshape(tuple(x.shape[:2]) + (1,) + windows),
             _iota((1, 1, taps) + (1,) * dims, 2))
    values = apply("reduce_sum", where(hit, flat, 0.0), axes=(2,))
    if not return_indices:
        return values
    where_from = _input_positions(tuple(x.shape[2:]), kernel, stride, padding, dilation,
                                  windows)
    return values, apply("reduce_sum", where(hit, where_from, 0), axes=(2,))


def _input_positions(spatial, kernel, stride, padding, dilation, windows) -> Tensor:
    """(1, 1, taps, *windows): the flat input index each tap of each window reads."""
    dims = len(kernel)
    grid = tuple(kernel) + tuple(windows)
    flat: Tensor | None = None
    for j in range(dims):
        # position along axis j = window * stride + tap * dilation - padding
        pos = add(mul(_iota(grid, dims + j), stride[j]), mul(_iota(grid, j), dilation[j]))
        pos = add(pos, -padding[j])
        flat = pos if flat is None else add(mul(flat, spatial[j]), pos)
    assert flat is not None
    return flat.reshape((1, 1, math.prod(kernel)) + tuple(windows))


def max_pool3d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False
               ) -> Tensor | tuple[Tensor, Tensor]:
    """Max pooling of (N, C, D, H, W) or unbatched (C, D, H, W)."""
    return max_pool(input, 3, kernel_size, stride, padding, dilation, ceil_mode,
                    return_indices, "max_pool3d")


def avg_pool1d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               ceil_mode: bool = False, count_include_pad: bool = True) -> Tensor:
    """Average pooling of (N, C, L) or unbatched (C, L)."""
    return avg_pool(input, 1, kernel_size, stride, padding, ceil_mode, count_include_pad,
                    None, "avg_pool1d")


def avg_pool2d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> Tensor:
    """Average pooling of (N, C, H, W) or unbatched (C, H, W)."""
    return avg_pool(input, 2, kernel_size, stride, padding, ceil_mode, count_include_pad,
                    divisor_override, "avg_pool2d")


def avg_pool(x: Tensor, dims: int, kernel_size: Any, stride: Any, padding: Any,
             ceil_mode: bool, count_include_pad: bool, divisor_override: int | None,
             name: str) -> Tensor:
    """Window sums divided by divisor_override, or by the number of taps counted: those on the
    input, plus its zero padding when count_include_pad (never the extra ceil_mode reach)."""
    x, was_unbatched = batched(x, dims, name)
    if not x.dtype.is_floating:
        raise TypeError(f"{name}: expected a floating-point input, got {x.dtype.name}")
    kernel, stride, padding, dilation, hi = _pool_args(
        x, dims, kernel_size, stride, padding, 1, ceil_mode, name)
    axes = tuple(range(2, 2 + dims))
    cols = _pad_windows(x, kernel, stride, dilation, padding, hi, 0.0)
    sums = apply("reduce_sum", cols, axes=axes)
    if divisor_override is not None:
        if isinstance(divisor_override, bool) or not isinstance(divisor_override, int) \
                or divisor_override == 0:
            raise ValueError(f"{name}: divisor_override must be a non-zero int, got "
                             f"{divisor_override!r}")
        return unbatched(div(sums, float(divisor_override)), was_unbatched)
    ones = apply("full", shape=(1, 1) + tuple(x.shape[2:]), value=1.0, dtype=x.dtype.name)
    if count_include_pad:
        # padding counts as taps; the reach past it that ceil_mode adds does not
        inner = tuple(min(p, h) for p, h in zip(padding, hi))
        ones = apply("pad", ones, lo=(0, 0) + padding, hi=(0, 0) + inner,
                     interior=(0,) * (dims + 2), value=1.0)
        lo, hi = (0,) * dims, tuple(h - i for h, i in zip(hi, inner))
    else:
        lo = padding
    counts = apply("reduce_sum", _pad_windows(ones, kernel, stride, dilation, lo, hi, 0.0),
                   axes=axes)
    return unbatched(div(sums, counts), was_unbatched)


def adaptive_avg_pool1d(input: Tensor, output_size: Any) -> Tensor:
    """Average over PyTorch's adaptive windows of (N, C, L) or unbatched (C, L)."""
    return adaptive_avg_pool(input, output_size, "adaptive_avg_pool1d", dims=1)


def adaptive_avg_pool2d(input: Tensor, output_size: Any) -> Tensor:
    """Average over PyTorch's adaptive windows: output cell i along an axis of size n averages
    [floor(i * n / out), ceil((i + 1) * n / out))."""
    return adaptive_avg_pool(input, output_size, "adaptive_avg_pool2d")


def adaptive_avg_pool(input: Tensor, output_size: Any, name: str, dims: int = 2) -> Tensor:
    """Adaptive average pooling over `dims` spatial axes; `name` is the layer named in
    errors."""
    x, was_unbatched = batched(input, dims, name)
    if not x.dtype.is_floating:
        raise TypeError(f"{name}: expected a floating-point input, got {x.dtype.name}")
    sizes = _adaptive_sizes(output_size, tuple(x.shape[2:]), name)
    for axis, out in zip(range(2, 2 + dims), sizes):
        x = _adaptive_axis(x, axis, out)
    return unbatched(x, was_unbatched)


def adaptive_max_pool1d(input: Tensor, output_size: Any, return_indices: bool = False
                        ) -> Tensor | tuple[Tensor, Tensor]:
    """The maximum over PyTorch's adaptive windows of (N, C, L) or unbatched (C, L)."""
    return adaptive_max_pool(input, output_size, return_indices, "adaptive_max_pool1d", 1)


def adaptive_max_pool2d(input: Tensor, output_size: Any, return_indices: bool = False
                        ) -> Tensor | tuple[Tensor, Tensor]:
    """The maximum over PyTorch's adaptive windows of (N, C, H, W) or unbatched (C, H, W);
    with return_indices also each maximum's flat index in its channel's H * W plane."""
    return adaptive_max_pool(input, output_size, return_indices, "adaptive_max_pool2d", 2)


def _adaptive_bounds(n: int, out: int) -> list[tuple[int, int]]:
    return [((i * n) // out, -((-(i + 1) * n) // out)) for i in range(out)]


def adaptive_max_pool(input: Tensor, output_size: Any, return_indices: bool, name: str,
                      dims: int) -> Tensor | tuple[Tensor, Tensor]:
    """Adaptive max pooling over `dims` spatial axes.

    Each window's taps are gathered from the flattened plane into a fixed-size row (windows
    can differ in size; the missing taps are -inf), and the first maximum is picked with
    `argmax` and a one-hot mask, so ties and NaN behave as in PyTorch's row-major scan.
    """
    x, was_unbatched = batched(input, dims, name)
    if not x.dtype.is_floating:
        raise TypeError(f"{name}: expected a floating-point input, got {x.dtype.name}")
    spatial = tuple(x.shape[2:])
    sizes = _adaptive_sizes(output_size, spatial, name)
    bounds = [_adaptive_bounds(n, out) for n, out in zip(spatial, sizes)]
    reach = [max(stop - start for start, stop in axis) for axis in bounds]
    taps = math.prod(reach)
    index = np.zeros(sizes + (taps,), np.int64)
    valid = np.zeros(sizes + (taps,), bool)
    for cell in np.ndindex(*sizes):
        windows = [range(*bounds[j][c]) for j, c in enumerate(cell)]
        flat = [int(np.ravel_multi_index(pos, spatial)) for pos in itertools.product(*windows)]
        shape = [len(w) for w in windows]
        for k, pos in enumerate(np.ndindex(*reach)):
            inside = all(p < s for p, s in zip(pos, shape))
            valid[cell + (k,)] = inside
            index[cell + (k,)] = flat[int(np.ravel_multi_index(pos, shape))] if inside else flat[0]
    plane = x.reshape(tuple(x.shape[:2]) + (math.prod(spatial),))
    index_tensor = tensor(index, device=x.device)
    picked = apply("gather", plane, index_tensor, axis=2)
    picked = where(tensor(valid, device=x.device), picked, float("-inf"))
    first = apply("argmax", picked, axis=2 + dims)
    hit = eq(first.reshape(tuple(first.shape) + (1,)), _iota((1,) * (2 + dims) + (taps,),
                                                             2 + dims))
    values = unbatched(apply("reduce_sum", where(hit, picked, 0.0), axes=(2 + dims,)),
                       was_unbatched)
    if not return_indices:
        return values
    indices = apply("reduce_sum", where(hit, index_tensor, 0), axes=(2 + dims,))
    return values, unbatched(indices, was_unbatched)


def _adaptive_sizes(output_size: Any, spatial: tuple[int, ...], name: str) -> tuple[int, ...]:
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != len(spatial):
            raise ValueError(f"{name}: output_size must be an int or {len(spatial)} values, "
                             f"got {tuple(output_size)}")
        sizes: Sequence[Any] = [s if o is None else o for o, s in zip(output_size, spatial)]
    else:
        sizes = [output_size] * len(spatial)
    sizes = ntuple(tuple(sizes), len(spatial), "output_size", name)
    if any(s < 1 for s in spatial):
        raise ValueError(f"{name}: expected non-empty spatial dimensions, got {spatial}")
    return sizes


def _adaptive_axis(x: Tensor, axis: int, out: int) -> Tensor:
    """Adaptive averaging along one axis; the 2-D windows are products of 1-D ones, so
    averaging one axis after the other gives each rectangle's mean."""
    n = x.shape[axis]
    if n == out:
        return x
    if n % out == 0:
        # equal, non-overlapping windows: split the axis into (out, n // out) and average
        split = tuple(x.shape[:axis]) + (out, n // out) + tuple(x.shape[axis + 1:])
        return mean(x.reshape(split), axis + 1)
    pieces = []
    for i in range(out):
        start = (i * n) // out
        stop = -((-(i + 1) * n) // out)
        pieces.append(mean(narrow(x, axis, start, stop - start), axis, keepdim=True))
    return cat(pieces, axis)
