"""Normalisation: `batch_norm` over the channel dimension, `layer_norm` over trailing dims.

Both are written with mean/variance reductions and elementwise ops, so their gradients (the
well-known batch-norm backward included) come from the primitives' VJP rules.
"""
from __future__ import annotations

from collections.abc import Sequence

from ... import elementwise as ew
from ... import reductions, shapes
from ...compiler.symbolic import Dim
from ...compiler.types import float64
from ...state import no_grad
from ...tensor import Tensor


def _channel_view(t: Tensor, ndim: int) -> Tensor:
    """A per-channel vector (C,) reshaped to broadcast against (N, C, *)."""
    return shapes.reshape(t, (1, t.shape[0]) + (1,) * (ndim - 2))


def _check_vector(t: Tensor | None, what: str, channels: int, x: Tensor) -> None:
    if t is not None and tuple(t.shape) != (channels,):
        raise ValueError(f"batch_norm: expected {what} of shape ({channels},) for input of "
                         f"shape {tuple(x.shape)} (C = {channels}), got {tuple(t.shape)}")


def _update_running(running: Tensor, batch: Tensor, factor: float | Tensor) -> None:
    """running <- (1 - factor) * running + factor * batch, in place, outside autograd."""
    with no_grad():
        if isinstance(factor, Tensor):
            factor = ew.cast(factor, running.dtype)
            keep = ew.sub(1.0, factor)
        else:
            keep = 1.0 - factor
        running.copy_(ew.add(ew.mul(running, keep), ew.mul(batch.detach(), factor)))


def batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None,
               training: bool = False, momentum: float | None = 0.1, eps: float = 1e-5, *,
               num_batches_tracked: Tensor | None = None) -> Tensor:
    """Normalise x of shape (N, C, *) per channel C, then scale by weight and shift by bias.

    Training normalises with the batch's mean and biased variance and, when running statistics
    are given, updates them in place with the unbiased variance: running = (1 - momentum) *
    running + momentum * batch (PyTorch's convention).  momentum=None gives a cumulative
    average, 1 / num_batches_tracked, and needs that counter (incremented here).  Evaluation
    normalises with the running statistics.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"batch_norm: expected a Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected an input of at least 2 dimensions (N, C, *), "
                         f"got shape {tuple(x.shape)}")
    channels = x.shape[1]
    for t, what in ((running_mean, "running_mean"), (running_var, "running_var"),
                    (weight, "weight"), (bias, "bias")):
        _check_vector(t, what, channels, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    axes = (0,) + tuple(range(2, x.ndim))
    if training:
        count = x.numel() // channels if channels else 0
        if count <= 1:
            raise ValueError(f"batch_norm: expected more than 1 value per channel when "
                             f"training, got input of shape {tuple(x.shape)}")
        mean = reductions.mean(x, axes, keepdim=True)
        centred = ew.sub(x, mean)
        var = reductions.mean(ew.mul(centred, centred), axes, keepdim=True)
        if running_mean is not None:
            factor = _momentum(momentum, num_batches_tracked)
            unbiased = ew.mul(var, _bessel(count, var))
            _update_running(running_mean, shapes.reshape(mean, (channels,)), factor)
            _update_running(running_var, shapes.reshape(unbiased, (channels,)), factor)
    else:
        if running_mean is None:
            raise ValueError("batch_norm: running_mean and running_var are needed in evaluation "
                             "mode (training=False)")
        centred = ew.sub(x, _channel_view(running_mean, x.ndim))
        var = _channel_view(running_var, x.ndim)
    out = ew.mul(centred, ew.rsqrt(ew.add(var, float(eps))))
    if weight is not None:
        out = ew.mul(out, _channel_view(weight, x.ndim))
    if bias is not None:
        out = ew.add(out, _channel_view(bias, x.ndim))
    return out


def _bessel(count: int | Dim, like: Tensor) -> float | Tensor:
    """count / (count - 1), the factor making a biased variance unbiased: a Python float, or
    for a dynamic count in a trace the same float64 quotient computed by the program."""
    if not isinstance(count, Dim):
        return count / (count - 1)
    ratio = ew.div(ew.as_tensor(count, float64), ew.as_tensor(count - 1, float64))
    return ew.cast(ratio, like.dtype)


def _momentum(momentum: float | None, num_batches_tracked: Tensor | None) -> float | Tensor:
    """The running-average factor for this step; counts the batch when a counter is given.

    The cumulative factor 1 / num_batches_tracked stays a tensor, so no value is read back
    from the counter (a traced graph keeps it as a buffer input).
    """
    if num_batches_tracked is not None:
        with no_grad():
            num_batches_tracked.copy_(ew.add(num_batches_tracked, 1))
    if momentum is not None:
        return float(momentum)
    if num_batches_tracked is None:
        raise ValueError("batch_norm: momentum=None (a cumulative average) needs "
                         "num_batches_tracked")
    return ew.reciprocal(ew.cast(num_batches_tracked, float64))


def layer_norm(x: Tensor, normalized_shape: int | Sequence[int], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise each sample over its trailing `normalized_shape` dims, then scale and shift."""
    if not isinstance(x, Tensor):
        raise TypeError(f"layer_norm: expected a Tensor, got {type(x).__name__}")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or x.ndim < k or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"LayerNorm: expected input with trailing dimensions {shape} "
                         f"(normalized_shape), got shape {tuple(x.shape)}")
    for t, what in ((weight, "weight"), (bias, "bias")):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"LayerNorm: expected {what} of shape {shape}, got "
                             f"{tuple(t.shape)}")
    axes = tuple(range(x.ndim - k, x.ndim))
    centred = ew.sub(x, reductions.mean(x, axes, keepdim=True))
    var = reductions.mean(ew.mul(centred, centred), axes, keepdim=True)
    out = ew.mul(centred, ew.rsqrt(ew.add(var, float(eps))))
    if weight is not None:
        out = ew.mul(out, weight)
    if bias is not None:
        out = ew.add(out, bias)
    return out


