"""Memory planning: every temporary of a `KernelGraph` gets a byte offset in one arena.

An analysis over the kernel schedule, not a graph rewrite:

1. Liveness: a temporary is live from the first kernel that touches it to the last one.
2. In-place reuse: a kernel's output may take the storage of an input that dies at that kernel
   when the kernel is purely elementwise over the same index (every load of the input and every
   store to the output use one identical, injective row-major index over the domain), so each
   element is read before it is overwritten and by no other iteration.  This is conservative:
   anything else (reductions, accumulating stores, shifted or broadcast reads) keeps its own
   buffer.  Reused buffers form one *storage* whose lifetime is the union of theirs.
3. Packing: storages are placed greedily by size, largest first, each at the lowest 64-byte
   aligned offset that overlaps no already placed storage whose lifetime intersects its own
   (TFLite's "greedy by size" arena planner).

Reported sizes use 64-byte aligned sizes throughout, so they compare like with like:
`naive_bytes` is every temporary in its own buffer, `lower_bound_bytes` is the peak over the
kernel order of the storages live together (no placement can do better), and
`arena_bytes` is what the plan uses; always lower_bound <= arena <= naive.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .ir import Binary, Const, Kernel, KernelGraph, Load, Var

ALIGN = 64


@dataclass
class MemoryPlan:
    """Where each temporary lives in the arena, and what the plan saved.

    `offsets` maps every temporary to its byte offset; `inplace` maps an output that reuses an
    input's storage to that input (both names have the same offset); `intervals` gives each
    temporary's live range as (first kernel, last kernel) indices.
    """

    offsets: dict[str, int]
    arena_bytes: int
    naive_bytes: int
    lower_bound_bytes: int
    inplace: dict[str, str] = field(default_factory=dict)
    intervals: dict[str, tuple[int, int]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for compile summaries: planned vs naive vs lower bound."""
        return (f"arena {self.arena_bytes} B (naive {self.naive_bytes} B, lower bound "
                f"{self.lower_bound_bytes} B, {len(self.inplace)} in place)")


def aligned(nbytes: int) -> int:
    """`nbytes` rounded up to the arena alignment."""
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


def liveness(schedule: KernelGraph) -> dict[str, tuple[int, int]]:
    """(first, last) kernel index touching each temporary; untouched ones get (0, 0)."""
    temps = set(schedule.temporaries())
    intervals: dict[str, tuple[int, int]] = {}
    for k, kernel in enumerate(schedule.kernels):
        for buf in kernel.buffers():
            if buf.name in temps:
                first, _ = intervals.get(buf.name, (k, k))
                intervals[buf.name] = (first, k)
    for name in temps:
        intervals.setdefault(name, (0, 0))
    return intervals


def affine(e) -> dict[int, int] | None:
    """`e` as {axis: coefficient, -1: constant} if it is affine in the loop variables (sums
    and constant multiples of `Var`s and int constants), else None."""
    if isinstance(e, Var):
        return {e.axis: 1}
    if isinstance(e, Const) and isinstance(e.value, int) and not isinstance(e.value, bool):
        return {-1: e.value}
    if isinstance(e, Binary) and e.op in ("add", "sub", "mul"):
        a, b = affine(e.a), affine(e.b)
        if a is None or b is None:
            return None
        if e.op == "mul":
            if set(a) == {-1}:
                a, b = b, a
            if set(b) != {-1}:
                return None
            return {k: v * b[-1] for k, v in a.items()}
        sign = -1 if e.op == "sub" else 1
        out = dict(a)
        for k, v in b.items():
            out[k] = out.get(k, 0) + sign * v
        return out
    return None


def _is_row_major(index, domain: tuple[int, ...]) -> bool:
    """Whether `index` visits 0..prod(domain)-1 in row-major order, once each."""
    coeffs = affine(index)
    if coeffs is None or coeffs.get(-1, 0) != 0:
        return False
    stride = 1
    for axis in reversed(range(len(domain))):
        if domain[axis] > 1 and coeffs.get(axis, 0) != stride:
            return False
        stride *= domain[axis]
    return all(k == -1 or 0 <= k < len(domain) for k in coeffs)


