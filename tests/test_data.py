"""neurenix.utils.data against torch.utils.data: collation, index orders, DistributedSampler's
split, lengths and argument errors; seeded reproducibility; the prefetch thread (order,
exceptions, early stop, no thread left behind); a small training loop fed by a DataLoader;
the examples of docs/api/data.md."""
from __future__ import annotations

import collections
import gc
import pathlib
import re
import threading
import time

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import neurenix
from neurenix.utils import data as nud

ROOT = pathlib.Path(__file__).resolve().parents[1]
Point = collections.namedtuple("Point", ["x", "y"])


# ---- helpers ---------------------------------------------------------------------------------

def as_numpy(value):
    """A batch structure with every tensor (neurenix or torch) as a NumPy array; containers
    kept with their exact types."""
    if isinstance(value, neurenix.Tensor):
        return np.asarray(value.detach().numpy())
    if isinstance(value, torch.Tensor):
        return value.detach().numpy()
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, dict):
        return type(value)((k, as_numpy(v)) for k, v in value.items())
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(as_numpy(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(as_numpy(v) for v in value)
    return value


def assert_same(ours, theirs, path="batch"):
    """Exactly equal structures: container types, keys, array dtypes, shapes and values."""
    assert type(ours) is type(theirs), f"{path}: {type(ours).__name__} vs {type(theirs).__name__}"
    if isinstance(ours, np.ndarray):
        assert ours.dtype == theirs.dtype, f"{path}: dtype {ours.dtype} vs {theirs.dtype}"
        assert ours.shape == theirs.shape, f"{path}: shape {ours.shape} vs {theirs.shape}"
        np.testing.assert_array_equal(ours, theirs, err_msg=path)
    elif isinstance(ours, dict):
        assert list(ours) == list(theirs), f"{path}: keys {list(ours)} vs {list(theirs)}"
        for k in ours:
            assert_same(ours[k], theirs[k], f"{path}[{k!r}]")
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs), f"{path}: length {len(ours)} vs {len(theirs)}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert ours == theirs, f"{path}: {ours!r} vs {theirs!r}"


def assert_collates_like_torch(samples, torch_samples=None):
    ours = as_numpy(nud.default_collate(samples))
    theirs = as_numpy(tud.default_collate(samples if torch_samples is None else torch_samples))
    assert_same(ours, theirs)


class Indexed(nud.Dataset):
    """Sample i is i (and records which thread read it)."""

    def __init__(self, n):
        self.n = n
        self.threads = set()
        self.read: list[int] = []

    def __getitem__(self, i):
        self.threads.add(threading.get_ident())
        self.read.append(i)
        return i

    def __len__(self):
        return self.n


class TorchIndexed(tud.Dataset):
    def __init__(self, n):
        self.n = n

    def __getitem__(self, i):
        return i

    def __len__(self):
        return self.n


class Stream(nud.IterableDataset):
    def __init__(self, n, with_len=True):
        self.n = n
        self.with_len = with_len

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        if not self.with_len:
            raise TypeError("no len")
        return self.n


class TorchStream(tud.IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "neurenix-dataloader-prefetch"]


def wait_for_no_prefetch_threads(timeout=10.0):
    deadline = time.monotonic() + timeout
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return prefetch_threads()


@pytest.fixture(autouse=True)
def _no_thread_left_behind():
    yield
    if prefetch_threads():
        gc.collect()
    assert not wait_for_no_prefetch_threads(), "a prefetch thread outlived its test"


# ---- collation against torch's default_collate -----------------------------------------------

def test_collate_numbers_like_torch():
    assert_collates_like_torch([1, 2, 3])            # int64
    assert_collates_like_torch([1.5, 2.0, -3.25])    # float64, as PyTorch
    assert_collates_like_torch([True, False])        # bool
    assert_collates_like_torch([1, 2.5])             # first an int: inferred float32
    for t in (np.float32, np.float64, np.int32, np.int64, np.bool_):
        assert_collates_like_torch([t(1), t(0), t(1)])


def test_collate_arrays_like_torch():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64, np.int32, np.int64, np.bool_):
        samples = [rng.normal(size=(2, 3)).astype(dtype) for _ in range(4)]
        assert_collates_like_torch(samples)
    assert_collates_like_torch([np.float32(1.5) * np.ones(()) for _ in range(3)])


