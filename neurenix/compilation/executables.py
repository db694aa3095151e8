"""Building and loading the executables of a traced graph, through the disk cache.

`compile_traced` optimises (and for training, differentiates and partitions) a traced graph
and builds one executable per program for a target of `neurenix.compiler.targets`: for a
target with a runtime module, that module's `Executable` (loaded from the disk cache when the
same graph was built before, in this process or an earlier one: a symbolic graph's keys hold
its symbols' ranges, and a build that records a guard is not stored); for the reference
target, the NumPy evaluator over the optimised graph.  Nothing here names a runtime module: what is
runtime-specific goes through the protocol every runtime module provides (see
`neurenix.runtime`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neurenix.compiler import Graph, evaluate, pipeline
from neurenix.compiler.symbolic import Guard, current_env, shape_env
from neurenix.compiler.targets import get_target
from neurenix.runtime import backend_module
from neurenix.runtime.sizes import Poly

from . import compile_cache

log = logging.getLogger("neurenix.compile")


@dataclass
class Built:
    """What compiling one traced graph gives: the programs and how to wire them."""

    graph: Graph  # the optimised graph (for training: the forward program's graph)
    forward: Any
    stats: dict
    backward: Any = None
    backward_inputs: list[tuple[str, int]] = field(default_factory=list)
    differentiable: list[int] = field(default_factory=list)
    num_saved: int = 0


def compile_traced(traced: Graph, wrt: list[str], num_outputs: int, backend: str,
                   trace_seconds: float, active: list[int] | None = None,
                   donate: dict[int, int] | None = None) -> Built:
    """Optimise (and with `wrt`, differentiate and partition) a traced graph and build its
    programs for target `backend`; on the disk cache's hit, keyed by the traced graph itself,
    skip all of that.  `active` lists the outputs a gradient flows back from (default: every
    floating one); `donate` offers inputs' memory for outputs (without `wrt` only:
    `pipeline.codegen_stages`)."""
    start = time.perf_counter()
    target = get_target(backend)
    record_key = None
    symbols = _symbols_key(traced)
    if target.runtime is not None and target.disk_cache and symbols is not None:
        runtime = target.runtime_module()
        record_key = compile_cache.key_for(traced, f"{target.identity()}:traced:{num_outputs}:"
                                           + ",".join(wrt) + f":{active}"
                                           + _donation_key(donate) + symbols,
                                           runtime.fingerprint())
        built = _load_built(record_key, runtime)
        if built is not None:
            seconds = {"trace_and_passes": trace_seconds,
                       "cache_load": time.perf_counter() - start}
            built.stats = dict(built.stats, seconds=seconds, cache="hit")
            return built
    with _guards_recorded() as guards:
        built = _build(traced, wrt, num_outputs, backend, trace_seconds, start, active, donate)
    if record_key is not None and not guards:
        _store_built(record_key, built)
    return built


def _build(traced: Graph, wrt: list[str], num_outputs: int, backend: str,
           trace_seconds: float, start: float, active: list[int] | None,
           donate: dict[int, int] | None) -> Built:
    """`compile_traced` without the record of the traced graph: the passes and the builds."""
    if wrt:
        split, records = pipeline.differentiate(traced, wrt, num_outputs, active)
        passes = time.perf_counter() - start
        forward, fbuild = build_executable(split.forward, backend)
        backward, bbuild = build_executable(split.backward, backend)
        stats = pipeline.summarize(traced, records, fbuild, trace_seconds + passes,
                                   backward=bbuild)
        built = Built(split.forward, forward, stats, backward, split.backward_inputs,
                      split.differentiable, split.num_saved)
    else:
        graph, records = pipeline.optimize(traced)
        passes = time.perf_counter() - start
        forward, build = build_executable(graph, backend, donate)
        stats = pipeline.summarize(traced, records, build, trace_seconds + passes)
        built = Built(graph, forward, stats)
    return built


def _store_built(key: str, built: Built) -> None:
    """Remember which programs (by their own cache keys) a traced graph compiled to, with the
    optimised graph (as text) and the stats, so that a hit needs no passes."""
    keys = [getattr(built.forward, "cache_key", None),
            getattr(built.backward, "cache_key", None) if built.backward else ""]
    if None in keys:
        return
    try:
        record, arrays = compile_cache.built_record(
            built.graph, built.stats, keys, built.backward_inputs, built.differentiable,
            built.num_saved)
    except (TypeError, ValueError) as e:  # something not plain data: not cached
        log.debug("neurenix compile cache: not storing %s: %s", key, e)
        return
    compile_cache.store(key, record, arrays=arrays)


def _load_built(key: str, runtime: Any) -> Built | None:
    """The programs a traced graph compiled to, from the disk cache (None on any miss; a
    malformed record is discarded, to be rebuilt)."""
    entry = compile_cache.load(key)
    if entry is None:
        return None
    try:
        with _guards_recorded(keep=False) as guards:  # types are checked in the env
            record = compile_cache.read_built(entry)
        if guards:
            raise compile_cache.EntryError(f"its graph's types need guards ({guards[0]})")
    except Exception as e:  # noqa: BLE001 - whatever is wrong with it, it is rebuilt
        compile_cache.discard(key, f"a malformed record ({type(e).__name__}: {e})")
        return None
    exes = []
    for program_key in record["programs"]:
        loaded = _load_program(program_key, runtime) if program_key else None
        if program_key and loaded is None:
            return None
        exes.append(loaded[0] if loaded else None)
    return Built(record["graph"], exes[0], record["stats"], exes[1],
                 record["backward_inputs"], record["differentiable"], record["num_saved"])


class ReferenceExecutable:
    """Runs a graph with the NumPy reference evaluator (the 'reference' target)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.source = str(graph)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        # copies: an output may be an input or a constant, which the caller must not alias
        return [np.array(a, copy=True) for a in evaluate(self.graph, inputs)]


