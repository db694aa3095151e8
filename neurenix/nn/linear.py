"""`Linear`: a fully connected layer, y = x W^T + b."""
from __future__ import annotations

from typing import Any

from ..compiler.types import DType
from ..creation import empty
from ..tensor import Tensor
from . import init
from .functional.linear import linear
from .module import Module
from .parameter import Parameter


class Linear(Module):
    """Maps (*, in_features) to (*, out_features) with a learnable weight and optional bias.

    The weight has PyTorch's layout (out_features, in_features) and PyTorch's default
    initialisation, so state dicts move between the two frameworks unchanged.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: DType | None = None, device: Any = None) -> None:
        super().__init__()
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"Linear: {name} must be a non-negative int, got {n!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(empty(out_features, in_features, dtype=dtype, device=device))
        if bias:
            self.bias = Parameter(empty(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weight (a = sqrt(5)) and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        init.layer_default_(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