def _check_affine(t: Tensor | None, what: str, channels: int, x: Tensor, name: str) -> None:
    if t is not None and tuple(t.shape) != (channels,):
        raise ValueError(f"{name}: expected {what} of shape ({channels},) for input of shape "
                         f"{tuple(x.shape)}, got {tuple(t.shape)}")


def _affine(out: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    if weight is not None:
        out = ew.mul(out, _channel_view(weight, out.ndim))
    if bias is not None:
        out = ew.add(out, _channel_view(bias, out.ndim))
    return out


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise (N, C, *) over each group of C / num_groups channels (and all of their
    positions) with the biased variance, then scale and shift per channel."""
    name = "group_norm"
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(input).__name__}")
    if input.ndim < 2:
        raise ValueError(f"{name}: expected an input of at least 2 dimensions (N, C, *), got "
                         f"shape {tuple(input.shape)}")
    channels = input.shape[1]
    if not isinstance(num_groups, int) or num_groups < 1 or channels % num_groups:
        raise ValueError(f"{name}: expected the {channels} channels of input shape "
                         f"{tuple(input.shape)} to divide into num_groups={num_groups!r}")
    for t, what in ((weight, "weight"), (bias, "bias")):
        _check_affine(t, what, channels, input, name)
    grouped = shapes.reshape(input, (input.shape[0], num_groups, -1))
    centred = ew.sub(grouped, reductions.mean(grouped, 2, keepdim=True))
    var = reductions.mean(ew.mul(centred, centred), 2, keepdim=True)
    out = shapes.reshape(ew.mul(centred, ew.rsqrt(ew.add(var, float(eps)))), tuple(input.shape))
    return _affine(out, weight, bias)


def instance_norm(input: Tensor, running_mean: Tensor | None = None,
                  running_var: Tensor | None = None, weight: Tensor | None = None,
                  bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalise each (sample, channel) of (N, C, *) over its positions.

    With use_input_stats the statistics are each instance's own (biased variance) and given
    running statistics move toward their batch averages (the unbiased variance), PyTorch's
    rule; otherwise the running statistics normalise.
    """
    name = "instance_norm"
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(input).__name__}")
    if input.ndim < 3:
        raise ValueError(f"{name}: expected an input of at least 3 dimensions (N, C, *), got "
                         f"shape {tuple(input.shape)}")
    channels = input.shape[1]
    for t, what in ((running_mean, "running_mean"), (running_var, "running_var"),
                    (weight, "weight"), (bias, "bias")):
        _check_affine(t, what, channels, input, name)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{name}: give both running_mean and running_var, or neither")
    axes = tuple(range(2, input.ndim))
    if use_input_stats:
        count = input.numel() // max(input.shape[0] * channels, 1)
        if count <= 1:
            raise ValueError(f"{name}: expected more than 1 spatial element when training, got "
                             f"input of shape {tuple(input.shape)}")
        mean = reductions.mean(input, axes, keepdim=True)
        centred = ew.sub(input, mean)
        var = reductions.mean(ew.mul(centred, centred), axes, keepdim=True)
        if running_mean is not None:
            batch_mean = reductions.mean(shapes.reshape(mean, tuple(input.shape[:2])), 0)
            unbiased = ew.mul(shapes.reshape(var, tuple(input.shape[:2])), _bessel(count, var))
            _update_running(running_mean, batch_mean, float(momentum))
            _update_running(running_var, reductions.mean(unbiased, 0), float(momentum))
    else:
        if running_mean is None:
            raise ValueError(f"{name}: running_mean and running_var are needed when "
                             f"use_input_stats=False")
        centred = ew.sub(input, _channel_view(running_mean, input.ndim))
        var = _channel_view(running_var, input.ndim)
    return _affine(ew.mul(centred, ew.rsqrt(ew.add(var, float(eps)))), weight, bias)
