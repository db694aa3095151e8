"""Loss modules: `MSELoss`, `L1Loss`, `CrossEntropyLoss`, `NLLLoss`, `BCELoss`,
`BCEWithLogitsLoss`, `SmoothL1Loss`, `HuberLoss`, `KLDivLoss`, `TripletMarginLoss`. Each holds
its options and calls the functional form with its own name for errors; class weights and
`pos_weight` are buffers, so they follow `.to()` and `state_dict()` as in PyTorch."""
from __future__ import annotations

from ..tensor import Tensor
from .functional.loss import (
    KL_REDUCTIONS,
    bce,
    bce_with_logits,
    check_reduction,
    classification,
    huber,
    kl,
    l1,
    legacy_reduction,
    mse,
    smooth_l1,
    triplet,
)
from .module import Module


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, type(self).__name__)


def _optional_tensor(value: Tensor | None, what: str, name: str) -> Tensor | None:
    if value is not None and not isinstance(value, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor or None, got {type(value).__name__}")
    return value


class MSELoss(_Loss):
    """Mean squared error: (input - target)**2, reduced."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse(input, target, self.reduction, type(self).__name__)


class L1Loss(_Loss):
    """Mean absolute error: |input - target|, reduced."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return l1(input, target, self.reduction, type(self).__name__)


class _ClassLoss(_Loss):
    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.register_buffer("weight", _optional_tensor(weight, "weight", type(self).__name__))
        self.ignore_index = ignore_index


class CrossEntropyLoss(_ClassLoss):
    """log_softmax over the class axis followed by the negative log-likelihood; targets are
    class indices or class probabilities (with optional label smoothing)."""

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(weight, ignore_index, reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got "
                             f"{label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return classification(input, target, self.weight, self.ignore_index, self.reduction,
                              self.label_smoothing, type(self).__name__, from_logits=True)


class NLLLoss(_ClassLoss):
    """Negative log-likelihood of class-index targets, given log-probabilities."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return classification(input, target, self.weight, self.ignore_index, self.reduction,
                              0.0, type(self).__name__, from_logits=False)


class BCELoss(_Loss):
    """Binary cross entropy of probabilities in [0, 1] (logs clamped at -100)."""

    def __init__(self, weight: Tensor | None = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.register_buffer("weight", _optional_tensor(weight, "weight", "BCELoss"))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return bce(input, target, self.weight, self.reduction, type(self).__name__)


class BCEWithLogitsLoss(_Loss):
    """A sigmoid and binary cross entropy in one numerically stable step; pos_weight scales
    the positive term (one value per class, broadcast along the last axis)."""

    def __init__(self, weight: Tensor | None = None, pos_weight: Tensor | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        name = type(self).__name__
        self.register_buffer("weight", _optional_tensor(weight, "weight", name))
        self.register_buffer("pos_weight", _optional_tensor(pos_weight, "pos_weight", name))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return bce_with_logits(input, target, self.weight, self.pos_weight, self.reduction,
                               type(self).__name__)


class SmoothL1Loss(_Loss):
    """0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere, reduced."""

    def __init__(self, size_average: bool | None = None, reduce: bool | None = None,
                 reduction: str = "mean", beta: float = 1.0) -> None:
        super().__init__(legacy_reduction(size_average, reduce, reduction, "SmoothL1Loss"))
        if beta < 0:
            raise ValueError(f"SmoothL1Loss: beta must be non-negative, got {beta}")
        self.beta = beta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return smooth_l1(input, target, self.reduction, self.beta, type(self).__name__)


class HuberLoss(_Loss):
    """0.5 d^2 where |d| < delta, delta (|d| - 0.5 delta) elsewhere, reduced."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction)
        if delta <= 0:
            raise ValueError(f"HuberLoss: delta must be positive, got {delta}")
        self.delta = delta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return huber(input, target, self.reduction, self.delta, type(self).__name__)


class KLDivLoss(Module):
    """The KL divergence of log-probability inputs from the target distribution (given as
    probabilities, or as log-probabilities with log_target); 'batchmean' is the true KL."""

    def __init__(self, size_average: bool | None = None, reduce: bool | None = None,
                 reduction: str = "mean", log_target: bool = False) -> None:
        super().__init__()
        reduction = legacy_reduction(size_average, reduce, reduction, "KLDivLoss")
        if reduction not in KL_REDUCTIONS:
            raise ValueError(f"KLDivLoss: reduction must be one of {', '.join(KL_REDUCTIONS)}, "
                             f"got {reduction!r}")
        self.reduction = reduction
        self.log_target = log_target

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return kl(input, target, self.reduction, self.log_target, type(self).__name__)


class TripletMarginLoss(_Loss):
    """max(d(a, p) - d(a, n) + margin, 0) with the pairwise p-distance d."""

    def __init__(self, margin: float = 1.0, p: float = 2.0, eps: float = 1e-6,
                 swap: bool = False, size_average: bool | None = None,
                 reduce: bool | None = None, reduction: str = "mean") -> None:
        super().__init__(legacy_reduction(size_average, reduce, reduction, "TripletMarginLoss"))
        self.margin = margin
        self.p = p
        self.eps = eps
        self.swap = swap

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return triplet(anchor, positive, negative, self.margin, self.p, self.eps, self.swap,
                       self.reduction, type(self).__name__)
