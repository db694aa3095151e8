"""`neurenix.export`: compile a model ahead of time into one self-describing directory.

The model is traced once on its example inputs (under no_grad: inference only), optimised and
compiled for the target, and written as `manifest.json` (format version, Neurenix version,
target, inputs and outputs, memory plan, kernels in launch order with their launch geometry,
the SHA-256 of every other file), `weights.safetensors` (the parameters and buffers the program
reads, and its constants) and the target's code: for the CPU a shared library `model.so` with
a C API (`model.h`, `model.c`) and a cross-compiled AArch64 object; OpenCL C, WGSL, CUDA
(with PTX) or HIP (with a code object) source for the GPU targets; a WebGPU artifact also
runs in the browser (`export_web`: neurenix.js, index.html, the example).  `neurenix.runtime.load`
loads the directory without the compiler.  Parameters are program inputs in Neurenix (a
weight update never recompiles), so weights always live in the weights file
(`"weights": "file"`): `freeze=True` snapshots their values at export.  docs/deploy/README.md
describes the format.
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
from .state import no_grad
from .tensor import Tensor
from .version import __version__

TARGETS = {"cpu": ("llvm", "cpu"), "opencl": ("opencl", "opencl"),
           "webgpu": ("webgpu", "webgpu"), "cuda": ("cuda", "cuda"), "rocm": ("hip", "rocm"),
           "hip": ("hip", "rocm")}
"""Export target -> (compiler target, device kind: the manifest's `target`)."""
CROSS_TRIPLES = ("aarch64-linux-gnu",)
CUDA_ARCH = 80
HIP_ARCH = "gfx90a"
Progress = Callable[[str, dict], None]
"""`export(progress=...)`: called with a stage's name and its data as each stage ends."""


class ExportError(ValueError):
    """A model or function that cannot be exported (the message says why and what to do)."""


def export(model_or_fn: Any, example_inputs: Any, target: str = "cpu",
           path: str | os.PathLike[str] = "neurenix-export", *, freeze: bool = True,
           cross: tuple[str, ...] = CROSS_TRIPLES,
           progress: Progress | None = None) -> pathlib.Path:
    """Export `model_or_fn` (a Module or a function of tensors) for `target` ("cpu", "opencl",
    "webgpu", "cuda", "rocm") as traced on `example_inputs` (a Tensor or a tuple of them; the
    artifact takes inputs of exactly these shapes and dtypes) to directory `path`; returns
    the directory.  An existing artifact there is replaced; another non-empty directory is
    refused.  `cross` lists the target triples a CPU export also compiles an object file for
    (default: AArch64 Linux).  Inference only: the function runs under no_grad and must not
    update state (call `model.eval()` first for dropout and batch norm).  `progress(stage,
    data)`, when given, is called as each stage ends: "trace" (`data["stats"]`: the traced
    function's `compiled.stats()`), "codegen" (`data["build"]`: kernels, memory and seconds
    per stage, as `pipeline.build` reports them) and "toolchain" (the target's code written
    and compiled); neurenix-compile shows them."""
    if not freeze:
        raise NotImplementedError("export(freeze=False): exporting trainable weights (training "
                                  "steps) is not supported yet; export with freeze=True")
    if target not in TARGETS:
        raise ValueError(f"export: unknown target {target!r}; known: {sorted(TARGETS)}")
    compiler_target, device = TARGETS[target]
    inputs = _example_tensors(example_inputs)
    program, plan = _trace_and_build(model_or_fn, inputs, compiler_target, progress)
    if device == "webgpu":
        plan["example"] = export_web.example(model_or_fn, inputs, program)
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
                     progress: Progress | None = None) -> tuple[Program, dict]:
    """Trace the function (through the reference target: no code is built for the trace),
    check that it is a pure inference function, and build its program for the target.
    Returns the program and how its inputs are bound: `bindings` (per program input),
    `weights` (arrays by name), `inputs` (the model's input specs)."""
    compiled = compile_model(model_or_fn, backend="reference")
    with no_grad():
        compiled(*inputs)
    entry = compiled._last
    name = compiled._name()
    if entry.updates or entry.stores or entry.num_stored:
        raise ExportError(f"export: {name} updates state (parameters, buffers or gradients) "
                          f"when it runs; export is inference only: call model.eval() and "
                          f"export the forward pass")
    if entry.num_checks:
        raise ExportError(f"export: {name} checks values at run time (index bounds, ...), "
                          f"which an exported program cannot report yet")
    _notify(progress, "trace", stats=compiled.stats())
    program, info = pipeline.build(entry.graph, compiler_target)
    _notify(progress, "codegen", build=info)
    if not (len(program.inputs) == len(entry.sources) == len(entry.graph.inputs)):
        raise ExportError(f"export: {name}: the program takes {len(program.inputs)} inputs, "
                          f"the trace has {len(entry.sources)}")
    if len(program.outputs) != entry.num_outputs:
        raise ExportError(f"export: {name}: the program has {len(program.outputs)} outputs, "
                          f"the function returns {entry.num_outputs}")
    bindings: list[dict] = []
    weights: dict[str, np.ndarray] = {}
    model_inputs: list[dict | None] = [None] * len(inputs)
    for spec, (kind, ref), label in zip(program.inputs, entry.sources, entry.input_names):
        if kind == "arg":
            model_inputs[ref] = {"name": label, "shape": list(spec.shape), "dtype": spec.dtype}
            bindings.append({"name": spec.name, "from": "input", "index": ref})
        elif kind == "tensor":
            weights[label] = np.array(ref._host(), dtype=spec.dtype, copy=True)
            bindings.append({"name": spec.name, "from": "weights", "tensor": label})
        elif kind == "seed":
            raise ExportError(f"export: {name} draws random numbers (dropout in training "
                              f"mode?); call model.eval() before exporting")
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
    return program, {"bindings": bindings, "weights": weights, "inputs": model_inputs}


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
        "inference_only": True,
        "weights": "file",
        "inputs": plan["inputs"],
        "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
                    for t in program.outputs],
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
    outputs = [export_capi.CTensor(t.name, t.dtype, tuple(t.shape)) for t in program.outputs]
    tensors: list[export_capi.CTensor] = []
    args: list[tuple[str, int]] = []
    weights = plan["weights"]

    def tensor_arg(key: str) -> tuple[str, int]:
        array = weights[key]
        tensors.append(export_capi.CTensor(key, array.dtype.name, tuple(array.shape)))
        return ("tensor", len(tensors) - 1)

    for binding in plan["bindings"]:
        args.append(("input", binding["index"]) if binding["from"] == "input"
                    else tensor_arg(binding["tensor"]))
    args += [("output", k) for k in range(len(outputs))]
    args += [tensor_arg(CONSTANT_PREFIX + name) for name in sorted(program.constants)]
    first: dict[str, int] = {}
    out_slot = [first.setdefault(t.name, k) for k, t in enumerate(program.outputs)]
    (work / "model.ll").write_text(program.source)
    (work / "model.h").write_text(export_capi.header(inputs, outputs))
    (work / "model.c").write_text(export_capi.source(program.entry, inputs, outputs, tensors,
                                                     args, out_slot, program.arena_bytes))
    with tempfile.TemporaryDirectory(prefix="neurenix-export-") as build:
        obj = pathlib.Path(build) / "model.o"
        obj.write_bytes(cpu_runtime.compile_object(program))
        capi = pathlib.Path(build) / "capi.o"
        _run([cc, "-std=c11", "-O2", "-fPIC", "-Wall", "-I", str(work), "-c",
              str(work / "model.c"), "-o", str(capi)], "compiling model.c")
        _run([cc, "-shared", "-Wl,-z,noexecstack", "-Wl,-soname,model.so", "-o",
              str(work / "model.so"), str(obj), str(capi), "-lm"], "linking model.so")
    manifest["sources"] = {"program": "model.ll", "c_api": "model.c", "header": "model.h"}
    manifest["binaries"] = {"library": "model.so"}
    manifest["cpu"] = cpu_runtime.host_cpu()
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
