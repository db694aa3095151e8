"""`neurenix.runtime.load(DIR)`: load an exported artifact and run it, without the compiler.

The loader reads `manifest.json`, refuses an artifact it cannot trust or run here (a newer
format version, a missing file, a file whose size or SHA-256 differs from the manifest, a
target this machine has no device for, CPU code for another architecture or for CPU features
this one lacks), rebuilds the `Program` from the manifest and the files, and loads it with the
target's runtime module: the CPU's `model.so` is loaded as it is (no LLVM compile), GPU
programs are built from their sources by the device's driver.  Imports: runtime modules only.

A dynamic-batch artifact (`export(..., dynamic_batch=MAX)`, manifest "dynamic_batch") holds
two programs: one whose inputs' leading dimension is the symbol `batch` (batches 2..MAX) and
a static one for batch 1 (on the CPU both in its `model.so`; a GPU artifact has the batch-1
program's code in its own files, `dynamic_batch.batch1.sources`); `LoadedModel.run` picks one
per call from the inputs' shapes.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from types import ModuleType

import numpy as np

from .artifact import (
    BATCH1_PREFIX,
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
from .sizes import Poly, Size, bind_sizes, size_from_json, size_value

CHECK_ERRORS = {"IndexError": IndexError, "ValueError": ValueError,
                "RuntimeError": RuntimeError, "ZeroDivisionError": ZeroDivisionError}
"""The exception types a failed value check of an artifact raises (any other: RuntimeError)."""


class LoadedModel:
    """An exported model loaded for its device: `run(inputs) -> outputs` on NumPy arrays.

    `inputs` and `outputs` are the model's `TensorSpec`s (the weights are loaded already);
    `manifest` is the artifact's manifest, `program` the program that runs.  A training
    artifact (`training`) keeps its state between runs: each successful run continues from
    the values the previous one left (`state_dict()` reads them, `steps` counts the runs).
    A dynamic-batch artifact (`max_batch`: its largest batch size, else None) has inputs and
    outputs whose shapes hold the symbol `batch`; `batch1` is its batch-1 program, executable
    and bindings (`run` picks it for batch 1).
    """

    def __init__(self, directory: pathlib.Path, manifest: dict, program: Program,
                 executable: object, bindings: list[tuple[str, object]],
                 buffer: type | None = None,
                 batch1: tuple[Program, object, list[tuple[str, object]]] | None = None
                 ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.program = program
        self.target = manifest["target"]
        self.executable = executable
        self.inputs = _specs(manifest, "inputs")
        self.outputs = _specs(manifest, "outputs")
        self.training = bool(manifest.get("training"))
        self.steps = 0
        dynamic = manifest.get("dynamic_batch")
        self.max_batch: int | None = dynamic["max"] if dynamic else None
        # a device runtime's Buffer class: weights and state are uploaded once and stay on
        # the device (a run uploads its inputs only); None on the CPU (host arrays)
        self._buffer = buffer
        upload = buffer.from_host if buffer is not None else (lambda a: np.array(a, copy=True))
        self._state = {ref[0]: upload(ref[1]) for kind, ref in bindings if kind == "state"}
        self._main = _Runner(executable, self._uploaded(bindings, upload),
                             _checks(manifest, program))
        self._batch1 = None
        if batch1 is not None:
            program1, executable1, bindings1 = batch1
            self._batch1 = _Runner(executable1, self._uploaded(bindings1, upload),
                                   _checks(dynamic["batch1"], program1))

    def _uploaded(self, bindings: list[tuple[str, object]],
                  upload: Callable) -> list[tuple[str, object]]:
        """The bindings, fixed weights uploaded (a weight two programs read: once)."""
        out = []
        for kind, ref in bindings:
            if kind == "weight_named":
                seen = getattr(self, "_main", None)
                shared = [r for k, r in (seen.bindings if seen else ())
                          if k == "weight_named" and r[0] == ref[0]]
                ref = shared[0] if shared else (ref[0], upload(ref[1]))
            out.append((kind, ref))
        return out

    @property
    def _bindings(self) -> list[tuple[str, object]]:
        return self._main.bindings

    def _checked_inputs(self, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], int | None]:
        """The inputs as C-contiguous arrays, checked against `inputs`' specs, and the batch
        size of a dynamic-batch artifact's call (None for fixed shapes)."""
        if len(inputs) != len(self.inputs):
            raise ValueError(f"exported model: expected {len(self.inputs)} inputs "
                             f"({', '.join(t.name for t in self.inputs)}), got {len(inputs)}")
        arrays = [np.asarray(x) for x in inputs]
        for spec, x in zip(self.inputs, arrays):
            if x.dtype != np.dtype(spec.dtype) or (x.shape != spec.shape and not spec.symbolic):
                raise ValueError(f"exported model: input {spec.name!r} expects "
                                 f"{spec.dtype}{_shape_text(spec.shape)}, got "
                                 f"{x.dtype}{list(x.shape)}")
        batch = None
        if self.max_batch is not None:
            try:
                env = bind_sizes([t.shape for t in self.inputs], [x.shape for x in arrays])
            except ValueError as e:
                raise ValueError(f"exported model: the inputs' shapes do not fit "
                                 f"{', '.join(_shape_text(t.shape) for t in self.inputs)} "
                                 f"({e})") from None
            batch = env.get("batch")
            if batch is None or not 1 <= batch <= self.max_batch:
                raise ValueError(f"exported model: batch size {batch} is outside "
                                 f"1..{self.max_batch} (the artifact was exported with "
                                 f"dynamic_batch={self.max_batch})")
        return [np.asarray(x, order="C") for x in arrays], batch

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The model's outputs for `inputs` (one array per input, of its shape and dtype;
        of a dynamic-batch artifact, any batch size from 1 to `max_batch`).  A value check
        that fails raises the error eager code raises (and commits nothing)."""
        arrays, batch = self._checked_inputs(list(inputs))
        runner = self._batch1 if batch == 1 and self._batch1 is not None else self._main
        host = self._buffer is None
        upload = (lambda a: a) if host else self._buffer.from_host
        args = []
        for kind, ref in runner.bindings:
            if kind == "input":
                args.append(upload(arrays[ref]))
            elif kind == "state":
                args.append(self._state[ref[0]])
            elif kind == "seed":
                args.append(upload(np.asarray(ref + self.steps, dtype=np.int64)))
            else:
                args.append(ref[1])
        executable = runner.executable
        results = list(executable.run(args) if host else executable.run_device(args))
        read = (lambda r: r) if host else (lambda r: r.to_host())
        n = len(self.outputs)
        checked = {j: read(results[j]) for check in runner.checks for j in check.reads}
        for check in runner.checks:
            check(checked)
        for kind, ref in runner.bindings:
            if kind == "state":  # a fresh buffer of the run's: kept as it is
                key, _, output = ref
                self._state[key] = results[output]
        self.steps += 1
        return [np.array(r, copy=True) if host and self.training else read(r)
                for r in results[:n]]

    __call__ = run

    def state_dict(self) -> dict[str, np.ndarray]:
        """The current value of every tensor of the weights file (the state a training
        artifact updates included), by its name there; copies."""
        read = ((lambda v: np.array(v, copy=True)) if self._buffer is None
                else (lambda v: v.to_host()))
        out = {ref[0]: read(ref[1]) for kind, ref in self._bindings if kind == "weight_named"}
        out.update({key: read(value) for key, value in self._state.items()})
        return out

    def __repr__(self) -> str:
        return (f"LoadedModel({str(self.directory)!r}, target={self.target!r}, "
                f"inputs={[t.name for t in self.inputs]})")


class _Runner:
    """One program of a loaded artifact: its executable, bindings and value checks."""

    def __init__(self, executable: object, bindings: list[tuple[str, object]],
                 checks: list[_RangeCheck]) -> None:
        self.executable = executable
        self.bindings = bindings
        self.checks = checks


def _specs(manifest: dict, field: str) -> list[TensorSpec]:
    """The manifest's model inputs or outputs (sizes: ints, or polynomials in the batch)."""
    try:
        return [TensorSpec(t["name"], tuple(size_from_json(d) for d in t["shape"]),
                           t["dtype"]) for t in manifest[field]]
    except (TypeError, KeyError, ValueError) as e:
        raise ArtifactError(MANIFEST, f"field {field!r} is malformed ({e})") from None


