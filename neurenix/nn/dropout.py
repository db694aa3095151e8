"""`Dropout`: random zeroing during training, the identity in evaluation."""
from __future__ import annotations

from ..tensor import Tensor
from .functional.dropout import check_probability, dropout
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
