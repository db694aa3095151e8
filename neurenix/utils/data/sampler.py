"""Samplers: the order in which a `DataLoader` reads a map-style dataset's indices.

As in `torch.utils.data`: `SequentialSampler`, `RandomSampler`, `SubsetRandomSampler` and
`BatchSampler` (which groups another sampler's indices into lists).  The random ones take a
`numpy.random.Generator`; without one, each `iter()` draws a fresh seed from Neurenix's global
random state, so that runs after `neurenix.manual_seed(k)` repeat.  `iter()` draws that seed at
once (not at the first index), so a loader that prefetches on another thread consumes the
global state at a reproducible point.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import Generic, TypeVar

import numpy as np

from .rng import check_generator, resolve

T_co = TypeVar("T_co", covariant=True)

_CHUNK = 32  # indices drawn at a time with replacement (as PyTorch)


def check_bool(value: object, name: str, who: str) -> bool:
    """`value` if it is a bool, else a TypeError naming the argument and what it got."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{who}: {name} should be a boolean value, but got {name}={value!r} "
                        f"({type(value).__name__})")
    return bool(value)


def check_positive_int(value: object, name: str, who: str) -> int:
    """`value` if it is a positive int: a TypeError for another type, a ValueError for <= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{who}: {name} should be a positive integer value, but got "
                        f"{name}={value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{who}: {name} should be a positive integer value, but got "
                         f"{name}={value}")
    return int(value)


class Sampler(Generic[T_co]):
    """A way to iterate over a dataset's indices (or, for a batch sampler, lists of them).

    Subclasses define `__iter__`, and `__len__` where the number is known.
    """

    def __iter__(self) -> Iterator[T_co]:
        raise NotImplementedError(f"{type(self).__name__} must define __iter__")


class SequentialSampler(Sampler[int]):
    """0, 1, ..., len(data_source) - 1."""

    def __init__(self, data_source: Sized) -> None:
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)


class RandomSampler(Sampler[int]):
    """Random indices of `data_source`: a permutation (`replacement=False`; `num_samples`
    beyond the length takes further permutations), or `num_samples` independent uniform draws
    (`replacement=True`).  `generator`: a `numpy.random.Generator` (None: see the module)."""

    def __init__(self, data_source: Sized, replacement: bool = False,
                 num_samples: int | None = None,
                 generator: np.random.Generator | None = None) -> None:
        self.data_source = data_source
        self.replacement = check_bool(replacement, "replacement", "RandomSampler")
        self._num_samples = None if num_samples is None else check_positive_int(
            num_samples, "num_samples", "RandomSampler")
        self.generator = check_generator(generator, "RandomSampler")
        if self._num_samples is None and len(data_source) == 0:
            raise ValueError("RandomSampler: num_samples should be a positive integer value, "
                             "but got num_samples=0 (an empty data_source)")

    @property
    def num_samples(self) -> int:
        """How many indices one iteration gives (the dataset's length unless set)."""
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def __iter__(self) -> Iterator[int]:
        rng = resolve(self.generator)
        n = len(self.data_source)
        if n == 0:
            raise ValueError("RandomSampler: cannot draw samples from an empty data_source")
        if self.replacement:
            return self._with_replacement(rng, n, self.num_samples)
        return self._permutations(rng, n, self.num_samples)

    @staticmethod
    def _with_replacement(rng: np.random.Generator, n: int, count: int) -> Iterator[int]:
        for start in range(0, count, _CHUNK):
            yield from rng.integers(0, n, size=min(_CHUNK, count - start)).tolist()

    @staticmethod
    def _permutations(rng: np.random.Generator, n: int, count: int) -> Iterator[int]:
        for _ in range(count // n):
            yield from rng.permutation(n).tolist()
        if count % n:
            yield from rng.permutation(n)[:count % n].tolist()

    def __len__(self) -> int:
        return self.num_samples


class SubsetRandomSampler(Sampler[int]):
    """The given `indices` in a random order (a fresh permutation each iteration)."""

    def __init__(self, indices: Sequence[int],
                 generator: np.random.Generator | None = None) -> None:
        self.indices = indices
        self.generator = check_generator(generator, "SubsetRandomSampler")

    def __iter__(self) -> Iterator[int]:
        order = resolve(self.generator).permutation(len(self.indices)).tolist()
        return (self.indices[i] for i in order)

    def __len__(self) -> int:
        return len(self.indices)


class BatchSampler(Sampler[list[int]]):
    """Lists of `batch_size` consecutive indices of `sampler` (the last one shorter unless
    `drop_last`)."""

    def __init__(self, sampler: Sampler[int] | Iterable[int], batch_size: int,
                 drop_last: bool) -> None:
        self.sampler = sampler
        self.batch_size = check_positive_int(batch_size, "batch_size", "BatchSampler")
        self.drop_last = check_bool(drop_last, "drop_last", "BatchSampler")

    def __iter__(self) -> Iterator[list[int]]:
        return self._batches(iter(self.sampler))

    def _batches(self, indices: Iterator[int]) -> Iterator[list[int]]:
        batch: list[int] = []
        for index in indices:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        if self.drop_last:
            return n // self.batch_size
        return (n + self.batch_size - 1) // self.batch_size
