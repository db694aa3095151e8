"""Loss modules: `MSELoss`, `L1Loss`, `CrossEntropyLoss`, `NLLLoss`, `BCELoss`,
`BCEWithLogitsLoss`. Each holds its options and calls the functional form with its own name for
errors; class weights and `pos_weight` are buffers, so they follow `.to()` and `state_dict()`
as in PyTorch."""
from __future__ import annotations

from ..tensor import Tensor
from .functional.loss import bce, bce_with_logits, check_reduction, classification, l1, mse
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
