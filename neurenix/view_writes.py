"""Writes through views, as PyTorch's: a view remembers the tensor it was taken of, and a write
into the view (an in-place operation, an assignment) is a write into that tensor too.

The values need nothing: a CPU view shares its base's array, a device view its storage
(`neurenix.tensor.Alias`).  Autograd does: after `z[1].mul_(3)` the base `z` is a new value,
`write_view(z_old, slice, z[1]_new)`, so gradients through later uses of `z` see the write;
and a view taken before the write is derived again from its base's new value when it is next
used (`refresh`).  Inside a trace the same happens to symbolic values
(`neurenix.compilation.tracing`), so compiled code follows the write as eager code does.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from neurenix.compiler.ops import Primitive
from neurenix.compiler.types import bool_, int64

from .device_ops import current
from .state import is_grad_enabled
from .tensor import HostConstant, Tensor, Version, version_of

Apply = Callable[..., Tensor]

TRACKED = frozenset({"slice", "reshape", "permute"})
"""View primitives a write goes through (an expanded or windowed view repeats elements: a
write into it is refused or private, as in PyTorch)."""

READ_ONLY = frozenset({"expand", "unfold", "stop_gradient"})
"""View primitives whose result reads its input's memory but takes no write through (NumPy
gives them read-only arrays: a write is refused or private).  They are marked as views all
the same, so that a write into the base counts in their version (a backward through a use
taken before the write raises instead of reading the new values) and a use after the write
is derived again from the base's new value (`refresh`)."""

SHARING = TRACKED | READ_ONLY
"""Every view primitive `mark`ed when its result shares its input's host memory."""


def mark(view: Tensor, prim: Primitive, base: Tensor, attrs: dict[str, Any]) -> None:
    """Record that `view` is `prim(base, **attrs)`, sharing base's memory."""
    view._view = (base, prim, attrs, version_of(base))


def positions(shape: tuple[int, ...], prim: Primitive, attrs: dict[str, Any]) -> np.ndarray:
    """The flat index into a tensor of `shape` of each element of its view `prim`, flat; a
    RuntimeError when two elements are one location (a write would be ambiguous)."""
    ramp = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
    pos = np.ascontiguousarray(prim.impl(ramp, **attrs)).reshape(-1)
    if np.unique(pos).size != pos.size:
        raise RuntimeError(OVERLAP)
    return pos


def write_view(base: Tensor, prim: Primitive, attrs: dict[str, Any], value: Tensor,
               apply: Apply) -> Tensor:
    """`base` with its view `prim(base, **attrs)` replaced by `value`, out of place: a select
    between base and value's elements gathered to base's positions (differentiable in both;
    `apply` is `dispatch.apply`, passed in by the modules that import it)."""
    shape = tuple(base.shape)
    pos = positions(shape, prim, attrs)
    n = int(np.prod(shape, dtype=np.int64))
    mask = np.zeros(n, dtype=bool)
    mask[pos] = True
    source = np.zeros(n, dtype=np.int64)
    source[pos] = np.arange(pos.size, dtype=np.int64)
    host = base._data is not None and not isinstance(base._data, np.ndarray)
    constant = (lambda a: a.view(HostConstant)) if host else (lambda a: a)
    gathered = apply("gather", apply("reshape", value, shape=(pos.size,)),
                     Tensor._wrap(constant(source), int64), axis=0)
    flat = apply("where", Tensor._wrap(constant(mask), bool_), gathered,
                 apply("reshape", base, shape=(n,)))
    return apply("reshape", flat, shape=shape)


OVERLAP = ("unsupported operation: more than one element of the written-to tensor refers to a "
           "single memory location (an expanded view); clone() it before the in-place "
           "operation")


def refuse_overlap(x: Tensor) -> None:
    """A RuntimeError, as PyTorch's, for a write into a host tensor whose elements repeat (an
    expanded view: a stride of 0 over more than one element)."""
    data = x._data
    if isinstance(data, np.ndarray) and not data.flags.writeable and any(
            stride == 0 and size > 1 for stride, size in zip(data.strides, data.shape)):
        raise RuntimeError(OVERLAP)


def protect_saved(x: Tensor) -> None:
    """Before a write into x's host memory: the autograd nodes that made x and its bases keep
    a copy of their output where they share that memory (a VJP reading its output, exp's,
    would otherwise see the written values: a wrong gradient).  A write through a `detach()`
    is one autograd never sees, as in PyTorch: there the node's output is marked
    `Overwritten` instead, so that a backward reading it raises as PyTorch's does."""
    t: Tensor | None = x
    detached = False
    while t is not None:
        node = t._node
        out = getattr(node, "out", None)
        data = t._data
        if out is not None and type(out) is not Overwritten and isinstance(data, np.ndarray) \
                and isinstance(out._data, np.ndarray) and np.may_share_memory(out._data, data):
            node.out = Overwritten.of(out, node.name) if detached else \
                Tensor._wrap(np.array(out._data), out._dtype)
        if t._view is not None:
            t = t._view[0]
            continue
        version = t._version
        source = None if type(version) is int else version.source()
        t, detached = (None, detached) if source is None or source is t else (source, True)


