"""Tensor indexing: ints, slices (negative bounds, positive steps), None, Ellipsis, integer and
bool tensors — as compositions of `slice`, `reshape`, `permute` and `gather` — and `__setitem__`.
"""
from __future__ import annotations

import operator
from typing import Any, NamedTuple

import numpy as np

from neurenix.compiler.symbolic import Dim
from neurenix.compiler.trace import TraceError
from neurenix.compiler.types import DType, DynamicShape, bool_, int32, int64, same_shape

from . import view_writes
from .call_site import user_source
from .checks import check_range
from .device_ops import current
from .dispatch import apply
from .elementwise import (
    add,
    as_tensor,
    broadcast_shapes,
    cast,
    eq,
    ge,
    gt,
    le,
    logical_and,
    logical_not,
    logical_or,
    lt,
    mul,
    ne,
    sub,
    where,
)
from .mask_assign import masked_assign
from .shapes import broadcast_to, movedim, narrow, normalize_dim, permute, reshape, unsqueeze
from .state import current_trace, is_grad_enabled, no_grad, suspended
from .tensor import HostConstant, Tensor, storage_on, version_of


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
    if isinstance(size, Dim):  # a dynamic size while tracing: slice.indices needs an int
        return _bound(s.start, size, 0), _bound(s.stop, size, size), s.step or 1
    return s.indices(size)


def _bound(k: Any, size: Dim, default: Any) -> Any:
    """One end of a slice of a dimension of dynamic `size`, as `slice.indices` clips it (the
    comparisons are decided by the size's range, or become guards)."""
    if k is None:
        return default
    k = operator.index(k)
    return min(k, size) if k >= 0 else max(size + k, 0)


def _same(sizes: list, shape: tuple) -> bool:
    """Whether `sizes` are `shape`; structurally for a shape with dynamic sizes (`n == 3`
    would record a guard)."""
    if isinstance(shape, DynamicShape):
        return same_shape(sizes, shape)
    return tuple(sizes) == shape


def getitem(x: Tensor, index: Any) -> Tensor:
    """x[index] with NumPy/PyTorch semantics."""
    items = _expand_items(x, index)
    starts, stops, steps = [], [], []
    out_shape: list[int] = []
    advanced: list[tuple[int, Tensor]] = []  # (position in out_shape, index tensor)
    raw: list[tuple[int, Tensor, int, int]] = []  # (position, index, size, dimension)
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
            raw.append((len(out_shape), item.index, size, dim))
            out_shape.append(size)
        dim += 1
    if raw:
        # index tensors broadcast together first: when that leaves no element (an empty
        # boolean mask next to an index), none of them is used and none is out of range
        # (NumPy, PyTorch)
        try:
            used = 0 not in broadcast_shapes(*(t.shape for _, t, _, _ in raw), op="index")
        except ValueError:
            used = True  # _gather_advanced says what is wrong
        advanced = [(p, _normalise_index(t, size, d, check=used)) for p, t, size, d in raw]
    y = x
    whole = all(type(a) is int and a == 0 for a in starts) and _same(stops, x.shape)
    if not whole or any(s != 1 for s in steps):
        y = apply("slice", y, starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))
    if not _same(out_shape, y.shape):
        y = apply("reshape", y, shape=tuple(out_shape))
    if advanced:
        y = _gather_advanced(y, advanced)
    return y


def _normalise_index(index: Tensor, size: int, dim: int, check: bool = True) -> Tensor:
    """Index values in [0, size): negatives wrap, out-of-range values raise IndexError
    (`check`: the index is used at all).

    A traced index is checked after the compiled call (`checks.check_range`); negatives wrap with
    `where`, and compiled code never reads outside the tensor meanwhile."""
    if check:
        check_range(index, -size, size, lambda bad: IndexError(
            f"index {bad} is out of bounds for dimension {dim} with size {size}"))
    if index._data is None or isinstance(size, Dim):  # traced, or a dynamic size
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
    if masked_assign(x, index, value):
        return
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
    if trace is None:
        view_writes.protect_saved(x)
    if not grad and eager and x._data is not None and v._data is not None:
        values = x._host()
        private = not values.flags.writeable
        if private:
            values = values.copy()  # a broadcast or window view: take a private copy
        where_at = np.unravel_index(positions._host().reshape(-1), x.shape)
        values[where_at] = v._host().reshape(-1)
        x._set_host(values)
        if private and isinstance(x._data, np.ndarray):
            x._version, x._view = version_of(x), None  # a view (or detach()) no more
        elif x._view is not None:
            view_writes.bump_bases(x)  # its base, other views and detach()es count the write
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
        data = np.array(x._data) if isinstance(x._data, np.ndarray) else current(x)
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
    bases = view_writes.chain(x)  # x a view: its bases take the write too
    if isinstance(x._data, np.ndarray) and x._data.flags.writeable:
        np.copyto(x._data, new._data)  # into x's own memory, which its views and bases share
    elif isinstance(x._data, np.ndarray):  # a broadcast or window view: a private array
        x._version = version_of(x)
        x._data, x._view = new._data, None
    else:
        x._set_storage(new._data)
    x._node, x.requires_grad = new._node, new.requires_grad
    if x._view is not None:
        view_writes.bump_bases(x)
    view_writes.write_through(x, bases, apply)


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


