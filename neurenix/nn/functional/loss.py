"""Loss functions with PyTorch's options and reductions, as tensor compositions.

Class-index losses pick each target's log-probability with a one-hot mask (`iota` compared with
the targets, then `where` + sum) instead of fancy indexing, so they trace into a static graph;
an ignored or out-of-range class simply matches no column. Each public function names itself
in errors; the loss modules call the same code with their class name.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ... import compile_hook
from ...autograd import OutputNode
from ...checks import check_range
from ...compiler.types import float32
from ...dispatch import apply
from ...eager_kernels.loss import class_loss
from ...eager_kernels.record import eligible
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
from ...reductions import divisor, log_softmax, mean
from ...reductions import sum as reduce_sum
from ...state import is_grad_enabled, is_tracing
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
    if weight is None and not probabilities and _after_compiled(input, target):
        return _compiled_loss(name, ignore_index, reduction, label_smoothing,
                              from_logits)(input, target)
    if not probabilities:
        _check_classes(target, classes, ignore_index, name)
        if _kernel_eligible(x, target, weight):
            def composite(x: Tensor) -> tuple[Tensor]:
                return (_primitives(x, target, weight, ignore_index, reduction,
                                    label_smoothing, from_logits, index_shape),)

            return class_loss(x, target, weight, ignore_index, reduction, label_smoothing,
                              from_logits, index_shape, composite)
    return _primitives(x, target, weight, ignore_index, reduction, label_smoothing,
                       from_logits, index_shape)


def _kernel_eligible(x: Tensor, target: Tensor, weight: Tensor | None) -> bool:
    """Whether a class-index loss may run as the eager kernel (`eager_kernels.loss`): a
    non-empty host input, host targets, and a weight (if any) that is a host constant of the
    input's dtype (a weight that requires grad takes the primitives, which differentiate it)."""
    if x.numel() == 0 or type(target._data) is not np.ndarray:
        return False
    if weight is not None and weight.requires_grad:
        return False
    return eligible(x, weight)


def _primitives(x: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                reduction: str, label_smoothing: float, from_logits: bool,
                index_shape: tuple) -> Tensor:
    """`classification` as tensor primitives, on the batched input x (N, C, d1, ...) and
    checked targets."""
    unbatched = index_shape == ()
    classes = x.shape[1]
    probabilities = target.dtype.is_floating and from_logits
    logp = log_softmax(x, 1) if from_logits else x
    w = None
    if weight is not None:
        w = cast(weight, x.dtype).reshape((1, classes) + (1,) * (x.ndim - 2))
    if probabilities:
        t = cast(target, x.dtype).reshape(tuple(x.shape))
        loss = _soft_targets(logp, t, w, label_smoothing)
        loss = loss.reshape(()) if unbatched else loss
        return _reduce(loss, reduction)
    t = target.reshape((x.shape[0], 1) + tuple(x.shape[2:]))
    loss, target_weight = _hard_targets(logp, t, w, ignore_index, label_smoothing)
    if reduction == "mean":
        # PyTorch's weighted mean: divided by the summed weights of the non-ignored targets
        # (0 / 0 = nan when every target is ignored)
        return div(reduce_sum(loss), reduce_sum(target_weight))
    if reduction == "sum":
        return reduce_sum(loss)
    return loss.reshape(index_shape)


_COMPILED: dict[tuple, Any] = {}
"""The cached compiled losses (`_compiled_loss`), by what they bake in."""


def _after_compiled(input: Tensor, target: Tensor) -> bool:
    """Whether a classification loss of `input` should run as a compiled program: eagerly,
    under grad mode, on host float32 logits that a compiled call just produced (a module
    compiled by `neurenix.compile` in an ordinary training loop), with host class indices.
    There the loss's 29 eager primitives cost more than the model's programs (PyTorch's is
    one fused kernel); a compiled loss is one call and one backward program, compiled once
    per shape alongside the model's."""
    node = input._node
    return (type(node) is OutputNode and node.parent.name == "compiled_backward"
            and is_grad_enabled() and not is_tracing() and input._dtype == float32
            and type(input._data) is np.ndarray and type(target._data) is np.ndarray
            and target._dtype.is_integer and not target.requires_grad)


def _compiled_loss(name: str, ignore_index: int, reduction: str, smoothing: float,
                   from_logits: bool) -> Any:
    """`classification` of (input, target) with these settings, compiled (cached)."""
    key = (name, ignore_index, reduction, smoothing, from_logits)
    compiled = _COMPILED.get(key)
    if compiled is None:
        def loss(input: Tensor, target: Tensor) -> Tensor:
            return classification(input, target, None, ignore_index, reduction, smoothing,
                                  name, from_logits)

        loss.__name__ = loss.__qualname__ = f"{name}[compiled]"
        compiled = _COMPILED[key] = compile_hook.compiler()(loss)
    return compiled


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


# ---- robust regression, divergence, metric learning -----------------------------------------


def legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str,
                     name: str) -> str:
    """PyTorch's mapping of the deprecated size_average / reduce flags onto `reduction`."""
    if size_average is None and reduce is None:
        return reduction
    warnings.warn(f"{name}: size_average and reduce are deprecated; use reduction",
                  UserWarning, stacklevel=3)
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


