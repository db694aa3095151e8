"""Loss functions with PyTorch's options and reductions, as tensor compositions.

Class-index losses pick each target's log-probability with a one-hot mask (`iota` compared with
the targets, then `where` + sum) instead of fancy indexing, so they trace into a static graph;
an ignored or out-of-range class simply matches no column. Each public function names itself
in errors; the loss modules call the same code with their class name.
"""
from __future__ import annotations

from typing import Any

from ...checks import check_range
from ...dispatch import apply
from ...elementwise import (
    abs,
    add,
    broadcast_shapes,
    cast,
    clamp,
    div,
    eq,
    exp,
    le,
    log,
    log1p,
    lt,
    minimum,
    mul,
    ne,
    neg,
    stop_gradient,
    sub,
    where,
)
from ...reductions import log_softmax, mean
from ...reductions import sum as reduce_sum
from ...tensor import Tensor

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: Any, name: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return reduction


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return mean(loss)
    if reduction == "sum":
        return reduce_sum(loss)
    return loss


def _check_tensors(name: str, **tensors: Any) -> None:
    for what, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected {what} to be a Tensor, got {type(t).__name__}")


def _check_floating(x: Tensor, what: str, name: str) -> None:
    if not x.dtype.is_floating:
        raise TypeError(f"{name}: expected a floating-point {what}, got {x.dtype.name}")


def _check_same_shape(input: Tensor, target: Tensor, name: str) -> None:
    if tuple(input.shape) != tuple(target.shape):
        raise ValueError(f"{name}: input shape {tuple(input.shape)} and target shape "
                         f"{tuple(target.shape)} differ")


def _check_broadcast(value: Tensor, shape: tuple[int, ...], what: str, name: str) -> None:
    try:
        ok = broadcast_shapes(tuple(value.shape), shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: {what} of shape {tuple(value.shape)} does not broadcast to "
                         f"the input shape {shape}")


# ---- regression -----------------------------------------------------------------------------