class _Libraries:
    """The disk cache as the store a runtime keeps its support libraries in (the runtime
    protocol's `cache`: see `neurenix.runtime`)."""

    def load_library(self, key_parts: tuple[str, ...]) -> bytes | None:
        key = compile_cache.library_key(key_parts)
        entry = compile_cache.load(key)
        if entry is None:
            return None
        try:
            return compile_cache.read_library(entry)
        except compile_cache.EntryError as e:
            compile_cache.discard(key, f"a malformed library entry ({e})")
            return None

    def store_library(self, key_parts: tuple[str, ...], library: bytes) -> None:
        compile_cache.store_library(compile_cache.library_key(key_parts), library)


LIBRARIES = _Libraries()


def _donation_key(donate: dict[int, int] | None) -> str:
    """The part of a cache key that says which inputs' memory the outputs may take."""
    return f":donate{sorted(donate.items())}" if donate else ""


def is_symbolic(graph: Graph) -> bool:
    """Whether a graph has dynamic sizes (in its types or its nodes' attributes)."""
    return any(isinstance(d, Poly) for node in graph.nodes for d in node.type.shape) or any(
        _holds_size(v) for node in graph.nodes for v in node.attr.values())


def _holds_size(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_holds_size(v) for v in value)
    return isinstance(value, Poly)


def _symbols_key(graph: Graph) -> str | None:
    """The part of a cache key that says for which sizes a graph's programs are valid: ""
    for a static graph; for a symbolic one, every symbol of the active environment with its
    range (what lowering and memory planning prove things from; the hints only steer
    heuristics, and a program built at any hint is correct for every size in range).  None
    for a symbolic graph outside an environment: no entry can be named for it."""
    if not is_symbolic(graph):
        return ""
    env = current_env()
    if env is None:
        return None
    return ":symbols" + "".join(f"[{s.name}:{s.lo}:{'' if s.hi is None else s.hi}]"
                                for s in sorted(env.symbols.values(), key=lambda s: s.name))


