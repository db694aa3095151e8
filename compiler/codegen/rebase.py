"""Rebased parameters: a constant offset taken out of a kernel's indices into its argument.

The steps of an unrolled RNN run the same kernel on another step's slice of one buffer: the
kernels differ only in a constant added to every index into that buffer, so each would get
a function of its own.  Taking the constant out of the indices (the caller passes the buffer
at that offset) makes them identical, and the generator emits one function for them all
(compile time falls with the number of steps).  Only plain cases are taken, so that nothing
else reads an offset: the buffer is accessed under one name, every access's index is a sum
whose loop-invariant terms (integer constants, and in a program with dynamic sizes products
of constants and `Sym`s: step t's slice of a stacked (steps, n, 4h) buffer starts at
4h*n*t) add up to the same size, with no negative coefficient, and the kernel's schedule
reads no index (a tiled or dot-product contraction, or a per-point nest).  The caller
computes a symbolic offset from the call's sizes.
"""
from __future__ import annotations

from dataclasses import replace

from ...runtime.sizes import Poly, Size
from ..kernel.affine import affine
from ..kernel.ir import Binary, Const, Expr, Kernel, Load, Store, dtype_of, rebuild
from ..kernel.memory import MemoryPlan
from ..schedule.types import Choice, Contraction, Dot, Elementwise, PerPoint, Schedule
from .program_specs import storage_root

REBASED_SCHEDULES = (Contraction, Dot, Elementwise, PerPoint)


def rebased(kernel: Kernel, params: list[str],
            plan: MemoryPlan) -> tuple[Kernel, dict[str, Size]]:
    """`kernel` with the loop-invariant offset of each plain parameter's indices taken out,
    and {parameter: offset in elements (an int, or a polynomial of the sizes)} for those it
    took out of ({} when none)."""
    if not _plain(kernel.schedule):
        return kernel, {}
    accesses: dict[str, list] = {}
    for node in _accesses(kernel):
        accesses.setdefault(node.buffer, []).append(node)
    names_of: dict[str, set[str]] = {}
    for name in accesses:
        names_of.setdefault(storage_root(name, params, plan), set()).add(name)
    offsets: dict[str, Size] = {}
    for names in names_of.values():
        if len(names) != 1:
            continue
        (name,) = names
        found = [_split(node.index)[1] for node in accesses[name]]
        # compared as plain data: a `Dim`'s == would decide (and guard) in the shape env
        if len({_key(c) for c in found}) == 1 and _positive(c := found[0]):
            offsets[name] = c
    if not offsets:
        return kernel, {}
    roots = {storage_root(name, params, plan): c for name, c in offsets.items()}
    return _without(kernel, offsets), roots


def _plain(schedule: Schedule | None) -> bool:
    if isinstance(schedule, Choice):
        return _plain(schedule.small) and _plain(schedule.large)
    return isinstance(schedule, REBASED_SCHEDULES)


def _accesses(kernel: Kernel) -> list:
    """Every Load and Store of `kernel`, each shared node once."""
    found: list = []

    def collect(n):
        if isinstance(n, (Load, Store)):
            found.append(n)
        return n

    rebuild(kernel, collect)
    return found


def _split(index: Expr) -> tuple[Expr | None, Size]:
    """`index` as (the rest, the sum of its top-level loop-invariant terms: integer constants
    and, in a program with dynamic sizes, polynomials of `Sym`s, read by `affine`); the rest
    is None when nothing else is left."""
    if isinstance(index, Binary) and index.op == "add":
        a, ca = _split(index.a)
        b, cb = _split(index.b)
        total = ca + cb
        if a is None or b is None:
            return (b if a is None else a), total
        return (index if (a is index.a and b is index.b) else replace(index, a=a, b=b)), total
    form = affine(index)
    if form is not None and set(form) <= {-1}:
        return None, form.get(-1, 0)
    return index, 0


def _key(size: Size) -> int | tuple:
    return size.terms if isinstance(size, Poly) else size


def _positive(offset: Size) -> bool:
    """A nonzero offset that no sizes make negative: no term with a negative coefficient."""
    if isinstance(offset, Poly):
        return all(c > 0 for _, c in offset.terms)
    return offset > 0


def _without(kernel: Kernel, offsets: dict[str, Size]) -> Kernel:
    """`kernel` with the loop-invariant `offsets[buffer]` taken out of every index into those
    buffers."""
    def rebase(n):
        if not isinstance(n, (Load, Store)) or n.buffer not in offsets:
            return n
        rest, _ = _split(n.index)
        return replace(n, index=rest if rest is not None else Const(0, dtype_of(n.index)))

    return rebuild(kernel, rebase)