def test_collate_tensors_like_torch():
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=(3, 2)).astype(np.float32) for _ in range(5)]
    assert_collates_like_torch([neurenix.tensor(a) for a in arrays],
                               [torch.from_numpy(a) for a in arrays])
    ints = [rng.integers(0, 9, size=(4,)) for _ in range(3)]
    assert_collates_like_torch([neurenix.tensor(a) for a in ints],
                               [torch.from_numpy(a) for a in ints])


def test_collate_nested_structures_like_torch():
    rng = np.random.default_rng(2)

    def sample(i):
        return {
            "image": rng.normal(size=(2, 2)).astype(np.float32),
            "label": i,
            "meta": {"weight": 0.5 * i, "name": f"s{i}", "flags": [True, i % 2 == 0]},
            "pair": (np.int64(i), float(i) / 3),
            "point": Point(np.arange(3) + i, i),
        }
    assert_collates_like_torch([sample(i) for i in range(4)])
    assert_collates_like_torch([(np.ones(2) * i, [i, i + 1], "x") for i in range(3)])
    assert_collates_like_torch([[np.float32(i), [i, 2 * i]] for i in range(3)])
    assert_collates_like_torch([Point(i, float(i)) for i in range(3)])
    assert_collates_like_torch([collections.OrderedDict(a=i, b=[i]) for i in range(2)])


def test_collate_tensor_rows_keep_autograd():
    w = neurenix.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    batch = nud.default_collate([w[0], w[1] * 2])
    batch.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [[1.0, 1.0], [2.0, 2.0]])


def test_collate_widens_dtypes_neurenix_lacks():
    batch = nud.default_collate([np.array([1, 2], np.uint8), np.array([3, 4], np.uint8)])
    assert batch.dtype == neurenix.int64
    np.testing.assert_array_equal(batch.numpy(), [[1, 2], [3, 4]])
    assert nud.default_collate([np.float16(1), np.float16(2)]).dtype == neurenix.float32


def test_collated_batch_owns_its_memory():
    a = np.zeros(3, np.float32)
    batch = nud.default_convert(a)
    a[0] = 7
    assert batch.numpy()[0] == 0


def test_default_convert_like_torch():
    for value in [np.arange(3), (np.arange(2), 1.0, np.float32(2)), {"a": np.ones(2), "b": "s"},
                  Point(np.int64(3), [np.zeros(1)]), [1, 2], "text", 3.5]:
        assert_same(as_numpy(nud.default_convert(value)), as_numpy(tud.default_convert(value)))


