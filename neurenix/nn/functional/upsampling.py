"""Resizing: `interpolate` (nearest, nearest-exact, linear, bilinear, trilinear) and the
`pixel_shuffle` / `pixel_unshuffle` rearrangements.

Interpolation is separable: along each spatial axis, innermost first, the output gathers one
(nearest) or two (linear) input positions and blends them with fixed weights. Indices and
weights are computed here in NumPy with PyTorch's float32 arithmetic, so they are the same
numbers its CPU kernels use, and the result is `gather`s and elementwise ops; the gradient is
`gather`'s (a scatter-add of the weighted upstream gradient).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ... import elementwise as ew
from ... import shapes
from ...creation import tensor
from ...dispatch import apply
from ...tensor import Tensor

NEAREST_MODES = ("nearest", "nearest-exact")
LINEAR_MODES = {"linear": 1, "bilinear": 2, "trilinear": 3}


def _as_list(value: Any, dims: int, what: str, input: Tensor) -> list:
    if isinstance(value, (tuple, list)):
        if len(value) != dims:
            raise ValueError(f"interpolate: input and output must have the same number of "
                             f"spatial dimensions, but got input with spatial dimensions of "
                             f"{list(input.shape[2:])} and {what} {tuple(value)}")
        return list(value)
    return [value] * dims


def output_geometry(input: Tensor, size: Any, scale_factor: Any,
                    recompute_scale_factor: bool | None
                    ) -> tuple[list[int], list[float | None]]:
    """Output sizes and the scale factors the kernels see (None: derived from the sizes)."""
    dims = input.ndim - 2
    if size is not None and scale_factor is not None:
        raise ValueError("interpolate: only one of size or scale_factor should be defined")
    if size is None and scale_factor is None:
        raise ValueError("interpolate: either size or scale_factor should be defined")
    if recompute_scale_factor and size is not None:
        raise ValueError("interpolate: recompute_scale_factor is not meaningful with an "
                         "explicit size")
    spatial = list(input.shape[2:])
    if size is not None:
        sizes = _as_list(size, dims, "output size", input)
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
               for s in sizes):
            raise ValueError(f"interpolate: size must be positive ints, got {size!r}")
        return [int(s) for s in sizes], [None] * dims
    scales = _as_list(scale_factor, dims, "scale_factor", input)
    if any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < math.inf
           for s in scales):
        raise ValueError(f"interpolate: scale_factor must be positive numbers, got "
                         f"{scale_factor!r}")
    sizes = [math.floor(float(n) * float(s)) for n, s in zip(spatial, scales)]
    if any(s < 1 for s in sizes):
        raise ValueError(f"interpolate: scale_factor {scale_factor!r} makes an empty output "
                         f"from spatial size {spatial}")
    if recompute_scale_factor:
        return sizes, [None] * dims
    return sizes, [float(s) for s in scales]


def _scale(n: int, out: int, scale: float | None) -> np.float32:
    """PyTorch's compute_scales_value: 1 / scale_factor when given, else in / out."""
    if scale is not None and scale > 0:
        return np.float32(1.0 / scale)
    return np.float32(n) / np.float32(out)


def nearest_indices(n: int, out: int, scale: float | None, exact: bool) -> np.ndarray:
    """The input position each output position copies (PyTorch's nearest_idx)."""
    dst = np.arange(out)
    if not exact and out == n:
        return dst
    if not exact and out == 2 * n:
        return dst >> 1
    s = _scale(n, out, scale)
    if exact:
        src = np.floor(((dst + 0.5) * np.float64(s)).astype(np.float32))
    else:
        src = np.floor(dst.astype(np.float32) * s)
    return np.minimum(src.astype(np.int64), n - 1)


