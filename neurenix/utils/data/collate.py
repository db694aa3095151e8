"""Collation: a list of samples into one batch (`default_collate`), and a single sample's
arrays into Tensors when batching is off (`default_convert`), as in `torch.utils.data`.

`default_collate` looks at the first sample and, recursively:

- neurenix Tensors: stacked along a new first dimension (`neurenix.stack`; CPU tensors that
  need no gradient are stacked on the host directly);
- NumPy arrays and NumPy scalars: stacked into a Tensor of their dtype (dtypes Neurenix lacks
  are widened as `neurenix.tensor` widens them: uint8/int16/uint16/... to int64, float16 to
  float32; PyTorch keeps them); string and object arrays are refused;
- Python ints: int64; Python floats: float64 (as PyTorch's default collate); Python bools:
  bool;
- strings and bytes: the list as it is;
- mappings: a mapping of the same type, each key collated across samples;
- namedtuples: the same namedtuple, field by field; other tuples: a list, position by position
  (as PyTorch); other sequences: the same type where it can be built, else a list.  The
  sequences must all have one length.
"""
from __future__ import annotations

import collections.abc
import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...compiler.types import float64
from ...shapes import stack
from ...tensor import Tensor

_NATIVE = {np.dtype(t) for t in (np.bool_, np.int32, np.int64, np.float32, np.float64)}
_ERROR = ("default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; "
          "found {}")


def _is_numpy(value: Any) -> bool:
    return isinstance(value, (np.ndarray, np.generic)) and not isinstance(
        value, (np.str_, np.bytes_))


def _refused_dtype(array: np.ndarray | np.generic) -> bool:
    return array.dtype.kind in "OSUV"


def _array_tensor(array: np.ndarray) -> Tensor:
    """A Tensor owning `array` (fresh, so not copied again) of Neurenix's dtype for it."""
    array = np.asarray(array, order="C")  # not ascontiguousarray: that makes 0-d arrays 1-d
    if array.dtype in _NATIVE:
        return Tensor._wrap(array)
    return Tensor(array)


def _stack_tensors(batch: Sequence[Tensor]) -> Tensor:
    first = batch[0]
    host = all(isinstance(t, Tensor) and isinstance(t._data, np.ndarray)
               and t.dtype == first.dtype and t.device == first.device
               and not t.requires_grad for t in batch)
    if host and first.device.type.value == "cpu":
        shapes = {t.shape for t in batch}
        if len(shapes) > 1:
            raise ValueError(f"default_collate: stack expects each tensor to be equal size, "
                             f"got shapes {sorted(shapes)}")
        return Tensor._wrap(np.stack([np.asarray(t._data) for t in batch]), first.dtype)
    return stack(list(batch))


def _stack_arrays(batch: Sequence[Any]) -> Tensor:
    arrays = [np.asarray(b) for b in batch]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"default_collate: stack expects each array to be equal size, got "
                         f"shapes {sorted(shapes)}")
    return _array_tensor(np.stack(arrays))


def _rebuild_mapping(elem: Any, values: dict) -> Any:
    try:
        if isinstance(elem, collections.abc.MutableMapping):
            clone = copy.copy(elem)
            clone.update(values)
            return clone
        return type(elem)(values)
    except TypeError:
        return values


def _rebuild_sequence(elem: Any, values: list) -> Any:
    try:
        if isinstance(elem, collections.abc.MutableSequence):
            clone = copy.copy(elem)
            for i, value in enumerate(values):
                clone[i] = value
            return clone
        return type(elem)(values)
    except TypeError:
        return values


def default_collate(batch: Sequence[Any]) -> Any:
    """Merge a list of samples into a batch (see the module docstring for each type)."""
    if not isinstance(batch, collections.abc.Sequence) or isinstance(batch, (str, bytes)):
        raise TypeError(f"default_collate: expected a sequence of samples, got "
                        f"{type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError("default_collate: expected at least one sample, got an empty batch")
    elem = batch[0]
    if isinstance(elem, Tensor):
        return _stack_tensors(batch)
    if _is_numpy(elem):
        if _refused_dtype(elem):
            raise TypeError(_ERROR.format(f"a numpy array of dtype {elem.dtype}"))
        return _stack_arrays(batch)
    if isinstance(elem, float):
        return Tensor(list(batch), dtype=float64)
    if isinstance(elem, int):
        return Tensor(list(batch))
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, collections.abc.Mapping):
        return _rebuild_mapping(elem, {key: default_collate([d[key] for d in batch])
                                       for key in elem})
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):
        return type(elem)(*(default_collate(field) for field in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        sizes = [len(sample) for sample in batch]
        if len(set(sizes)) > 1:
            raise ValueError(f"default_collate: each element in list of batch should be of "
                             f"equal size, got sizes {sizes}")
        columns = [default_collate(column) for column in zip(*batch)]
        return columns if isinstance(elem, tuple) else _rebuild_sequence(elem, columns)
    raise TypeError(_ERROR.format(type(elem).__name__))


def default_convert(data: Any) -> Any:
    """One sample as it is, its NumPy arrays and scalars turned into Tensors (recursing into
    mappings and sequences; tuples become lists, as in PyTorch); what batching off uses."""
    if isinstance(data, Tensor):
        return data
    if _is_numpy(data):
        return data if _refused_dtype(data) else _array_tensor(np.array(data))
    if isinstance(data, collections.abc.Mapping):
        return _rebuild_mapping(data, {key: default_convert(data[key]) for key in data})
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, collections.abc.Sequence) and not isinstance(data, (str, bytes)):
        return _rebuild_sequence(data, [default_convert(d) for d in data])
    return data