def test_collate_errors():
    with pytest.raises(TypeError, match="found object"):
        nud.default_collate([object(), object()])
    with pytest.raises(TypeError, match="dtype <U1"):
        nud.default_collate([np.array(["a"]), np.array(["b"])])
    with pytest.raises(ValueError, match=r"equal size, got sizes \[2, 3\]"):
        nud.default_collate([[1, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match=r"\(2,\), \(3,\)"):
        nud.default_collate([np.zeros(2), np.zeros(3)])
    with pytest.raises(ValueError, match="equal size"):
        nud.default_collate([neurenix.zeros(2), neurenix.zeros(3)])
    with pytest.raises(ValueError, match="empty batch"):
        nud.default_collate([])


# ---- datasets --------------------------------------------------------------------------------

def test_tensor_dataset_rows_like_torch():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.arange(6)
    ours = nud.TensorDataset(neurenix.tensor(x), y)
    theirs = tud.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    assert len(ours) == len(theirs) == 6
    for i in (0, 3, -1):
        assert_same(as_numpy(ours[i]), as_numpy(theirs[i]))
    with pytest.raises(ValueError, match=r"first dimensions \[6, 5\]"):
        nud.TensorDataset(neurenix.zeros(6, 2), np.zeros(5))
    with pytest.raises(TypeError, match="got list at position 1"):
        nud.TensorDataset(np.zeros(3), [1, 2, 3])


def test_batched_reads_match_single_reads():
    x = neurenix.tensor(np.arange(12, dtype=np.float32).reshape(6, 2))
    w = neurenix.ones(6, 3, requires_grad=True)
    dataset = nud.TensorDataset(x, np.arange(6), neurenix.tensor(np.arange(6)), w)
    indices = [4, 0, -1, 4]
    batched = dataset.__getitems__(indices)
    single = [dataset[i] for i in indices]
    assert_same(as_numpy([list(s) for s in batched]), as_numpy([list(s) for s in single]))
    assert batched[0][3].requires_grad
    subset = nud.Subset(dataset, [5, 2, 3])
    assert_same(as_numpy([list(s) for s in subset.__getitems__([2, 0])]),
                as_numpy([list(subset[2]), list(subset[0])]))
    assert nud.Subset(list(range(10)), [3, 4]).__getitems__([1]) == [4]


def test_subset_concat_like_torch():
    a, b = list(range(5)), list(range(10, 13))
    ours = nud.ConcatDataset([a, b]) + nud.Subset(list(range(20, 30)), [4, 1])
    theirs = tud.ConcatDataset([a, b]) + tud.Subset(list(range(20, 30)), [4, 1])
    assert len(ours) == len(theirs) == 10
    assert [ours[i] for i in range(-10, 10)] == [theirs[i] for i in range(-10, 10)]
    assert ours.cumulative_sizes == theirs.cumulative_sizes
    with pytest.raises(ValueError, match="should not exceed dataset length 10"):
        ours[-11]
    with pytest.raises(IndexError, match="out of range"):
        ours[10]
    with pytest.raises(ValueError, match="empty iterable"):
        nud.ConcatDataset([])
    with pytest.raises(TypeError, match="ChainDataset"):
        nud.ConcatDataset([Stream(3)])
    assert list(Stream(2) + Stream(3)) == [0, 1, 0, 1, 2]


@pytest.mark.parametrize("n,lengths", [(10, [0.3, 0.7]), (11, [0.5, 0.25, 0.25]),
                                       (7, [0.1, 0.1, 0.8]), (10, [3, 7]), (5, [5, 0])])
def test_random_split_lengths_like_torch(n, lengths):
    ours = nud.random_split(list(range(n)), lengths, np.random.default_rng(0))
    theirs = tud.random_split(list(range(n)), lengths, torch.Generator().manual_seed(0))
    assert [len(s) for s in ours] == [len(s) for s in theirs]
    assert sorted(i for s in ours for i in s) == list(range(n))


def test_random_split_is_seeded_and_checked():
    data = list(range(20))
    first = [list(s) for s in nud.random_split(data, [5, 15], np.random.default_rng(3))]
    again = [list(s) for s in nud.random_split(data, [5, 15], np.random.default_rng(3))]
    assert first == again
    neurenix.manual_seed(4)
    a = [list(s) for s in nud.random_split(data, [0.5, 0.5])]
    neurenix.manual_seed(4)
    assert a == [list(s) for s in nud.random_split(data, [0.5, 0.5])]
    with pytest.raises(ValueError, match=r"sum of input lengths \(9\) .* dataset \(20\)"):
        nud.random_split(data, [4, 5])
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        nud.random_split(data, [10, 10], generator=torch.Generator())


# ---- samplers --------------------------------------------------------------------------------

@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 4, 10])
def test_batch_sampler_like_torch(batch_size, drop_last):
    order = [7, 2, 9, 0, 4, 4, 1, 8, 3, 6]
    ours = nud.BatchSampler(order, batch_size, drop_last)
    theirs = tud.BatchSampler(order, batch_size, drop_last)
    assert list(ours) == list(theirs)
    assert len(ours) == len(theirs)