class Overwritten(Tensor):
    """An autograd node's saved output after a write through a `detach()` of it changed its
    memory: reading its values (a VJP that needs them, exp's) raises PyTorch's error; a VJP
    that does not read them (mul by a constant's) runs as before."""

    __slots__ = ("_message",)

    @classmethod
    def of(cls, out: Tensor, name: str) -> Overwritten:
        """The stand-in for `out`, the saved output of node `name`."""
        t = object.__new__(cls)
        t._dtype, t._device = out._dtype, out._device
        t._fresh_state()
        t._message = (f"one of the variables needed for gradient computation has been "
                      f"modified by an inplace operation: the output of {name} of shape "
                      f"{tuple(out._data.shape)} was modified in place (through a detach()) "
                      f"after it was saved; its gradient would be wrong. Use an out-of-place "
                      f"operation (or .clone() before modifying)")
        return t

    @property
    def _data(self) -> Any:
        raise RuntimeError(self._message)


def share_version(detached: Tensor, source: Tensor) -> None:
    """Make `detached` (a host `detach()` of `source`: `conversion.detach`) share the version
    counter of the tensor source is a view of at the top (PyTorch's detach shares its
    source's counter): a write into either, or into any view of either, counts for both."""
    if not isinstance(detached._data, np.ndarray):
        return  # a device alias counts its storage's writes already (`tensor.version_of`)
    root = source
    while root._view is not None:
        root = root._view[0]
    version = root._version
    if type(version) is int:
        version = root._version = Version(version, root)
    detached._version = version


def bump_bases(x: Tensor) -> None:
    """After a write into view x's memory: count it in the version of the tensor x is a view
    of at the top, which every other view and `detach()` of it reads (`version_of`)."""
    view = x._view
    if view is None:
        return
    base = view[0]
    while base._view is not None:
        base = base._view[0]
    base._version += 1


def chain(x: Tensor) -> list[tuple[Tensor, Primitive, dict[str, Any], Any]]:
    """x's bases, nearest first, each with the view step from it and a snapshot of its values
    now (taken before a write into x changes them)."""
    out: list[tuple[Tensor, Primitive, dict[str, Any], Any]] = []
    if isinstance(x._data, np.ndarray) and not x._data.flags.writeable:
        return out  # a read-only view: the write is private (`inplace._store`), no base takes it
    view = x._view
    while view is not None:
        base, prim, attrs, _ = view
        if prim.name == "stop_gradient":
            break  # the values are shared, the autograd value is not (PyTorch's detach)
        data = base._data
        # a device buffer is never written, only replaced: it is its own snapshot
        snapshot = np.array(data, copy=True) if isinstance(data, np.ndarray) else current(base)
        out.append((base, prim, attrs, snapshot))
        view = base._view
    return out


def write_through(x: Tensor, bases: list[tuple[Tensor, Primitive, dict[str, Any], Any]],
                  apply: Apply) -> None:
    """After x (a view) took its new value in autograd, make each base in `bases` (from
    `chain(x)`, taken before the write) the value with the write in it."""
    child = x
    for base, prim, attrs, snapshot in bases:
        old = Tensor._wrap(snapshot, base._dtype, base._device)
        old._node, old.requires_grad = base._node, base.requires_grad
        new = write_view(old, prim, attrs, frozen(child), apply)
        base._node, base.requires_grad = new._node, new.requires_grad
        base._version += 1
        child = base
    if bases:
        base, prim, attrs, _ = x._view
        x._view = (base, prim, attrs, version_of(base))


def frozen(t: Tensor) -> Tensor:
    """t's values and autograd node now, as a tensor no later write rebinds (the tape reads
    its inputs' nodes when it runs: a node built from t itself would follow t's rebinding and
    could lead back to itself)."""
    f = Tensor._wrap(t._data, t._dtype, t._device)
    f._node, f.requires_grad = t._node, t.requires_grad
    return f


def refresh(t: Tensor, apply: Apply) -> None:
    """Derive view `t` again from its base when the base was written since (its autograd
    value; its values are the base's memory already)."""
    view = t._view
    if view is None:
        return
    base, prim, attrs, version = view
    refresh(base, apply)
    now = version_of(base)
    if now == version:
        return
    t._view = (base, prim, attrs, now)
    if prim.name != "stop_gradient" and is_grad_enabled() and base.requires_grad:
        # (a stop_gradient view shares values, not the autograd value: nothing to derive)
        fresh = apply(prim.name, frozen(base), **attrs)
        t._node, t.requires_grad = fresh._node, fresh.requires_grad