def mse_loss(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    """Squared error (input - target)**2, reduced."""
    return mse(input, target, reduction, "mse_loss")


def _check_regression(input: Tensor, target: Tensor, reduction: str, name: str) -> None:
    """The checks every elementwise regression loss makes before computing."""
    _check_tensors(name, input=input, target=target)
    check_reduction(reduction, name)
    _check_floating(input, "input", name)
    _check_same_shape(input, target, name)


def mse(input: Tensor, target: Tensor, reduction: str, name: str) -> Tensor:
    _check_regression(input, target, reduction, name)
    diff = sub(input, target)
    return _reduce(mul(diff, diff), reduction)


def l1_loss(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    """Absolute error |input - target|, reduced."""
    return l1(input, target, reduction, "l1_loss")


def l1(input: Tensor, target: Tensor, reduction: str, name: str) -> Tensor:
    _check_regression(input, target, reduction, name)
    return _reduce(abs(sub(input, target)), reduction)


# ---- classification over C classes ----------------------------------------------------------


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, *,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """log_softmax over the class axis (1, or 0 for an unbatched (C,) input) followed by the
    negative log-likelihood of class-index targets, or the cross entropy with a distribution
    given as class-probability targets of the input's shape."""
    return classification(input, target, weight, ignore_index, reduction, label_smoothing,
                          "cross_entropy", from_logits=True)


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, *,
             ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of class-index targets, given log-probabilities."""
    return classification(input, target, weight, ignore_index, reduction, 0.0, "nll_loss",
                          from_logits=False)


def classification(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                   reduction: str, label_smoothing: float, name: str,
                   from_logits: bool) -> Tensor:
    """Cross entropy (from_logits) or NLL; `name` is the function or layer named in errors."""
    _check_tensors(name, input=input, target=target)
    check_reduction(reduction, name)
    _check_floating(input, "input", name)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if input.ndim == 0:
        raise ValueError(f"{name}: expected input of shape (C,), (N, C) or (N, C, d1, ...), "
                         f"got a 0-d tensor")
    unbatched = input.ndim == 1
    x = input.reshape((1,) + tuple(input.shape)) if unbatched else input
    classes = x.shape[1]
    index_shape = () if unbatched else (x.shape[0],) + tuple(x.shape[2:])
    if weight is not None:
        _check_tensors(name, weight=weight)
        if tuple(weight.shape) != (classes,):
            raise ValueError(f"{name}: weight must have shape ({classes},), one per class, "
                             f"got {tuple(weight.shape)}")
    probabilities = target.dtype.is_floating and from_logits
    wrong_probabilities = probabilities and tuple(target.shape) != tuple(input.shape)
    if wrong_probabilities or (not target.dtype.is_integer and not probabilities):
        kinds = (f"integer class indices of shape {index_shape} or class probabilities of "
                 f"shape {tuple(input.shape)}" if from_logits
                 else f"integer class indices of shape {index_shape}")
        raise TypeError(f"{name}: expected {kinds}, got {target.dtype.name} target of shape "
                        f"{tuple(target.shape)}")
    if not probabilities and tuple(target.shape) != index_shape:
        raise ValueError(f"{name}: expected a target of shape {index_shape} for input of shape "
                         f"{tuple(input.shape)}, got {tuple(target.shape)}")
    logp = log_softmax(x, 1) if from_logits else x
    w = None
    if weight is not None:
        w = cast(weight, x.dtype).reshape((1, classes) + (1,) * (x.ndim - 2))
    if probabilities:
        t = cast(target, x.dtype).reshape(tuple(x.shape))
        loss = _soft_targets(logp, t, w, label_smoothing)
        loss = loss.reshape(()) if unbatched else loss
        return _reduce(loss, reduction)
    _check_classes(target, classes, ignore_index, name)
    t = target.reshape((x.shape[0], 1) + tuple(x.shape[2:]))
    loss, target_weight = _hard_targets(logp, t, w, ignore_index, label_smoothing)
    if reduction == "mean":
        # PyTorch's weighted mean: divided by the summed weights of the non-ignored targets
        # (0 / 0 = nan when every target is ignored)
        return div(reduce_sum(loss), reduce_sum(target_weight))
    if reduction == "sum":
        return reduce_sum(loss)
    return loss.reshape(index_shape)


def _check_classes(target: Tensor, classes: int, ignore_index: int, name: str) -> None:
    """Every target in [0, classes) or equal to ignore_index (checked after the call when
    traced); the message names the smallest offender below 0, else the largest."""
    if 0 <= ignore_index < classes:
        counted = target
    else:  # ignored targets are moved into range, so only the others can fail
        counted = where(eq(target, ignore_index), 0, target)
    check_range(counted, 0, classes, lambda bad: ValueError(
        f"{name}: target {bad} is out of range for {classes} classes (expected 0 <= target "
        f"< {classes} or ignore_index={ignore_index})"))


def _hard_targets(logp: Tensor, t: Tensor, w: Tensor | None, ignore_index: int,
                  smoothing: float) -> tuple[Tensor, Tensor]:
    """Per-element loss and target weight for class indices t of shape (N, 1, d1, ...)."""
    classes = logp.shape[1]
    ramp = apply("iota", shape=(1, classes) + (1,) * (logp.ndim - 2), axis=1,
                 dtype=t.dtype.name)
    hit = eq(t, ramp)
    valid = ne(t, ignore_index).reshape(tuple(t.shape[:1]) + tuple(t.shape[2:]))
    picked = apply("reduce_sum", where(hit, logp, 0.0), axes=(1,))
    if w is None:
        target_weight = cast(valid, logp.dtype)
    else:
        target_weight = where(valid, apply("reduce_sum", where(hit, w, 0.0), axes=(1,)), 0.0)
    loss = neg(mul(target_weight, picked))
    if smoothing:
        # PyTorch mixes in the (weighted) mean over all classes: eps / C * -sum_c w_c logp_c
        spread = logp if w is None else mul(logp, w)
        uniform = neg(apply("reduce_sum", spread, axes=(1,)))
        loss = add(mul(loss, 1.0 - smoothing), mul(uniform, smoothing / classes))
    # ignored elements contribute exactly 0, even where their log-probabilities are not finite
    return where(valid, loss, 0.0), target_weight


def _soft_targets(logp: Tensor, t: Tensor, w: Tensor | None, smoothing: float) -> Tensor:
    """Cross entropy -sum_c w_c p_c logp_c with probability targets (smoothed toward uniform)."""
    if smoothing:
        t = add(mul(t, 1.0 - smoothing), smoothing / logp.shape[1])
    terms = mul(logp, t)
    if w is not None:
        terms = mul(terms, w)
    return neg(apply("reduce_sum", terms, axes=(1,)))


# ---- binary ---------------------------------------------------------------------------------


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, *,
                         reduction: str = "mean") -> Tensor:
    """-(t log x + (1 - t) log(1 - x)) for probabilities x, with each log clamped at -100 as
    PyTorch does, so x = 0 or 1 gives a finite loss; the gradient is PyTorch's,
    (x - t) / max(x (1 - x), 1e-12), finite at 0 and 1 too (see `_bce`)."""
    return bce(input, target, weight, reduction, "binary_cross_entropy")


def _clamped_log(v: Tensor) -> Tensor:
    # log of a non-positive value is taken of 1 instead and replaced by -100 afterwards, so
    # neither the value nor the gradient becomes inf or nan there; nan still propagates
    nonpositive = le(v, 0.0)
    safe = where(nonpositive, 1.0, v)
    return where(nonpositive, -100.0, clamp(log(safe), min=-100.0))


BCE_EPS = 1e-12  # PyTorch's floor on x (1 - x) in the gradient of binary cross entropy


def _bce(x: Tensor, t: Tensor) -> Tensor:
    """PyTorch's elementwise binary cross entropy, value and gradient.

    The value is PyTorch's kernel, (t - 1) clog(1 - x) - t clog(x) with clog the log clamped
    at -100 (its order of terms gives PyTorch's signed zeros).  The gradient in x is PyTorch's
    (x - t) / max(x (1 - x), 1e-12).  Where x (1 - x) >= 1e-12 that is the value's own
    derivative (the logs are far above -100 there).  Below (x within about 1e-12 of 0 or 1,
    both included) the value is taken of stop_gradient(x) and the gradient comes from
    `- (stop_gradient(x) - x) * slope`, slope = stop_gradient((x - t) / 1e-12): a +0 that
    leaves the value, its zeros' signs included, as it is.  The gradient in t is the value's
    own, -clog(x) + clog(1 - x), so +-100 at x = 0 or 1 where PyTorch's is +-inf."""
    clamped = lt(mul(sub(1.0, x), x), BCE_EPS)
    xs = where(clamped, stop_gradient(x), x)
    value = sub(mul(sub(t, 1.0), _clamped_log(sub(1.0, xs))), mul(t, _clamped_log(xs)))
    slope = stop_gradient(where(clamped, div(sub(x, t), BCE_EPS), 0.0))
    return sub(value, mul(sub(stop_gradient(x), x), slope))


def bce(input: Tensor, target: Tensor, weight: Tensor | None, reduction: str,
        name: str) -> Tensor:
    _check_tensors(name, input=input, target=target)
    check_reduction(reduction, name)
    _check_floating(input, "input", name)
    _check_same_shape(input, target, name)
    check_range(input, 0.0, 1.0, lambda bad: ValueError(
        f"{name}: input values must be probabilities in [0, 1], got {bad} (apply a sigmoid "
        f"first, or use BCEWithLogitsLoss on raw scores)"), high_inclusive=True)
    target = cast(target, input.dtype) if target.dtype != input.dtype else target
    loss = _bce(input, target)
    if weight is not None:
        _check_tensors(name, weight=weight)
        _check_broadcast(weight, tuple(input.shape), "weight", name)
        loss = mul(loss, weight)
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Tensor | None = None, *, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """Binary cross entropy of sigmoid(input), computed from the logits without overflow:
    (1 - t) x - (1 + (pos_weight - 1) t) log_sigmoid(x)."""
    return bce_with_logits(input, target, weight, pos_weight, reduction,
                           "binary_cross_entropy_with_logits")


def _log_sigmoid(x: Tensor) -> Tensor:
    # min(x, 0) - log(1 + exp(-|x|)): exp never overflows. At x = 0 the gradient is still the
    # exact 1/2: minimum splits a tie's gradient in half and d|x|/dx is 0 there.
    return sub(minimum(x, 0.0), log1p(exp(neg(abs(x)))))


def bce_with_logits(input: Tensor, target: Tensor, weight: Tensor | None,
                    pos_weight: Tensor | None, reduction: str, name: str) -> Tensor:
    _check_tensors(name, input=input, target=target)
    check_reduction(reduction, name)
    _check_floating(input, "input", name)
    _check_same_shape(input, target, name)
    target = cast(target, input.dtype) if target.dtype != input.dtype else target
    log_p = _log_sigmoid(input)
    if pos_weight is None:
        positive = log_p
    else:
        _check_tensors(name, pos_weight=pos_weight)
        _check_broadcast(pos_weight, tuple(input.shape), "pos_weight", name)
        positive = mul(add(mul(sub(pos_weight, 1.0), target), 1.0), log_p)
    loss = sub(mul(sub(1.0, target), input), positive)
    if weight is not None:
        _check_tensors(name, weight=weight)
        _check_broadcast(weight, tuple(input.shape), "weight", name)
        loss = mul(loss, weight)
    return _reduce(loss, reduction)