def _loads(e, out: list[Load], seen: set[int] | None = None) -> None:
    """Every Load in expression `e` (including those inside masks and indices), each shared
    subexpression visited once: an expression is a DAG, which as a tree can be exponentially
    larger (`x ** n` unrolled by squaring)."""
    seen = set() if seen is None else seen
    if id(e) in seen:
        return
    seen.add(id(e))
    if isinstance(e, Load):
        out.append(e)
        _loads(e.index, out, seen)
        if e.mask is not None:
            _loads(e.mask, out, seen)
        return
    for child in getattr(e, "__dict__", {}).values():
        if hasattr(child, "__dataclass_fields__"):
            _loads(child, out, seen)


def inplace_candidates(kernel: Kernel) -> list[tuple[str, str]]:
    """(output, input) pairs this kernel could compute in place, by its structure alone."""
    if kernel.reduce or kernel.reduce_value is not None:
        return []
    if any(s.accumulate for s in kernel.stores):
        return []
    size = 1
    for d in kernel.domain:
        size *= d
    loads: list[Load] = []
    for store in kernel.stores:
        _loads(store.value, loads)
        _loads(store.index, loads)
    out_names = {b.name for b in kernel.outputs}
    pairs = []
    for out in kernel.outputs:
        stores = [s for s in kernel.stores if s.buffer == out.name]
        if len(stores) != 1 or out.size != size:
            continue
        if not _is_row_major(stores[0].index, kernel.domain):
            continue
        for inp in kernel.inputs:
            if inp.name in out_names or inp.size != size:
                continue
            if inp.dtype.itemsize != out.dtype.itemsize:
                continue
            if any(ld.buffer == out.name for ld in loads):
                continue
            reads = [ld for ld in loads if ld.buffer == inp.name]
            if not reads or not all(ld.index == stores[0].index and ld.mask is None
                                    for ld in reads):
                continue
            # a store later in the same iteration must not read what this one overwrote
            later: list[Load] = []
            for s in kernel.stores[kernel.stores.index(stores[0]) + 1:]:
                _loads(s.value, later)
                _loads(s.index, later)
            if any(ld.buffer == inp.name for ld in later):
                continue
            pairs.append((out.name, inp.name))
    return pairs


def _find_inplace(schedule: KernelGraph, intervals: dict[str, tuple[int, int]]) -> dict[str, str]:
    temps = set(schedule.temporaries())
    inplace: dict[str, str] = {}
    taken: set[str] = set()
    for k, kernel in enumerate(schedule.kernels):
        for out, inp in inplace_candidates(kernel):
            if out not in temps or inp not in temps or inp in taken or out in inplace:
                continue
            if intervals[out][0] != k or intervals[inp][1] != k:
                continue
            inplace[out] = inp
            taken.add(inp)
    return inplace


def plan_memory(schedule: KernelGraph) -> MemoryPlan:
    """Place every temporary of `schedule` in one arena (see the module docstring)."""
    temps = schedule.temporaries()
    intervals = liveness(schedule)
    nbytes = {n: aligned(schedule.buffers[n].size * schedule.buffers[n].dtype.itemsize)
              for n in temps}
    inplace = _find_inplace(schedule, intervals)

    root = {n: n for n in temps}
    for out, inp in inplace.items():
        root[out] = root[inp]
    storages: dict[str, list[str]] = {}
    for name in temps:
        storages.setdefault(root[name], []).append(name)
    span = {r: (min(intervals[n][0] for n in ns), max(intervals[n][1] for n in ns))
            for r, ns in storages.items()}
    size = {r: max(nbytes[n] for n in ns) for r, ns in storages.items()}

    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offset_of: dict[str, int] = {}
    for r in sorted(storages, key=lambda r: (-size[r], span[r], r)):
        first, last = span[r]
        clashes = sorted((o, e) for o, e, f, ll in placed if f <= last and first <= ll)
        offset = 0
        for o, e in clashes:
            if offset + size[r] <= o:
                break
            offset = max(offset, e)
        offset_of[r] = offset
        placed.append((offset, offset + size[r], first, last))

    n_kernels = len(schedule.kernels)
    peak = 0
    for k in range(max(n_kernels, 1)):
        live = sum(size[r] for r in storages if span[r][0] <= k <= span[r][1])
        peak = max(peak, live)
    return MemoryPlan(
        offsets={n: offset_of[root[n]] for n in temps},
        arena_bytes=max((e for _, e, _, _ in placed), default=0),
        naive_bytes=sum(nbytes.values()),
        lower_bound_bytes=peak,
        inplace=inplace,
        intervals=intervals,
    )