def test_sequential_and_random_samplers():
    assert list(nud.SequentialSampler(range(5))) == list(tud.SequentialSampler(range(5)))
    perm = list(nud.RandomSampler(range(10), generator=np.random.default_rng(0)))
    assert sorted(perm) == list(range(10))
    several = list(nud.RandomSampler(range(4), num_samples=10,
                                     generator=np.random.default_rng(0)))
    assert len(several) == 10 and sorted(several[:4]) == sorted(several[4:8]) == [0, 1, 2, 3]
    drawn = list(nud.RandomSampler(range(3), replacement=True, num_samples=100,
                                   generator=np.random.default_rng(0)))
    assert len(drawn) == 100 and set(drawn) == {0, 1, 2}
    assert len(nud.RandomSampler(range(7))) == len(tud.RandomSampler(range(7))) == 7
    assert list(nud.SubsetRandomSampler([5, 6], np.random.default_rng(0))) in ([5, 6], [6, 5])


def test_random_sampler_follows_manual_seed():
    sampler = nud.RandomSampler(range(50))
    neurenix.manual_seed(0)
    epoch1, epoch2 = list(sampler), list(sampler)
    assert epoch1 != epoch2
    neurenix.manual_seed(0)
    assert [list(sampler), list(sampler)] == [epoch1, epoch2]
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    assert list(nud.RandomSampler(range(50), generator=g1)) == \
        list(nud.RandomSampler(range(50), generator=g2))


def test_random_sampler_draws_its_seed_at_iter():
    sampler = nud.RandomSampler(range(30))
    neurenix.manual_seed(1)
    it = iter(sampler)
    neurenix.randn(3)  # a draw after iter() does not change the order
    first = list(it)
    neurenix.manual_seed(1)
    assert list(sampler) == first


def test_sampler_errors():
    with pytest.raises(TypeError, match="replacement should be a boolean value"):
        nud.RandomSampler(range(3), replacement=1)
    with pytest.raises(ValueError, match="num_samples=0"):
        nud.RandomSampler(range(3), num_samples=0)
    with pytest.raises(ValueError, match="num_samples"):
        nud.RandomSampler([])
    with pytest.raises(TypeError, match="got Generator"):
        nud.RandomSampler(range(3), generator=torch.Generator())
    with pytest.raises(ValueError, match="batch_size=0"):
        nud.BatchSampler(range(3), 0, False)
    with pytest.raises(TypeError, match="batch_size='2'"):
        nud.BatchSampler(range(3), "2", False)
    with pytest.raises(TypeError, match="drop_last should be a boolean value"):
        nud.BatchSampler(range(3), 2, None)


@pytest.mark.parametrize("n", [0, 1, 5, 10, 11, 13])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_sampler_like_torch(n, replicas, drop_last):
    for rank in range(replicas):
        ours = nud.DistributedSampler(range(n), replicas, rank, shuffle=False,
                                      drop_last=drop_last)
        theirs = tud.DistributedSampler(range(n), replicas, rank, shuffle=False,
                                        drop_last=drop_last)
        assert list(ours) == list(theirs), (n, replicas, rank, drop_last)
        assert len(ours) == len(theirs) == ours.num_samples
        assert ours.total_size == theirs.total_size


def test_distributed_sampler_shuffles_alike_on_every_rank():
    n, replicas = 23, 4

    def shares(epoch):
        out = []
        for rank in range(replicas):
            s = nud.DistributedSampler(range(n), replicas, rank, seed=5)
            s.set_epoch(epoch)
            out.append(list(s))
        return out
    zero = shares(0)
    covered = sorted(i for share in zero for i in share)
    assert set(covered) == set(range(n)) and len(covered) == 24  # one padded index
    assert shares(0) == zero and shares(1) != zero


