"""`linear`: y = x W^T + b, the fully connected layer's computation."""
from __future__ import annotations

from ... import eager_kernels, linalg, shapes
from ... import elementwise as ew
from ...eager_kernels import linear as linear_kernel
from ...tensor import Tensor
from ..input_errors import not_a_tensor, wrong_dtype


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias for x of shape (*, in_features) and weight (out_features, in_features).

    Shapes and dtypes are checked up front so a mismatch names the layer and the features
    rather than surfacing as a matmul error.
    """
    for name, t in (("input", x), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise not_a_tensor("Linear", t, name)
    if weight.ndim != 2:
        raise ValueError(f"Linear: expected a 2-D weight (out_features, in_features), got shape "
                         f"{tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if x.ndim == 0 or x.shape[-1] != in_features:
        raise ValueError(f"Linear: expected input with last dimension {in_features} "
                         f"(in_features), got shape {tuple(x.shape)}")
    if x.dtype != weight.dtype:
        raise wrong_dtype("Linear", weight.dtype, x.dtype, "the weight's")
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(f"Linear: expected a bias of shape ({out_features},) "
                         f"(out_features,), got {tuple(bias.shape)}")
    if eager_kernels.eligible(x, weight, bias):
        return linear_kernel.linear(x, weight, bias, _primitives)
    return _primitives(x, weight, bias)


def _primitives(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`linear` as tensor primitives (the semantics; what a trace records)."""
    out = linalg.matmul(x, shapes.transpose(weight, 0, 1))
    return out if bias is None else ew.add(out, bias)
