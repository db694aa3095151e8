"""Movement functions: view/reshape, permute/transpose, squeeze/unsqueeze, expand, cat/stack,
split/chunk, flip. Each is a primitive or a short composition of them."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neurenix.compiler.ops import REGISTRY, Primitive
from neurenix.compiler.symbolic import Dim
from neurenix.compiler.types import int64
from neurenix.runtime.sizes import Poly

from . import view_writes
from .dispatch import _record, apply, wrap
from .elementwise import as_tensor, broadcast_shapes, result_dtype
from .state import read_grad_mode, read_trace
from .tensor import Tensor

_RESHAPE, _PERMUTE = REGISTRY["reshape"], REGISTRY["permute"]


def eager_result(prim: Primitive, inputs: tuple[Tensor, ...], attrs: dict, out: np.ndarray,
                 x: Tensor) -> Tensor:
    """What `apply(prim.name, *inputs, **attrs)` gives once its NumPy reference has given
    `out` (an array of the dtype of `x`, the first input): the result tensor, marked as a view
    of `x` when a tracked view primitive shares its memory, recorded under grad mode.  For the
    eager fast paths (issue 15), which know the result's type without the type rule; only
    with no trace active and every input a plain host array."""
    result = wrap(out, x._dtype)
    if prim.name in view_writes.TRACKED and np.may_share_memory(out, x._data):
        view_writes.mark(result, prim, x, attrs)
    if read_grad_mode():
        return _record(prim, inputs, attrs, result)
    return result


def _plain_target(shape: tuple, size: int) -> tuple[int, ...] | None:
    """`infer_shape`'s answer for a shape of plain ints (at most one -1) that fits `size`
    elements; None for anything else (the general path then answers, or raises)."""
    known, hole = 1, -1
    for i, d in enumerate(shape):
        if type(d) is not int:
            return None
        if d < 0:
            if d != -1 or hole >= 0:
                return None
            hole = i
        else:
            known *= d
    if hole < 0:
        return shape if known == size else None
    if known == 0 or size % known:
        return None
    return shape[:hole] + (size // known,) + shape[hole + 1:]


def normalize_dim(dim: int, ndim: int, op: str) -> int:
    """A dimension index in [0, ndim), accepting negatives; IndexError naming the op otherwise."""
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise TypeError(f"{op}: dim must be an int, got {type(dim).__name__}")
    lo, hi = (-ndim, ndim - 1) if ndim else (-1, 0)
    if not lo <= dim <= hi:
        raise IndexError(f"{op}: dimension out of range (expected to be in range of "
                         f"[{lo}, {hi}], but got {dim})")
    return int(dim) % ndim if ndim else 0


def normalize_dims(dims, ndim: int, op: str) -> tuple[int, ...]:
    """Sorted distinct dims; None means all of them."""
    if dims is None:
        return tuple(range(ndim))
    if isinstance(dims, (int, np.integer)):
        dims = (dims,)
    out = sorted({normalize_dim(d, ndim, op) for d in dims})
    if len(out) != len(tuple(dims)):
        raise ValueError(f"{op}: dim {tuple(dims)} repeats a dimension")
    return tuple(out)


def same_sizes(a: tuple, b: tuple) -> bool:
    """a == b for shapes, lengths first: a tuple compares items before lengths, and with
    dynamic sizes `(n, 16) == (16,)` would record the guard `n != 16` for nothing."""
    return len(a) == len(b) and a == b


def shape_args(args: Sequence, op: str) -> tuple[int, ...]:
    """Accept f(2, 3) and f((2, 3)) alike."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    shape = []
    for a in args:
        if isinstance(a, Tensor):
            a = int(a.item())
        if isinstance(a, Poly):  # a dynamic size while tracing (compiler/symbolic.py)
            shape.append(a)
            continue
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
            raise TypeError(f"{op}: expected a shape of ints, got {tuple(args)}")
        shape.append(int(a))
    return tuple(shape)


