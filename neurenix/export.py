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
"""
from __future__ import annotations

import json
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
from neurenix.runtime import cpu as cpu_runtime
from neurenix.runtime import hip_compile, nvrtc
from neurenix.runtime.artifact import (
    CONSTANT_PREFIX,
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    sha256_file,
    write_safetensors,
)
from neurenix.runtime.program import Program, program_to_json

from . import export_capi, export_web
from .compilation.compiled import compile as compile_model
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
Progress = Callable[[str, dict], None]
"""`export(progress=...)`: called with a stage's name and its data as each stage ends."""


class ExportError(ValueError):
    """A model or function that cannot be exported (the message says why and what to do)."""


def export(model_or_fn: Any, example_inputs: Any, target: str = "cpu",
           path: str | os.PathLike[str] = "neurenix-export", *, freeze: bool = True,
           cross: tuple[str, ...] = CROSS_TRIPLES, cpu: str = "host",
           progress: Progress | None = None) -> pathlib.Path:
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
    and compiled); neurenix-compile shows them."""
    if target not in TARGETS:
        raise ValueError(f"export: unknown target {target!r}; known: {sorted(TARGETS)}")
    compiler_target, device = TARGETS[target]
    machine = cpu_runtime.host_cpu() if cpu == "host" else cpu_runtime.portable_cpu(cpu)
    inputs = _example_tensors(example_inputs)
    program, plan = _trace_and_build(model_or_fn, inputs, compiler_target, progress, freeze)
    plan["cpu"] = machine
    if device == "webgpu":
        plan["example"] = (export_web.training_example(inputs, plan, TRAINING_EXAMPLE_STEPS)
                           if plan["training"] else
                           export_web.example(model_or_fn, inputs, program))
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


def _trace_and_build(model_or_fn: Any, inputs: list[Tensor], compiler_target: str,
                     progress: Progress | None = None,
                     freeze: bool = True) -> tuple[Program, dict]:
    """Trace the function (through the reference target: no code is built for the trace,
    nothing runs), check that the artifact can do what it does, and build its program for the
    target.  Returns the program and how its inputs are bound: `bindings` (per program
    input), `weights` (arrays by name), `inputs` (the model's input specs), `outputs` (how
    many program outputs are the model's), `checks` and `training` (the manifest's fields)."""
    compiled = compile_model(model_or_fn, backend="reference")
    name = compiled._name()
    if freeze:
        with no_grad():
            try:
                entry = compiled.trace_only(*inputs)
            except RuntimeError as e:
                if not str(e).startswith("backward:"):
                    raise
                raise ExportError(f"export: {name} calls backward(), as a training step does; "
                                  f"export it with freeze=False (freeze=True traces inference "
                                  f"under no_grad)") from e
    else:
        entry = compiled.trace_only(*inputs)
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
            model_inputs[k] = {"name": f"input{k}", "shape": list(x.shape),
                               "dtype": x.dtype.name}
    for cname, array in program.constants.items():
        weights[CONSTANT_PREFIX + cname] = np.array(array, order="C", copy=True)
    training = None
    if states:
        training = {"states": states, "optimizers": _optimizers(entry),
                    "steps_exported": 0}
    return program, {"bindings": bindings, "weights": weights, "inputs": model_inputs,
                     "outputs": entry.num_outputs, "checks": checks, "training": training,
                     "graph": graph}


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
    data, _ = program_to_json(program)
    data["source"] = ""  # in the source file the manifest's `sources` names
    data["kernels"] = [dict(k, source="") for k in data["kernels"]]
    return {
        "format": FORMAT_VERSION,
        "neurenix_version": __version__,
        "target": device,
        "compiler_target": compiler_target,
        "inference_only": plan["training"] is None,
        "weights": "file",
        "inputs": plan["inputs"],
        "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
                    for t in program.outputs[:plan["outputs"]]],
        "checks": plan["checks"],
        "training": plan["training"],
        "memory": {"arena_bytes": int(program.arena_bytes),
                   **{k: int(v) for k, v in program.memory.items()}},
        "kernels": [{"name": k.name, "grid": list(k.grid), "block": list(k.block)}
                    for k in program.kernels],
        "bindings": plan["bindings"],
        "program": data,
        "sources": {},
        "binaries": {},
    }


def _files(root: pathlib.Path) -> list[str]:
    """Every file under `root` (relative, '/'-separated), sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ---- per target ----------------------------------------------------------------------------


