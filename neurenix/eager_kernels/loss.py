"""Cross entropy and NLL with class-index targets as one eager kernel.

The primitive composition (`nn.functional.loss`) dispatches some 20 operations for a loss and
as many for its backward (a one-hot mask, selects, reductions); here it is one NumPy pass
each way: log-softmax, the picked log-probabilities gathered directly, the (weighted,
smoothed) reduction, and the closed-form gradient `dlogp - softmax * sum(dlogp)`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..tensor import Tensor
from .record import Arrays, record


def class_loss(x: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
               reduction: str, smoothing: float, from_logits: bool, out_shape: tuple,
               composite: Callable[..., Sequence[Tensor]]) -> Tensor:
    """The classification loss of logits (from_logits) or log-probabilities x of shape
    (N, C, d1, ...) against checked class indices `target` of shape (N, d1, ...), as
    `classification` computes it; `out_shape` is the unreduced loss's shape and `weight`
    (C,) a constant of x's dtype. `composite(x)` is the same loss as primitives."""
    a = np.asarray(x._data)
    t = np.asarray(target._data).reshape(a.shape[:1] + a.shape[2:])
    classes = a.shape[1]
    dtype = a.dtype
    valid = t != ignore_index
    safe = np.expand_dims(np.where(valid, t, 0), 1)
    w = None if weight is None else np.asarray(weight._data, dtype)
    with np.errstate(all="ignore"):  # inf and nan as the primitives give them, silently
        if from_logits:
            shifted = a - a.max(axis=1, keepdims=True)
            e = np.exp(shifted)
            total = np.add.reduce(e, axis=1, dtype=dtype, keepdims=True)
            logp = shifted - np.log(total)
        else:
            logp = a
        picked = np.take_along_axis(logp, safe, 1)[:, 0]
        target_weight = valid.astype(dtype) if w is None else np.where(valid, w[safe[:, 0]], 0)
        target_weight = target_weight.astype(dtype, copy=False)
        loss = -(target_weight * picked)
        if smoothing:
            spread = logp if w is None else logp * w.reshape((1, classes) + (1,) * (a.ndim - 2))
            uniform = -np.add.reduce(spread, axis=1, dtype=dtype)
            loss = loss * dtype.type(1.0 - smoothing) + uniform * dtype.type(smoothing / classes)
        loss = np.where(valid, loss, dtype.type(0))
        if reduction == "mean":
            denominator = np.add.reduce(target_weight, axis=None, dtype=dtype)
            value = np.add.reduce(loss, axis=None, dtype=dtype) / denominator
        elif reduction == "sum":
            value = np.add.reduce(loss, axis=None, dtype=dtype)
        else:
            value = loss.reshape(out_shape)

    def backward(grads: Arrays) -> Arrays:
        g = grads[0]
        if reduction == "mean":
            per = np.broadcast_to(g / denominator, loss.shape)
        elif reduction == "sum":
            per = np.broadcast_to(g, loss.shape)
        else:
            per = g.reshape(loss.shape)
        per = np.where(valid, per, dtype.type(0))
        dlogp = np.zeros_like(logp)
        np.put_along_axis(dlogp, safe, np.expand_dims(
            -(per * target_weight) * dtype.type(1.0 - smoothing if smoothing else 1.0), 1), 1)
        if smoothing:
            share = np.expand_dims(per * dtype.type(-smoothing / classes), 1)
            dlogp += share if w is None else share * w.reshape((1, classes) + (1,) * (a.ndim - 2))
        if not from_logits:
            return [dlogp]
        spread_back = np.add.reduce(dlogp, axis=1, dtype=dtype, keepdims=True) / total
        return [dlogp - e * spread_back]

    return record("ClassificationLoss", (x,), (value,), backward, composite)[0]
