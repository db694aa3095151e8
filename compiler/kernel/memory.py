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

Symbolic sizes (docs/compiler/dynamic-shapes.md): a temporary's size may be a polynomial in
the program's symbols (`Dim`, e.g. 512*n).  Its aligned size rounds every coefficient of its
bytes up to the alignment: a multiple of the alignment for every value of the symbols, and at
least the true size since sizes are never negative.  Placement keeps the greedy order (by
size at the symbols' hints) and the lowest candidate position (0, or the end of a clashing
storage), but takes a position only where, for every value of the symbols in their ranges in
the active `ShapeEnv`, it misses every clashing storage (`_Ranges`, which proves inequalities
without recording guards); the position above every clashing storage always qualifies.
Offsets and `arena_bytes` are then sizes (`int | Dim`) valid for every call; `naive_bytes` and
`lower_bound_bytes` stay ints, measured at the symbols' hints.  A plan without symbols is
computed exactly as before.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import reduce

from ...runtime.sizes import Monomial, Poly, Size, poly_from_terms, size_value
from ..symbolic import DynamicSizeError, active_env, current_env, dim_from_poly
from ..types import DType, bool_
from .affine import affine
from .ir import BufferArg, Kernel, KernelGraph, Load

ALIGN = 64
"""The default arena alignment in bytes (the CPU's cache line)."""


@dataclass
class MemoryPlan:
    """Where each temporary lives in the arena, and what the plan saved.

    `offsets` maps every temporary to its byte offset; `inplace` maps an output that reuses an
    input's storage to that input (both names have the same offset); `intervals` gives each
    temporary's live range as (first kernel, last kernel) indices.  `donated` maps a graph
    output to the graph input whose memory it is written into (the caller gave that input's
    memory away: `plan_memory(donate=...)`); those pairs are in `inplace` too.  With symbolic
    sizes, offsets and `arena_bytes` are polynomials valid for every value of the symbols;
    `naive_bytes` and `lower_bound_bytes` are ints at the symbols' hints.
    """

    offsets: dict[str, Size]
    arena_bytes: Size
    naive_bytes: int
    lower_bound_bytes: int
    inplace: dict[str, str] = field(default_factory=dict)
    intervals: dict[str, tuple[int, int]] = field(default_factory=dict)
    donated: dict[str, str] = field(default_factory=dict)

    @property
    def symbolic(self) -> bool:
        """Whether an offset or the arena size depends on the symbols."""
        return isinstance(self.arena_bytes, Poly) or any(
            isinstance(o, Poly) for o in self.offsets.values())

    def summary(self) -> str:
        """One line for compile summaries: planned vs naive vs lower bound."""
        return (f"arena {self.arena_bytes} B (naive {self.naive_bytes} B, lower bound "
                f"{self.lower_bound_bytes} B, {len(self.inplace)} in place)")

    def specialize(self, env: Mapping[str, int]) -> MemoryPlan:
        """The plan with its offsets and arena size evaluated for these symbol values."""
        return MemoryPlan({n: size_value(o, env) for n, o in self.offsets.items()},
                          size_value(self.arena_bytes, env), self.naive_bytes,
                          self.lower_bound_bytes, dict(self.inplace), dict(self.intervals),
                          dict(self.donated))

    def check(self, kernels: KernelGraph, alignment: int = ALIGN, bool_bytes: int = 1) -> None:
        """Raise ValueError unless the plan is sound for `kernels`: every temporary placed
        at a multiple of `alignment` inside the arena, and no two temporaries live at the
        same time overlapping (an in-place output shares its input's storage by design).
        A symbolic plan must be provably so for every value of the symbols in the active
        shape environment, and is also checked at sample values (`_Ranges.samples`)."""
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
        nbytes = {n: buffer_bytes(kernels.buffers[n], bool_bytes) for n in temps}
        spans = liveness(kernels)
        if self.symbolic or any(isinstance(b, Poly) for b in nbytes.values()):
            ranges = _Ranges.of([self.arena_bytes, *self.offsets.values(), *nbytes.values()])
            _prove_plan(self, nbytes, root, spans, alignment, ranges)
            shape_env_ = current_env()
            for env in ranges.samples():
                if shape_env_ is not None and shape_env_.excludes(env):
                    continue  # sizes the trace's guards exclude: the program never runs there
                _check_placement(temps, {n: size_value(self.offsets[n], env) for n in temps},
                                 {n: size_value(b, env) for n, b in nbytes.items()},
                                 size_value(self.arena_bytes, env), root, spans, alignment)
            return
        _check_placement(temps, self.offsets, nbytes, self.arena_bytes, root, spans, alignment)


