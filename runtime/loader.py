"""`neurenix.runtime.load(DIR)`: load an exported artifact and run it, without the compiler.

The loader reads `manifest.json`, refuses an artifact it cannot trust or run here (a newer
format version, a missing file, a file whose size or SHA-256 differs from the manifest, a
target this machine has no device for, CPU code for another architecture or for CPU features
this one lacks), rebuilds the `Program` from the manifest and the files, and loads it with the
target's runtime module: the CPU's `model.so` is loaded as it is (no LLVM compile), GPU
programs are built from their sources by the device's driver.  Imports: runtime modules only.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from types import ModuleType

import numpy as np

from .artifact import (
    CONSTANT_PREFIX,
    MANIFEST,
    WEIGHTS,
    ArtifactError,
    host_arch,
    read_manifest,
    read_safetensors,
    triple_arch,
    verify_files,
)
from .program import Program, ProgramFormatError, TensorSpec, program_from_json


class LoadedModel:
    """An exported model loaded for its device: `run(inputs) -> outputs` on NumPy arrays.

    `inputs` and `outputs` are the model's `TensorSpec`s (the weights are loaded already);
    `manifest` is the artifact's manifest, `program` the program that runs.
    """

    def __init__(self, directory: pathlib.Path, manifest: dict, program: Program,
                 executable: object, bindings: list[tuple[str, object]]) -> None:
        self.directory = directory
        self.manifest = manifest
        self.program = program
        self.target = manifest["target"]
        self.executable = executable
        self.inputs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"])
                       for t in manifest["inputs"]]
        self.outputs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"])
                        for t in manifest["outputs"]]
        self._bindings = bindings

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The model's outputs for `inputs` (one array per input, of its shape and dtype)."""
        inputs = list(inputs)
        if len(inputs) != len(self.inputs):
            raise ValueError(f"exported model: expected {len(self.inputs)} inputs "
                             f"({', '.join(t.name for t in self.inputs)}), got {len(inputs)}")
        arrays = []
        for spec, x in zip(self.inputs, inputs):
            x = np.asarray(x)
            if x.shape != spec.shape or x.dtype != np.dtype(spec.dtype):
                raise ValueError(f"exported model: input {spec.name!r} expects "
                                 f"{spec.dtype}{list(spec.shape)}, got "
                                 f"{x.dtype}{list(x.shape)}")
            arrays.append(np.asarray(x, order="C"))
        args = [arrays[ref] if kind == "input" else ref for kind, ref in self._bindings]
        return list(self.executable.run(args))

    __call__ = run

    def __repr__(self) -> str:
        return (f"LoadedModel({str(self.directory)!r}, target={self.target!r}, "
                f"inputs={[t.name for t in self.inputs]})")


def load(path: str | os.PathLike,
         backend_module: Callable[[str], ModuleType]) -> LoadedModel:
    """Load the artifact `neurenix.export` wrote to directory `path`, checked (see the module
    docstring), with the runtime module `backend_module(target)` (`neurenix.runtime.load`
    passes its backend table); ArtifactError (a ValueError) naming the file at fault when it
    cannot be."""
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise ArtifactError(str(directory), "not a directory (an exported artifact is one)")
    manifest = read_manifest(directory)
    target = manifest["target"]
    binaries = manifest.get("binaries", {})
    if type(binaries) is not dict:
        raise ArtifactError(MANIFEST, "field 'binaries' is not an object")
    if target == "cpu" and "library" not in binaries:
        raise ArtifactError(MANIFEST, "a cpu artifact names no shared library")
    for name in binaries.values():
        if name not in manifest["files"]:
            raise ArtifactError(str(name), "the manifest does not list it (no checksum)")
    verify_files(directory, manifest)
    _check_machine(manifest, backend_module)
    weights = read_safetensors(directory / WEIGHTS)
    program = _program(directory, manifest, weights)
    bindings = _bindings(manifest, program, weights)
    runtime = backend_module(target)
    try:
        if target == "cpu":
            library = (directory / binaries["library"]).read_bytes()
            runtime.prepare(program, None)
            executable = runtime.Executable(program, library=library)
            if getattr(executable, "loader", "") != "shared library":
                raise ArtifactError(binaries["library"], "the shared library does not load "
                                                         "here")
        else:
            executable = runtime.Executable(program)
    except ArtifactError:
        raise
    except Exception as e:
        raise ArtifactError(manifest["sources"].get("program", MANIFEST),
                            f"the {target} runtime cannot load the program: "
                            f"{type(e).__name__}: {e}") from e
    return LoadedModel(directory, manifest, program, executable, bindings)