def infer_shape(x: Tensor, shape: tuple[int, ...], op: str) -> tuple[int, ...]:
    """Resolve one -1 in a target shape against x's element count."""
    n = x.numel()
    if sum(1 for d in shape if d == -1) > 1 or any(d < -1 for d in shape):
        raise ValueError(f"{op}: invalid shape {shape} (at most one -1, others >= 0)")
    known = 1
    for d in shape:
        if d != -1:
            known *= d
    if -1 in shape:
        if known == 0 or n % known:
            raise ValueError(f"{op}: shape {shape} is invalid for input of size {n} "
                             f"(shape {tuple(x.shape)})")
        shape = tuple(n // known if d == -1 else d for d in shape)
    elif known != n:
        raise ValueError(f"{op}: shape {shape} is invalid for input of size {n} "
                         f"(shape {tuple(x.shape)})")
    return shape


def _fast_reshape(x: Tensor, shape: tuple) -> Tensor | None:
    """reshape/view's fast path: a host tensor outside a trace and a shape of plain ints
    (`f(2, 8)`, `f((2, 8))`, `f(-1)`) that fits; None sends the call to the general path."""
    data = x._data
    if type(data) is not np.ndarray or read_trace() is not None:
        return None
    if len(shape) == 1 and type(shape[0]) is not int:
        shape = shape[0]
        if type(shape) is list:
            shape = tuple(shape)
        elif type(shape) is not tuple:
            return None
    target = _plain_target(shape, data.size)
    if target is None:
        return None
    if target == data.shape:
        return x
    attrs = {"shape": target}
    return eager_result(_RESHAPE, (x,), attrs, data.reshape(target), x)


def reshape(x: Tensor, *shape) -> Tensor:
    """The same elements in row-major order with a new shape (one dim may be -1)."""
    if isinstance(x, Tensor):
        out = _fast_reshape(x, shape)
        if out is not None:
            return out
    target = infer_shape(x, shape_args(shape, "reshape"), "reshape")
    return x if target == x.shape else apply("reshape", x, shape=target)


def view(x: Tensor, *shape) -> Tensor:
    if isinstance(x, Tensor):
        out = _fast_reshape(x, shape)
        if out is not None:
            return out
    target = infer_shape(x, shape_args(shape, "view"), "view")
    return x if target == x.shape else apply("reshape", x, shape=target)


def permute(x: Tensor, *dims) -> Tensor:
    perm = tuple(normalize_dim(d, x.ndim, "permute") for d in shape_args(dims, "permute"))
    if sorted(perm) != list(range(x.ndim)):
        raise ValueError(f"permute: {perm} is not a permutation of the {x.ndim} dims of a "
                         f"tensor of shape {tuple(x.shape)}")
    return x if perm == tuple(range(x.ndim)) else apply("permute", x, perm=perm)


def _fast_permute(x: Tensor, perm: tuple[int, ...]) -> Tensor:
    """`apply("permute", x, perm=perm)` for a host tensor outside a trace and a valid,
    non-identity `perm` (a transpose: always a view of x)."""
    return eager_result(_PERMUTE, (x,), {"perm": perm}, x._data.transpose(perm), x)


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    if type(dim0) is int and type(dim1) is int and isinstance(x, Tensor):
        data = x._data
        if type(data) is np.ndarray and read_trace() is None:
            n = data.ndim
            if -n <= dim0 < n and -n <= dim1 < n:  # never for a 0-d tensor
                a, b = dim0 % n, dim1 % n
                if a == b:
                    return x
                if n == 2:
                    return _fast_permute(x, (1, 0))
                perm = list(range(n))
                perm[a], perm[b] = b, a
                return _fast_permute(x, tuple(perm))
    a, b = normalize_dim(dim0, x.ndim, "transpose"), normalize_dim(dim1, x.ndim, "transpose")
    perm = list(range(x.ndim))
    perm[a], perm[b] = perm[b], perm[a]
    return permute(x, tuple(perm))


def movedim(x: Tensor, source: int, destination: int) -> Tensor:
    s, d = normalize_dim(source, x.ndim, "movedim"), normalize_dim(destination, x.ndim, "movedim")
    perm = [i for i in range(x.ndim) if i != s]
    perm.insert(d, s)
    return permute(x, tuple(perm))


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    if x.ndim == 0:
        return reshape(x, (1,))
    s, e = normalize_dim(start_dim, x.ndim, "flatten"), normalize_dim(end_dim, x.ndim, "flatten")
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    n = 1
    for d in x.shape[s:e + 1]:
        n *= d
    return reshape(x, x.shape[:s] + (n,) + x.shape[e + 1:])


def unflatten(x: Tensor, dim: int, sizes: Sequence[int]) -> Tensor:
    d = normalize_dim(dim, x.ndim, "unflatten")
    part = infer_shape(Tensor._wrap(np.empty(x.shape[d], np.float32)), tuple(sizes), "unflatten")
    return reshape(x, x.shape[:d] + part + x.shape[d + 1:])


def squeeze(x: Tensor, dim=None) -> Tensor:
    if dim is None:
        dims = {i for i, s in enumerate(x.shape) if s == 1}
    else:
        dims = {i for i in normalize_dims(dim, x.ndim, "squeeze") if x.shape[i] == 1}
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in dims))


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    d = normalize_dim(dim, x.ndim + 1, "unsqueeze")
    return reshape(x, x.shape[:d] + (1,) + x.shape[d:])


