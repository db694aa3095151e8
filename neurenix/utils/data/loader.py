"""`DataLoader`: batches of a dataset, in a sampler's order, collated into Tensors, the next
one loaded on a background thread while the current one is used (`prefetch=True`).

Arguments are checked as PyTorch checks them (which combinations exclude each other), with a
TypeError for an argument of the wrong type and a ValueError for a wrong value.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from .collate import default_collate, default_convert
from .dataset import IterableDataset
from .fetch import IterableFetcher, MapFetcher
from .iterators import PrefetchIterator, SingleProcessIterator
from .rng import check_generator
from .sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler, check_bool


class _InfiniteConstantSampler(Sampler[None]):
    """None forever: the index stream of an iterable dataset (which ignores indices)."""

    def __iter__(self) -> Iterator[None]:
        while True:
            yield None


def _check_dataset(dataset: Any) -> bool:
    """Whether `dataset` is iterable-style; a TypeError if it is neither kind."""
    if isinstance(dataset, IterableDataset):
        return True
    if not hasattr(dataset, "__getitem__"):
        raise TypeError(f"DataLoader: expected a map-style dataset (with __getitem__ and "
                        f"__len__) or an IterableDataset, got {type(dataset).__name__}")
    return False


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size is None:
        return None
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"DataLoader: batch_size should be a positive integer value or None, "
                        f"but got batch_size={batch_size!r} ({type(batch_size).__name__})")
    if batch_size <= 0:
        raise ValueError(f"DataLoader: batch_size should be a positive integer value or None, "
                         f"but got batch_size={batch_size}")
    return int(batch_size)


def _check_sampler(sampler: Any, name: str) -> None:
    if sampler is not None and not isinstance(sampler, Iterable):
        raise TypeError(f"DataLoader: {name} should be a Sampler or an iterable of indices, "
                        f"but got {name}={sampler!r} ({type(sampler).__name__})")


class DataLoader:
    """Iterate over `dataset` in batches.

    - `batch_size` samples per batch (None: no batching, each sample converted on its own),
      the last batch shorter unless `drop_last`;
    - in the order of `sampler` (indices), or `batch_sampler` (lists of indices, excluding
      `batch_size`, `shuffle`, `sampler` and `drop_last`), or a random order (`shuffle=True`,
      drawn from `generator`, a `numpy.random.Generator`, or else from Neurenix's global
      random state, so `neurenix.manual_seed` makes runs repeat), or in order;
    - each batch made by `collate_fn` (default: `default_collate`, or `default_convert` with
      batching off);
    - `prefetch`: load the next batch on a background thread while this one is used;
    - `num_workers`: only 0 (multiprocessing workers are not supported yet).

    An `IterableDataset` is read in its own order: it takes no `shuffle`, `sampler` or
    `batch_sampler`.  `len(loader)` is the number of batches (for an iterable dataset, from its
    `__len__`).
    """

    def __init__(self, dataset: Any, batch_size: int | None = 1, shuffle: bool | None = None,
                 sampler: Sampler[Any] | Iterable[Any] | None = None,
                 batch_sampler: Sampler[list[Any]] | Iterable[list[Any]] | None = None,
                 num_workers: int = 0, collate_fn: Callable[[Any], Any] | None = None,
                 drop_last: bool = False, generator: np.random.Generator | None = None,
                 prefetch: bool = True) -> None:
        if isinstance(num_workers, (bool, np.bool_)) or not isinstance(
                num_workers, (int, np.integer)):
            raise TypeError(f"DataLoader: num_workers should be 0, but got "
                            f"num_workers={num_workers!r} ({type(num_workers).__name__})")
        if num_workers != 0:
            raise ValueError(f"DataLoader: multiprocessing workers are not supported yet; "
                             f"num_workers should be 0, but got num_workers={num_workers} "
                             f"(prefetch=True already loads the next batch on a thread)")
        iterable = _check_dataset(dataset)
        batch_size = _check_batch_size(batch_size)
        shuffle = False if shuffle is None else check_bool(shuffle, "shuffle", "DataLoader")
        drop_last = check_bool(drop_last, "drop_last", "DataLoader")
        self.prefetch = check_bool(prefetch, "prefetch", "DataLoader")
        self.generator = check_generator(generator, "DataLoader")
        _check_sampler(sampler, "sampler")
        _check_sampler(batch_sampler, "batch_sampler")
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError(f"DataLoader: collate_fn should be callable, but got "
                            f"{type(collate_fn).__name__}")
        if iterable:
            for name, value, given in (("shuffle", shuffle, shuffle),
                                       ("sampler", sampler, sampler is not None),
                                       ("batch_sampler", batch_sampler,
                                        batch_sampler is not None)):
                if given:
                    raise ValueError(f"DataLoader with IterableDataset: expected unspecified "
                                     f"{name} option, but got {name}={value!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("DataLoader: batch_sampler option is mutually exclusive with "
                                 "batch_size, shuffle, sampler, and drop_last")
            batch_size = None
        elif batch_size is None and drop_last:
            raise ValueError("DataLoader: batch_size=None option disables auto-batching and is "
                             "mutually exclusive with drop_last")
        if sampler is None:
            if iterable:
                sampler = _InfiniteConstantSampler()
            elif shuffle:
                sampler = RandomSampler(dataset, generator=self.generator)
            else:
                sampler = SequentialSampler(dataset)
        if batch_size is not None and batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_workers = 0
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self._iterable = iterable
        if collate_fn is None:
            collate_fn = default_collate if self._auto_collation else default_convert
        self.collate_fn = collate_fn

    @property
    def _auto_collation(self) -> bool:
        return self.batch_sampler is not None

    @property
    def _index_sampler(self) -> Iterable[Any]:
        return self.batch_sampler if self._auto_collation else self.sampler

    def __iter__(self) -> SingleProcessIterator | PrefetchIterator:
        if self._iterable:
            fetch: Callable[[Any], Any] = IterableFetcher(
                iter(self.dataset), self._auto_collation, self.collate_fn, self.drop_last)
        else:
            fetch = MapFetcher(self.dataset, self._auto_collation, self.collate_fn)
        indices = iter(self._index_sampler)
        kind = PrefetchIterator if self.prefetch else SingleProcessIterator
        return kind(indices, fetch, self.__len__)

    def __len__(self) -> int:
        if self._iterable:
            n = len(self.dataset)
            if self.batch_size is not None:
                n = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
            return n
        return len(self._index_sampler)  # type: ignore[arg-type]
