"""Schedule rules: functions from a kernel and a capability record to a schedule, tried in
order; the first that applies decides.  `DEFAULT_RULES` ends in a fallback that always
applies, so every kernel gets a schedule."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from ..kernel.ir import Kernel, KernelGraph
from ..targets import Capabilities, Target, load_named
from .contraction import contraction_rule
from .dot import dot_rule
from .nest import elementwise_rule, fallback_rule
from .reduction import column_rule, split_rule
from .types import Schedule
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
    """The schedule of the first rule that applies to `kernel`."""
    for rule in rules:
        schedule = rule(kernel, caps)
        if schedule is not None:
            return schedule
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
