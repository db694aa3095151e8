"""`neurenix.export`: compile a model ahead of time into one self-describing directory.

The model is traced once on its example inputs (under no_grad for inference; with
`freeze=False` a whole training step, whose updated tensors become the artifact's state),
optimised and compiled for the target, and written as `manifest.json` (format version,
Neurenix version, target, inputs and outputs, memory plan, kernels in launch order with their
launch geometry, the SHA-256 of every other file), `weights.safetensors` (the parameters and
buffers the program reads, and its constants) and the target's code: for the CPU a shared
library `model.so` with a C API (`model.h`, `model.c`) and a cross-compiled AArch64 object;
OpenCL C, WGSL, CUDA (with PTX) or HIP (with a code object) source for the GPU targets; a
WebGPU artifact also runs in the browser (`export_web`: neurenix.js, index.html, the
example).  `neurenix.runtime.load` loads the directory without the compiler.  Parameters are
program inputs in Neurenix (a weight update never recompiles), so weights always live in the
weights file (`"weights": "file"`): their values at export.  docs/deploy/README.md describes
the format.

`dynamic_batch=MAX` (every target) makes the leading dimension of every input the batch
size, chosen per call from 1 to MAX: the main program is traced with that dimension as the
symbol `batch` (range 2..MAX, as the JIT's dynamic shapes, docs/compiler/dynamic-shapes.md),
and a static program for batch 1 is traced beside it (a size-1 dimension broadcasts, and
traces ask whether the batch is 1: even a Linear layer's bias does); on the CPU both live in
one `model.so`, a GPU artifact has the batch-1 program's code under `batch1/`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from neurenix.compiler import pipeline
from neurenix.compiler.graph.ir import Graph
from neurenix.compiler.passes.dce import dce
from neurenix.compiler.symbolic import DynamicSizeError, ShapeEnv, shape_env
from neurenix.runtime import compile_worker, hip_compile, nvrtc
from neurenix.runtime import cpu as cpu_runtime
from neurenix.runtime.artifact import (
    BATCH1_PREFIX,
    CONSTANT_PREFIX,
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    sha256_file,
    write_safetensors,
)
from neurenix.runtime.program import Program, program_to_json
from neurenix.runtime.sizes import (
    Poly,
    Size,
    extent_from_json,
    extent_to_json,
    extent_value,
    size_to_json,
    size_value,
)

from . import export_capi, export_web
from .compilation.compiled import compile as compile_model
from .compilation.placement import call_device
from .nn.module import Module
from .optim.optimizer import live_optimizers
from .random import next_seed
from .state import no_grad
from .tensor import Tensor
from .version import __version__

TARGETS = {"cpu": ("llvm", "cpu"), "opencl": ("opencl", "opencl"),
           "webgpu": ("webgpu_web", "webgpu"), "cuda": ("cuda", "cuda"), "rocm": ("hip", "rocm"),
           "hip": ("hip", "rocm")}
"""Export target -> (compiler target, device kind: the manifest's `target`)."""
CROSS_TRIPLES = ("aarch64-linux-gnu",)
CUDA_ARCH = 80
HIP_ARCH = "gfx90a"
TRAINING_EXAMPLE_STEPS = 5
"""How many runs of an exported training step the WebGPU example records (from the
reference evaluator) for the page to compare with."""
BATCH_SYMBOL = export_capi.BATCH_SYMBOL
"""The symbol of a dynamic-batch artifact's batch size (every input's leading dimension)."""
BATCH1_ENTRY_PREFIX = "neurenix_batch1_"
"""The batch-1 program's functions are renamed `neurenix_X` -> `neurenix_batch1_X`, so that
both programs of a dynamic-batch artifact link into one model.so."""
Progress = Callable[[str, dict], None]
"""`export(progress=...)`: called with a stage's name and its data as each stage ends."""


class ExportError(ValueError):
    """A model or function that cannot be exported (the message says why and what to do)."""


def export(model_or_fn: Any, example_inputs: Any, target: str = "cpu",
           path: str | os.PathLike[str] = "neurenix-export", *, freeze: bool = True,
           cross: tuple[str, ...] = CROSS_TRIPLES, cpu: str = "host",
           progress: Progress | None = None, dynamic_batch: int | None = None) -> pathlib.Path:
    """Export `model_or_fn` (a Module or a function of tensors) for `target` ("cpu", "opencl",
    "webgpu", "cuda", "rocm") as traced on `example_inputs` (a Tensor or a tuple of them; the
    artifact takes inputs of exactly these shapes and dtypes) to directory `path`; returns
    the directory.  An existing artifact there is replaced; another non-empty directory is
    refused.  `cross` lists the target triples a CPU export also compiles an object file for
    (default: AArch64 Linux) and `cpu` the CPU its `model.so` is compiled for: "host" (this
    machine's CPU and features: fastest here), "generic" (any CPU of this architecture) or an
    x86-64 level ("x86-64-v2", "x86-64-v3", "x86-64-v4").  With `freeze=True` (inference)
    the function is traced under no_grad and must not update state (call `model.eval()`
    first for dropout and batch norm).
    With `freeze=False` the weights are the artifact's *state*: the function may update them
    (a whole training step: zero_grad, forward, loss, backward, optimizer.step()), and every
    run of the artifact continues from the previous one's values (docs/deploy/README.md).
    Nothing is run at export: the model and optimizer are left as they were.  `progress(stage,
    data)`, when given, is called as each stage ends: "trace" (`data["stats"]`: the traced
    function's `compiled.stats()`), "codegen" (`data["build"]`: kernels, memory and seconds
    per stage, as `pipeline.build` reports them) and "toolchain" (the target's code written
    and compiled); neurenix-compile shows them.  `dynamic_batch=MAX` (every target): the
    artifact takes any batch size from 1 to MAX at run time, the leading dimension of every
    input (docs/deploy/README.md, "Dynamic batch")."""
    if target not in TARGETS:
        raise ValueError(f"export: unknown target {target!r}; known: {sorted(TARGETS)}")
    compiler_target, device = TARGETS[target]
    _check_dynamic_batch(dynamic_batch)
    machine = cpu_runtime.host_cpu() if cpu == "host" else cpu_runtime.portable_cpu(cpu)
    inputs = _example_tensors(example_inputs)
    if dynamic_batch is None:
        program, plan = _trace_and_build(model_or_fn, inputs, compiler_target, progress, freeze)
    else:
        program, plan = _trace_dynamic(model_or_fn, inputs, compiler_target, progress, freeze,
                                       dynamic_batch)
    plan["cpu"] = machine
    if device == "webgpu" and plan["training"]:
        plan["example"] = export_web.training_example(
            inputs, _example_plan(model_or_fn, inputs, compiler_target, freeze, plan),
            TRAINING_EXAMPLE_STEPS)
    elif device == "webgpu":
        sizes = {BATCH_SYMBOL: inputs[0].shape[0]} if dynamic_batch else None
        plan["example"] = export_web.example(model_or_fn, inputs, program, sizes)
    out = pathlib.Path(path)
    _check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # as a plain mkdir would make it (mkdtemp's is private)
    try:
        manifest = _manifest(program, plan, device, compiler_target)
        write_safetensors(work / WEIGHTS, plan["weights"],
                          metadata={"format": "pt", "neurenix": __version__})
        writer = {"cpu": _write_cpu, "opencl": _write_opencl, "webgpu": _write_webgpu,
                  "cuda": _write_cuda, "rocm": _write_hip}[device]
        writer(work, program, plan, manifest, cross)
        _notify(progress, "toolchain")
        manifest["files"] = {name: {"sha256": sha256_file(work / name),
                                    "bytes": (work / name).stat().st_size}
                             for name in _files(work)}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return out


def _example_tensors(example_inputs: Any) -> list[Tensor]:
    """The example inputs as a list of Tensors (NumPy arrays are wrapped)."""
    if isinstance(example_inputs, (Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError(f"export: example_inputs must be a Tensor or a tuple of Tensors, got "
                        f"{type(example_inputs).__name__}")
    tensors = []
    for k, x in enumerate(example_inputs):
        if isinstance(x, np.ndarray):
            x = Tensor(x)
        if not isinstance(x, Tensor):
            raise TypeError(f"export: example input {k} is a {type(x).__name__}, not a Tensor")
        tensors.append(x)
    return tensors


def _check_dynamic_batch(dynamic_batch: int | None) -> None:
    """A ValueError for a `dynamic_batch` export cannot honour."""
    if dynamic_batch is None:
        return
    if type(dynamic_batch) is not int or dynamic_batch < 2:
        raise ValueError(f"export: dynamic_batch must be an int >= 2 (the largest batch "
                         f"size), got {dynamic_batch!r}")


def _trace_dynamic(model_or_fn: Any, inputs: list[Tensor], compiler_target: str,
                   progress: Progress | None, freeze: bool,
                   max_batch: int) -> tuple[Program, dict]:
    """The program of batches 2..`max_batch` (the leading dimension of every input is the
    symbol `batch`) and, in `plan["dynamic"]`, the static program of batch 1, checked to
    agree with it; an ExportError when the function cannot keep the batch symbolic or its
    trace holds for some batch sizes only."""
    batch = _example_batch(inputs, max_batch)
    hint = batch if batch >= 2 else max_batch
    env = ShapeEnv()
    symbol = env.symbol(BATCH_SYMBOL, hint=hint, lo=2, hi=max_batch)
    examples = _with_batch(inputs, hint)
    shapes = [(symbol, *x.shape[1:]) for x in examples]
    name = _function_name(model_or_fn)
    try:
        program, plan = _trace_and_build(model_or_fn, examples, compiler_target, progress,
                                         freeze, env=env, shapes=shapes)
    except DynamicSizeError as e:
        raise ExportError(f"export: dynamic_batch: {name} cannot keep the batch size symbolic "
                          f"({e}); export fixed shapes instead") from e
    if tuple(program.symbols) != (BATCH_SYMBOL,):
        raise ExportError(f"export: dynamic_batch: the program of {name} has dynamic sizes "
                          f"{list(program.symbols)}, expected [{BATCH_SYMBOL!r}]")
    _check_guards(env, name, 2, max_batch)
    _check_size_limits(program, name, max_batch)
    for b in (2, max_batch):  # every temporary inside the arena (Program.sizes checks)
        program.sizes({BATCH_SYMBOL: b})
    try:
        program1, plan1 = _trace_and_build(model_or_fn, _with_batch(inputs, 1),
                                           compiler_target, None, freeze,
                                           constant_prefix=BATCH1_PREFIX)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 -- the function's own error at batch 1
        raise ExportError(f"export: dynamic_batch: {name} fails at batch 1, which every "
                          f"dynamic-batch artifact also takes ({type(e).__name__}: {e}); "
                          "export with fixed shapes instead (batch norm in training mode "
                          "needs more than one value per channel)") from e
    _check_batch1(plan, program, plan1, program1, name)
    seeds = [b["seed"] for b in plan["bindings"] if b["from"] == "seed"]
    for binding in plan1["bindings"]:  # one seed sequence, whichever program runs
        if binding["from"] == "seed" and seeds:
            binding["seed"] = seeds[0]
    for key, array in plan1["weights"].items():
        old = plan["weights"].setdefault(key, array)
        if old is not array and (old.shape != array.shape or not np.array_equal(old, array)):
            raise ExportError(f"export: dynamic_batch: {name} reads {key!r} with other values "
                              f"at batch 1; export fixed shapes instead")
    if compiler_target == "llvm":  # both programs link into one model.so
        program1 = _renamed(program1)
    plan["dynamic"] = {"max": max_batch, "program": program1, "plan": plan1}
    return program, plan


def _example_plan(model_or_fn: Any, inputs: list[Tensor], compiler_target: str,
                  freeze: bool, plan: dict) -> dict:
    """The plan whose graph the reference evaluator runs on the example inputs (the WebGPU
    training example): the artifact's, or of a dynamic batch (whose graph has symbolic
    shapes) the batch-1 program's or a static trace at the example's batch size, drawing
    the artifact's seed."""
    dynamic = plan.get("dynamic")
    if not dynamic:
        return plan
    if inputs[0].shape[0] == 1:
        return dynamic["plan"]
    _, static = _trace_and_build(model_or_fn, inputs, compiler_target, None, freeze)
    seeds = [b["seed"] for b in plan["bindings"] if b["from"] == "seed"]
    for binding in static["bindings"]:
        if binding["from"] == "seed" and seeds:
            binding["seed"] = seeds[0]
    return static


def _function_name(model_or_fn: Any) -> str:
    return (type(model_or_fn).__name__ if isinstance(model_or_fn, Module)
            else getattr(model_or_fn, "__name__", "function"))


def _example_batch(inputs: list[Tensor], max_batch: int) -> int:
    """The example inputs' batch size (their common leading dimension, in 1..max_batch)."""
    if not inputs or any(x.ndim == 0 for x in inputs):
        raise ExportError("export: dynamic_batch makes the leading dimension of every input "
                          "the batch size; every example input needs one (no 0-d inputs)")
    sizes = {x.shape[0] for x in inputs}
    if len(sizes) != 1:
        raise ExportError(f"export: dynamic_batch: the example inputs' leading dimensions "
                          f"differ ({[x.shape[0] for x in inputs]}); each is the batch size")
    batch = sizes.pop()
    if not 1 <= batch <= max_batch:
        raise ExportError(f"export: dynamic_batch={max_batch}: the example inputs' batch size "
                          f"{batch} is outside 1..{max_batch}")
    return batch


def _with_batch(inputs: list[Tensor], batch: int) -> list[Tensor]:
    """The example inputs with `batch` rows (their rows repeated, or the first kept)."""
    out = []
    for x in inputs:
        if x.shape[0] == batch:
            out.append(x)
            continue
        rows = np.resize(x.detach().numpy(), (batch, *x.shape[1:]))
        out.append(Tensor(rows, dtype=x.dtype, requires_grad=x.requires_grad))
    return out


def _check_guards(env: ShapeEnv, name: str, lo: int, hi: int) -> None:
    """An ExportError unless every guard the trace recorded holds for every batch size in
    lo..hi.  A guard is a polynomial in the batch compared with 0: its sign changes only at
    its real roots, so it is tested at lo, hi and the integers around each root."""
    for guard in env.guards:
        if guard.expr.symbols() - {BATCH_SYMBOL}:
            raise ExportError(f"export: dynamic_batch: {name}'s trace assumes {guard}")
        degree = max(len(m) for m, _ in guard.expr.terms)
        coefficients = [0] * (degree + 1)
        for monomial, c in guard.expr.terms:
            coefficients[degree - len(monomial)] = c
        points = {lo, hi}
        for root in np.roots(coefficients) if degree else ():
            if abs(root.imag) <= 1e-6 * max(1.0, abs(root.real)) and \
                    lo - 3 <= root.real <= hi + 3:
                centre = math.floor(root.real)
                points.update(range(max(lo, centre - 2), min(hi, centre + 3) + 1))
        for b in sorted(points):
            if not guard.holds({BATCH_SYMBOL: b}):
                smaller = (f"dynamic_batch={b - 1} or less, or "
                           if b > env.symbols[BATCH_SYMBOL].hint else "")
                raise ExportError(f"export: dynamic_batch: {name}'s trace holds only for some "
                                  f"batch sizes: it assumes {guard} (false at batch {b}); "
                                  f"export with {smaller}fixed shapes")


def _check_size_limits(program: Program, name: str, max_batch: int) -> None:
    """An ExportError when a size the program's kernels compute with passes what they take
    (`metadata["size_checks"]`: WebGPU's 32-bit sizes and loop limit) at batch 2 or MAX,
    which the runtime would refuse at run time."""
    for check in program.metadata.get("size_checks", ()):
        size, most = extent_from_json(check["size"]), int(check["most"])
        for b in (2, max_batch):
            value = extent_value(size, {BATCH_SYMBOL: b})
            if value > most:
                raise ExportError(f"export: dynamic_batch={max_batch}: at batch {b} the "
                                  f"program of {name} computes the size {size} = {value}, "
                                  f"more than {most} ({check['what']}); export with a "
                                  f"smaller dynamic_batch, or fixed shapes")


def _check_batch1(plan: dict, program: Program, plan1: dict, program1: Program,
                  name: str) -> None:
    """An ExportError unless the batch-1 program takes and returns what the main program
    does at batch 1 (the same inputs, outputs and states)."""
    at1 = {BATCH_SYMBOL: 1}
    mine = [(t["dtype"], tuple(size_value(d, at1) for d in t["shape"])) for t in plan["inputs"]]
    theirs = [(t["dtype"], tuple(t["shape"])) for t in plan1["inputs"]]
    n = plan["outputs"]
    outputs = [(t.dtype, t.shape_at(at1)) for t in program.outputs[:n]]
    outputs1 = [(t.dtype, tuple(t.shape)) for t in program1.outputs[:plan1["outputs"]]]
    states = sorted(b["tensor"] for b in plan["bindings"] if b["from"] == "state")
    states1 = sorted(b["tensor"] for b in plan1["bindings"] if b["from"] == "state")
    if mine != theirs or outputs != outputs1 or states != states1:
        raise ExportError(f"export: dynamic_batch: {name} traced at batch 1 takes or returns "
                          f"other tensors than at batch 2..MAX (inputs {theirs} vs {mine}, "
                          f"outputs {outputs1} vs {outputs}); export fixed shapes instead")


def _renamed(program: Program) -> Program:
    """`program` with every function its module defines renamed (`BATCH1_ENTRY_PREFIX`), so
    that it links beside another program into one library."""
    llvm = compile_worker.llvm()
    module = llvm.parse_assembly(program.source)
    names = {}
    for fn in module.functions:
        if not fn.is_declaration:
            old = fn.name
            fn.name = names[old] = BATCH1_ENTRY_PREFIX + old.removeprefix("neurenix_")
    for variable in module.global_variables:
        if not variable.is_declaration:
            old = variable.name
            variable.name = names[old] = BATCH1_ENTRY_PREFIX + old.removeprefix("neurenix_")
    metadata = dict(program.metadata)
    if isinstance(metadata.get("threaded"), list):
        metadata["threaded"] = [names.get(n, n) for n in metadata["threaded"]]
    return dataclasses.replace(program, entry=names[program.entry], source=str(module),
                               metadata=metadata)


def _linked_ir(sources: list[str]) -> str:
    """One LLVM module holding the modules `sources` (their defined names distinct)."""
    llvm = compile_worker.llvm()
    module = llvm.parse_assembly(sources[0])
    for source in sources[1:]:
        module.link_in(llvm.parse_assembly(source))
    module.verify()
    return str(module)


def _trace_and_build(model_or_fn: Any, inputs: list[Tensor], compiler_target: str,
                     progress: Progress | None = None,
                     freeze: bool = True, *, env: ShapeEnv | None = None,
                     shapes: list[tuple] | None = None,
                     constant_prefix: str = CONSTANT_PREFIX) -> tuple[Program, dict]:
    """Trace the function (through the reference target: no code is built for the trace,
    nothing runs), check that the artifact can do what it does, and build its program for the
    target.  Returns the program and how its inputs are bound: `bindings` (per program
    input), `weights` (arrays by name; the program's constants under `constant_prefix`),
    `inputs` (the model's input specs), `outputs` (how many program outputs are the model's),
    `checks` and `training` (the manifest's fields).  With `env` and `shapes` (the inputs'
    symbolic shapes) the trace and the build run in that shape environment."""
    compiled = compile_model(model_or_fn, backend="reference")
    name = compiled._name()
    symbolic = shape_env(env) if env is not None else contextlib.nullcontext()
    if freeze:
        with no_grad(), symbolic:
            try:
                entry = _trace(compiled, inputs, shapes)
            except RuntimeError as e:
                if not str(e).startswith("backward:"):
                    raise
                raise ExportError(f"export: {name} calls backward(), as a training step does; "
                                  f"export it with freeze=False (freeze=True traces inference "
                                  f"under no_grad)") from e
    else:
        with symbolic:
            entry = _trace(compiled, inputs, shapes)
    if entry.updates and freeze:
        raise ExportError(f"export: {name} updates state (parameters, buffers or optimizer "
                          f"state) when it runs; export a training step with freeze=False, or "
                          f"call model.eval() and export the forward pass")
    if any(store.kind != "grad" for store in entry.stores):
        raise ExportError(f"export: {name} stores new tensors into Python containers (an "
                          f"optimizer creating its state on the first step, as SGD with "
                          f"dampening does?); run one step before exporting")
    if any(g.what.endswith(".grad is None") and g.value is True for g in entry.guards) \
            and any(store.output is not None for store in entry.stores):
        raise ExportError(f"export: {name} adds to gradients left by the previous call (it "
                          f"does not start with optimizer.zero_grad()); every run of an "
                          f"artifact starts without gradients: call zero_grad() first")
    checks = _portable_checks(entry, name)
    _notify(progress, "trace", stats=compiled.stats() if compiled._cache else entry.stats)
    graph = _artifact_graph(entry)
    with shape_env(env) if env is not None else contextlib.nullcontext():
        program, info = pipeline.build(graph, compiler_target)
    _notify(progress, "codegen", build=info)
    if not (len(program.inputs) == len(entry.sources) == len(entry.graph.inputs)):
        raise ExportError(f"export: {name}: the program takes {len(program.inputs)} inputs, "
                          f"the trace has {len(entry.sources)}")
    if len(program.outputs) != len(graph.outputs):
        raise ExportError(f"export: {name}: the program has {len(program.outputs)} outputs, "
                          f"the graph {len(graph.outputs)}")
    first_update = entry.num_outputs + entry.num_checks
    updated = {id(ref): first_update + k for k, (kind, ref) in enumerate(entry.updates)
               if kind == "tensor"}
    if len(updated) != len(entry.updates):
        raise ExportError(f"export: {name} writes into its arguments in place; an artifact "
                          f"returns new values as outputs only")
    bindings: list[dict] = []
    weights: dict[str, np.ndarray] = {}
    states: list[str] = []
    model_inputs: list[dict | None] = [None] * len(inputs)
    for spec, (kind, ref), label in zip(program.inputs, entry.sources, entry.input_names):
        if kind == "arg":
            model_inputs[ref] = {"name": label, "shape": list(spec.shape), "dtype": spec.dtype}
            bindings.append({"name": spec.name, "from": "input", "index": ref})
        elif kind == "tensor":
            weights[label] = np.array(ref._host(), dtype=spec.dtype, copy=True)
            if id(ref) in updated:
                bindings.append({"name": spec.name, "from": "state", "tensor": label,
                                 "output": updated[id(ref)]})
                states.append(label)
            else:
                bindings.append({"name": spec.name, "from": "weights", "tensor": label})
        elif kind == "host" and not freeze:
            k, j = ref
            key = f"host:{label}"
            weights[key] = np.asarray(entry.host[k]()[j], dtype=spec.dtype)
            bindings.append({"name": spec.name, "from": "weights", "tensor": key})
        elif kind == "seed" and not freeze:
            bindings.append({"name": spec.name, "from": "seed", "seed": next_seed()})
        elif kind == "seed":
            raise ExportError(f"export: {name} draws random numbers (dropout in training "
                              f"mode?); call model.eval() before exporting")
        elif kind == "grad":
            raise ExportError(f"export: {name} reads gradients accumulated before the call "
                              f"({label!r}); start the step with optimizer.zero_grad()")
        else:
            raise ExportError(f"export: {name} reads Python values at every call "
                              f"({kind} input {label!r}); export takes tensors only")
    for k, spec in enumerate(model_inputs):
        if spec is None:  # an example input the function never reads
            x = inputs[k]
            model_inputs[k] = {"name": f"input{k}",
                               "shape": list(x.shape if shapes is None else shapes[k]),
                               "dtype": x.dtype.name}
    for cname, array in program.constants.items():
        weights[constant_prefix + cname] = np.array(array, order="C", copy=True)
    training = None
    if states:
        training = {"states": states, "optimizers": _optimizers(entry),
                    "steps_exported": 0}
    return program, {"bindings": bindings, "weights": weights, "inputs": model_inputs,
                     "outputs": entry.num_outputs, "checks": checks, "training": training,
                     "graph": graph, "constant_prefix": constant_prefix}


def _trace(compiled: Any, inputs: list[Tensor], shapes: list[tuple] | None) -> Any:
    """`compiled.trace_only(*inputs)`; with `shapes`, the inputs traced with those (symbolic)
    shapes, in the active shape environment (as `Compiled._compile_symbolic` does)."""
    if shapes is None:
        return compiled.trace_only(*inputs)
    key = compiled._signature(tuple(inputs), call_device(compiled._device, compiled.module,
                                                         inputs))
    return compiled._compile(key, tuple(inputs), capture_steps=True, shapes=shapes)


def _portable_checks(entry: Any, name: str) -> list[dict]:
    """The trace's value checks as the manifest states them (`checks.RangeTest.portable`),
    each reading two program outputs (after the model's outputs): the minimum and maximum."""
    out = []
    index = entry.num_outputs
    for count, test in entry.checks:
        describe = getattr(test, "portable", None)
        if describe is None or count != 2:
            raise ExportError(f"export: {name} checks values at run time in a way an "
                              f"artifact cannot state (an integer division by zero?)")
        out.append({**describe(), "lo": index, "hi": index + 1})
        index += count
    return out


def _artifact_graph(entry: Any) -> Any:
    """The traced graph with the outputs an artifact has: the model's outputs, the value
    checks and the new values of updated state, in that order (gradients the step assigned
    to `.grad`, and values saved for a backward pass, are dropped: nothing reads them)."""
    graph = entry.graph
    n, stored = entry.num_outputs, entry.num_stored
    end = n + stored + entry.num_checks + len(entry.updates)
    outputs = graph.outputs[:n] + graph.outputs[n + stored:end]
    if len(outputs) == len(graph.outputs):
        return graph
    return dce(Graph(list(graph.inputs), list(graph.nodes), outputs, dict(graph.constants),
                     graph.name))


def _optimizers(entry: Any) -> list[str]:
    """The names of the optimizers whose state the step updates (for the manifest)."""
    owned = {id(t): type(opt).__name__ for opt in live_optimizers()
             for state in opt.state.values() for t in state.values() if isinstance(t, Tensor)}
    owned.update({id(p): type(opt).__name__ for opt in live_optimizers()
                  for group in opt.param_groups for p in group["params"]})
    return sorted({owned[id(ref)] for kind, ref in entry.updates
                   if kind == "tensor" and id(ref) in owned})


def _notify(progress: Progress | None, stage: str, **data: Any) -> None:
    """Tell `progress` (export's argument), when given, that `stage` has ended."""
    if progress is not None:
        progress(stage, data)


def _check_destination(out: pathlib.Path) -> None:
    """Refuse to replace anything but an earlier artifact (or an empty directory)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"export: {out} exists and is not a directory")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise FileExistsError(f"export: {out} is a non-empty directory that holds no "
                              f"exported artifact; choose another path")


def _manifest(program: Program, plan: dict, device: str, compiler_target: str) -> dict:
    """The manifest's fields besides the per-target files and checksums."""
    dynamic = plan.get("dynamic")
    largest = {BATCH_SYMBOL: dynamic["max"]} if dynamic else {}
    manifest = {
        "format": FORMAT_VERSION,
        "neurenix_version": __version__,
        "target": device,
        "compiler_target": compiler_target,
        "inference_only": plan["training"] is None,
        "weights": "file",
        "inputs": [dict(t, shape=[size_to_json(d) for d in t["shape"]])
                   for t in plan["inputs"]],
        "outputs": [{"name": t.name, "shape": [size_to_json(d) for d in t.shape],
                     "dtype": t.dtype} for t in program.outputs[:plan["outputs"]]],
        "checks": plan["checks"],
        "training": plan["training"],
        "memory": {"arena_bytes": _arena_bytes(program, plan),
                   **{k: int(size_value(v, largest)) if isinstance(v, Poly) else int(v)
                      for k, v in program.memory.items()}},
        "kernels": [{"name": k.name, "grid": [extent_to_json(g) for g in k.grid],
                     "block": list(k.block)} for k in program.kernels],
        "bindings": plan["bindings"],
        "program": _program_json(program),
        "sources": {},
        "binaries": {},
    }
    if dynamic:
        program1, plan1 = dynamic["program"], dynamic["plan"]
        manifest["dynamic_batch"] = {
            "symbol": BATCH_SYMBOL, "min": 1, "max": dynamic["max"],
            "program": {"min": 2, "max": dynamic["max"]},
            "batch1": {"program": _program_json(program1), "bindings": plan1["bindings"],
                       "checks": plan1["checks"],
                       "constants": BATCH1_PREFIX}}
    return manifest


def _program_json(program: Program) -> dict:
    """The program's JSON for the manifest (its source in the files `sources` names)."""
    data, _ = program_to_json(program)
    data["source"] = ""
    data["kernels"] = [dict(k, source="") for k in data["kernels"]]
    return data


def _arena_bytes(program: Program, plan: dict) -> int:
    """The arena a run needs; of a dynamic-batch artifact, the most any batch size needs (an
    upper bound of the symbolic arena over 2..MAX, and the batch-1 program's)."""
    dynamic = plan.get("dynamic")
    if not dynamic:
        return int(program.arena_bytes)
    return max(_upper_bound(program.arena_bytes, 2, dynamic["max"]),
               int(dynamic["program"].arena_bytes))


def _upper_bound(size: Size, lo: int, hi: int) -> int:
    """An upper bound of a size polynomial in the batch over lo..hi (exact for
    non-negative coefficients)."""
    if not isinstance(size, Poly):
        return int(size)
    return sum(max(c * lo ** len(m), c * hi ** len(m)) for m, c in size.terms)


def _files(root: pathlib.Path) -> list[str]:
    """Every file under `root` (relative, '/'-separated), sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ---- per target ----------------------------------------------------------------------------


def _write_cpu(work: pathlib.Path, program: Program, plan: dict, manifest: dict,
               cross: tuple[str, ...]) -> None:
    """model.ll, model.c/model.h (the C API), model.so, and one object per cross triple; a
    dynamic-batch artifact's two programs are linked into one module (model.ll) first."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ExportError("export: the cpu target builds model.so's C API with a C compiler; "
                          "none is installed (install gcc)")
    inputs = [export_capi.CTensor(t["name"], t["dtype"], tuple(t["shape"]))
              for t in plan["inputs"]]
    n = plan["outputs"]
    outputs = [export_capi.CTensor(t.name, t.dtype, tuple(t.shape))
               for t in program.outputs[:n]]
    tensors: list[export_capi.CTensor] = []
    tensor_index: dict[str, int] = {}
    weights = plan["weights"]

    def tensor_arg(key: str) -> tuple[str, int]:
        if key not in tensor_index:
            array = weights[key]
            tensor_index[key] = len(tensors)
            tensors.append(export_capi.CTensor(key, array.dtype.name, tuple(array.shape)))
        return ("tensor", tensor_index[key])

    states = [tensor_arg(b["tensor"])[1] for b in plan["bindings"] if b["from"] == "state"]
    main, seed = _c_program(program, plan, tensor_arg, states)
    dynamic = plan.get("dynamic")
    batch1 = None
    source = program.source
    if dynamic:
        batch1, _ = _c_program(dynamic["program"], dynamic["plan"], tensor_arg, states)
        source = _linked_ir([program.source, dynamic["program"].source])
    max_batch = dynamic["max"] if dynamic else 0
    (work / "model.ll").write_text(source)
    (work / "model.h").write_text(export_capi.header(inputs, outputs, training=bool(states),
                                                     max_batch=max_batch))
    (work / "model.c").write_text(export_capi.source(
        main.entry, inputs, outputs, tensors, main.args, main.out_slot,
        manifest["memory"]["arena_bytes"], states=states, checks=main.checks, seed=seed,
        max_batch=max_batch, sized=main.sized, batch1=batch1))
    with tempfile.TemporaryDirectory(prefix="neurenix-export-") as build:
        obj = pathlib.Path(build) / "model.o"
        machine = plan["cpu"]
        obj.write_bytes(cpu_runtime.compile_object(source) if machine == cpu_runtime.host_cpu()
                        else cpu_runtime.cross_object(source, machine["triple"],
                                                      machine["name"]))
        capi = pathlib.Path(build) / "capi.o"
        _run([cc, "-std=c11", "-O2", "-fPIC", "-Wall", "-I", str(work), "-c",
              str(work / "model.c"), "-o", str(capi)], "compiling model.c")
        _run([cc, "-shared", "-Wl,-z,noexecstack", "-Wl,-soname,model.so", "-o",
              str(work / "model.so"), str(obj), str(capi), "-lm"], "linking model.so")
    manifest["sources"] = {"program": "model.ll", "c_api": "model.c", "header": "model.h"}
    manifest["binaries"] = {"library": "model.so"}
    manifest["cpu"] = machine
    manifest["c_api"] = {"header": "model.h", "library": "model.so", "entry": program.entry,
                         "link": "cc app.c -I DIR DIR/model.so -Wl,-rpath,DIR -o app"}
    if dynamic:
        manifest["c_api"]["run"] = "nx_model_run_batch"
        manifest["c_api"]["entry_batch1"] = dynamic["program"].entry
    manifest["cross"] = {}
    for triple in cross:
        name = f"model-{triple.split('-', 1)[0]}.o"
        (work / name).write_bytes(cpu_runtime.cross_object(source, triple))
        manifest["binaries"][f"object-{triple}"] = name
        manifest["cross"][triple] = {
            "object": name, "cpu": "generic",
            "link": f"{triple}-gcc -shared -fPIC -O2 -I . -Wl,-z,noexecstack "
                    f"-Wl,-soname,model.so -o model.so model.c {name} -lm"}


def _c_program(program: Program, plan: dict, tensor_arg: Callable[[str], tuple[str, int]],
               states: list[int]) -> tuple[export_capi.CProgram, int | None]:
    """The C API's view of one program: its entry's arguments (`tensor_arg` gives the index
    of a weights-file tensor; state s is tensor `states[s]`), repeated outputs and checks;
    and the seed it starts from (None: it draws no random numbers)."""
    n = plan["outputs"]
    args: list[tuple[str, int]] = []
    state_of_output: dict[int, int] = {}  # program output -> state index
    seed = None
    for binding in plan["bindings"]:
        if binding["from"] == "input":
            args.append(("input", binding["index"]))
        elif binding["from"] == "seed":
            seed = binding["seed"]
            args.append(("seed", 0))
        else:
            args.append(tensor_arg(binding["tensor"]))
            if binding["from"] == "state":
                state_of_output[binding["output"]] = states.index(args[-1][1])
    check_of_output = {j: c for c, j in enumerate(range(n, n + 2 * len(plan["checks"])))}
    # the entry takes one argument per program output (a repeated output points at the
    # first one's buffer and is copied by the C runtime: `out_slot`)
    first: dict[str, int] = {}
    for j, t in enumerate(program.outputs):
        if first.setdefault(t.name, j) != j and j >= n:
            raise ExportError("export: a state or check value of the program is also another "
                              "of its outputs; the C API cannot hold it twice")
        if j < n:
            args.append(("output", j))
        elif j in check_of_output:
            args.append(("check", check_of_output[j]))
        else:
            args.append(("state_out", state_of_output[j]))
    out_slot = [first[t.name] for t in program.outputs[:n]]
    constants = {key.removeprefix(prefix): key for key in plan["weights"]
                 for prefix in (plan["constant_prefix"],) if key.startswith(prefix)}
    args += [tensor_arg(constants[name]) for name in sorted(program.constants)]
    checks = [export_capi.CCheck(2 * c, 2 * c + 1, program.outputs[check["lo"]].dtype,
                                 check["low"], check["high"], check["high_inclusive"],
                                 check["message"])
              for c, check in enumerate(plan["checks"])]
    return export_capi.CProgram(program.entry, args, out_slot, checks,
                                sized=bool(program.symbols)), seed


def _run(command: list[str], what: str) -> None:
    """Run a build command; ExportError with its output when it fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ExportError(f"export: {what} failed: {e}") from None
    if done.returncode != 0:
        raise ExportError(f"export: {what} failed (exit {done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()[:4000]}")


def _write_opencl(work: pathlib.Path, program: Program, plan: dict, manifest: dict,
                  cross: tuple[str, ...]) -> None:
    """model.cl: one OpenCL C translation unit holding every kernel."""
    _write_gpu(work, program, plan, manifest, "opencl")


def _write_webgpu(work: pathlib.Path, program: Program, plan: dict, manifest: dict,
                  cross: tuple[str, ...]) -> None:
    """model.wgsl (every module, for reading) and kernels/NAME.wgsl (one module per kernel:
    what a pipeline is created from); for the browser, neurenix.js, index.html and
    example.safetensors (`export_web`)."""
    _write_gpu(work, program, plan, manifest, "webgpu")
    export_web.write(work, manifest, plan["example"])


def _write_cuda(work: pathlib.Path, program: Program, plan: dict, manifest: dict,
                cross: tuple[str, ...]) -> None:
    """model.cu and, where NVRTC is installed, model.ptx for sm_80."""
    _write_gpu(work, program, plan, manifest, "cuda")


def _write_hip(work: pathlib.Path, program: Program, plan: dict, manifest: dict,
               cross: tuple[str, ...]) -> None:
    """model.hip and, where hipcc is installed, model.co (a code object for gfx90a)."""
    _write_gpu(work, program, plan, manifest, "rocm")


BATCH1_DIR = "batch1/"
"""Where a GPU dynamic-batch artifact keeps its batch-1 program's code (the same file names
as the main program's: kernels of both programs may share names)."""


def _write_gpu(work: pathlib.Path, program: Program, plan: dict, manifest: dict,
               device: str) -> None:
    """The GPU program's code files and their manifest fields; of a dynamic-batch artifact
    also the batch-1 program's, under `BATCH1_DIR`, named in the manifest's
    `dynamic_batch.batch1` (`sources`, `binaries`)."""
    manifest.update(_gpu_code(work, program, device, ""))
    dynamic = plan.get("dynamic")
    if dynamic:
        fields = _gpu_code(work, dynamic["program"], device, BATCH1_DIR)
        manifest["dynamic_batch"]["batch1"].update(
            {k: v for k, v in fields.items() if k in ("sources", "binaries")})
        if "toolchain_missing" in fields:
            manifest.setdefault("toolchain_missing", fields["toolchain_missing"])


def _gpu_code(work: pathlib.Path, program: Program, device: str, sub: str) -> dict:
    """Write one GPU program's code under `work/sub` (OpenCL: model.cl; WebGPU: model.wgsl
    and kernels/NAME.wgsl; CUDA: model.cu and model.ptx; ROCm: model.hip and model.co, the
    binaries where their toolchain is installed); the manifest fields naming them."""
    if sub:
        (work / sub).mkdir(parents=True, exist_ok=True)
    suffix = {"opencl": "cl", "webgpu": "wgsl", "cuda": "cu", "rocm": "hip"}[device]
    name = f"{sub}model.{suffix}"
    (work / name).write_text(program.source)
    fields: dict[str, Any] = {"sources": {"program": name}, "binaries": {}}
    if device == "opencl":
        fields["build_options"] = str(program.metadata.get("build_options", ""))
    elif device == "webgpu":
        (work / sub / "kernels").mkdir()
        kernels = {}
        for kernel in program.kernels:
            file = f"{sub}kernels/{kernel.name}.wgsl"
            (work / file).write_text(kernel.source or program.source)
            kernels[kernel.name] = file
        fields["sources"]["kernels"] = kernels
    elif device == "cuda":
        try:
            (work / f"{sub}model.ptx").write_bytes(nvrtc.compile_ptx(program.source, CUDA_ARCH))
        except nvrtc.NVRTCError as e:
            fields["toolchain_missing"] = f"no PTX: {e}"
        else:
            fields["binaries"] = {"ptx": f"{sub}model.ptx"}
            fields["ptx_arch"] = f"sm_{CUDA_ARCH}"
    elif not hip_compile.available():
        fields["toolchain_missing"] = "no code object: hipcc is not installed"
    else:
        (work / f"{sub}model.co").write_bytes(hip_compile.compile_code_object(program.source,
                                                                             (HIP_ARCH,)))
        fields["binaries"] = {"code_object": f"{sub}model.co"}
        fields["code_object_arch"] = HIP_ARCH
    return fields