def expand(x: Tensor, *sizes) -> Tensor:
    """Broadcast to `sizes` (-1 keeps a dimension); new dimensions are added in front."""
    sizes = shape_args(sizes, "expand")
    if len(sizes) < x.ndim:
        raise ValueError(f"expand: the number of sizes ({len(sizes)}) must be at least the "
                         f"tensor's rank ({x.ndim}), shape {tuple(x.shape)}")
    lead = len(sizes) - x.ndim
    target = []
    for i, s in enumerate(sizes):
        src = x.shape[i - lead] if i >= lead else None
        if s == -1:
            if src is None:
                raise ValueError("expand: -1 is not allowed for a new leading dimension")
            s = src
        if src is not None and src != 1 and src != s:
            raise ValueError(f"expand: the size of dimension {i} ({src}) must match the "
                             f"expanded size ({s}) unless it is 1; shape {tuple(x.shape)} "
                             f"to {tuple(sizes)}")
        target.append(s)
    return broadcast_to(x, tuple(target))


def broadcast_to(x: Tensor, shape: Sequence[int]) -> Tensor:
    shape = tuple(shape)
    if not same_sizes(broadcast_shapes(x.shape, shape, op="broadcast_to"), shape):
        raise ValueError(f"broadcast_to: cannot broadcast shape {tuple(x.shape)} to {shape}")
    if same_sizes(x.shape, shape):
        return x
    if x.ndim < len(shape):
        x = apply("reshape", x, shape=(1,) * (len(shape) - x.ndim) + x.shape)
    return apply("expand", x, shape=shape)


def expand_as(x: Tensor, other: Tensor) -> Tensor:
    return expand(x, other.shape)


def repeat(x: Tensor, *repeats) -> Tensor:
    """Tile x: repeat(2, 3) on (a, b) gives (2a, 3b)."""
    reps = shape_args(repeats, "repeat")
    if len(reps) < x.ndim:
        raise ValueError(f"repeat: {len(reps)} repeats for a tensor of rank {x.ndim}")
    x = reshape(x, (1,) * (len(reps) - x.ndim) + x.shape)
    inter = []
    for r, s in zip(reps, x.shape):
        inter += [r, s]
    tiled = broadcast_to(reshape(x, tuple(v for s in x.shape for v in (1, s))), tuple(inter))
    return reshape(tiled, tuple(r * s for r, s in zip(reps, x.shape)))