def _write_cpu(work: pathlib.Path, program: Program, plan: dict, manifest: dict,
               cross: tuple[str, ...]) -> None:
    """model.ll, model.c/model.h (the C API), model.so, and one object per cross triple."""
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
    args: list[tuple[str, int]] = []
    weights = plan["weights"]

    def tensor_arg(key: str) -> tuple[str, int]:
        array = weights[key]
        tensors.append(export_capi.CTensor(key, array.dtype.name, tuple(array.shape)))
        return ("tensor", len(tensors) - 1)

    states: list[int] = []
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
                state_of_output[binding["output"]] = len(states)
                states.append(args[-1][1])
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
    args += [tensor_arg(CONSTANT_PREFIX + name) for name in sorted(program.constants)]
    checks = [export_capi.CCheck(2 * c, 2 * c + 1, program.outputs[check["lo"]].dtype,
                                 check["low"], check["high"], check["high_inclusive"],
                                 check["message"])
              for c, check in enumerate(plan["checks"])]
    (work / "model.ll").write_text(program.source)
    (work / "model.h").write_text(export_capi.header(inputs, outputs, training=bool(states)))
    (work / "model.c").write_text(export_capi.source(program.entry, inputs, outputs, tensors,
                                                     args, out_slot, program.arena_bytes,
                                                     states=states, checks=checks, seed=seed))
    with tempfile.TemporaryDirectory(prefix="neurenix-export-") as build:
        obj = pathlib.Path(build) / "model.o"
        machine = plan["cpu"]
        obj.write_bytes(cpu_runtime.compile_object(program) if machine == cpu_runtime.host_cpu()
                        else cpu_runtime.cross_object(program, machine["triple"],
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
    manifest["cross"] = {}
    for triple in cross:
        name = f"model-{triple.split('-', 1)[0]}.o"
        (work / name).write_bytes(cpu_runtime.cross_object(program, triple))
        manifest["binaries"][f"object-{triple}"] = name
        manifest["cross"][triple] = {
            "object": name, "cpu": "generic",
            "link": f"{triple}-gcc -shared -fPIC -O2 -I . -Wl,-z,noexecstack "
                    f"-Wl,-soname,model.so -o model.so model.c {name} -lm"}


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
    (work / "model.cl").write_text(program.source)
    manifest["sources"] = {"program": "model.cl"}
    manifest["build_options"] = str(program.metadata.get("build_options", ""))


def _write_webgpu(work: pathlib.Path, program: Program, plan: dict, manifest: dict,
                  cross: tuple[str, ...]) -> None:
    """model.wgsl (every module, for reading) and kernels/NAME.wgsl (one module per kernel:
    what a pipeline is created from); for the browser, neurenix.js, index.html and
    example.safetensors (`export_web`)."""
    (work / "model.wgsl").write_text(program.source)
    (work / "kernels").mkdir()
    kernels = {}
    for kernel in program.kernels:
        name = f"kernels/{kernel.name}.wgsl"
        (work / name).write_text(kernel.source or program.source)
        kernels[kernel.name] = name
    manifest["sources"] = {"program": "model.wgsl", "kernels": kernels}
    export_web.write(work, manifest, plan["example"])


def _write_cuda(work: pathlib.Path, program: Program, plan: dict, manifest: dict,
                cross: tuple[str, ...]) -> None:
    """model.cu and, where NVRTC is installed, model.ptx for sm_80."""
    (work / "model.cu").write_text(program.source)
    manifest["sources"] = {"program": "model.cu"}
    try:
        (work / "model.ptx").write_bytes(nvrtc.compile_ptx(program.source, CUDA_ARCH))
    except nvrtc.NVRTCError as e:
        manifest["toolchain_missing"] = f"no PTX: {e}"
        return
    manifest["binaries"] = {"ptx": "model.ptx"}
    manifest["ptx_arch"] = f"sm_{CUDA_ARCH}"


def _write_hip(work: pathlib.Path, program: Program, plan: dict, manifest: dict,
               cross: tuple[str, ...]) -> None:
    """model.hip and, where hipcc is installed, model.co (a code object for gfx90a)."""
    (work / "model.hip").write_text(program.source)
    manifest["sources"] = {"program": "model.hip"}
    if not hip_compile.available():
        manifest["toolchain_missing"] = "no code object: hipcc is not installed"
        return
    (work / "model.co").write_bytes(hip_compile.compile_code_object(program.source,
                                                                    (HIP_ARCH,)))
    manifest["binaries"] = {"code_object": "model.co"}
    manifest["code_object_arch"] = HIP_ARCH