def _check_placement(temps: list[str], offsets: Mapping[str, int], nbytes: Mapping[str, int],
                     arena: int, root: Mapping[str, str],
                     spans: Mapping[str, tuple[int, int]], alignment: int) -> None:
    """`MemoryPlan.check` for static numbers."""
    extent = {}
    for n in temps:
        start, end = offsets[n], offsets[n] + nbytes[n]
        if start % alignment or end > arena:
            raise ValueError(f"memory plan: {n!r} at [{start}, {end}) is not aligned to "
                             f"{alignment} or leaves the {arena}-byte arena")
        extent[n] = (start, end)
    for i, a in enumerate(temps):
        for b in temps[i + 1:]:
            if root[a] == root[b]:
                continue
            (sa, ea), (sb, eb) = extent[a], extent[b]
            (fa, la), (fb, lb) = spans[a], spans[b]
            if sa < eb and sb < ea and fa <= lb and fb <= la:
                raise ValueError(f"memory plan: {a!r} and {b!r} are live together (kernels "
                                 f"{fa}-{la} and {fb}-{lb}) and overlap in the arena")


def _prove_plan(plan: MemoryPlan, nbytes: Mapping[str, Size], root: Mapping[str, str],
                spans: Mapping[str, tuple[int, int]], alignment: int, ranges: _Ranges) -> None:
    """`MemoryPlan.check`'s proof for every value of the symbols: offsets whose every
    coefficient is a multiple of the alignment, inside the arena, and for each pair of
    storages live together one provably below the other."""
    temps = list(plan.offsets)
    offsets = {n: _dim(o) for n, o in plan.offsets.items()}
    for n in temps:
        start = offsets[n]
        if not _multiple(start, alignment):
            raise ValueError(f"memory plan: {n!r} at offset {start} is not aligned to "
                             f"{alignment} for every size")
        if not (ranges.le(0, start) and ranges.le(start + nbytes[n], plan.arena_bytes)):
            raise ValueError(f"memory plan: {n!r} at [{start}, {start + nbytes[n]}) is not "
                             f"inside the {plan.arena_bytes}-byte arena for every size")
    for i, a in enumerate(temps):
        for b in temps[i + 1:]:
            (fa, la), (fb, lb) = spans[a], spans[b]
            if root[a] == root[b] or not (fa <= lb and fb <= la):
                continue
            sa, sb = offsets[a], offsets[b]
            if not (ranges.le(sa + nbytes[a], sb) or ranges.le(sb + nbytes[b], sa)):
                raise ValueError(f"memory plan: {a!r} and {b!r} are live together (kernels "
                                 f"{fa}-{la} and {fb}-{lb}) and are not provably apart in the "
                                 "arena for every size")


def itemsize(dtype: DType, bool_bytes: int = 1) -> int:
    """Bytes per element of `dtype` in a target's memory: the host's, except bool, which a
    target without byte stores keeps in `bool_bytes` (WebGPU: a 4-byte word)."""
    return bool_bytes if dtype == bool_ else dtype.itemsize


def buffer_bytes(buf: BufferArg, bool_bytes: int = 1) -> Size:
    """The bytes of a buffer (a polynomial for a symbolic size)."""
    return _dim(buf.size) * itemsize(buf.dtype, bool_bytes)


