"""Normalisation layers: `BatchNorm1d/2d/3d`, `LayerNorm`, `GroupNorm`, `InstanceNorm1d/2d/3d`.

Parameter and buffer names (`weight`, `bias`, `running_mean`, `running_var`,
`num_batches_tracked`) and their shapes are PyTorch's, so state dicts load 1:1.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from ..compiler.types import DType, int64
from ..creation import ones, zeros
from ..tensor import Tensor
from . import init
from .functional.normalization import batch_norm, group_norm, instance_norm, layer_norm
from .module import Module
from .parameter import Parameter


class _BatchNorm(Module):
    """Shared state and forward of the batch-norm layers; subclasses name the accepted ranks."""

    ranks: tuple[int, ...] = ()
    layout: str = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 dtype: DType | None = None, device: Any = None, *, bias: bool = True) -> None:
        super().__init__()
        if not isinstance(num_features, int) or isinstance(num_features, bool) \
                or num_features <= 0:
            raise ValueError(f"{type(self).__name__}: num_features must be a positive int, got "
                             f"{num_features!r}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(ones(num_features, dtype=dtype, device=device))
            if bias:
                self.bias = Parameter(zeros(num_features, dtype=dtype, device=device))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features, dtype=dtype, device=device))
            self.register_buffer("running_var", ones(num_features, dtype=dtype, device=device))
            self.register_buffer("num_batches_tracked", zeros((), dtype=int64, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches counted."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Running statistics reset; scale 1 and shift 0."""
        self.reset_running_stats()
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def _check_input(self, x: Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
        if x.ndim not in self.ranks:
            ranks = " or ".join(f"{r}-D" for r in self.ranks)
            raise ValueError(f"{name}: expected {ranks} input {self.layout}, got shape "
                             f"{tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name}: expected {self.num_features} channels (num_features) in "
                             f"dimension 1, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        """PyTorch's rules, `track_running_stats` read at each call (it may be switched off
        after construction): training normalises with the batch statistics and updates the
        running ones only while tracking (by `momentum`, or the cumulative average 1 /
        num_batches_tracked for momentum None, or not at all, factor 0, for momentum None
        without a counter); evaluation uses the running statistics whenever they exist,
        tracked or not, and the batch statistics otherwise."""
        self._check_input(x)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        if self.training and not self.track_running_stats:
            running_mean = running_var = counter = None
        else:
            running_mean, running_var = self.running_mean, self.running_var
            counter = self.num_batches_tracked if self.training else None
        momentum = self.momentum
        if momentum is None and counter is None:
            momentum = 0.0
        return batch_norm(x, running_mean, running_var, self.weight, self.bias,
                          training=use_batch, momentum=momentum, eps=self.eps,
                          num_batches_tracked=counter)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs over all but the channel dimension."""

    ranks = (2, 3)
    layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) images, per channel."""

    ranks = (4,)
    layout = "(N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    """Batch normalisation of (N, C, D, H, W) volumes, per channel."""

    ranks = (5,)
    layout = "(N, C, D, H, W)"


class _InstanceNorm(_BatchNorm):
    """Shared body of the instance-norm layers: PyTorch's defaults (no affine, no running
    statistics) and its unbatched inputs (C, *)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False, device: Any = None,
                 dtype: DType | None = None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype,
                         device, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """Each instance's own statistics while training or without running statistics, the
        running ones in evaluation when tracked; momentum None leaves them unchanged."""
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
        batched_rank = self.ranks[-1]
        if x.ndim not in (batched_rank - 1, batched_rank):
            raise ValueError(f"{name}: expected {batched_rank - 1}-D (unbatched) or "
                             f"{batched_rank}-D input {self.layout}, got shape "
                             f"{tuple(x.shape)}")
        channel = x.ndim - (batched_rank - 2) - 1
        if x.shape[channel] != self.num_features:
            message = (f"{name}: expected input's size at dim={channel} to match num_features "
                       f"({self.num_features}), but got: {x.shape[channel]}.")
            if self.affine:
                raise ValueError(message)
            warnings.warn(message, UserWarning, stacklevel=2)
        unbatched = x.ndim == batched_rank - 1
        if unbatched:
            x = x.reshape((1,) + tuple(x.shape))
        out = instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training or not self.track_running_stats,
                            self.momentum if self.momentum is not None else 0.0, self.eps)
        return out.reshape(tuple(out.shape[1:])) if unbatched else out


class InstanceNorm1d(_InstanceNorm):
    """Instance normalisation of (N, C, L) or unbatched (C, L) inputs."""

    ranks = (3,)
    layout = "(N, C, L)"


class InstanceNorm2d(_InstanceNorm):
    """Instance normalisation of (N, C, H, W) or unbatched (C, H, W) inputs."""

    ranks = (4,)
    layout = "(N, C, H, W)"


class InstanceNorm3d(_InstanceNorm):
    """Instance normalisation of (N, C, D, H, W) or unbatched (C, D, H, W) inputs."""

    ranks = (5,)
    layout = "(N, C, D, H, W)"


class _AffineNorm(Module):
    """A normalisation with an optional learned per-feature scale (`weight`, ones) and shift
    (`bias`, zeros)."""

    def _affine(self, shape: Any, affine: bool, bias: bool, dtype: DType | None,
                device: Any) -> None:
        self.weight = Parameter(ones(shape, dtype=dtype, device=device)) if affine else None
        self.bias = Parameter(zeros(shape, dtype=dtype, device=device)) \
            if affine and bias else None
        for name in ("weight", "bias"):
            if getattr(self, name) is None:
                self.register_parameter(name, None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)


class GroupNorm(_AffineNorm):
    """Normalise (N, C, *) over groups of channels, with a learned per-channel affine."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, device: Any = None, dtype: DType | None = None, *,
                 bias: bool = True) -> None:
        super().__init__()
        for what, value in (("num_groups", num_groups), ("num_channels", num_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GroupNorm: {what} must be a positive int, got {value!r}")
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self._affine(num_channels, affine, bias, dtype, device)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Tensor) and (x.ndim < 2 or x.shape[1] != self.num_channels):
            raise ValueError(f"GroupNorm: expected input (N, {self.num_channels}, *) with "
                             f"num_channels={self.num_channels} in dimension 1, got shape "
                             f"{tuple(x.shape)}")
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, bias={self.bias is not None}")


class LayerNorm(_AffineNorm):
    """Normalise each sample over its trailing normalized_shape dims, with a learned affine."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True,
                 dtype: DType | None = None, device: Any = None) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) \
            else tuple(normalized_shape)
        if not shape or any(not isinstance(d, int) or d <= 0 for d in shape):
            raise ValueError(f"LayerNorm: normalized_shape must be positive ints, got "
                             f"{normalized_shape!r}")
        self.normalized_shape = shape
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self._affine(shape, elementwise_affine, bias, dtype, device)

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")
