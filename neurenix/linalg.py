"""Matrix products with torch.matmul's rules for 1-D operands and batch broadcasting."""
from __future__ import annotations

from .dispatch import apply
from .elementwise import as_tensor, broadcast_shapes, result_dtype
from .shapes import broadcast_to, reshape
from .tensor import Tensor


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b: vectors are promoted to matrices and back; batch dimensions broadcast."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"matmul: expected two Tensors, got {type(a).__name__} and "
                        f"{type(b).__name__}")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: both arguments need at least 1 dimension, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: expected both operands to have the same dtype, got "
                        f"{a.dtype.name} and {b.dtype.name}")
    dt = result_dtype(a, b)
    a, b = as_tensor(a, dt), as_tensor(b, dt)
    a2 = reshape(a, (1,) + a.shape) if a.ndim == 1 else a
    b2 = reshape(b, b.shape + (1,)) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be "
                         f"multiplied ({a2.shape[-2]}x{a2.shape[-1]} and "
                         f"{b2.shape[-2]}x{b2.shape[-1]})")
    batch = broadcast_shapes(a2.shape[:-2], b2.shape[:-2], op="matmul")
    a3 = broadcast_to(a2, batch + a2.shape[-2:])
    b3 = broadcast_to(b2, batch + b2.shape[-2:])
    out = apply("matmul", a3, b3)
    rows = (a2.shape[-2],) if a.ndim > 1 else ()
    cols = (b2.shape[-1],) if b.ndim > 1 else ()
    shape = batch + rows + cols
    return reshape(out, shape)


def mm(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"mm: expected 2-D tensors, got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return matmul(a, b)


def bmm(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0]:
        raise ValueError(f"bmm: expected 3-D tensors with the same batch size, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return matmul(a, b)


def dot(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"dot: expected 1-D tensors, got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return matmul(a, b)
