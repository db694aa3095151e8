"""Data loading in PyTorch's shape (`torch.utils.data`): datasets, samplers, collation and
the `DataLoader`, which prefetches the next batch on a background thread.

Random orders come from a `numpy.random.Generator` passed as `generator=`, or, without one,
from Neurenix's global random state, so `neurenix.manual_seed(k)` makes a run repeat.  See
docs/api/data.md.
"""
from .collate import default_collate, default_convert
from .dataset import (
    ChainDataset,
    ConcatDataset,
    Dataset,
    IterableDataset,
    Subset,
    TensorDataset,
    random_split,
)
from .distributed import DistributedSampler
from .loader import DataLoader
from .sampler import (
    BatchSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
)

__all__ = [
    "BatchSampler",
    "ChainDataset",
    "ConcatDataset",
    "DataLoader",
    "Dataset",
    "DistributedSampler",
    "IterableDataset",
    "RandomSampler",
    "Sampler",
    "SequentialSampler",
    "Subset",
    "SubsetRandomSampler",
    "TensorDataset",
    "default_collate",
    "default_convert",
    "random_split",
]