def test_distributed_sampler_errors():
    with pytest.raises(ValueError, match="pass num_replicas and rank"):
        nud.DistributedSampler(range(4))
    with pytest.raises(ValueError, match=r"invalid rank 3, rank should be in the interval "
                                         r"\[0, 2\]"):
        nud.DistributedSampler(range(4), num_replicas=3, rank=3)
    with pytest.raises(ValueError, match="num_replicas=0"):
        nud.DistributedSampler(range(4), num_replicas=0, rank=0)
    with pytest.raises(TypeError, match="shuffle should be a boolean value"):
        nud.DistributedSampler(range(4), 2, 0, shuffle="yes")


# ---- DataLoader: order, collation and length against torch ---------------------------------

LOADER_CONFIGS = [
    dict(batch_size=1),
    dict(batch_size=3),
    dict(batch_size=3, drop_last=True),
    dict(batch_size=4, sampler=[9, 3, 0, 5, 1, 1, 7]),
    dict(batch_size=None),
    dict(batch_size=None, sampler=[4, 2, 0]),
    dict(batch_sampler=[[3, 1], [0], [9, 8, 7]]),
]


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("config", LOADER_CONFIGS, ids=str)
def test_loader_batches_like_torch(config, prefetch):
    ours = nud.DataLoader(Indexed(10), prefetch=prefetch, **config)
    theirs = tud.DataLoader(TorchIndexed(10), **config)
    assert len(ours) == len(theirs)
    assert_same([as_numpy(b) for b in ours], [as_numpy(b) for b in theirs])


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("config", [dict(batch_size=3), dict(batch_size=3, drop_last=True),
                                    dict(batch_size=5), dict(batch_size=None)], ids=str)
def test_loader_iterable_dataset_like_torch(config, prefetch):
    ours = nud.DataLoader(Stream(10), prefetch=prefetch, **config)
    theirs = tud.DataLoader(TorchStream(10), **config)
    assert len(ours) == len(theirs)
    assert_same([as_numpy(b) for b in ours], [as_numpy(b) for b in theirs])
    with pytest.raises(TypeError):
        len(nud.DataLoader(Stream(3, with_len=False)))


def test_loader_collates_structured_samples_like_torch():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=7)
    samples = [{"x": x[i], "target": (int(y[i]), float(i)), "id": f"#{i}"} for i in range(7)]
    ours = nud.DataLoader(samples, batch_size=3, sampler=[6, 0, 2, 5, 1, 3, 4])
    theirs = tud.DataLoader(samples, batch_size=3, sampler=[6, 0, 2, 5, 1, 3, 4])
    assert_same([as_numpy(b) for b in ours], [as_numpy(b) for b in theirs])
    tensors = nud.DataLoader(nud.TensorDataset(neurenix.tensor(x), y), batch_size=4)
    torch_tensors = tud.DataLoader(tud.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                                   batch_size=4)
    assert_same([as_numpy(tuple(b)) for b in tensors],
                [as_numpy(tuple(b)) for b in torch_tensors])


