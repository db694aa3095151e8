"""`DistributedSampler`: the share of a dataset's indices one of `num_replicas` processes
reads, split exactly as PyTorch splits them (Neurenix has no process group yet, so
`num_replicas` and `rank` are given explicitly)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import numpy as np

from .sampler import Sampler, check_bool


def _check_int(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"DistributedSampler: {name} should be an int, but got {name}={value!r} "
                        f"({type(value).__name__})")
    return int(value)


class DistributedSampler(Sampler[int]):
    """Indices `rank`, `rank + num_replicas`, ... of the (shuffled) index list, padded by
    repeating its start to a multiple of `num_replicas` (or, with `drop_last`, cut to one), so
    every replica reads `num_samples` indices.

    With `shuffle`, the list is a permutation drawn from `numpy.random.default_rng(seed +
    epoch)`: the same on every replica for one `seed`, a new one after `set_epoch(epoch)`
    (call it at the start of every epoch).  It is not PyTorch's permutation for that seed.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        if num_replicas is None or rank is None:
            raise ValueError("DistributedSampler: neurenix has no distributed process group "
                             "to read the world size and rank from; pass num_replicas and "
                             "rank explicitly")
        self.num_replicas = _check_int(num_replicas, "num_replicas")
        self.rank = _check_int(rank, "rank")
        if self.num_replicas <= 0:
            raise ValueError(f"DistributedSampler: num_replicas should be a positive integer "
                             f"value, but got num_replicas={self.num_replicas}")
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"DistributedSampler: invalid rank {self.rank}, rank should be in "
                             f"the interval [0, {self.num_replicas - 1}]")
        self.dataset = dataset
        self.shuffle = check_bool(shuffle, "shuffle", "DistributedSampler")
        self.drop_last = check_bool(drop_last, "drop_last", "DistributedSampler")
        self.seed = _check_int(seed, "seed")
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % self.num_replicas:
            self.num_samples = math.ceil((n - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            indices = np.random.default_rng(self.seed + self.epoch).permutation(n).tolist()
        else:
            indices = list(range(n))
        if self.drop_last:
            indices = indices[:self.total_size]
        else:
            padding = self.total_size - len(indices)
            if padding <= len(indices):
                indices += indices[:padding]
            else:
                indices += (indices * math.ceil(padding / len(indices)))[:padding]
        return iter(indices[self.rank:self.total_size:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration shuffles for (with `shuffle`, a new order each)."""
        self.epoch = _check_int(epoch, "epoch")