# ---- gather, index_select, masked_fill, tril/triu, repeat_interleave, sort ------------------


class SortResult(NamedTuple):
    """The (values, indices) pair returned by sort and topk."""

    values: Tensor
    indices: Tensor


def _tensor(x: Any, op: str, what: str = "input") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor {what}, got {type(x).__name__}")
    return x


def _index_tensor(index: Any, op: str) -> Tensor:
    index = _tensor(index, op, "index")
    if not index.dtype.is_integer:
        raise TypeError(f"{op}: expected an integer (int64) index tensor, got "
                        f"{index.dtype.name}")
    return index


def _ramp(shape: tuple[int, ...], axis: int, dtype: DType = int64) -> Tensor:
    """0, 1, 2, ... along `axis` of an integer tensor of `shape` (a host constant)."""
    return apply("iota", shape=tuple(shape), axis=axis, dtype=dtype.name)


def _position_type(*sizes: int) -> DType:
    """int32 for positions below 2**31 (every target computes it natively), else int64."""
    return int32 if max(sizes, default=0) < 2 ** 31 else int64


def _take_along(x: Tensor, d: int, index: Tensor) -> Tensor:
    """out[..., i_d, ...] = x[..., index[..., i_d, ...], ...]: index has x's ndim and sizes no
    larger than x's, values in [0, x.shape[d]).  One `gather` of the flattened x at linear
    positions, so the gradient is one `scatter_add`."""
    strides = [1] * x.ndim
    for i in range(x.ndim - 2, -1, -1):
        strides[i] = strides[i + 1] * x.shape[i + 1]
    itype = _position_type(x.numel())
    linear = as_tensor(index, itype)
    if strides[d] != 1:
        linear = mul(linear, strides[d])
    for i in range(x.ndim):
        if i != d and index.shape[i] > 1:
            ramp = _ramp(index.shape, i, itype)
            linear = add(linear, mul(ramp, strides[i]) if strides[i] != 1 else ramp)
    return apply("gather", reshape(x, (x.numel(),)), linear, axis=0)


def gather(x: Tensor, dim: int, index: Tensor, *, sparse_grad: bool = False) -> Tensor:
    """out[i][j][k] = x[i][index[i][j][k]][k] for dim=1 (torch.gather): index has x's number
    of dimensions and, outside `dim`, sizes no larger than x's; out has index's shape."""
    x, index = _tensor(x, "gather"), _index_tensor(index, "gather")
    d = normalize_dim(dim, max(x.ndim, 1), "gather")
    if index.ndim != x.ndim and not (x.ndim <= 1 and index.ndim <= 1):
        raise ValueError(f"gather: index tensor must have the same number of dimensions as "
                         f"the input ({x.ndim}), got {index.ndim} (shape {tuple(index.shape)})")
    if x.ndim == 0 or index.ndim == 0:
        shape = tuple(index.shape)
        out = gather(reshape(x, (1,)) if x.ndim == 0 else x, 0,
                     reshape(index, (1,)) if index.ndim == 0 else index)
        return reshape(out, shape)
    for i, (si, sx) in enumerate(zip(index.shape, x.shape)):
        if i != d and si > sx:
            raise ValueError(f"gather: index {tuple(index.shape)} is larger than the input "
                             f"{tuple(x.shape)} at dimension {i} (only dimension {d} may be)")
    size = x.shape[d]
    check_range(index, 0, size, lambda bad: IndexError(
        f"gather: index {bad} is out of bounds for dimension {d} with size {size}"))
    return _take_along(x, d, index)


