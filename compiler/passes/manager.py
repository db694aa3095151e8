"""The pass manager: run a flat list of named stages over a graph and record what each did.

A pipeline is a list of `Stage(name, fn, why)` read top to bottom, each `fn` a pure
`Graph -> Graph` function (tinygrad's `codegen/__init__.py`, TVM's `relax/pipeline.py`).
`run_pipeline` returns the final graph and one `StageRecord` per stage: op counts before and
after, seconds, and the graph's text after it.  With `NEURENIX_SPEC=1` the graph is verified
after every stage, and a malformed graph is reported with the name of the stage that made it;
with `NEURENIX_DEBUG>=2` each stage's graph is printed to stderr as it is produced.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..debug import debug_level, spec_enabled
from ..graph.ir import Graph, IRError

Pass = Callable[[Graph], Graph]


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: a name, the pass, and a one-line reason for running it."""

    name: str
    fn: Pass
    why: str


@dataclass(frozen=True)
class StageRecord:
    """What one stage did: op counts (`Graph.ops_count()`) around it, its time, its result."""

    name: str
    nodes_before: int
    nodes_after: int
    seconds: float
    text: str


class StageError(IRError):
    """A stage produced a malformed graph; the message names the stage."""


def run_stage(graph: Graph, stage: Stage) -> tuple[Graph, StageRecord]:
    """Run one stage, verify its result under `NEURENIX_SPEC`, and print it under debug >= 2."""
    before = graph.ops_count()
    start = time.perf_counter()
    try:
        out = stage.fn(graph)
    except Exception as err:
        if hasattr(err, "add_note"):  # Python >= 3.11
            err.add_note(f"while running compiler stage {stage.name!r} ({stage.why})")
        raise
    seconds = time.perf_counter() - start
    if not isinstance(out, Graph):
        raise StageError(f"stage {stage.name!r} returned {type(out).__name__}, not a Graph")
    if spec_enabled():
        try:
            out.verify()
        except IRError as err:
            raise StageError(f"stage {stage.name!r} produced an invalid graph: {err}") from err
    text = str(out)
    record = StageRecord(stage.name, before, out.ops_count(), seconds, text)
    if debug_level() >= 2:
        print(f"=== after {stage.name}: {record.nodes_before} -> {record.nodes_after} ops "
              f"({seconds * 1e3:.2f} ms) ===", file=sys.stderr)
        print(text, file=sys.stderr)
    return out, record


def run_pipeline(graph: Graph, stages: Sequence[Stage]) -> tuple[Graph, list[StageRecord]]:
    """Run `stages` in order over `graph`; the final graph and one record per stage."""
    records: list[StageRecord] = []
    for stage in stages:
        graph, record = run_stage(graph, stage)
        records.append(record)
    return graph, records
