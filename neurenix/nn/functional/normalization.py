"""Normalisation: `batch_norm` over the channel dimension, `layer_norm` over trailing dims.

Both are written with mean/variance reductions and elementwise ops, so their gradients (the
well-known batch-norm backward included) come from the primitives' VJP rules.
"""
from __future__ import annotations

from collections.abc import Sequence

from ... import elementwise as ew
from ... import reductions, shapes
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
            unbiased = ew.mul(var, count / (count - 1))
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
