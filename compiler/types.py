"""Dtypes and static tensor types shared by the op registry, the IR and the frontend."""
from __future__ import annotations

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


@dataclass(frozen=True)
class TensorType:
    """The static type of an IR value: a shape (tuple of ints) and a dtype."""

    shape: tuple[int, ...]
    dtype: DType

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
