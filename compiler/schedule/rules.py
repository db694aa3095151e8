"""Schedule rules: functions from a kernel and a capability record to a schedule, tried in
order; the first that applies decides.  `DEFAULT_RULES` ends in a fallback that always
applies, so every kernel gets a schedule."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from ...runtime.sizes import Poly, Size
from ..kernel.ir import Kernel, KernelGraph
from ..symbolic import active_env, dim_from_poly
from ..targets import Capabilities, Target, load_named
from .contraction import contraction_rule
from .dot import dot_rule
from .nest import elementwise_rule, fallback_rule
from .ranges import PARALLEL_MIN_WORK
from .reduction import column_rule, split_rule
from .types import (
    Choice,
    ColumnReduction,
    Contraction,
    Dot,
    Elementwise,
    Fallback,
    Schedule,
    Window,
)
from .window import window_rule


class Rule(Protocol):
    """A schedule rule: the schedule it gives `kernel` on a target with `caps`, or None when
    it does not apply."""

    def __call__(self, kernel: Kernel, caps: Capabilities) -> Schedule | None: ...


DEFAULT_RULES: tuple[Rule, ...] = (
    contraction_rule,  # a tiled GEMM, unless dot products along k suit it better
    dot_rule,          # both operands contiguous along k (x @ w.T)
    window_rule,       # a small strided window reduction (pooling), with masked loads
    column_rule,       # a reduction over data contiguous along the last domain axis
    split_rule,        # a big full reduction, in parts over threads
    elementwise_rule,  # the loop nest of any kernel without accumulating stores
    fallback_rule,     # the loop nest, nothing forced: always applies
)


def schedule_kernel(kernel: Kernel, caps: Capabilities,
                    rules: Sequence[Rule] = DEFAULT_RULES) -> Schedule:
    """The schedule of the first rule that applies to `kernel` (for a kernel of dynamic
    sizes, with the threading each size would get: `_threading_choice`)."""
    for rule in rules:
        schedule = rule(kernel, caps)
        if schedule is not None:
            return _threading_choice(kernel, caps, schedule)
    raise ValueError(f"no schedule rule applies to kernel {kernel.name!r} (a rule list must "
                     "end in one that always applies, such as fallback_rule)")


def schedule_kernels(kernels: KernelGraph, caps: Capabilities,
                     rules: Sequence[Rule] = DEFAULT_RULES) -> KernelGraph:
    """`kernels` with every kernel's `schedule` set by `rules` (a new graph; kernels are
    frozen, so each is replaced)."""
    scheduled = [replace(k, schedule=schedule_kernel(k, caps, rules)) for k in kernels.kernels]
    return replace(kernels, kernels=scheduled)


def target_rules(target: Target) -> tuple[Rule, ...]:
    """The rules a target names (`Target.rules`, "module:attr"), else `DEFAULT_RULES`."""
    if target.rules is None:
        return DEFAULT_RULES
    return tuple(load_named(target.rules))


_THREAD_CHOICE = (Elementwise, Fallback, Window, ColumnReduction, Contraction, Dot)
"""Schedules whose `threaded` is decided alone, from the kernel's work (`worth_splitting`)."""


def _threading_choice(kernel: Kernel, caps: Capabilities, schedule: Schedule) -> Schedule:
    """A static program splits a kernel across threads from `PARALLEL_MIN_WORK` element
    operations on; a dynamic kernel's rule decides that at the hints.  Where the kernel's work
    may fall on either side for the symbols' ranges, both variants are kept and each call
    picks what a static program of its sizes would run (a `Choice` on the work; inside
    each variant of a `Choice` the rules made)."""
    if isinstance(schedule, Choice):
        small = _threading_choice(kernel, caps, schedule.small)
        large = _threading_choice(kernel, caps, schedule.large)
        return replace(schedule, small=small, large=large, count=large.count,
                       threaded=large.threaded)
    if not isinstance(schedule, _THREAD_CHOICE) or caps.threads == "none" \
            or not kernel.parallel or any(s.accumulate for s in kernel.stores):
        return schedule
    work: Size = 1
    for n in (*kernel.domain, *kernel.reduce):
        work = work * (dim_from_poly(n) if isinstance(n, Poly) else n)
    if isinstance(work, int):
        return schedule
    lo, hi = active_env().bounds(work)
    if not lo < PARALLEL_MIN_WORK <= hi:
        return schedule
    small, large = replace(schedule, threaded=False), replace(schedule, threaded=True)
    return Choice(count=large.count, threaded=True, size=work, limit=PARALLEL_MIN_WORK - 1,
                  small=small, large=large)
