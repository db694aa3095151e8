"""Lookups by integer index: `embedding` (rows of a table) and `one_hot`.

Both are a `gather` along axis 0.  The indices are checked by `value_checks.check_range`:
eagerly before the lookup, and after every call of a compiled program, so both raise the same
error naming the layer (compiled code never reads outside the table meanwhile).
"""
from __future__ import annotations

from ... import elementwise as ew
from ... import reductions, shapes
from ...checks import check_range
from ...compiler.types import int64
from ...dispatch import apply
from ...tensor import Tensor


def _check_indices(idx: Tensor, name: str) -> None:
    if not isinstance(idx, Tensor):
        raise TypeError(f"{name}: expected a Tensor of indices, got {type(idx).__name__}")
    if not idx.dtype.is_integer:
        raise TypeError(f"{name}: expected integer indices, got {idx.dtype.name}")


def _gather_rows(table: Tensor, idx: Tensor, name: str, what: str) -> Tensor:
    size = table.shape[0]
    check_range(idx, 0, size, lambda bad: IndexError(
        f"{name}: index {bad} out of range for {size} {what}"))
    return apply("gather", table, idx, axis=0)


def embedding(idx: Tensor, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of weight (num_embeddings, embedding_dim) at idx: shape idx.shape + (dim,).

    The row at padding_idx is looked up normally but receives no gradient.
    """
    _check_indices(idx, "Embedding")
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        raise ValueError(f"Embedding: expected a 2-D weight (num_embeddings, embedding_dim), "
                         f"got {getattr(weight, 'shape', type(weight).__name__)}")
    num = weight.shape[0]
    out = _gather_rows(weight, idx, "Embedding", "embeddings")
    if padding_idx is None:
        return out
    pad = normalize_padding_idx(padding_idx, num)
    # Where the index is the padding row, use a gradient-free copy of the looked-up value: the
    # forward is unchanged and the padding row's gradient is zero, as in PyTorch.
    at_pad = shapes.unsqueeze(ew.eq(idx, pad), -1)
    return ew.where(at_pad, apply("stop_gradient", out), out)


def normalize_padding_idx(padding_idx: int, num_embeddings: int) -> int:
    """padding_idx in [0, num_embeddings) (negatives count from the end), or a ValueError."""
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"Embedding: padding_idx {padding_idx} must be within "
                         f"[-{num_embeddings}, {num_embeddings}) for {num_embeddings} "
                         f"embeddings")
    return padding_idx % num_embeddings


def one_hot(idx: Tensor, num_classes: int = -1) -> Tensor:
    """An int64 tensor of shape idx.shape + (num_classes,) with a 1 at each index.

    num_classes=-1 uses max(idx) + 1, which depends on the data (as in PyTorch), so a traced
    model should pass num_classes explicitly.
    """
    _check_indices(idx, "one_hot")
    if num_classes == -1:
        if idx.numel() == 0:
            raise ValueError("one_hot: cannot infer num_classes from an empty tensor; pass it")
        num_classes = int(reductions.amax(idx).item()) + 1
    if num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be positive or -1, got {num_classes}")
    # Looking idx up in the ramp 0..C-1 returns idx itself, after the bounds check: an index
    # outside [0, C) is an error instead of a silently all-zero row.
    ramp = apply("iota", shape=(num_classes,), axis=0, dtype="int64")
    checked = _gather_rows(ramp, idx, "one_hot", "classes")
    return ew.cast(ew.eq(shapes.unsqueeze(checked, -1), ramp), int64)