def _check_machine(manifest: dict, backend_module: Callable[[str], ModuleType]) -> None:
    """Refuse an artifact for a device this machine lacks, or CPU code it cannot run."""
    target = manifest["target"]
    try:
        runtime = backend_module(target)
    except ValueError as e:
        raise ArtifactError(MANIFEST, f"target {target!r}: {e}") from None
    if target == "cpu":
        library = manifest["binaries"]["library"]
        cpu = manifest.get("cpu")
        if type(cpu) is not dict or type(cpu.get("triple")) is not str:
            raise ArtifactError(MANIFEST, "a cpu artifact without its 'cpu' triple")
        arch = triple_arch(cpu["triple"])
        if arch != host_arch():
            raise ArtifactError(library, f"compiled for {arch} ({cpu['triple']}), this "
                                         f"machine is {host_arch()}: export it again for "
                                         f"this machine, or link the cross-compiled object")
        required = cpu.get("features", [])
        if type(required) is not list or not all(type(f) is str for f in required):
            raise ArtifactError(MANIFEST, "cpu features are malformed")
        missing = sorted(set(required) - _host_features())
        if missing:
            raise ArtifactError(library, f"compiled for CPU {cpu.get('name')!r} with "
                                         f"features this CPU lacks: {', '.join(missing)}")
        return
    if not runtime.available():
        reason = getattr(runtime, "unavailable_reason", lambda: "")()
        raise ArtifactError(MANIFEST, f"target {target!r}: this machine has no {target} "
                                      f"device{': ' + reason if reason else ''}")


def _host_features() -> set[str]:
    """The CPU features this machine has, as LLVM names them ('avx2', 'neon', ...)."""
    from .compile_worker import llvm  # llvmlite: the CPU runtime's own dependency

    features = llvm().get_host_cpu_features()
    return {name for name, on in features.items() if on}


def _program(directory: pathlib.Path, manifest: dict,
             weights: dict[str, np.ndarray]) -> Program:
    """The program the manifest describes, its sources read from their files."""
    data = dict(manifest["program"])
    sources = manifest["sources"]
    program_file = sources.get("program")
    if type(program_file) is not str:
        raise ArtifactError(MANIFEST, "sources name no program file")
    data["source"] = (directory / program_file).read_text()
    kernel_files = sources.get("kernels", {})
    if type(data.get("kernels")) is not list or type(kernel_files) is not dict:
        raise ArtifactError(MANIFEST, "the program's kernels are malformed")
    kernels = []
    for kernel in data["kernels"]:
        if type(kernel) is not dict:
            raise ArtifactError(MANIFEST, "a kernel entry is not an object")
        file = kernel_files.get(kernel.get("name"))
        kernels.append(dict(kernel, source=(directory / file).read_text() if file else ""))
    data["kernels"] = kernels
    constants = {name[len(CONSTANT_PREFIX):]: array for name, array in weights.items()
                 if name.startswith(CONSTANT_PREFIX)}
    try:
        return program_from_json(data, constants)
    except ProgramFormatError as e:
        raise ArtifactError(MANIFEST, str(e)) from None


def _bindings(manifest: dict, program: Program,
              weights: dict[str, np.ndarray]) -> list[tuple[str, object]]:
    """Per program input: ("input", k) for the model's input k, or ("weight", array)."""
    bindings = manifest["bindings"]
    if len(bindings) != len(program.inputs):
        raise ArtifactError(MANIFEST, f"{len(bindings)} bindings for "
                                      f"{len(program.inputs)} program inputs")
    out: list[tuple[str, object]] = []
    for spec, binding in zip(program.inputs, bindings):
        if type(binding) is not dict:
            raise ArtifactError(MANIFEST, f"binding of {spec.name!r} is malformed")
        if binding.get("from") == "input":
            k = binding.get("index")
            if type(k) is not int or not 0 <= k < len(manifest["inputs"]):
                raise ArtifactError(MANIFEST, f"binding of {spec.name!r}: bad input index")
            want = manifest["inputs"][k]
            if want.get("shape") != list(spec.shape) or want.get("dtype") != spec.dtype:
                raise ArtifactError(MANIFEST, f"input {k} does not match program input "
                                              f"{spec.name!r}")
            out.append(("input", k))
        elif binding.get("from") == "weights":
            key = binding.get("tensor")
            array = weights.get(key) if type(key) is str else None
            if array is None:
                raise ArtifactError(WEIGHTS, f"has no tensor {key!r} (program input "
                                             f"{spec.name!r})")
            if array.shape != spec.shape or array.dtype != np.dtype(spec.dtype):
                raise ArtifactError(WEIGHTS, f"tensor {key!r} is {array.dtype}"
                                             f"{list(array.shape)}, the program takes "
                                             f"{spec.dtype}{list(spec.shape)}")
            out.append(("weight", array))
        else:
            raise ArtifactError(MANIFEST, f"binding of {spec.name!r} has unknown source "
                                          f"{binding.get('from')!r}")
    return out
