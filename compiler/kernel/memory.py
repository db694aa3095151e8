"""Memory planning: every temporary of a `KernelGraph` gets a byte offset in one arena.

An analysis over the kernel schedule, not a graph rewrite:

1. Liveness: a temporary is live from the first kernel that touches it to the last one.
2. In-place reuse: a kernel's output may take the storage of an input that dies at that kernel
   when the kernel is purely elementwise over the same index (every load of the input and every
   store to the output use one identical, injective row-major index over the domain), so each
   element is read before it is overwritten and by no other iteration.  This is conservative:
   anything else (reductions, accumulating stores, shifted or broadcast reads) keeps its own
   buffer.  Reused buffers form one *storage* whose lifetime is the union of theirs.
3. Packing: storages are placed greedily by size, largest first, each at the lowest aligned
   offset that overlaps no already placed storage whose lifetime intersects its own
   (TFLite's "greedy by size" arena planner).

The alignment is the target's (`Capabilities.alignment`: 64 bytes on the CPU, a cache line;
WebGPU binds storage at 256).  Reported sizes use aligned sizes throughout, so they compare
like with like:
`naive_bytes` is every temporary in its own buffer, `lower_bound_bytes` is the peak over the
kernel order of the storages live together (no placement can do better), and
`arena_bytes` is what the plan uses; always lower_bound <= arena <= naive.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..types import DType, bool_
from .affine import affine
from .ir import Kernel, KernelGraph, Load

ALIGN = 64
"""The default arena alignment in bytes (the CPU's cache line)."""


@dataclass
class MemoryPlan:
    """Where each temporary lives in the arena, and what the plan saved.

    `offsets` maps every temporary to its byte offset; `inplace` maps an output that reuses an
    input's storage to that input (both names have the same offset); `intervals` gives each
    temporary's live range as (first kernel, last kernel) indices.  `donated` maps a graph
    output to the graph input whose memory it is written into (the caller gave that input's
    memory away: `plan_memory(donate=...)`); those pairs are in `inplace` too.
    """

    offsets: dict[str, int]
    arena_bytes: int
    naive_bytes: int
    lower_bound_bytes: int
    inplace: dict[str, str] = field(default_factory=dict)
    intervals: dict[str, tuple[int, int]] = field(default_factory=dict)
    donated: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for compile summaries: planned vs naive vs lower bound."""
        return (f"arena {self.arena_bytes} B (naive {self.naive_bytes} B, lower bound "
                f"{self.lower_bound_bytes} B, {len(self.inplace)} in place)")

    def check(self, kernels: KernelGraph, alignment: int = ALIGN, bool_bytes: int = 1) -> None:
        """Raise ValueError unless the plan is sound for `kernels`: every temporary placed
        at a multiple of `alignment` inside the arena, and no two temporaries live at the
        same time overlapping (an in-place output shares its input's storage by design)."""
        temps = kernels.temporaries()
        if set(self.offsets) != set(temps):
            raise ValueError(f"memory plan: places {sorted(self.offsets)}, the kernels' "
                             f"temporaries are {sorted(temps)}")
        root = {}
        for n in temps:
            r = n
            while r in self.inplace:  # chains: t4 in place of t3, itself in place of t2
                r = self.inplace[r]
            root[n] = r
        extent = {}
        for n in temps:
            buf = kernels.buffers[n]
            start, end = self.offsets[n], self.offsets[n] + buf.size * itemsize(buf.dtype,
                                                                                  bool_bytes)
            if start % alignment or end > self.arena_bytes:
                raise ValueError(f"memory plan: {n!r} at [{start}, {end}) is not aligned to "
                                 f"{alignment} or leaves the {self.arena_bytes}-byte arena")
            extent[n] = (start, end)
        spans = liveness(kernels)
        for i, a in enumerate(temps):
            for b in temps[i + 1:]:
                if root[a] == root[b]:
                    continue
                (sa, ea), (sb, eb) = extent[a], extent[b]
                (fa, la), (fb, lb) = spans[a], spans[b]
                if sa < eb and sb < ea and fa <= lb and fb <= la:
                    raise ValueError(f"memory plan: {a!r} and {b!r} are live together (kernels "
                                     f"{fa}-{la} and {fb}-{lb}) and overlap in the arena")


def itemsize(dtype: DType, bool_bytes: int = 1) -> int:
    """Bytes per element of `dtype` in a target's memory: the host's, except bool, which a
    target without byte stores keeps in `bool_bytes` (WebGPU: a 4-byte word)."""
    return bool_bytes if dtype == bool_ else dtype.itemsize


def aligned(nbytes: int, alignment: int = ALIGN) -> int:
    """`nbytes` rounded up to a multiple of `alignment`."""
    return (nbytes + alignment - 1) // alignment * alignment


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


def inplace_candidates(kernel: Kernel, values_first: bool = False) -> list[tuple[str, str]]:
    """(output, input) pairs this kernel could compute in place, by its structure alone.
    `values_first`: the generator computes every store's value at a point before the first
    store there, after the point's reduction (the CPU's), so a later store may read what an
    earlier one overwrites, and a reduction that never reads the input may precede the
    stores (an optimizer update fused behind a gradient's sum)."""
    reduced: list[Load] = []
    if kernel.reduce or kernel.reduce_value is not None:
        if not values_first or kernel.reduce_value is None:
            return []
        _loads(kernel.reduce_value, reduced)
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
            if inp.dtype.itemsize != out.dtype.itemsize or \
                    (inp.dtype == bool_) != (out.dtype == bool_):
                continue
            if any(ld.buffer == out.name for ld in loads):
                continue
            reads = [ld for ld in loads if ld.buffer == inp.name]
            if not reads or not all(ld.index == stores[0].index and ld.mask is None
                                    for ld in reads):
                continue
            if any(ld.buffer == inp.name for ld in reduced):
                continue
            if values_first:
                pairs.append((out.name, inp.name))
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


def donations(schedule: KernelGraph, donate: dict[str, str]) -> dict[str, str]:
    """Which of the offered (graph output -> graph input) pairs may write the output into
    the input's memory: the output is stored by one kernel, in place of the input by that
    kernel's structure (`inplace_candidates`: each element read before it is overwritten, by
    no other iteration), no later kernel reads the input, no kernel reads the output, and the
    output is returned once.  The caller has given the input's memory away (an optimizer's
    parameter being updated); the runtime returns that memory as the output.  CPU programs
    only: their kernels compute every value at a point before storing any
    (`llvm_ops.emit_stores`)."""
    writers: dict[str, list[int]] = {}
    readers: dict[str, list[int]] = {}
    for k, kernel in enumerate(schedule.kernels):
        for b in kernel.outputs:
            writers.setdefault(b.name, []).append(k)
        for b in kernel.inputs:
            readers.setdefault(b.name, []).append(k)
    out: dict[str, str] = {}
    for o, i in donate.items():
        if o not in schedule.outputs or i not in schedule.inputs or i in out.values():
            continue
        if schedule.outputs.count(o) != 1 or len(writers.get(o, [])) != 1 or o in readers:
            continue
        (k,) = writers[o]
        if i in writers or any(r > k for r in readers.get(i, [])):
            continue
        if (o, i) in inplace_candidates(schedule.kernels[k], values_first=True):
            out[o] = i
    return out


def plan_memory(schedule: KernelGraph, alignment: int = ALIGN,
                bool_bytes: int = 1, donate: dict[str, str] | None = None) -> MemoryPlan:
    """Place every temporary of `schedule` in one arena, each at a multiple of `alignment`
    bytes (a positive power of two; see the module docstring), bools taking `bool_bytes`.
    `donate` offers graph inputs' memory for graph outputs (`donations` keeps the safe
    pairs)."""
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"plan_memory: alignment must be a positive power of two, got "
                         f"{alignment}")
    temps = schedule.temporaries()
    intervals = liveness(schedule)
    nbytes = {n: aligned(schedule.buffers[n].size * itemsize(schedule.buffers[n].dtype,
                                                             bool_bytes), alignment)
              for n in temps}
    inplace = _find_inplace(schedule, intervals)
    donated = donations(schedule, donate) if donate else {}

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
        inplace={**inplace, **donated},
        intervals=intervals,
        donated=donated,
    )