@contextlib.contextmanager
def _guards_recorded(keep: bool = True) -> Iterator[list[Guard]]:
    """Run a build in a copy of the active environment holding no guards, and give the
    guards the build records (with `keep`, then also added to the environment): a build that
    records one made a program valid only for some sizes in range, which the disk cache must
    not keep under a key that names the ranges alone.  Outside an environment: no guards."""
    env = current_env()
    if env is None:
        yield []
        return
    scratch = dataclasses.replace(env, symbols=dict(env.symbols), guards=[])
    try:
        with shape_env(scratch):
            yield scratch.guards
    finally:
        if keep:
            for name, symbol in scratch.symbols.items():
                env.symbols.setdefault(name, symbol)
            env.guards.extend(g for g in scratch.guards if g not in env.guards)


def build_executable(graph: Graph, backend: str,
                     donate: dict[int, int] | None = None) -> tuple[Any, dict]:
    """Build (or fetch from the disk cache) an executable for an optimised graph (`donate`:
    see `pipeline.codegen_stages`).  A cached program that cannot be loaded is built again
    once; a new build that cannot be loaded raises a RuntimeError naming the graph and the
    cause."""
    target = get_target(backend)
    if target.runtime is None:
        artifact, info = pipeline.build(graph, backend)
        return ReferenceExecutable(artifact), info
    runtime = target.runtime_module()
    key = None
    symbols = _symbols_key(graph)
    if target.disk_cache and symbols is not None:
        key = compile_cache.key_for(graph, target.identity() + _donation_key(donate) + symbols,
                                    runtime.code_identity())
        loaded = _load_program(key, runtime)
        if loaded is not None:
            exe, info = loaded
            return exe, dict(info, cache="hit")
    start = time.perf_counter()
    with _guards_recorded() as guards:
        program, info = pipeline.build(graph, backend, donate)
    if guards:
        key = None
    runtime.prepare(program, LIBRARIES)
    try:
        exe = runtime.Executable(program)
    except Exception as e:
        raise RuntimeError(f"neurenix.compile: the program compiled for graph {graph.name!r} "
                           f"cannot be loaded: {type(e).__name__}: {e}") from e
    info["stages"]["llvm_compile"] = time.perf_counter() - start - sum(info["stages"].values())
    if key is None:
        return exe, info
    exe.cache_key = key
    compile_cache.store_program(key, program, info, exe.object_code, exe.library)
    return exe, dict(info, cache="miss")


def _load_program(key: str, runtime: Any) -> tuple[Any, dict] | None:
    """A cached program's executable (its shared library or object code, no compile) and
    its build info, or None when the cache has no usable entry for `key` (a malformed one,
    or one whose code cannot be loaded, is discarded, to be rebuilt).  The entry was
    authenticated before any of it was parsed; its library is loaded only after that."""
    entry = compile_cache.load(key)
    if entry is None:
        return None
    try:
        program, info, object_code, library = compile_cache.read_program(entry)
    except Exception as e:  # noqa: BLE001 - whatever is wrong with it, it is rebuilt
        compile_cache.discard(key, f"a malformed program ({type(e).__name__}: {e})")
        return None
    runtime.prepare(program, LIBRARIES)
    try:
        exe = runtime.Executable(program, object_code=object_code, library=library)
    except Exception as e:  # noqa: BLE001 - rebuilt from the graph by the caller
        log.warning("neurenix.compile: a cached program cannot be loaded (%s: %s); building "
                    "it again", type(e).__name__, e)
        compile_cache.discard(key, "its code cannot be loaded")
        return None
    exe.cache_key = key
    if library is not None and exe.library is not library:
        log.warning("neurenix.compile: a cached program's shared library cannot be loaded; "
                    "it was built again from the program's source")
        compile_cache.store_program(key, program, info, exe.object_code, exe.library)
    return exe, info


def load(artifact: Any) -> Any:
    """An executable for what `pipeline.build` produced: a graph (run by the reference
    evaluator) or a Program (loaded by the runtime of a target for its device)."""
    if isinstance(artifact, Graph):
        return ReferenceExecutable(artifact)
    return backend_module(artifact.target).Executable(artifact)
