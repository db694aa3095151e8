"""Fetchers: what reading one batch (or, with batching off, one sample) means for a map-style
dataset (index it) and for an iterable one (advance its iterator)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class MapFetcher:
    """`collate_fn` of the samples at a list of indices (batching on), or of the sample at one
    index (batching off).  A dataset with `__getitems__` gets the whole list at once."""

    def __init__(self, dataset: Any, auto_collation: bool,
                 collate_fn: Callable[[Any], Any]) -> None:
        self.dataset = dataset
        self.auto_collation = auto_collation
        self.collate_fn = collate_fn

    def __call__(self, index: Any) -> Any:
        if not self.auto_collation:
            return self.collate_fn(self.dataset[index])
        getitems = getattr(self.dataset, "__getitems__", None)
        samples = getitems(index) if getitems is not None else [self.dataset[i] for i in index]
        return self.collate_fn(samples)


class IterableFetcher:
    """The next `len(index)` samples of an iterable dataset's iterator, collated (batching on;
    a short last batch unless `drop_last`), or its next sample (batching off).  Raises
    StopIteration once the iterator is exhausted."""

    def __init__(self, samples: Iterator[Any], auto_collation: bool,
                 collate_fn: Callable[[Any], Any], drop_last: bool) -> None:
        self.samples = samples
        self.auto_collation = auto_collation
        self.collate_fn = collate_fn
        self.drop_last = drop_last
        self.ended = False

    def __call__(self, index: Any) -> Any:
        if self.ended:
            raise StopIteration
        if not self.auto_collation:
            return self.collate_fn(next(self.samples))
        batch = []
        for _ in index:
            try:
                batch.append(next(self.samples))
            except StopIteration:
                self.ended = True
                break
        if not batch or (self.drop_last and len(batch) < len(index)):
            raise StopIteration
        return self.collate_fn(batch)