def _shape_text(shape: tuple[Size, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _checks(manifest: dict, program: Program) -> list[_RangeCheck]:
    """The manifest's value checks (docs/deploy/README.md), each a function of a run's
    program outputs that raises the error eager code raises."""
    checks = manifest.get("checks", [])
    if type(checks) is not list:
        raise ArtifactError(MANIFEST, "field 'checks' is not a list")
    out = []
    for check in checks:
        if type(check) is not dict or check.get("kind") != "range":
            raise ArtifactError(MANIFEST, f"check {check!r} is not a range check")
        lo, hi = check.get("lo"), check.get("hi")
        if not all(type(j) is int and 0 <= j < len(program.outputs) for j in (lo, hi)):
            raise ArtifactError(MANIFEST, f"check {check!r} reads no program output")
        low, high = check.get("low"), check.get("high")
        if not all(type(v) in (int, float) for v in (low, high)) or \
                type(check.get("message")) is not str:
            raise ArtifactError(MANIFEST, f"check {check!r} is malformed")
        error = CHECK_ERRORS.get(check.get("error"), RuntimeError)
        out.append(_RangeCheck(lo, hi, low, high, bool(check.get("high_inclusive")),
                               error, check["message"]))
    return out


class _RangeCheck:
    """One range check of the manifest: `check(values)` raises on the program outputs
    `reads` (values: output index -> host array)."""

    def __init__(self, lo: int, hi: int, low: float, high: float, inclusive: bool,
                 error: type, message: str) -> None:
        self.reads = (lo, hi)
        self.low, self.high, self.inclusive = low, high, inclusive
        self.error, self.message = error, message

    def __call__(self, values: dict[int, np.ndarray]) -> None:
        lo, hi = self.reads
        smallest, largest = np.asarray(values[lo]).item(), np.asarray(values[hi]).item()
        if smallest < self.low:
            raise self.error(self.message.replace("{}", str(smallest)))
        if largest > self.high or (largest == self.high and not self.inclusive):
            raise self.error(self.message.replace("{}", str(largest)))


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
    dynamic = _dynamic_batch(manifest, program)
    batch1 = None
    if dynamic is not None:
        program1 = _program(directory, manifest, weights, dynamic["batch1"], BATCH1_PREFIX)
        bindings1 = _bindings(manifest, program1, weights, dynamic["batch1"]["bindings"],
                              {dynamic["symbol"]: 1})
        batch1 = (program1, bindings1)
    runtime = backend_module(target)
    buffer = None
    try:
        if target == "cpu":
            library = (directory / binaries["library"]).read_bytes()
            executables = []
            for p in [program] + ([batch1[0]] if batch1 else []):
                runtime.prepare(p, None)
                executables.append(runtime.Executable(p, library=library))
                if getattr(executables[-1], "loader", "") != "shared library":
                    raise ArtifactError(binaries["library"], "the shared library does not "
                                                             "load here")
            executable = executables[0]
        else:
            executables = [runtime.Executable(p)
                           for p in [program] + ([batch1[0]] if batch1 else [])]
            executable = executables[0]
            buffer = runtime.Buffer
    except ArtifactError:
        raise
    except Exception as e:
        raise ArtifactError(manifest["sources"].get("program", MANIFEST),
                            f"the {target} runtime cannot load the program: "
                            f"{type(e).__name__}: {e}") from e
    return LoadedModel(directory, manifest, program, executable, bindings, buffer,
                       (batch1[0], executables[1], batch1[1]) if batch1 else None)


def _dynamic_batch(manifest: dict, program: Program) -> dict | None:
    """The manifest's "dynamic_batch" section after its structural checks (None when the
    artifact takes fixed shapes)."""
    dynamic = manifest.get("dynamic_batch")
    if dynamic is None:
        return None
    if (type(dynamic) is not dict or dynamic.get("symbol") != "batch"
            or type(dynamic.get("max")) is not int or dynamic["max"] < 2
            or type(dynamic.get("batch1")) is not dict
            or type(dynamic["batch1"].get("program")) is not dict
            or type(dynamic["batch1"].get("bindings")) is not list
            or type(dynamic["batch1"].get("checks", [])) is not list):
        raise ArtifactError(MANIFEST, "field 'dynamic_batch' is malformed")
    sources = dynamic["batch1"].get("sources")
    if manifest["target"] != "cpu" and (type(sources) is not dict
                                        or type(sources.get("program")) is not str):
        raise ArtifactError(MANIFEST, "field 'dynamic_batch' names no source of the batch-1 "
                                      "program")
    if tuple(program.symbols) != ("batch",):
        raise ArtifactError(MANIFEST, f"a dynamic-batch program has the symbols "
                                      f"{list(program.symbols)}, expected ['batch']")
    for spec in _specs(manifest, "inputs"):
        lead = spec.shape[0] if spec.shape else None
        if not (isinstance(lead, Poly) and lead.terms == ((("batch",), 1),)):
            raise ArtifactError(MANIFEST, f"input {spec.name!r}'s leading dimension is not "
                                          f"the batch size")
    return dynamic


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


def _program(directory: pathlib.Path, manifest: dict, weights: dict[str, np.ndarray],
             section: dict | None = None, prefix: str = CONSTANT_PREFIX) -> Program:
    """The program the manifest describes (`section["program"]`: another of its programs,
    whose constants the weights file holds under `prefix`), its sources read from their
    files."""
    data = dict((section or manifest)["program"])
    sources = (section or {}).get("sources", manifest["sources"])
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
    constants = {name[len(prefix):]: array for name, array in weights.items()
                 if name.startswith(prefix)}
    try:
        return program_from_json(data, constants)
    except ProgramFormatError as e:
        raise ArtifactError(MANIFEST, str(e)) from None


def _bindings(manifest: dict, program: Program, weights: dict[str, np.ndarray],
              bindings: list | None = None,
              sizes: dict[str, int] | None = None) -> list[tuple[str, object]]:
    """Per program input: ("input", k) for the model's input k, ("weight_named", (key,
    array)) for a fixed tensor of the weights file, ("state", (key, initial array, program
    output)) for state a run updates, ("seed", initial seed).  `bindings`: another program's
    (default: the manifest's), whose inputs are the model's at the batch size `sizes`."""
    bindings = manifest["bindings"] if bindings is None else bindings
    specs = _specs(manifest, "inputs")
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
            want = specs[k]
            shape = want.shape if sizes is None else tuple(size_value(d, sizes)
                                                           for d in want.shape)
            if shape != tuple(spec.shape) or want.dtype != spec.dtype:
                raise ArtifactError(MANIFEST, f"input {k} does not match program input "
                                              f"{spec.name!r}")
            out.append(("input", k))
        elif binding.get("from") == "seed":
            seed = binding.get("seed")
            if type(seed) is not int or spec.shape != () or spec.dtype != "int64":
                raise ArtifactError(MANIFEST, f"binding of {spec.name!r}: a seed is a 0-d "
                                              f"int64 with an integer initial value")
            out.append(("seed", seed))
        elif binding.get("from") in ("weights", "state"):
            key = binding.get("tensor")
            array = weights.get(key) if type(key) is str else None
            if array is None:
                raise ArtifactError(WEIGHTS, f"has no tensor {key!r} (program input "
                                             f"{spec.name!r})")
            if array.shape != spec.shape or array.dtype != np.dtype(spec.dtype):
                raise ArtifactError(WEIGHTS, f"tensor {key!r} is {array.dtype}"
                                             f"{list(array.shape)}, the program takes "
                                             f"{spec.dtype}{list(spec.shape)}")
            if binding["from"] == "weights":
                out.append(("weight_named", (key, array)))
                continue
            j = binding.get("output")
            if type(j) is not int or not len(manifest["outputs"]) <= j < len(program.outputs):
                raise ArtifactError(MANIFEST, f"binding of {spec.name!r}: state output {j!r} "
                                              f"is not a program output after the model's")
            new = program.outputs[j]
            if tuple(new.shape) != spec.shape or new.dtype != spec.dtype:
                raise ArtifactError(MANIFEST, f"state {key!r}: program output {j} is "
                                              f"{new.dtype}{list(new.shape)}, the state "
                                              f"{spec.dtype}{list(spec.shape)}")
            out.append(("state", (key, array, j)))
        else:
            raise ArtifactError(MANIFEST, f"binding of {spec.name!r} has unknown source "
                                          f"{binding.get('from')!r}")
    return out