def aligned(nbytes: Size, alignment: int = ALIGN) -> Size:
    """`nbytes` rounded up to a multiple of `alignment`; a symbolic size has every
    coefficient rounded up, which is a multiple of `alignment` and at least `nbytes` for
    every (non-negative) value of its symbols."""
    if isinstance(nbytes, Poly):
        return _make({m: -(-c // alignment) * alignment for m, c in nbytes.terms})
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


# ---- sizes that may be symbolic -----------------------------------------------------------


def _dim(size: Size) -> Size:
    """A size with int-like arithmetic (a plain `Poly` as a `Dim`)."""
    return dim_from_poly(size) if isinstance(size, Poly) else size


def _make(terms: Mapping[Monomial, int]) -> Size:
    return _dim(poly_from_terms(terms))


def _same(a: Size, b: Size) -> bool:
    """Whether two sizes are the same polynomial (equal for every value), without deciding
    anything in a shape environment (which could record a guard)."""
    if isinstance(a, Poly) or isinstance(b, Poly):
        return isinstance(a, Poly) and isinstance(b, Poly) and a.terms == b.terms
    return a == b


def _multiple(size: Size, alignment: int) -> bool:
    """Whether `size` is a multiple of `alignment` for every value (each coefficient is)."""
    if isinstance(size, Poly):
        return all(c % alignment == 0 for _, c in size.terms)
    return size % alignment == 0


def _key(size: Size) -> tuple:
    """A hashable, order-free identity for a size (a `Dim` in a set would be compared in
    the shape environment)."""
    return ("p", size.terms) if isinstance(size, Poly) else ("i", size)


def _shift(terms: Iterable[tuple[Monomial, int]], by: Mapping[str, int]) -> dict[Monomial, int]:
    """The polynomial with each symbol s replaced by s + by[s]."""
    out: dict[Monomial, int] = {}
    for monomial, coefficient in terms:
        partial: dict[Monomial, int] = {(): coefficient}
        for name in monomial:
            step: dict[Monomial, int] = {}
            for m, c in partial.items():
                step[m + (name,)] = step.get(m + (name,), 0) + c
                if by[name]:
                    step[m] = step.get(m, 0) + c * by[name]
            partial = step
        for m, c in partial.items():
            key = tuple(sorted(m))
            out[key] = out.get(key, 0) + c
    return out


class _Ranges:
    """The ranges of the symbols of some sizes in the active shape environment, for
    decisions that must hold for every value (memory placement is a heuristic: it records
    no guard).  A symbol s in lo..hi is written s = lo + t with t in 0..hi-lo; a polynomial
    in t whose non-constant terms are bounded below term by term gives a sound lower bound
    (`min_value`)."""

    def __init__(self, names: Iterable[str]) -> None:
        env = active_env() if names else None
        self.lo: dict[str, int] = {}
        self.width: dict[str, float] = {}
        self.hints: dict[str, int] = {}
        self._shifted: dict[tuple, dict[Monomial, int]] = {}
        for name in sorted(names):
            s = env.symbols.get(name)
            if s is None:
                raise DynamicSizeError(f"memory planning: the size symbol {name!r} is not in "
                                       "the active shape environment")
            lo = max(s.lo, 0)  # a size is never negative
            self.lo[name] = lo
            self.width[name] = math.inf if s.hi is None else max(s.hi - lo, 0)
            self.hints[name] = s.hint

    @classmethod
    def of(cls, sizes: Iterable[Size]) -> _Ranges:
        names: set[str] = set()
        for size in sizes:
            if isinstance(size, Poly):
                names |= size.symbols()
        return cls(names)

    def hint(self, size: Size) -> int:
        """The size's value at the symbols' hints."""
        return size_value(size, self.hints)

    def shifted(self, size: Size) -> dict[Monomial, int]:
        """The size's terms over t (each symbol minus its lower bound)."""
        if not isinstance(size, Poly):
            return {(): size} if size else {}
        key = size.terms
        if key not in self._shifted:
            self._shifted[key] = _shift(size.terms, self.lo)
        return self._shifted[key]

    def min_value(self, size: Size) -> float:
        """A lower bound of `size` over every value of its symbols (may be -inf)."""
        return size if not isinstance(size, Poly) else self._lower(self.shifted(size))

    def _lower(self, shifted: Mapping[Monomial, int]) -> float:
        """A lower bound of a polynomial over t, term by term (t in 0..hi-lo)."""
        total: float = 0
        for monomial, c in shifted.items():
            if not monomial:
                total += c
            elif c < 0:
                widths = [self.width[name] for name in monomial]
                if 0 not in widths:
                    total += c * math.prod(widths)
        return total

    def le(self, a: Size, b: Size) -> bool:
        """Whether a <= b for every value of the symbols (False: not proven)."""
        if isinstance(a, int) and isinstance(b, int):
            return a <= b
        diff = dict(self.shifted(b))
        for m, c in self.shifted(a).items():
            diff[m] = diff.get(m, 0) - c
        return self._lower(diff) >= 0

    def upper(self, a: Size, b: Size) -> Size:
        """A size at least `a` and `b` for every value: one of them where that is proven,
        else the coefficient-wise maximum over t (a multiple of any alignment both are)."""
        if self.le(b, a):
            return a
        if self.le(a, b):
            return b
        sa, sb = self.shifted(a), self.shifted(b)
        top = {m: max(sa.get(m, 0), sb.get(m, 0)) for m in set(sa) | set(sb)}
        return _make(_shift(top.items(), {n: -lo for n, lo in self.lo.items()}))

    def samples(self) -> list[dict[str, int]]:
        """Symbol values to test a symbolic plan at: every symbol at its low end, one
        above, its hint, past it, at its high end (or a large value), and each symbol
        alone at its high end."""
        names = sorted(self.lo)

        def clip(name: str, v: int) -> int:
            return int(min(v, self.lo[name] + self.width[name]))

        def top(name: str) -> int:
            return clip(name, max(2 * self.hints[name], 1000) * 1000 + 7)

        picks = [lambda n: self.lo[n], lambda n: clip(n, self.lo[n] + 1),
                 lambda n: self.hints[n], lambda n: clip(n, 2 * self.hints[n] + 3), top]
        out = [{n: f(n) for n in names} for f in picks]
        out += [{n: top(n) if n == m else self.lo[n] for n in names} for m in names]
        unique: list[dict[str, int]] = []
        for env in out:
            if env not in unique:
                unique.append(env)
        return unique


# ---- in-place reuse -----------------------------------------------------------------------


def _is_row_major(index, domain: tuple[Size, ...]) -> bool:
    """Whether `index` visits 0..prod(domain)-1 in row-major order, once each (for every
    value of the symbols of a dynamic domain: coefficients must equal the strides as
    polynomials)."""
    coeffs = affine(index)  # a `Sym` is a constant: dynamic strides are polynomials
    if coeffs is None or not _same(coeffs.get(-1, 0), 0):
        return False
    stride = 1
    for axis in reversed(range(len(domain))):
        extent = domain[axis]
        if (isinstance(extent, Poly) or extent > 1) and not _same(coeffs.get(axis, 0), stride):
            return False
        stride = _dim(stride) * _dim(extent)
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
        size = _dim(size) * _dim(d)
    loads: list[Load] = []
    for store in kernel.stores:
        _loads(store.value, loads)
        _loads(store.index, loads)
    out_names = {b.name for b in kernel.outputs}
    pairs = []
    for out in kernel.outputs:
        stores = [s for s in kernel.stores if s.buffer == out.name]
        if len(stores) != 1 or not _same(out.size, size):
            continue
        if not _is_row_major(stores[0].index, kernel.domain):
            continue
        for inp in kernel.inputs:
            if inp.name in out_names or not _same(inp.size, size):
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
    pairs).  Symbolic sizes are planned for every value of their symbols in the active
    shape environment (DynamicSizeError outside one)."""
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"plan_memory: alignment must be a positive power of two, got "
                         f"{alignment}")
    temps = schedule.temporaries()
    intervals = liveness(schedule)
    nbytes = {n: aligned(buffer_bytes(schedule.buffers[n], bool_bytes), alignment)
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
    if all(isinstance(b, int) for b in nbytes.values()):
        size = {r: max(nbytes[n] for n in ns) for r, ns in storages.items()}
        offset_of, arena = _place(size, span)
        hinted = nbytes
    else:
        ranges = _Ranges.of(nbytes.values())
        size = {r: reduce(ranges.upper, (nbytes[n] for n in ns)) for r, ns in storages.items()}
        offset_of, arena = _place_symbolic(size, span, ranges)
        hinted = {n: ranges.hint(b) for n, b in nbytes.items()}
    hinted_size = {r: max(hinted[n] for n in ns) for r, ns in storages.items()}
    peak = 0
    for k in range(max(len(schedule.kernels), 1)):
        live = sum(hinted_size[r] for r in storages if span[r][0] <= k <= span[r][1])
        peak = max(peak, live)
    return MemoryPlan(
        offsets={n: offset_of[root[n]] for n in temps},
        arena_bytes=arena,
        naive_bytes=sum(hinted.values()),
        lower_bound_bytes=peak,
        inplace={**inplace, **donated},
        intervals=intervals,
        donated=donated,
    )


def _place(size: Mapping[str, int], span: Mapping[str, tuple[int, int]]
           ) -> tuple[dict[str, int], int]:
    """Greedy by size: each storage, largest first, at the lowest aligned offset that
    overlaps no placed storage live at the same time; the offsets and the arena size."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offset_of: dict[str, int] = {}
    for r in sorted(size, key=lambda r: (-size[r], span[r], r)):
        first, last = span[r]
        clashes = sorted((o, e) for o, e, f, ll in placed if f <= last and first <= ll)
        offset = 0
        for o, e in clashes:
            if offset + size[r] <= o:
                break
            offset = max(offset, e)
        offset_of[r] = offset
        placed.append((offset, offset + size[r], first, last))
    return offset_of, max((e for _, e, _, _ in placed), default=0)


def _place_symbolic(size: Mapping[str, Size], span: Mapping[str, tuple[int, int]],
                    ranges: _Ranges) -> tuple[dict[str, Size], Size]:
    """`_place` over symbolic sizes: the same order and candidates (by their values at the
    hints), each position taken only where it is proven to miss every clashing storage for
    every value of the symbols."""
    placed: list[tuple[Size, Size, int, int]] = []  # (offset, end, first, last)
    offset_of: dict[str, Size] = {}
    for r in sorted(size, key=lambda r: (-ranges.hint(size[r]), span[r], r)):
        first, last = span[r]
        clashes = [(o, e) for o, e, f, ll in placed if f <= last and first <= ll]
        offset = _lowest_fit(size[r], clashes, ranges)
        offset_of[r] = offset
        placed.append((offset, _dim(offset) + size[r], first, last))
    return offset_of, reduce(ranges.upper, (e for _, e, _, _ in placed), 0)


def _lowest_fit(size: Size, clashes: list[tuple[Size, Size]], ranges: _Ranges) -> Size:
    """The lowest of 0 and the clashes' ends (at the hints) where a storage of `size` is
    proven to lie below or above each clash for every value; else above them all."""
    ends: dict[tuple, Size] = {_key(e): e for _, e in clashes}
    candidates = [0] + sorted(ends.values(), key=lambda e: (ranges.hint(e), str(e)))
    hinted = [(ranges.hint(o), ranges.hint(e), o, e) for o, e in clashes]
    for c in candidates:
        top, bottom = ranges.hint(c) + ranges.hint(size), ranges.hint(c)
        if all(top <= ho or he <= bottom for ho, he, _, _ in hinted) and all(
                ranges.le(_dim(c) + size, o) if top <= ho else ranges.le(e, c)
                for ho, _, o, e in hinted):
            return c
    return reduce(ranges.upper, ends.values(), 0)