def index_select(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """The slices of x at positions `index` (a vector) along `dim`."""
    x, index = _tensor(x, "index_select"), _index_tensor(index, "index_select")
    if index.ndim > 1:
        raise ValueError(f"index_select: index must be a vector (0-d or 1-d), got shape "
                         f"{tuple(index.shape)}")
    d = normalize_dim(dim, max(x.ndim, 1), "index_select")
    if x.ndim == 0:
        return reshape(index_select(reshape(x, (1,)), 0, index), ())
    size = x.shape[d]
    check_range(index, 0, size, lambda bad: IndexError(
        f"index_select: index {bad} is out of range for dimension {d} with size {size}"))
    return apply("gather", x, reshape(index, (index.numel(),)), axis=d)


def masked_fill(x: Tensor, mask: Tensor, value: Any) -> Tensor:
    """x with `value` where the bool `mask` (broadcast with x) holds; x's dtype."""
    x, mask = _tensor(x, "masked_fill"), _tensor(mask, "masked_fill", "mask")
    if mask.dtype != bool_:
        raise TypeError(f"masked_fill: expected a bool mask, got {mask.dtype.name}")
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise ValueError(f"masked_fill: expected a 0-dimensional value tensor, got shape "
                             f"{tuple(value.shape)}")
    elif not isinstance(value, (bool, int, float, np.number, np.bool_)):
        raise TypeError(f"masked_fill: expected a number or a 0-d Tensor value, got "
                        f"{type(value).__name__}")
    fill = as_tensor(value, x.dtype) if isinstance(value, Tensor) else Tensor._wrap(
        np.asarray(value).astype(x.dtype.np_type).view(HostConstant), x.dtype)
    return where(mask, fill, x)


def _triangle(x: Tensor, diagonal: int, op: str) -> Tensor:
    x = _tensor(x, op)
    if x.ndim < 2:
        raise ValueError(f"{op}: expected a tensor of at least 2 dimensions, got shape "
                         f"{tuple(x.shape)}")
    if isinstance(diagonal, bool) or not isinstance(diagonal, (int, np.integer)):
        raise TypeError(f"{op}: diagonal must be an int, got {type(diagonal).__name__}")
    shape = tuple(x.shape[-2:])
    offset = sub(_ramp(shape, 1), _ramp(shape, 0))  # column - row
    keep = le(offset, int(diagonal)) if op == "tril" else ge(offset, int(diagonal))
    return where(keep, x, False if x.dtype == bool_ else 0)


def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    """The lower triangle of the last two dimensions (column - row <= diagonal), else 0."""
    return _triangle(x, diagonal, "tril")


def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    """The upper triangle of the last two dimensions (column - row >= diagonal), else 0."""
    return _triangle(x, diagonal, "triu")


def repeat_interleave(x: Tensor, repeats: Any = None, dim: int | None = None, *,
                      output_size: int | None = None) -> Tensor:
    """Each element (or slice along `dim`; None: of the flattened x) repeated `repeats`
    times.  `repeats` is an int or a tensor of one count per slice; a tensor's counts are read
    on the host (the output shape depends on them), so inside `neurenix.compile` they must
    be known when tracing.  `repeat_interleave(counts)` repeats 0 .. n-1."""
    x = _tensor(x, "repeat_interleave")
    if repeats is None:
        if x.ndim != 1 or not x.dtype.is_integer:
            raise ValueError(f"repeat_interleave: repeats must be a 1-D integer tensor, got "
                             f"{x.dtype.name} of shape {tuple(x.shape)}")
        return repeat_interleave(_ramp((x.shape[0],), 0), x, 0, output_size=output_size)
    if dim is None:
        x, d = reshape(x, (x.numel(),)), 0
    else:
        d = normalize_dim(dim, max(x.ndim, 1), "repeat_interleave")
        if x.ndim == 0:
            x = reshape(x, (1,))
    n = x.shape[d]
    counts = _counts(repeats, n)
    total = int(counts.sum())
    if output_size is not None and output_size != total:
        raise ValueError(f"repeat_interleave: output_size {output_size} does not match the "
                         f"repeated size {total}")
    if counts.size and (counts == counts.flat[0]).all():
        r = int(counts.flat[0])
        y = unsqueeze(x, d + 1)
        y = broadcast_to(y, x.shape[:d + 1] + (r,) + x.shape[d + 1:])
        return reshape(y, x.shape[:d] + (n * r,) + x.shape[d + 1:])
    positions = np.repeat(np.arange(n, dtype=np.int64), counts).view(HostConstant)
    return apply("gather", x, Tensor._wrap(positions, int64), axis=d)


def _counts(repeats: Any, n: int) -> np.ndarray:
    """The repeat count of each of n slices, read on the host; errors as PyTorch's."""
    if isinstance(repeats, Tensor):
        if not repeats.dtype.is_integer:
            raise TypeError(f"repeat_interleave: repeats must be an integer tensor, got "
                            f"{repeats.dtype.name}")
        if repeats._data is None:
            raise TraceError(f"repeat_interleave at {user_source()}: the output shape depends "
                             f"on the values of `repeats`, which neurenix.compile cannot "
                             f"trace; pass an int or a tensor made inside the function")
        if repeats.ndim > 1:
            raise ValueError(f"repeat_interleave: repeats must be 0-d or 1-d, got shape "
                             f"{tuple(repeats.shape)}")
        counts = np.asarray(repeats._host(), dtype=np.int64).reshape(-1)
    elif isinstance(repeats, (int, np.integer)) and not isinstance(repeats, bool):
        counts = np.asarray([int(repeats)], dtype=np.int64)
    else:
        raise TypeError(f"repeat_interleave: repeats must be an int or a Tensor, got "
                        f"{type(repeats).__name__}")
    if counts.size == 1:
        counts = np.repeat(counts, n)
    if counts.size != n:
        raise ValueError(f"repeat_interleave: repeats must have {n} elements (one per slice), "
                         f"got {counts.size}")
    if (counts < 0).any():
        raise ValueError(f"repeat_interleave: repeats must be non-negative, got "
                         f"{int(counts.min())}")
    return counts


def _ranks(y: Tensor, descending: bool, itype: DType) -> Tensor:
    """The position of each element of every last-axis row of y in that row sorted (ties by
    position, NaN above everything, as torch.sort(stable=True)): a count over all pairs,
    O(n^2) per row."""
    n = y.shape[-1]
    a, b = unsqueeze(y, -1), unsqueeze(y, -2)  # a: element i (rows), b: element j (columns)
    first = lt(b, a) if not descending else gt(b, a)
    same = eq(a, b)
    if y.dtype.is_floating:
        an, bn = ne(a, a), ne(b, b)
        first = logical_or(first, logical_and(an, logical_not(bn)) if not descending
                           else logical_and(bn, logical_not(an)))
        same = logical_or(same, logical_and(an, bn))
    earlier = lt(_ramp((n, n), 1, itype), _ramp((n, n), 0, itype))  # j < i
    before = logical_or(first, logical_and(same, earlier))
    return apply("reduce_sum", cast(before, itype), axes=(before.ndim - 1,))


def _order(y: Tensor, descending: bool) -> Tensor:
    """The positions that sort every last-axis row of y: order[r] = the i of rank r."""
    n = y.shape[-1]
    itype = _position_type(n)
    ranks = unsqueeze(_ranks(y, descending, itype), -2)  # (..., 1, n_i)
    at = eq(ranks, _ramp((n, 1), 0, itype))  # (..., n_r, n_i)
    picked = where(at, _ramp((n, n), 1, itype), 0)
    return apply("reduce_sum", picked, axes=(picked.ndim - 1,))


def _sorted(x: Tensor, dim: int, descending: bool, op: str) -> SortResult:
    x = _tensor(x, op)
    if not isinstance(descending, bool):
        raise TypeError(f"{op}: descending must be a bool, got {type(descending).__name__}")
    d = normalize_dim(dim, max(x.ndim, 1), op)
    if x.ndim == 0:
        return SortResult(x, reshape(_ramp((1,), 0), ()))
    y = movedim(x, d, -1) if d != x.ndim - 1 else x
    with no_grad():
        order = _order(y.detach(), descending)
    values = _take_along(y, y.ndim - 1, order)
    order = cast(order, int64)
    if d != x.ndim - 1:
        values, order = movedim(values, -1, d), movedim(order, -1, d)
    return SortResult(values, order)


def sort(x: Tensor, dim: int = -1, descending: bool = False, stable: bool = False) -> SortResult:
    """(values, indices) of x sorted along dim; always stable (equal elements keep their
    order), NaN sorted above every number.  O(n^2) per row: see `_ranks`."""
    if not isinstance(stable, bool):
        raise TypeError(f"sort: stable must be a bool, got {type(stable).__name__}")
    return _sorted(x, dim, descending, "sort")


def argsort(x: Tensor, dim: int = -1, descending: bool = False, stable: bool = False) -> Tensor:
    """The indices that sort x along dim (as `sort`)."""
    return _sorted(x, dim, descending, "argsort").indices


def topk(x: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True,  # noqa: A002
         ) -> SortResult:
    """The k largest (or smallest) elements along dim and their indices, in sorted order
    (ties by position)."""
    x = _tensor(x, "topk")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"topk: k must be an int, got {type(k).__name__}")
    d = normalize_dim(dim, max(x.ndim, 1), "topk")
    n = x.shape[d] if x.ndim else 1
    if not 0 <= k <= n:
        raise ValueError(f"topk: k ({k}) is out of range for dimension {d} of size {n}")
    values, indices = _sorted(x, d, bool(largest), "topk")
    if k == n:
        return SortResult(values, indices)
    return SortResult(narrow(values, d, 0, int(k)), narrow(indices, d, 0, int(k)))
