"""The compiler pipeline, top to bottom: optimise, differentiate, lower, schedule, plan,
generate.

Each stage is one line with its reason, in one flat list per level: `OPTIMIZE` (graph passes
every traced graph goes through), then autodiff and partitioning for training, then
`codegen_stages(target)` from the last graph clean-up to generated code.  Nothing calls back
up a level.  Targets come from the target table (`compiler/targets.py`): "llvm" (native CPU
code through LLVM), "reference" (the graph itself, run by the NumPy evaluator — the oracle,
always available), and whatever else is registered there.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from .debug import debug_level
from .graph.ir import Graph
from .kernel.decompose import decompose
from .kernel.index_bits import choose_index_bits
from .kernel.ir import KernelGraph
from .kernel.memory import MemoryPlan, plan_memory
from .kernel.verify import verify_kernels
from .lowering.lower import lower
from .passes.algebraic import strip_stop_gradient
from .passes.autodiff import grad_graph
from .passes.manager import Stage, StageRecord, run_pipeline
from .passes.partition import partition
from .passes.simplify import simplify
from .schedule.rules import schedule_kernels, target_rules
from .targets import Target, get_target

OPTIMIZE = [
    Stage("simplify", simplify, "fold constants, apply identities, merge duplicates, drop dead "
          "code"),
]
CODEGEN_PREP = [
    Stage("strip_stop_gradient", strip_stop_gradient, "gradients are done: stop_gradient is "
          "the identity from here on"),
    Stage("simplify", simplify, "clean up what autodiff and partitioning left"),
]


@dataclass(frozen=True)
class Planned:
    """Scheduled kernels with their memory plan: what a generator reads."""

    kernels: KernelGraph
    plan: MemoryPlan
    alignment: int
    bool_bytes: int = 1

    def __str__(self) -> str:
        return self.plan.summary()


def codegen_stages(target: Target, donate: dict[int, int] | None = None) -> list[Stage]:
    """The stages from an optimised graph to `target`'s generated program, in order; each
    level's result is verified under `NEURENIX_SPEC`.  `donate` offers graph input k's
    memory for graph output j ({j: k}: the caller gives the input away); the memory plan
    keeps the pairs that are safe (`Program.metadata["donated"]`).  CPU targets only: the
    CPU runtime is the one that returns donated memory as the output."""
    caps = target.capabilities
    if target.device != "cpu":  # only the CPU runtime returns donated memory (for now)
        donate = None
    rules = target_rules(target)
    generate = target.generate()
    kernel_stage = dict(check=verify_kernels, show=3)
    return CODEGEN_PREP + [
        Stage("lower", lambda g: lower(g, caps=caps),
              "fuse nodes into kernels (asking the target what it can fuse); fold views into "
              "index expressions", **kernel_stage),
        Stage("decompose", lambda k: decompose(k, caps.native_ops),
              "rewrite operations the target's generator lacks into ones it has",
              **kernel_stage),
        Stage("index_bits", lambda k: choose_index_bits(k, caps.index_bits,
                                                        caps.preferred_index_bits),
              "index arithmetic in the target's preferred width where every size fits",
              **kernel_stage),
        Stage("schedule", lambda k: schedule_kernels(k, caps, rules),
              "the target's rules decide tiles, vectors and threads per kernel", **kernel_stage),
        Stage("memory_plan", lambda k: Planned(k, plan_memory(k, caps.alignment,
                                                             caps.bool_bytes,
                                                             _named(k, donate)),
                                             caps.alignment, caps.bool_bytes),
              "pack temporaries into one arena by liveness, at the target's alignment",
              check=_check_planned, show=3),
        Stage("codegen", lambda p: _donated(generate(p.kernels, p.plan, target), p),
              f"generate {target.name} code", check=_check_program, show=4),
    ]


def _named(kernels: KernelGraph, donate: dict[int, int] | None) -> dict[str, str] | None:
    """`donate`'s output and input indices as the kernel graph's buffer names."""
    if not donate:
        return None
    return {kernels.outputs[j]: kernels.inputs[k] for j, k in donate.items()
            if j < len(kernels.outputs) and k < len(kernels.inputs)}


def _donated(program: Any, planned: Planned) -> Any:
    """Record in the program which outputs are written into which inputs' memory:
    `metadata["donated"]`, [output index, input index] pairs (what a runtime returns)."""
    if planned.plan.donated and hasattr(program, "metadata"):
        outputs, inputs = planned.kernels.outputs, planned.kernels.inputs
        program.metadata["donated"] = sorted(
            [outputs.index(o), inputs.index(i)] for o, i in planned.plan.donated.items())
    return program


def _check_planned(planned: Planned) -> None:
    verify_kernels(planned.kernels)
    planned.plan.check(planned.kernels, planned.alignment, planned.bool_bytes)


def _check_program(program: Any) -> None:
    if program is None or not hasattr(program, "entry"):
        raise TypeError(f"expected a program with an entry, got {type(program).__name__}")


def optimize(graph: Graph) -> tuple[Graph, list[StageRecord]]:
    """The graph-level optimisations every compiled graph goes through."""
    return run_pipeline(graph, OPTIMIZE)


@dataclass
class Split:
    """A differentiated graph split into forward and backward programs.

    `backward_inputs` says where each backward input comes from: ("saved", i) the forward's
    i-th saved value, ("input", i) the forward's i-th input, ("cotangent", j) the cotangent of
    the forward's j-th output.  `differentiable` lists the outputs that take a cotangent.
    """

    forward: Graph
    backward: Graph
    backward_inputs: list[tuple[str, int]]
    differentiable: list[int]
    num_saved: int
    saved_bytes: int


def differentiate(graph: Graph, wrt: list[str], num_user_outputs: int,
                  active: list[int] | None = None) -> tuple[Split, list[StageRecord]]:
    """Joint forward+backward graph for the inputs named in `wrt`, partitioned.  `active`
    lists the user outputs that take a cotangent (default: every floating one); the others
    (detached inside the traced function) leave the program without a gradient."""
    graph, records = optimize(graph)
    start = time.perf_counter()
    joint = grad_graph(graph, wrt)
    part = partition(joint)
    records.append(StageRecord("autodiff+partition", graph.ops_count(),
                               part.forward.ops_count() + part.backward.ops_count(),
                               time.perf_counter() - start, str(part.backward)))
    forward, fwd_records = run_pipeline(part.forward, OPTIMIZE)
    backward, bwd_records = run_pipeline(part.backward, OPTIMIZE)
    records += [_renamed(r, "forward ") for r in fwd_records]
    records += [_renamed(r, "backward ") for r in bwd_records]
    floating = [i for i, o in enumerate(graph.outputs) if o.type.dtype.is_floating]
    cotangent_of = dict(zip(joint.cotangent_inputs, floating))
    saved_index = {name: i for i, (name, _) in enumerate(part.saved)}
    input_index = {n.name: i for i, n in enumerate(graph.inputs)}
    sources = []
    for node in backward.inputs:
        if node.name in saved_index:
            sources.append(("saved", saved_index[node.name]))
        elif node.name in cotangent_of:
            sources.append(("cotangent", cotangent_of[node.name]))
        else:
            sources.append(("input", input_index[node.name]))
    differentiable = [i for i in floating if i < num_user_outputs
                      and (active is None or i in active)]
    split = Split(forward, backward, sources, differentiable, len(part.saved),
                  part.saved_bytes)
    return split, records


def _renamed(record: StageRecord, prefix: str) -> StageRecord:
    return StageRecord(prefix + record.name, record.nodes_before, record.nodes_after,
                       record.seconds, record.text)


def build(graph: Graph, backend: str,
          donate: dict[int, int] | None = None) -> tuple[Any, dict]:
    """Run `codegen_stages` for the target named `backend`: its `Program` (or, for a target
    without a generator — the reference evaluator — the cleaned-up graph itself) and what the
    build did.  `donate`: see `codegen_stages`."""
    target = get_target(backend)
    if target.generator is None:
        graph, records = run_pipeline(graph, CODEGEN_PREP)
        info: dict = {"stages": {r.name: r.seconds for r in records}}
        info.update(kernels=0, ops=graph.ops_count())
        return graph, info
    program, records = run_pipeline(graph, codegen_stages(target, donate))
    if program is None or not hasattr(program, "entry"):  # cheap, so checked without SPEC too
        raise TypeError(f"target {target.name!r}: its generator {target.generator} returned "
                        f"{type(program).__name__}, expected a runtime Program")
    info = {"stages": {r.name: r.seconds for r in records}}
    by_name = {r.name: r for r in records}
    kernels, plan = by_name["memory_plan"].result.kernels, by_name["memory_plan"].result.plan
    info.update(kernels=len(kernels.kernels), ops=by_name["lower"].nodes_before,
                naive_bytes=plan.naive_bytes, planned_bytes=plan.arena_bytes,
                lower_bound_bytes=plan.lower_bound_bytes)
    return program, info


def summarize(traced: Graph, records: list[StageRecord], build_info: dict, seconds: float,
              backward: dict | None = None) -> dict:
    """The numbers `compiled.stats()` reports."""
    stats = {
        "ops_traced": traced.ops_count(),
        "passes": [(r.name, r.nodes_before, r.nodes_after, r.seconds) for r in records],
        "kernels": build_info.get("kernels", 0),
        "bytes_naive": build_info.get("naive_bytes", 0),
        "bytes_planned": build_info.get("planned_bytes", 0),
        "bytes_lower_bound": build_info.get("lower_bound_bytes", 0),
        "seconds": {"trace_and_passes": seconds, **build_info.get("stages", {})},
        "cache": build_info.get("cache", "off"),
    }
    if backward is not None:
        stats["backward_kernels"] = backward.get("kernels", 0)
        stats["backward_bytes_planned"] = backward.get("planned_bytes", 0)
    return stats


def report(name: str, stats: dict) -> None:
    """Print the compile summary to stderr at NEURENIX_DEBUG >= 1."""
    if debug_level() < 1:
        return
    total = sum(stats["seconds"].values())
    line = (f"[neurenix] compiled {name}: {stats['ops_traced']} ops traced, "
            f"{stats['kernels']} kernels")
    if "backward_kernels" in stats:
        line += f" (+{stats['backward_kernels']} backward)"
    if stats["bytes_naive"]:
        line += (f", memory {stats['bytes_planned']} B planned vs {stats['bytes_naive']} B "
                 f"naive (lower bound {stats['bytes_lower_bound']} B)")
    print(f"{line}, {total * 1e3:.1f} ms", file=sys.stderr)