def test_shuffled_loader_is_seeded():
    loader = nud.DataLoader(Indexed(40), batch_size=8, shuffle=True)
    neurenix.manual_seed(123)
    first = [b.tolist() for b in loader]
    second = [b.tolist() for b in loader]
    assert first != second
    assert sorted(sum(first, [])) == list(range(40))
    neurenix.manual_seed(123)
    assert [b.tolist() for b in loader] == first
    seeded = [[b.tolist() for b in nud.DataLoader(Indexed(40), batch_size=8, shuffle=True,
                                                  generator=np.random.default_rng(7))]
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_custom_collate_and_getitems():
    class Batched(Indexed):
        def __getitems__(self, indices):
            return [10 * i for i in indices]
    loader = nud.DataLoader(Batched(5), batch_size=2, collate_fn=list)
    assert list(loader) == [[0, 10], [20, 30], [40]]


# ---- the prefetch thread ---------------------------------------------------------------------

def test_prefetch_reads_on_a_background_thread_one_batch_ahead():
    dataset = Indexed(20)
    it = iter(nud.DataLoader(dataset, batch_size=2))
    assert next(it).tolist() == [0, 1]
    deadline = time.monotonic() + 5
    while len(dataset.read) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    assert dataset.read == [0, 1, 2, 3]  # batch 1 loaded, batch 2 not yet
    assert threading.get_ident() not in dataset.threads
    it.close()
    assert not prefetch_threads()


class Failing(nud.Dataset):
    def __init__(self, n, bad):
        self.n, self.bad = n, bad

    def __getitem__(self, i):
        if i in self.bad:
            raise KeyError(f"bad sample {i}")
        return i

    def __len__(self):
        return self.n


@pytest.mark.parametrize("prefetch", [True, False])
def test_exceptions_arrive_at_their_batch(prefetch):
    it = iter(nud.DataLoader(Failing(10, {5}), batch_size=2, prefetch=prefetch))
    assert next(it).tolist() == [0, 1]
    assert next(it).tolist() == [2, 3]
    with pytest.raises(KeyError, match="bad sample 5"):
        next(it)
    assert [b.tolist() for b in it] == [[6, 7], [8, 9]]  # as PyTorch: iteration goes on


def test_exception_traceback_names_the_dataset_line():
    it = iter(nud.DataLoader(Failing(4, {0}), batch_size=2))
    with pytest.raises(KeyError) as info:
        next(it)
    assert any(entry.name == "__getitem__" for entry in info.traceback)
    it.close()


def test_sampler_exception_arrives_in_order():
    def order():
        yield 0
        yield 1
        raise RuntimeError("sampler broke")
    it = iter(nud.DataLoader(Indexed(5), sampler=order()))
    assert next(it).tolist() == [0]
    assert next(it).tolist() == [1]
    with pytest.raises(RuntimeError, match="sampler broke"):
        next(it)
    assert list(it) == []


def test_iterable_dataset_error_ends_like_without_prefetch():
    class Broken(nud.IterableDataset):
        def __iter__(self):
            yield 1
            yield 2
            raise OSError("stream broke")
    for prefetch in (True, False):
        it = iter(nud.DataLoader(Broken(), batch_size=1, prefetch=prefetch))
        assert next(it).tolist() == [1]
        assert next(it).tolist() == [2]
        with pytest.raises(OSError, match="stream broke"):
            next(it)
        assert list(it) == []


def test_early_break_and_garbage_collection_leave_no_thread():
    loader = nud.DataLoader(Indexed(100), batch_size=4)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    assert not wait_for_no_prefetch_threads()
    it = iter(loader)
    next(it)
    del it, loader
    gc.collect()
    assert not wait_for_no_prefetch_threads()
    it = iter(nud.DataLoader(Indexed(10), batch_size=3))
    assert prefetch_threads()
    del it  # never advanced
    assert not wait_for_no_prefetch_threads()


def test_exhaustion_joins_the_thread_and_stays_exhausted():
    it = iter(nud.DataLoader(Indexed(3), batch_size=2))
    assert len(list(it)) == 2
    assert not prefetch_threads()
    with pytest.raises(StopIteration):
        next(it)


def test_prefetch_thread_follows_grad_mode():
    rows = [neurenix.ones(2, requires_grad=True) for _ in range(3)]
    with neurenix.no_grad():
        batch = next(iter(nud.DataLoader(rows, batch_size=3)))
    assert not batch.requires_grad
    assert next(iter(nud.DataLoader(rows, batch_size=3))).requires_grad


# ---- argument errors -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,message", [
    (dict(shuffle=True, sampler=[0, 1]), ValueError, "sampler option is mutually exclusive "
                                                     "with shuffle"),
    (dict(batch_sampler=[[0]], batch_size=2), ValueError, "batch_sampler option is mutually "
                                                          "exclusive with batch_size"),
    (dict(batch_sampler=[[0]], shuffle=True), ValueError, "mutually exclusive"),
    (dict(batch_sampler=[[0]], sampler=[0]), ValueError, "mutually exclusive"),
    (dict(batch_sampler=[[0]], drop_last=True), ValueError, "mutually exclusive"),
    (dict(batch_size=None, drop_last=True), ValueError, "batch_size=None option disables "
                                                        "auto-batching"),
    (dict(batch_size=0), ValueError, "batch_size=0"),
    (dict(batch_size=2.0), TypeError, r"batch_size=2\.0 \(float\)"),
    (dict(shuffle="yes"), TypeError, "shuffle should be a boolean value, but got "
                                     "shuffle='yes'"),
    (dict(drop_last=1), TypeError, "drop_last should be a boolean value"),
    (dict(num_workers=2), ValueError, "multiprocessing workers are not supported yet; "
                                      "num_workers should be 0, but got num_workers=2"),
    (dict(num_workers=-1), ValueError, "num_workers=-1"),
    (dict(sampler=3), TypeError, r"sampler should be a Sampler or an iterable of indices, but "
                                 r"got sampler=3 \(int\)"),
    (dict(collate_fn="stack"), TypeError, "collate_fn should be callable"),
    (dict(generator=0), TypeError, "generator must be a numpy.random.Generator or None, got "
                                   "int"),
    (dict(prefetch=None), TypeError, "prefetch should be a boolean value"),
])
def test_loader_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        nud.DataLoader(Indexed(4), **kwargs)