def linear_taps(n: int, out: int, scale: float | None, align_corners: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(index0, index1, weight0, weight1) per output position, PyTorch's float32 rule."""
    dst = np.arange(out).astype(np.float32)
    if align_corners:
        s = np.float32(n - 1) / np.float32(out - 1) if out > 1 else np.float32(0.0)
        src = s * dst
    else:
        src = _scale(n, out, scale) * (dst + np.float32(0.5)) - np.float32(0.5)
        src = np.where(src < 0, np.float32(0.0), src).astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
    lam = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    lam = lam.astype(np.float32)
    i1 = i0 + (i0 < n - 1)
    return i0, i1, (np.float32(1.0) - lam).astype(np.float32), lam


def _gather(x: Tensor, axis: int, index: np.ndarray) -> Tensor:
    return apply("gather", x, tensor(index.astype(np.int64), device=x.device), axis=axis)


def _along(weights: np.ndarray, x: Tensor, axis: int) -> Tensor:
    shape = (len(weights),) + (1,) * (x.ndim - axis - 1)
    return tensor(weights.reshape(shape), dtype=x.dtype, device=x.device)


def interpolate(input: Tensor, size: Any = None, scale_factor: Any = None,
                mode: str = "nearest", align_corners: bool | None = None,
                recompute_scale_factor: bool | None = None, antialias: bool = False) -> Tensor:
    """Resize the spatial axes of (N, C, *spatial) to `size`, or by `scale_factor`.

    'nearest' copies input[floor(i * scale)] (PyTorch's legacy rule), 'nearest-exact'
    input[floor((i + 0.5) * scale)]; 'linear' (3-D), 'bilinear' (4-D) and 'trilinear' (5-D)
    blend the two nearest positions, sampling pixel centres or, with align_corners, the
    corner pixels of input and output.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"interpolate: expected a Tensor input, got {type(input).__name__}")
    if mode in NEAREST_MODES:
        if align_corners is not None:
            raise ValueError("interpolate: align_corners option can only be set with the "
                             "interpolating modes: linear | bilinear | trilinear")
    elif mode in LINEAR_MODES:
        align_corners = bool(align_corners)
        if input.ndim != LINEAR_MODES[mode] + 2:
            raise ValueError(f"interpolate: mode {mode!r} needs a "
                             f"{LINEAR_MODES[mode] + 2}-D input, got shape "
                             f"{tuple(input.shape)}")
    else:
        raise ValueError(f"interpolate: mode must be one of nearest, nearest-exact, linear, "
                         f"bilinear, trilinear, got {mode!r}")
    if antialias:
        raise ValueError("interpolate: antialias=True is not supported")
    if input.ndim not in (3, 4, 5):
        raise ValueError(f"interpolate: expected a 3-D, 4-D or 5-D input (N, C, *spatial), "
                         f"got shape {tuple(input.shape)}")
    if not input.dtype.is_floating:
        raise TypeError(f"interpolate: expected a floating-point input, got "
                        f"{input.dtype.name}")
    sizes, scales = output_geometry(input, size, scale_factor, recompute_scale_factor)
    x = input
    for j in reversed(range(input.ndim - 2)):  # innermost first, as PyTorch nests them
        axis = j + 2
        n, out = x.shape[axis], sizes[j]
        if mode in NEAREST_MODES:
            idx = nearest_indices(n, out, scales[j], mode == "nearest-exact")
            if not np.array_equal(idx, np.arange(n)):
                x = _gather(x, axis, idx)
            continue
        i0, i1, w0, w1 = linear_taps(n, out, scales[j], align_corners)
        if np.array_equal(i0, np.arange(n)) and not np.any(w1):
            continue
        x = ew.add(ew.mul(_gather(x, axis, i0), _along(w0, x, axis)),
                   ew.mul(_gather(x, axis, i1), _along(w1, x, axis)))
    return x


def _factor(value: Any, what: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: {what} must be a positive int, got {value!r}")
    return int(value)


def _check_image(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    if x.ndim < 3:
        raise ValueError(f"{name}: expected an input of at least 3 dimensions (*, C, H, W), "
                         f"got shape {tuple(x.shape)}")
    return x


def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:
    """(*, C r^2, H, W) -> (*, C, H r, W r): each channel block of r^2 becomes an r x r tile."""
    name = "pixel_shuffle"
    x = _check_image(input, name)
    r = _factor(upscale_factor, "upscale_factor", name)
    *lead, channels, height, width = x.shape
    if channels % (r * r):
        raise ValueError(f"{name}: expected the channel dimension (-3) to be divisible by "
                         f"upscale_factor^2 = {r * r}, got shape {tuple(x.shape)}")
    k = len(lead)
    c = channels // (r * r)
    x = shapes.reshape(x, tuple(lead) + (c, r, r, height, width))
    x = shapes.permute(x, tuple(range(k)) + (k, k + 3, k + 1, k + 4, k + 2))
    return shapes.reshape(x, tuple(lead) + (c, height * r, width * r))


def pixel_unshuffle(input: Tensor, downscale_factor: int) -> Tensor:
    """(*, C, H r, W r) -> (*, C r^2, H, W), the inverse of pixel_shuffle."""
    name = "pixel_unshuffle"
    x = _check_image(input, name)
    r = _factor(downscale_factor, "downscale_factor", name)
    *lead, channels, height, width = x.shape
    if height % r or width % r:
        raise ValueError(f"{name}: expected height and width divisible by downscale_factor "
                         f"{r}, got shape {tuple(x.shape)}")
    k = len(lead)
    x = shapes.reshape(x, tuple(lead) + (channels, height // r, r, width // r, r))
    x = shapes.permute(x, tuple(range(k)) + (k, k + 2, k + 4, k + 1, k + 3))
    return shapes.reshape(x, tuple(lead) + (channels * r * r, height // r, width // r))


def upsample_args(size: Any, scale_factor: Any) -> tuple[Any, Any]:
    """Upsample's stored size and scale_factor: scale factors as floats (PyTorch's)."""
    if isinstance(scale_factor, Sequence):
        return size, tuple(float(s) for s in scale_factor)
    return size, float(scale_factor) if scale_factor else None
