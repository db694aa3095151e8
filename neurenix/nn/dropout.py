"""`Dropout` and `Dropout2d`: random zeroing during training, the identity in evaluation."""
from __future__ import annotations

from ..tensor import Tensor
from .functional.dropout import check_probability, dropout, dropout2d
from .module import Module


class Dropout(Module):
    """Zero each element with probability p while training, scaling the rest by 1/(1-p).

    In evaluation mode (`model.eval()`) it passes its input through unchanged.  `inplace` is
    accepted for PyTorch compatibility; the result is always a new tensor.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = check_probability(p)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout2d(Dropout):
    """Zero whole channels of (N, C, H, W) with probability p while training, scaling the rest
    by 1/(1-p); the identity in evaluation."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        Module.__init__(self)
        self.p = check_probability(p, "Dropout2d")
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        return dropout2d(x, self.p, self.training)