def test_loader_argument_errors_match_torch_where_torch_checks():
    for kwargs in (dict(shuffle=True, sampler=[0, 1]), dict(batch_sampler=[[0]], batch_size=2),
                   dict(batch_size=None, drop_last=True)):
        with pytest.raises(ValueError) as theirs:
            tud.DataLoader(TorchIndexed(4), **kwargs)
        with pytest.raises(ValueError) as ours:
            nud.DataLoader(Indexed(4), **kwargs)
        assert str(theirs.value) in str(ours.value)


def test_loader_dataset_errors():
    with pytest.raises(TypeError, match="got int"):
        nud.DataLoader(5)
    for kwargs, name in ((dict(shuffle=True), "shuffle"), (dict(sampler=[0]), "sampler"),
                         (dict(batch_sampler=[[0]]), "batch_sampler")):
        with pytest.raises(ValueError, match=f"IterableDataset: expected unspecified {name} "
                                             f"option"):
            nud.DataLoader(Stream(3), **kwargs)


# ---- training from a DataLoader --------------------------------------------------------------

def test_mlp_trains_from_a_data_loader():
    from neurenix.nn import Linear, MSELoss, ReLU, Sequential
    from neurenix.optim import Adam

    neurenix.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 1)) + 0.5 * np.sin(x[:, :1])).astype(np.float32)
    loader = nud.DataLoader(nud.TensorDataset(x, y), batch_size=16, shuffle=True)
    model = Sequential(Linear(4, 16), ReLU(), Linear(16, 1))
    optimizer = Adam(model.parameters(), lr=1e-2)
    loss_fn = MSELoss()
    epoch_losses = []
    for _ in range(5):
        total = 0.0
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * xb.shape[0]
        epoch_losses.append(total / len(x))
    assert epoch_losses[-1] < 0.5 * epoch_losses[0], epoch_losses


# ---- the documentation's examples ------------------------------------------------------------

def test_data_doc_examples_run(capsys):
    page = ROOT / "docs" / "api" / "data.md"
    namespace: dict = {}
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert blocks
    for i, block in enumerate(blocks):
        exec(compile(block, f"data.md block {i}", "exec"), namespace)  # noqa: S102
