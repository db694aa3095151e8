"""Property tests against NumPy: broadcasting binary ops, and basic + advanced indexing.

Each property runs at most 50 examples (deadline off: the first call of a path is slower).
"""
from __future__ import annotations

import operator

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from op_helpers import torch_dtype

import neurenix as nx

FEW = settings(max_examples=50, deadline=None)

BINARY = {
    "add": (operator.add, np.add),
    "sub": (operator.sub, np.subtract),
    "mul": (operator.mul, np.multiply),
    "div": (operator.truediv, np.divide),
    "maximum": (nx.maximum, np.maximum),
    "minimum": (nx.minimum, np.minimum),
    "lt": (operator.lt, np.less),
    "eq": (operator.eq, np.equal),
}


def _data(seed: int, shape: tuple[int, ...], low: float = 0.5, high: float = 2.0) -> np.ndarray:
    """Small integers plus a sign make ties (for eq, maximum) and keep denominators from 0."""
    rng = np.random.default_rng(seed)
    mag = rng.integers(int(low * 2), int(high * 2) + 1, size=shape) / 2
    return (mag * rng.choice([-1.0, 1.0], size=shape)).astype(np.float32)


@FEW
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4),
       op=st.sampled_from(sorted(BINARY)), seed=st.integers(0, 2**16))
def test_binary_broadcast_matches_numpy(shapes, op, seed):
    nx_op, np_op = BINARY[op]
    a_shape, b_shape = shapes.input_shapes
    a, b = _data(seed, a_shape), _data(seed + 1, b_shape)
    x = nx.tensor(a, requires_grad=True)
    y = nx.tensor(b, requires_grad=True)
    out = nx_op(x, y)
    want = np_op(a, b)
    assert out.shape == shapes.result_shape == want.shape
    assert out.dtype == (nx.bool if want.dtype == np.bool_ else nx.float32)
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-6)
    if out.requires_grad:
        # the gradient of sum(out) sums back over the broadcast axes: one entry per input
        out.sum().backward()
        assert x.grad.shape == a_shape and y.grad.shape == b_shape
        if op in ("add", "sub"):
            reps = np.prod(shapes.result_shape) / max(np.prod(a_shape), 1)
            np.testing.assert_allclose(x.grad.numpy(), np.full(a_shape, reps), rtol=1e-6)


@FEW
@given(dtypes=st.tuples(*[st.sampled_from([nx.bool, nx.int32, nx.int64, nx.float32,
                                           nx.float64])] * 2),
       shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
def test_promotion_and_broadcast_match_torch(dtypes, shapes):
    # NumPy widens int32 * float32 to float64; the promotion oracle is PyTorch's
    a = np.ones(shapes.input_shapes[0], dtypes[0].np_type)
    b = np.ones(shapes.input_shapes[1], dtypes[1].np_type)
    op = operator.eq if nx.bool in dtypes else operator.mul
    out = op(nx.tensor(a), nx.tensor(b))
    want = op(torch.tensor(a), torch.tensor(b))
    assert out.shape == tuple(want.shape)
    assert torch_dtype(out.dtype) == want.dtype
    np.testing.assert_array_equal(out.numpy(), want.numpy())


def _positive_steps(index):
    """Neurenix refuses negative slice steps (as PyTorch); flip them to positive ones."""
    def fix(item):
        if isinstance(item, slice) and item.step is not None and item.step < 0:
            return slice(item.start, item.stop, -item.step)
        return item
    return tuple(fix(i) for i in index) if isinstance(index, tuple) else fix(index)


def _check_index(a: np.ndarray, np_index, nx_index) -> None:
    """x[index] against NumPy: values, then the gradient of sum(w * x[index])."""
    try:
        want = a[np_index]
    except IndexError:
        x = nx.tensor(a)
        try:
            x[nx_index]
        except IndexError:
            return
        raise AssertionError(f"NumPy refuses {np_index!r}, Neurenix does not") from None
    x = nx.tensor(a, requires_grad=True)
    got = x[nx_index]
    assert got.shape == want.shape, f"{np_index!r}: {got.shape} != {want.shape}"
    np.testing.assert_array_equal(got.detach().numpy(), want)
    w = np.random.default_rng(0).standard_normal(want.shape).astype(np.float32)
    (got * nx.tensor(w)).sum().backward()
    positions = np.arange(a.size).reshape(a.shape)[np_index]
    expected = np.bincount(positions.ravel(), weights=w.ravel(), minlength=a.size)
    np.testing.assert_allclose(x.grad.numpy(), expected.reshape(a.shape), rtol=1e-5,
                               atol=1e-6)


@st.composite
def basic_case(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    index = draw(hnp.basic_indices(shape, min_dims=0, allow_newaxis=True,
                                   allow_ellipsis=True))
    return shape, _positive_steps(index)


@FEW
@given(case=basic_case())
def test_basic_indexing_matches_numpy(case):
    shape, index = case
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    _check_index(a, index, index)


@st.composite
def advanced_case(draw):
    """Slices, None, Ellipsis, integer arrays (one broadcast shape) and 1-D bool masks.

    Plain ints are left out: NumPy counts an int next to an array as an advanced index
    (changing where the result's axes go), PyTorch and Neurenix apply it first as a select.
    """
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
    adv_shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3))
    np_items, nx_items = [], []
    for size in shape[:draw(st.integers(1, len(shape)))]:
        kind = draw(st.sampled_from(["slice", "array", "array", "mask", "none"]))
        if kind == "none":
            np_items.append(None)
            nx_items.append(None)
        if kind in ("slice", "none"):
            start = draw(st.integers(-size, size) | st.none())
            step = draw(st.integers(1, 3) | st.none())
            item = slice(start, None, step)
        elif kind == "array":
            sub = tuple(d if draw(st.booleans()) else 1 for d in adv_shape)
            item = draw(hnp.arrays(np.int64, sub, elements=st.integers(-size, size - 1)))
        else:
            item = draw(hnp.arrays(np.bool_, (size,)))
        np_items.append(item)
        nx_items.append(nx.tensor(item) if isinstance(item, np.ndarray) else item)
    if draw(st.booleans()):
        at = draw(st.integers(0, len(np_items)))
        nx_items.insert(at, Ellipsis)
        # NumPy alone counts an Ellipsis that covers no dimension as separating the advanced
        # indices around it (PyTorch does not), so such an Ellipsis is left out of its index
        if len(shape) > sum(1 for i in np_items if i is not None):
            np_items.insert(at, Ellipsis)
    return shape, tuple(np_items), tuple(nx_items)


@FEW
@given(case=advanced_case())
def test_advanced_indexing_matches_numpy(case):
    shape, np_index, nx_index = case
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    _check_index(a, np_index, nx_index)


@FEW
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4),
       data=st.data(), keepdim=st.booleans(),
       name=st.sampled_from(["sum", "amax", "amin", "prod", "mean"]))
def test_reductions_over_random_dims_match_numpy(shape, data, keepdim, name):
    dims = data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True))
    a = _data(len(shape), shape)
    out = getattr(nx.tensor(a), name)(tuple(dims), keepdim=keepdim)
    np_name = {"amax": "max", "amin": "min"}.get(name, name)
    want = getattr(np, np_name)(a, axis=tuple(dims), keepdims=keepdim)
    assert out.shape == want.shape
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5)


@FEW
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4), data=st.data())
def test_permute_then_reshape_matches_numpy(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    out = nx.tensor(a).permute(*perm).reshape(-1)
    np.testing.assert_array_equal(out.numpy(), np.transpose(a, perm).reshape(-1))
