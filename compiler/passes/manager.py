"""The pass manager: run a flat list of named stages and record what each did.

A pipeline is a list of `Stage(name, fn, why)` read top to bottom, each `fn` a pure function
(tinygrad's `codegen/__init__.py`, TVM's `relax/pipeline.py`).  Graph stages are
`Graph -> Graph`; the stages below the graph level (lowering, scheduling, memory planning,
code generation: see `compiler/pipeline.py`) take and return the next level's value and name
its checker in `check`.  `run_pipeline` returns the final value and one `StageRecord` per
stage: sizes before and after (ops of a graph, kernels of a kernel graph), seconds, and the
value, printed on demand.  With `NEURENIX_SPEC=1` every stage's result is verified (a graph by
`Graph.verify`, anything else by the stage's `check`), and a malformed one is reported with
the name of the stage that made it; at `NEURENIX_DEBUG>=show` (2 for graphs) each result is
printed to stderr as it is produced.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..debug import debug_level, spec_enabled
from ..graph.ir import Graph, IRError

Pass = Callable[[Any], Any]


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: a name, the pass, and a one-line reason for running it.

    A stage whose result is not a `Graph` names the `check` that verifies it under
    `NEURENIX_SPEC` (a graph stage needs none), and `show`, the debug level at which its
    result is printed."""

    name: str
    fn: Pass
    why: str
    check: Callable[[Any], None] | None = None
    show: int = 2


@dataclass(frozen=True)
class StageRecord:
    """What one stage did: sizes around it (`size_of`), its time, its result (`text` prints
    it; printing a big graph costs more than most passes, so it is done on demand)."""

    name: str
    nodes_before: int
    nodes_after: int
    seconds: float
    result: Any = field(default=None, repr=False, compare=False)

    @property
    def text(self) -> str:
        return str(self.result)


def _unit(value: Any) -> str:
    return "ops" if isinstance(value, Graph) else "kernels"


def size_of(value: Any) -> int:
    """A stage value's size for the records: a graph's ops, a kernel graph's kernels."""
    if isinstance(value, Graph):
        return value.ops_count()
    kernels = getattr(value, "kernels", None)
    if kernels is None:
        return 0
    return len(kernels) if isinstance(kernels, (list, tuple)) else size_of(kernels)


class StageError(IRError):
    """A stage produced a malformed graph; the message names the stage."""


def run_stage(graph: Graph, stage: Stage) -> tuple[Graph, StageRecord]:
    """Run one stage, verify its result under `NEURENIX_SPEC`, and print it at the stage's
    debug level."""
    before = size_of(graph)
    start = time.perf_counter()
    try:
        out = stage.fn(graph)
    except Exception as err:
        if hasattr(err, "add_note"):  # Python >= 3.11
            err.add_note(f"while running compiler stage {stage.name!r} ({stage.why})")
        raise
    seconds = time.perf_counter() - start
    if stage.check is None and not isinstance(out, Graph):
        raise StageError(f"stage {stage.name!r} returned {type(out).__name__}, not a Graph")
    if spec_enabled():
        what = "graph" if stage.check is None else type(out).__name__
        try:
            out.verify() if stage.check is None else stage.check(out)
        except (IRError, ValueError, TypeError) as err:
            raise StageError(f"stage {stage.name!r} produced an invalid {what}: {err}") from err
    record = StageRecord(stage.name, before, size_of(out), seconds, out)
    if debug_level() >= stage.show:
        unit_in, unit_out = (_unit(v) for v in (graph, out))
        sizes = (f"{record.nodes_before} -> {record.nodes_after} {unit_out}" if unit_in == unit_out
                 else f"{record.nodes_before} {unit_in} -> {record.nodes_after} {unit_out}")
        print(f"=== after {stage.name}: {sizes} ({seconds * 1e3:.2f} ms) ===", file=sys.stderr)
        print(record.text, file=sys.stderr)
    return out, record


def run_pipeline(graph: Graph, stages: Sequence[Stage]) -> tuple[Graph, list[StageRecord]]:
    """Run `stages` in order over `graph`; the final graph and one record per stage."""
    records: list[StageRecord] = []
    for stage in stages:
        graph, record = run_stage(graph, stage)
        records.append(record)
    return graph, records