def smooth_l1_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
                   reduce: bool | None = None, reduction: str = "mean",
                   beta: float = 1.0) -> Tensor:
    """0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere (d = input - target); beta 0
    is the L1 loss."""
    reduction = legacy_reduction(size_average, reduce, reduction, "smooth_l1_loss")
    return smooth_l1(input, target, reduction, beta, "smooth_l1_loss")


def smooth_l1(input: Tensor, target: Tensor, reduction: str, beta: float, name: str) -> Tensor:
    _check_regression(input, target, reduction, name)
    if beta < 0:
        raise ValueError(f"{name}: beta must be non-negative, got {beta}")
    diff = sub(input, target)
    if beta == 0:
        return _reduce(abs(diff), reduction)
    size = abs(diff)
    quadratic = div(mul(mul(diff, diff), 0.5), float(beta))
    return _reduce(where(lt(size, float(beta)), quadratic, sub(size, 0.5 * beta)), reduction)


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean",
               delta: float = 1.0, weight: Tensor | None = None) -> Tensor:
    """0.5 d^2 where |d| < delta, delta (|d| - 0.5 delta) elsewhere (d = input - target)."""
    return huber(input, target, reduction, delta, "huber_loss", weight)


def huber(input: Tensor, target: Tensor, reduction: str, delta: float, name: str,
          weight: Tensor | None = None) -> Tensor:
    _check_regression(input, target, reduction, name)
    if delta <= 0:
        raise ValueError(f"{name}: delta must be positive, got {delta}")
    diff = sub(input, target)
    size = abs(diff)
    loss = where(lt(size, float(delta)), mul(mul(diff, diff), 0.5),
                 mul(sub(size, 0.5 * delta), float(delta)))
    if weight is not None:
        _check_tensors(name, weight=weight)
        _check_broadcast(weight, tuple(input.shape), "weight", name)
        loss = mul(loss, weight)
    return _reduce(loss, reduction)


KL_REDUCTIONS = ("none", "batchmean", "mean", "sum")


def kl_div(input: Tensor, target: Tensor, size_average: bool | None = None,
           reduce: bool | None = None, reduction: str = "mean",
           log_target: bool = False) -> Tensor:
    """KL(target || exp(input)) pointwise, for log-probabilities `input`:
    target (log target - input), or exp(target) (target - input) when log_target; reduced
    by 'batchmean' (the sum over the batch size, the true KL divergence), 'mean', 'sum' or
    'none'."""
    reduction = legacy_reduction(size_average, reduce, reduction, "kl_div")
    return kl(input, target, reduction, log_target, "kl_div")


def _xlogx(t: Tensor) -> Tensor:
    """t log t with 0 log 0 = 0 (PyTorch's xlogy(t, t))."""
    zero = eq(t, 0.0)
    return where(zero, 0.0, mul(t, log(where(zero, 1.0, t))))


def kl(input: Tensor, target: Tensor, reduction: str, log_target: bool, name: str) -> Tensor:
    _check_tensors(name, input=input, target=target)
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {', '.join(KL_REDUCTIONS)}, got "
                         f"{reduction!r}")
    _check_floating(input, "input", name)
    _check_floating(target, "target", name)
    if log_target:
        loss = mul(exp(target), sub(target, input))
    else:
        loss = sub(_xlogx(target), mul(target, input))
    if reduction == "mean":
        warnings.warn(f"{name}: reduction: 'mean' divides the total loss by both the batch "
                      "size and the support size. 'batchmean' divides only by the batch size, "
                      "and aligns with the KL div math definition.", UserWarning, stacklevel=3)
    if reduction == "batchmean":
        total = reduce_sum(loss)
        return div(total, divisor(input.shape[0])) if input.ndim else total
    return _reduce(loss, reduction)


def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor,
                        margin: float = 1.0, p: float = 2.0, eps: float = 1e-6,
                        swap: bool = False, size_average: bool | None = None,
                        reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """max(d(a, p) - d(a, n) + margin, 0) with d the pairwise p-distance; swap uses
    min(d(a, n), d(p, n)) as the negative distance."""
    reduction = legacy_reduction(size_average, reduce, reduction, "triplet_margin_loss")
    return triplet(anchor, positive, negative, margin, p, eps, swap, reduction,
                   "triplet_margin_loss")


def triplet(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float, p: float,
            eps: float, swap: bool, reduction: str, name: str) -> Tensor:
    from .distance import pairwise_distance

    _check_tensors(name, anchor=anchor, positive=positive, negative=negative)
    check_reduction(reduction, name)
    dims = (anchor.ndim, positive.ndim, negative.ndim)
    if len(set(dims)) != 1 or dims[0] not in (1, 2):
        raise ValueError(f"{name}: expected anchor, positive and negative of the same rank, "
                         f"1-D (D) or 2-D (N, D), got shapes {tuple(anchor.shape)}, "
                         f"{tuple(positive.shape)} and {tuple(negative.shape)}")
    d_pos = pairwise_distance(anchor, positive, p, eps)
    d_neg = pairwise_distance(anchor, negative, p, eps)
    if swap:
        d_neg = minimum(d_neg, pairwise_distance(positive, negative, p, eps))
    gap = add(sub(d_pos, d_neg), float(margin))
    # clamp_min(gap, 0), its gradient passing at 0 as PyTorch's does
    return _reduce(where(lt(gap, 0.0), 0.0, gap), reduction)
