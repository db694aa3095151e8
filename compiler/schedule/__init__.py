"""The schedule layer: typed schedules, written on each kernel by target-neutral rules.

`schedule_kernels(kernels, caps)` tries `DEFAULT_RULES` in order on every kernel with the
target's capability record and stores the first schedule that applies in `kernel.schedule`;
generators carry schedules out and decide nothing about a kernel's shape.  See
docs/compiler/schedule.md.
"""
from .contraction import contraction_rule
from .dot import dot_rule
from .nest import elementwise_rule, fallback_rule
from .reduction import column_rule, split_rule
from .rules import DEFAULT_RULES, Rule, schedule_kernel, schedule_kernels, target_rules
from .types import (
    Blocking,
    Choice,
    ColumnReduction,
    Contraction,
    Dot,
    Elementwise,
    Fallback,
    Nest,
    PerPoint,
    Schedule,
    SplitReduction,
    Window,
)
from .window import window_rule

__all__ = [
    "DEFAULT_RULES", "Blocking", "Choice", "ColumnReduction", "Contraction", "Dot", "Elementwise",
    "Fallback", "Nest", "PerPoint", "Rule", "Schedule", "SplitReduction", "Window", "column_rule",
    "contraction_rule", "dot_rule", "elementwise_rule", "fallback_rule", "schedule_kernel",
    "schedule_kernels", "split_rule", "target_rules", "window_rule",
]
