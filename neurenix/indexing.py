"""Tensor indexing: ints, slices (negative bounds, positive steps), None, Ellipsis, integer and
bool tensors — as compositions of `slice`, `reshape`, `permute` and `gather` — and `__setitem__`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from neurenix.compiler.trace import TraceError
from neurenix.compiler.types import bool_, int64

from .call_site import user_source
from .checks import check_range
from .device_ops import current
from .dispatch import apply
from .elementwise import add, as_tensor, broadcast_shapes, lt, mul, where
from .shapes import broadcast_to, permute, reshape
from .state import current_trace, is_grad_enabled, suspended
from .tensor import HostConstant, Tensor, storage_on


class _Advanced:
    """An integer index tensor standing for one dimension."""

    __slots__ = ("index", "mask_shape")

    def __init__(self, index: Tensor, mask_shape: tuple[int, ...] | None = None) -> None:
        self.index = index
        self.mask_shape = mask_shape  # set on the first index a bool mask became


def _as_index_tensor(item: Any) -> Tensor:
    t = item if isinstance(item, Tensor) else Tensor(np.asarray(item))
    if t.dtype != bool_ and not t.dtype.is_integer:
        raise IndexError(f"tensors used as indices must be integer or bool tensors, got "
                         f"{t.dtype.name}")
    return t


def _expand_items(x: Tensor, index: Any) -> list[Any]:
    """The index as a flat list of int | slice | None | _Advanced, with Ellipsis expanded."""
    if not isinstance(index, tuple):
        index = (index,)
    items: list[Any] = []
    for item in index:
        if isinstance(item, (Tensor, np.ndarray, list)):
            t = _as_index_tensor(item)
            if t.dtype == bool_:
                items.extend(("bool", t))
            else:
                items.append(_Advanced(t))
        elif isinstance(item, (bool, np.bool_)):
            raise IndexError("indexing with a Python bool is not supported; use a bool tensor")
        elif isinstance(item, (int, np.integer, slice)) or item is None or item is Ellipsis:
            items.append(int(item) if isinstance(item, np.integer) else item)
        else:
            raise IndexError(f"only integers, slices, None, Ellipsis and integer or bool "
                             f"tensors are valid indices, got {type(item).__name__}")
    # bool masks become one integer index per masked dimension (their positions are data)
    flat: list[Any] = []
    it = iter(items)
    for item in it:
        if isinstance(item, str):
            mask = next(it)
            if mask.ndim == 0:
                raise IndexError("indexing with a 0-d bool tensor is not supported")
            mask._concrete("indexing with a bool mask (its result's shape depends on values)")
            parts = [_Advanced(Tensor._wrap(np.ascontiguousarray(n), int64))
                     for n in np.nonzero(mask._host())]
            parts[0].mask_shape = tuple(mask.shape)
            flat.extend(parts)
        else:
            flat.append(item)
    used = sum(1 for i in flat if i is not None and i is not Ellipsis)
    if flat.count(Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if used > x.ndim:
        raise IndexError(f"too many indices for tensor of dimension {x.ndim} "
                         f"(got {used})")
    if Ellipsis in flat:
        at = flat.index(Ellipsis)
        flat[at:at + 1] = [slice(None)] * (x.ndim - used)
    else:
        flat.extend([slice(None)] * (x.ndim - used))
    dim = 0
    for item in flat:
        if item is None:
            continue
        if isinstance(item, _Advanced) and item.mask_shape is not None:
            covered = tuple(x.shape[dim:dim + len(item.mask_shape)])
            if covered != item.mask_shape:
                raise IndexError(f"the shape of the bool mask {item.mask_shape} does not match "
                                 f"the indexed tensor's dimensions {covered} from dimension "
                                 f"{dim} (tensor shape {tuple(x.shape)})")
        dim += 1
    return flat


def _normalise_slice(s: slice, size: int, dim: int) -> tuple[int, int, int]:
    if s.step is not None and s.step <= 0:
        raise ValueError(f"indexing: step must be greater than zero, got {s.step} on "
                         f"dimension {dim} (reverse with flip())")
    return s.indices(size)


def getitem(x: Tensor, index: Any) -> Tensor:
    """x[index] with NumPy/PyTorch semantics."""
    items = _expand_items(x, index)
    starts, stops, steps = [], [], []
    out_shape: list[int] = []
    advanced: list[tuple[int, Tensor]] = []  # (position in out_shape, index tensor)
    dim = 0
    for item in items:
        if item is None:
            out_shape.append(1)
            continue
        size = x.shape[dim]
        if isinstance(item, int):
            i = item + size if item < 0 else item
            if not 0 <= i < size:
                raise IndexError(f"index {item} is out of bounds for dimension {dim} with "
                                 f"size {size}")
            starts.append(i)
            stops.append(i + 1)
            steps.append(1)
        elif isinstance(item, slice):
            a, b, c = _normalise_slice(item, size, dim)
            b = max(a, b)
            starts.append(a)
            stops.append(b)
            steps.append(c)
            out_shape.append(max(0, (b - a + c - 1) // c))
        else:
            starts.append(0)
            stops.append(size)
            steps.append(1)
            advanced.append((len(out_shape), _normalise_index(item.index, size, dim)))
            out_shape.append(size)
        dim += 1
    y = x
    whole = (tuple(starts), tuple(stops)) == ((0,) * x.ndim, tuple(x.shape))
    if not whole or any(s != 1 for s in steps):
        y = apply("slice", y, starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))
    if tuple(out_shape) != y.shape:
        y = apply("reshape", y, shape=tuple(out_shape))
    if advanced:
        y = _gather_advanced(y, advanced)
    return y


def _normalise_index(index: Tensor, size: int, dim: int) -> Tensor:
    """Index values in [0, size): negatives wrap, out-of-range values raise IndexError.

    A traced index is checked after the compiled call (`checks.check_range`); negatives wrap with
    `where`, and compiled code never reads outside the tensor meanwhile."""
    check_range(index, -size, size, lambda bad: IndexError(
        f"index {bad} is out of bounds for dimension {dim} with size {size}"))
    if index._data is None:
        index = as_tensor(index, int64)
        return where(lt(index, 0), add(index, size), index)
    data = index._host()
    if index.dtype != int64:
        index = Tensor._wrap(data.astype(np.int64), int64)
    if data.size and data.min() < 0:
        index = Tensor._wrap(np.where(data < 0, data + size, data).astype(np.int64), int64)
    return index


def _gather_advanced(y: Tensor, advanced: list[tuple[int, Tensor]]) -> Tensor:
    positions = [p for p, _ in advanced]
    try:
        bshape = broadcast_shapes(*(t.shape for _, t in advanced), op="index")
    except ValueError as e:  # an IndexError, as in NumPy and PyTorch
        raise IndexError(f"{e} (shape mismatch between index tensors)") from None
    indices = [broadcast_to(t, bshape) for _, t in advanced]
    if positions != list(range(positions[0], positions[0] + len(positions))):
        rest = [i for i in range(y.ndim) if i not in positions]
        y = permute(y, tuple(positions + rest))
        positions = list(range(len(positions)))
    q, k = positions[0], len(positions)
    sizes = y.shape[q:q + k]
    linear = indices[0]
    for size, idx in zip(sizes[1:], indices[1:]):
        linear = add(mul(linear, size), idx)
    if k > 1:
        merged = 1
        for s in sizes:
            merged *= s
        y = reshape(y, y.shape[:q] + (merged,) + y.shape[q + k:])
    return apply("gather", y, linear, axis=q)


def setitem(x: Tensor, index: Any, value: Any) -> None:
    """x[index] = value: in place when no gradient is involved, otherwise recorded.

    A leaf that requires grad cannot be assigned into (as in PyTorch).  When x or value takes
    part in autograd, x is rebound to `where(selected, scattered value, x)`, and x's version is
    bumped so any earlier use of x in the graph refuses to backpropagate a wrong gradient.
    """
    x._check_inplace("__setitem__")
    grad = is_grad_enabled() and (x.requires_grad or
                                  (isinstance(value, Tensor) and value.requires_grad))
    trace = current_trace()
    try:
        with suspended():
            # the selected positions are plain data: computed eagerly even inside a trace
            positions = getitem(Tensor._wrap(np.arange(x.numel(), dtype=np.int64)
                                             .reshape(x.shape), int64), index)
    except AttributeError as e:  # a symbolic tensor met eagerly
        if trace is None:
            raise
        raise TraceError(f"an assignment whose index holds a traced tensor at {user_source()} "
                         f"cannot be traced") from e
    v = value if isinstance(value, Tensor) else Tensor(np.asarray(value))
    v = as_tensor(v, x.dtype)  # its errors are its own (a dtype the device cannot convert)
    try:
        v = broadcast_to(v, positions.shape)
    except ValueError:
        raise ValueError(f"__setitem__: cannot assign a value of shape {tuple(v.shape)} to "
                         f"an indexed region of shape {tuple(positions.shape)}") from None
    x._version += 1
    eager = trace is None or trace.made_here(x)
    if not grad and eager and x._data is not None and v._data is not None:
        values = x._host()
        if not values.flags.writeable:
            values = values.copy()  # a broadcast or window view: take a private copy
        where_at = np.unravel_index(positions._host().reshape(-1), x.shape)
        values[where_at] = v._host().reshape(-1)
        x._set_host(values)
        return
    # plain data (positions were computed eagerly), also inside a trace
    pos = positions._host().reshape(-1)
    flat_v = reshape(_placed(v, x), (-1,))
    if np.unique(pos).size != pos.size:  # repeated positions: the last assignment wins
        _, first_from_end = np.unique(pos[::-1], return_index=True)
        keep = np.sort(pos.size - 1 - first_from_end)
        pos = pos[keep]
        flat_v = apply("gather", flat_v, Tensor._wrap(keep.astype(np.int64), int64), axis=0)
    if trace is not None:
        old = trace.value_of(x)  # x's value now, whatever x is (input, argument, ...)
    else:
        # x is about to be rebound to the result; record the old value under its own tensor
        # object, or the tape would point from x's new node back to x itself (a cycle)
        data = x._data if isinstance(x._data, np.ndarray) else current(x)
        old = Tensor._wrap(data, x._dtype, x._device)
        old._node, old.requires_grad = x._node, x.requires_grad
    mask_data = np.zeros(x.numel(), dtype=bool)
    mask_data[pos] = True
    zeros = _made(np.zeros(x.numel(), x.dtype.np_type), x)
    scattered = apply("scatter_add", Tensor._wrap(zeros, x.dtype), Tensor._wrap(pos, int64),
                      flat_v, axis=0)
    new = reshape(where(Tensor._wrap(_made(mask_data, x), bool_), scattered,
                        reshape(old, (-1,))),
                  x.shape)
    if trace is not None:
        trace.write(x, new)
        return
    if isinstance(x._data, np.ndarray):
        x._data = new._data
    else:
        x._set_storage(new._data)
    x._node, x.requires_grad = new._node, new.requires_grad


def _made(array: np.ndarray, x: Tensor) -> np.ndarray:
    """A host array the assignment made for itself: a `HostConstant` when x is on a device
    (so that the operation there takes it along)."""
    return array if type(x._data) is np.ndarray or x._data is None else array.view(HostConstant)


def _placed(v: Tensor, x: Tensor) -> Tensor:
    """The assigned value on x's device: a CPU value (a list, an array, a CPU tensor that needs
    no gradient) assigned into a device tensor is uploaded, as PyTorch's copy into it is."""
    if type(v._data) is np.ndarray and not v.requires_grad and x._device != v._device and \
            x._data is not None and not isinstance(x._data, np.ndarray):
        return Tensor._wrap(storage_on(np.ascontiguousarray(v._host()), x._device), v._dtype,
                            x._device)
    return v
