"""Datasets: map-style (`Dataset`: `__getitem__` and `__len__`) and iterable
(`IterableDataset`: `__iter__`), and the ways to build one from others (`TensorDataset`,
`Subset`, `ConcatDataset`, `ChainDataset`, `random_split`), as in `torch.utils.data`."""
from __future__ import annotations

import bisect
import itertools
import math
import numbers
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from ...tensor import Tensor
from .rng import check_generator, resolve

T_co = TypeVar("T_co", covariant=True)


class Dataset(Generic[T_co]):
    """A map-style dataset: `dataset[i]` is the i-th sample, `len(dataset)` their number.

    Subclasses define `__getitem__` (and `__len__`, which samplers and `len(loader)` need).
    `a + b` concatenates two datasets (`ConcatDataset`).
    """

    def __getitem__(self, index: int) -> T_co:
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")

    def __add__(self, other: Dataset[T_co]) -> ConcatDataset[T_co]:
        return ConcatDataset([self, other])


class IterableDataset(Dataset[T_co]):
    """A dataset that is a stream of samples: subclasses define `__iter__` (and may define
    `__len__` for `len(loader)`).  `a + b` chains two of them (`ChainDataset`)."""

    def __iter__(self) -> Iterator[T_co]:
        raise NotImplementedError(f"{type(self).__name__} must define __iter__")

    def __add__(self, other: Dataset[T_co]) -> ChainDataset:
        return ChainDataset([self, other])


def _first_dim(value: Any, position: int) -> int:
    shape = getattr(value, "shape", None)
    if shape is None:
        raise TypeError(f"TensorDataset: expected neurenix Tensors or NumPy arrays, got "
                        f"{type(value).__name__} at position {position}")
    if len(shape) == 0:
        raise ValueError(f"TensorDataset: argument {position} is 0-dimensional; every tensor "
                         f"needs a first dimension to index samples along")
    return int(shape[0])


class TensorDataset(Dataset[tuple[Any, ...]]):
    """Samples are the rows of tensors (or NumPy arrays) sharing their first dimension:
    `dataset[i] == tuple(t[i] for t in tensors)`.  Arrays stay arrays (the loader's collate
    turns them into Tensors)."""

    def __init__(self, *tensors: Tensor | np.ndarray) -> None:
        sizes = [_first_dim(t, i) for i, t in enumerate(tensors)]
        if len(set(sizes)) > 1:
            raise ValueError(f"TensorDataset: size mismatch between tensors: first dimensions "
                             f"{sizes} must all be equal")
        self.tensors = tuple(tensors)

    def __getitem__(self, index: Any) -> tuple[Any, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, ...]]:
        """The samples at `indices` (what a batching loader asks for): the same values as
        `[self[i] for i in indices]`, a CPU tensor's rows gathered at once."""
        return list(zip(*(_rows(t, indices) for t in self.tensors)))

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0]) if self.tensors else 0


def _rows(t: Any, indices: list[int]) -> list[Any]:
    """`[t[i] for i in indices]`; for a CPU tensor needing no gradient, Tensors wrapping the
    rows of one gathered copy (much faster than indexing the tensor once per row)."""
    if isinstance(t, Tensor) and isinstance(t._data, np.ndarray) and not t.requires_grad \
            and t.device.type.value == "cpu":
        block = np.asarray(t._data)[np.asarray(indices, dtype=np.int64)]
        return [Tensor._wrap(np.asarray(row), t.dtype) for row in block]
    return [t[i] for i in indices]


class Subset(Dataset[T_co]):
    """The samples of `dataset` at `indices`, in that order."""

    def __init__(self, dataset: Dataset[T_co], indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, list):
            return self.dataset[[self.indices[i] for i in index]]
        return self.dataset[self.indices[index]]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """The samples at `indices`, through the dataset's own `__getitems__` if it has one."""
        inner = [self.indices[i] for i in indices]
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(inner) if getitems is not None else [self.dataset[i] for i in inner]

    def __len__(self) -> int:
        return len(self.indices)


class ConcatDataset(Dataset[T_co]):
    """Map-style datasets one after another: index i runs through the first dataset, then the
    second, ...  `cumulative_sizes[k]` is the total length of the first k + 1."""

    def __init__(self, datasets: Iterable[Dataset[Any]]) -> None:
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: datasets should not be an empty iterable")
        for d in self.datasets:
            if isinstance(d, IterableDataset):
                raise TypeError("ConcatDataset: does not support IterableDataset (use "
                                "ChainDataset)")
        self.cumulative_sizes = list(itertools.accumulate(len(d) for d in self.datasets))

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, index: int) -> T_co:
        n = len(self)
        if index < 0:
            if -index > n:
                raise ValueError(f"ConcatDataset: absolute value of index {index} should not "
                                 f"exceed dataset length {n}")
            index += n
        if index >= n:
            raise IndexError(f"ConcatDataset: index {index} is out of range for length {n}")
        which = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][index - start]


class ChainDataset(IterableDataset):
    """Iterable datasets one after another."""

    def __init__(self, datasets: Iterable[Dataset[Any]]) -> None:
        self.datasets = list(datasets)
        for d in self.datasets:
            if not isinstance(d, IterableDataset):
                raise TypeError(f"ChainDataset: only supports IterableDataset, got "
                                f"{type(d).__name__}")

    def __iter__(self) -> Iterator[Any]:
        for d in self.datasets:
            yield from d

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)


def _split_lengths(n: int, lengths: Sequence[int | float]) -> list[int]:
    """Integer lengths, fractions (summing to 1) turned into lengths as PyTorch does: floors,
    then the remainder spread one by one from the first split."""
    for i, length in enumerate(lengths):
        if isinstance(length, bool) or not isinstance(length, numbers.Real):
            raise TypeError(f"random_split: lengths must be ints or fractions, got "
                            f"{type(length).__name__} at index {i}")
    total = sum(lengths)
    if math.isclose(total, 1) and total <= 1:
        sizes = []
        for i, frac in enumerate(lengths):
            if frac < 0 or frac > 1:
                raise ValueError(f"random_split: fraction at index {i} is not between 0 and 1")
            sizes.append(int(math.floor(n * frac)))
        for i in range(n - sum(sizes)):
            sizes[i % len(sizes)] += 1
        for i, size in enumerate(sizes):
            if size == 0:
                warnings.warn(f"random_split: length of split at index {i} is 0; this might "
                              f"result in an empty dataset", stacklevel=3)
        return sizes
    for i, length in enumerate(lengths):
        if int(length) != length or length < 0:
            raise ValueError(f"random_split: lengths must be non-negative integers or "
                             f"fractions summing to 1, got {length!r} at index {i}")
    sizes = [int(length) for length in lengths]
    if sum(sizes) != n:
        raise ValueError(f"random_split: sum of input lengths ({sum(sizes)}) does not equal "
                         f"the length of the input dataset ({n})")
    return sizes


def random_split(dataset: Dataset[T_co], lengths: Sequence[int | float],
                 generator: np.random.Generator | None = None) -> list[Subset[T_co]]:
    """Split `dataset` into non-overlapping random `Subset`s of the given lengths (integers
    summing to `len(dataset)`, or fractions summing to 1).  `generator`: a
    `numpy.random.Generator`; None draws from Neurenix's global state (`manual_seed`)."""
    check_generator(generator, "random_split")
    sizes = _split_lengths(len(dataset), lengths)
    indices = resolve(generator).permutation(sum(sizes)).tolist()
    return [Subset(dataset, indices[end - size:end])
            for end, size in zip(itertools.accumulate(sizes), sizes)]