def _common(tensors: Sequence[Tensor], op: str) -> list[Tensor]:
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{op}: expected a non-empty sequence of tensors")
    if not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError(f"{op}: expected a sequence of Tensors, got "
                        f"{[type(t).__name__ for t in tensors]}")
    dt = result_dtype(*tensors)
    return [as_tensor(t, dt) for t in tensors]


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Join tensors along an existing dimension."""
    ts = _common(tensors, "cat")
    d = normalize_dim(dim, ts[0].ndim, "cat")
    for t in ts[1:]:
        if t.ndim != ts[0].ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, ts[0].shape))
                                       if i != d):
            raise ValueError(f"cat: sizes of tensors must match except in dimension {d}; got "
                             f"{tuple(ts[0].shape)} and {tuple(t.shape)}")
    return ts[0] if len(ts) == 1 else apply("concat", *ts, axis=d)


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Join tensors of one shape along a new dimension."""
    ts = _common(tensors, "stack")
    for t in ts[1:]:
        if t.shape != ts[0].shape:
            raise ValueError(f"stack: expects each tensor to be equal size, got "
                             f"{tuple(ts[0].shape)} and {tuple(t.shape)}")
    d = normalize_dim(dim, ts[0].ndim + 1, "stack")
    return cat([unsqueeze(t, d) for t in ts], d)


def narrow(x: Tensor, dim: int, start: int, length: int) -> Tensor:
    d = normalize_dim(dim, x.ndim, "narrow")
    if start < 0:
        start += x.shape[d]
    if not 0 <= start <= start + length <= x.shape[d] or length < 0:
        raise ValueError(f"narrow: [{start}, {start + length}) is outside dimension {d} of "
                         f"size {x.shape[d]}")
    starts = tuple(start if i == d else 0 for i in range(x.ndim))
    stops = tuple(start + length if i == d else s for i, s in enumerate(x.shape))
    return apply("slice", x, starts=starts, stops=stops, steps=(1,) * x.ndim)


def split(x: Tensor, split_size_or_sections, dim: int = 0) -> tuple[Tensor, ...]:
    """Pieces of a given size (the last may be smaller) or of the listed sizes."""
    d = normalize_dim(dim, x.ndim, "split")
    n = x.shape[d]
    if isinstance(split_size_or_sections, (int, np.integer)):
        size = int(split_size_or_sections)
        if size <= 0:
            raise ValueError(f"split: split_size must be positive, got {size}")
        sizes = [size] * (n // size) + ([n % size] if n % size else [])
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if sum(sizes) != n or any(s < 0 for s in sizes):
            raise ValueError(f"split: sections {sizes} do not add up to dimension {d} of size {n}")
    out, start = [], 0
    for s in sizes or [0]:
        out.append(narrow(x, d, start, s))
        start += s
    return tuple(out)


def chunk(x: Tensor, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    if chunks <= 0:
        raise ValueError(f"chunk: chunks must be positive, got {chunks}")
    n = x.shape[normalize_dim(dim, x.ndim, "chunk")]
    size = max(1, -(-n // chunks))
    return split(x, size, dim)


def unbind(x: Tensor, dim: int = 0) -> tuple[Tensor, ...]:
    d = normalize_dim(dim, x.ndim, "unbind")
    return tuple(squeeze(p, d) for p in split(x, 1, d))


def flip(x: Tensor, dims) -> Tensor:
    """Reverse the order of elements along dims (a gather with a reversed ramp)."""
    out = x
    for d in normalize_dims(dims, x.ndim, "flip"):
        n = x.shape[d]
        if isinstance(n, Dim):  # a dynamic size while tracing: n - 1 - iota(n)
            idx = apply("sub", apply("full", shape=(n,), value=n - 1, dtype=int64.name),
                        apply("iota", shape=(n,), axis=0, dtype=int64.name))
        else:
            idx = Tensor._wrap(np.arange(n - 1, -1, -1, dtype=np.int64), int64)
        out = apply("gather", out, idx, axis=d)
    return out
