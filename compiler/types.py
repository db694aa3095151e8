"""Dtypes and static tensor types shared by the op registry, the IR and the frontend."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    """A tensor element type: its short IR name, its NumPy type and its category."""

    name: str
    short: str
    np_type: type
    category: int  # 0 bool, 1 integer, 2 floating: the order of PyTorch's type promotion

    @property
    def itemsize(self) -> int:
        return np.dtype(self.np_type).itemsize

    @property
    def is_floating(self) -> bool:
        return self.category == 2

    @property
    def is_integer(self) -> bool:
        return self.category == 1

    @property
    def is_signed(self) -> bool:
        """Whether an integer type is signed (two's complement); False for bool and unsigned."""
        return np.dtype(self.np_type).kind == "i"

    def __repr__(self) -> str:
        return f"neurenix.{self.name}"


bool_ = DType("bool", "i1", np.bool_, 0)
int32 = DType("int32", "i32", np.int32, 1)
int64 = DType("int64", "i64", np.int64, 1)
float32 = DType("float32", "f32", np.float32, 2)
float64 = DType("float64", "f64", np.float64, 2)
uint32 = DType("uint32", "u32", np.uint32, 1)

ALL_DTYPES: tuple[DType, ...] = (bool_, int32, int64, float32, float64)
"""The tensor dtypes: what the op registry, the graph IR and the frontend accept."""
KERNEL_DTYPES: tuple[DType, ...] = ALL_DTYPES + (uint32,)
"""The kernel IR's dtypes: the tensor dtypes and uint32, which only kernel expressions use
(the hash of random numbers, decomposed for targets without a native generator)."""
_BY_NAME = {d.name: d for d in ALL_DTYPES} | {d.short: d for d in ALL_DTYPES}
_BY_NUMPY = {np.dtype(d.np_type): d for d in ALL_DTYPES}


def dtype_from_name(name: str) -> DType:
    """The DType called `name` ('float32' or its IR short form 'f32')."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of "
                         f"{', '.join(d.name for d in ALL_DTYPES)}") from None


def dtype_from_numpy(np_dtype) -> DType:
    """The DType of a NumPy dtype; float16 and unsigned types are refused with a clear error."""
    try:
        return _BY_NUMPY[np.dtype(np_dtype)]
    except KeyError:
        raise TypeError(f"unsupported dtype {np.dtype(np_dtype)}; Neurenix supports "
                        f"{', '.join(d.name for d in ALL_DTYPES)}") from None


def promote(a: DType, b: DType) -> DType:
    """The result dtype of combining two tensors (PyTorch's rule: category first, then size)."""
    if a.category != b.category:
        return a if a.category > b.category else b
    return a if a.itemsize >= b.itemsize else b


def same_shape(a: tuple, b: tuple) -> bool:
    """Whether two shapes are the same sizes, compared structurally: a dynamic size
    (`compiler.symbolic.Dim`) equals only an equal polynomial, so no guard is recorded (tuple
    `==` compares items before lengths, and `n == 8` would guard)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        tx, ty = getattr(x, "terms", None), getattr(y, "terms", None)
        if (tx is None and ty is None and x != y) or tx != ty:
            return False
    return True


class DynamicShape(tuple):
    """A shape holding dynamic sizes.  `==` compares lengths first, then sizes, as
    `same_shape` does: a plain tuple compares items before lengths, so `(n, 64) == (64,)`
    would ask `n == 64` and record a guard no program relies on."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, tuple):
            return NotImplemented
        return len(self) == len(other) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, tuple):
            return NotImplemented
        return len(self) != len(other) or tuple.__ne__(self, other)

    __hash__ = tuple.__hash__

    def __getitem__(self, key):  # a slice of a shape is a shape
        item = tuple.__getitem__(self, key)
        return DynamicShape(item) if isinstance(key, slice) else item

    def __add__(self, other: tuple) -> DynamicShape:
        return DynamicShape(tuple.__add__(self, other))

    def __radd__(self, other: tuple) -> DynamicShape:
        return DynamicShape(tuple.__add__(other, self))


def as_shape(sizes: Sequence) -> tuple:
    """`sizes` as a shape tuple: a `DynamicShape` when some size is dynamic."""
    shape = sizes if type(sizes) is tuple else tuple(sizes)
    if any(type(d) is not int for d in shape) and any(hasattr(d, "terms") for d in shape):
        return DynamicShape(shape)
    return shape


@dataclass(frozen=True)
class TensorType:
    """The type of an IR value: a shape and a dtype.  A size is an int, or a dynamic size
    (`compiler.symbolic.Dim`) in a shape-polymorphic graph: `numel` and `nbytes` are then
    dynamic sizes too, and `str` prints the polynomial (f32[n,784])."""

    shape: tuple[int, ...]
    dtype: DType

    def __post_init__(self) -> None:
        if type(self.shape) is tuple:
            object.__setattr__(self, "shape", as_shape(self.shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{self.dtype.short}[{','.join(str(d) for d in self.shape)}]"
