"""`neurenix-compile MODEL.py --target T [-o DIR]`: export a model file as a deployable artifact.

MODEL.py defines a module-level `model` (a `neurenix.nn.Module`) and `example_inputs` (a
Tensor or a tuple of Tensors), or a function `build()` returning both.  The command exports
the model in eval mode with `neurenix.export` (DIR is the artifact: manifest, weights and the
target's code), shows its progress per stage on stderr and a summary on stdout; `--check`
loads the artifact with `neurenix.runtime.load` and compares it with eager mode, and
`--benchmark` times both; `--dynamic-batch MAX` makes the batch size a run-time choice
from 1 to MAX, and `--check` then compares at batch 1, the example's and MAX.
docs/deploy/cli.md describes every flag.
"""
from __future__ import annotations

import argparse
import ast
import json
import pathlib
import re
import runpy
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TextIO

import numpy as np

import neurenix.runtime as runtime
from neurenix.runtime import hip_compile, nvrtc

from .compilation.arguments import flatten_outputs
from .export import TARGETS as EXPORT_TARGETS
from .export import ExportError, export
from .nn import Module
from .state import no_grad
from .tensor import Tensor

TARGETS = ("cpu", "webgpu", "opencl", "cuda", "hip")
TOOLCHAINS = {"cpu": "LLVM + cc", "cuda": "NVRTC", "hip": "hipcc",
              "opencl": "none: the OpenCL driver builds model.cl at load",
              "webgpu": "none: wgpu builds the WGSL modules at load"}
"""What compiles each target's code at export."""
DEFAULT_TOLERANCE = 1e-4
DEFAULT_RUNS = 20
WARMUP_RUNS = 3


class CliError(Exception):
    """A problem the user can fix: reported as one line on stderr, exit status 1."""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported as one line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Progress:
    """One line per stage on stderr: `  NAME ... MS  DETAIL`, the line left open while the
    stage runs; `close()` ends an open line, so an error never continues it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.stage: str | None = None
        self.started = 0.0
        self.times: dict[str, float] = {}

    def start(self, stage: str) -> None:
        """Begin `stage` (its line stays open until `done`)."""
        self.stage, self.started = stage, time.perf_counter()
        self.stream.write(f"  {stage:<10} ...")
        self.stream.flush()

    def done(self, detail: str = "", seconds: float | None = None) -> float:
        """End the current stage, showing its time (measured, or `seconds`) and `detail`."""
        if seconds is None:
            seconds = time.perf_counter() - self.started
        self.times[self.stage or ""] = seconds
        self.stream.write(f" {_ms(seconds):>9}" + (f"  {detail}" if detail else "") + "\n")
        self.stream.flush()
        self.stage = None
        return seconds

    def line(self, stage: str, seconds: float, detail: str) -> None:
        """A stage that ended already (its time measured by the compiler)."""
        self.start(stage)
        self.done(detail, seconds)

    def close(self) -> None:
        """End an open stage line (before an error is printed)."""
        if self.stage is not None:
            self.stream.write(" failed\n")
            self.stream.flush()
            self.stage = None


# ---- the model file -------------------------------------------------------------------------


def load_model_file(path: pathlib.Path) -> tuple[Module, tuple[Tensor, ...], int]:
    """The file's model, its example inputs, and the line that defines them (the `model =`
    assignment, or build()'s return)."""
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    try:
        namespace = runpy.run_path(str(path), run_name="__neurenix_model__")
    except Exception as e:  # noqa: BLE001 - the user's file raised: report it, one line
        raise CliError(f"{path}: running the file raised {_describe(e)}") from e
    if callable(namespace.get("build")):
        try:
            built = namespace["build"]()
        except Exception as e:  # noqa: BLE001
            raise CliError(f"{path}: build() raised {_describe(e)}") from e
        if not (isinstance(built, tuple) and len(built) == 2):
            raise CliError(f"{path}: build() must return (model, example_inputs), got "
                           f"{type(built).__name__}")
        model, inputs = built
    elif "model" in namespace:
        model, inputs = namespace["model"], namespace.get("example_inputs")
    else:
        raise CliError(f"{path}: define a module-level `model` and `example_inputs`, or a "
                       "function build() returning both")
    if not isinstance(model, Module):
        raise CliError(f"{path}: `model` must be a neurenix.nn.Module, got "
                       f"{type(model).__name__}")
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)) or not all(isinstance(t, Tensor) for t in inputs):
        raise CliError(f"{path}: `example_inputs` must be a Tensor or a tuple of Tensors")
    return model, tuple(inputs), _definition_line(path, callable(namespace.get("build")))


def _definition_line(path: pathlib.Path, built: bool) -> int:
    """The line of build()'s last `return`, or of the last top-level `model = ...` (1 when
    neither is found)."""
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return 1
    line = 1
    for node in tree.body:
        if built and isinstance(node, ast.FunctionDef) and node.name == "build":
            returns = [n.lineno for n in ast.walk(node) if isinstance(n, ast.Return)]
            line = max(returns, default=node.lineno)
        elif not built and isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "model" for t in targets):
                line = node.lineno
    return line


def _in_model_file(path: pathlib.Path, line: int, fn: Callable[[], Any]) -> Any:
    """`fn()`, called from a frame that belongs to `path:line`.  A traced operation is
    annotated with the innermost frame outside Neurenix (`call_site.user_source`): the
    model's own `forward` where the file has one, else (a `Sequential` of Neurenix layers)
    this frame, the line that defines the model, rather than the command's launcher."""
    code = compile("\n" * (line - 1) + "result = fn()\n", str(path), "exec")
    scope: dict[str, Any] = {"fn": fn}
    exec(code, scope)
    return scope["result"]


def parse_shape(text: str) -> tuple[int, ...]:
    """`32x10` -> (32, 10); `scalar` -> () (argparse type of --input-shape)."""
    if text == "scalar":
        return ()
    if not re.fullmatch(r"[1-9][0-9]*(x[1-9][0-9]*)*", text):
        raise argparse.ArgumentTypeError(f"invalid shape {text!r}: write positive sizes "
                                         f"joined by 'x', e.g. 32x10 (or 'scalar')")
    return tuple(int(n) for n in text.split("x"))


def reshaped_inputs(inputs: tuple[Tensor, ...], shapes: list[tuple[int, ...]],
                    seed: int = 0) -> tuple[Tensor, ...]:
    """Random inputs of `shapes` (one per example input) and the examples' dtypes: normal
    floats; integers within the example's range (indices stay valid); random booleans."""
    if len(shapes) != len(inputs):
        raise CliError(f"--input-shape: the model takes {len(inputs)} example input(s), "
                       f"got {len(shapes)} shape(s)")
    rng = np.random.default_rng(seed)
    out = []
    for example, shape in zip(inputs, shapes):
        values = example.numpy()
        if values.dtype == np.bool_:
            array = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(values.dtype, np.integer):
            low, high = (int(values.min()), int(values.max())) if values.size else (0, 1)
            array = rng.integers(low, high + 1, size=shape).astype(values.dtype)
        else:
            array = rng.standard_normal(shape).astype(values.dtype)
        out.append(Tensor(array))
    return tuple(out)


# ---- toolchains and devices -----------------------------------------------------------------


def require_target(target: str, runs: bool) -> None:
    """Fail early, in one line, when the target's toolchain is absent, or (`runs`: --check,
    --benchmark) when this machine has no device of its kind."""
    if target == "cpu" and not (shutil.which("cc") or shutil.which("gcc")):
        raise CliError("--target cpu links model.so with a C compiler, and none is installed "
                       "(install gcc)")
    if target == "cuda":
        try:
            nvrtc.version()
        except nvrtc.NVRTCError as e:
            raise CliError(f"--target cuda compiles PTX with NVRTC: {e}") from e
    if target == "hip":
        try:
            hip_compile.hipcc()
        except hip_compile.HIPCompileError as e:
            raise CliError(f"--target hip compiles a code object with hipcc: {e}") from e
    if runs:
        kind = EXPORT_TARGETS[target][1]
        module = runtime.backend_module(kind)
        if not module.available():
            reason = getattr(module, "unavailable_reason", lambda: "")() or "not available"
            raise CliError(f"--check and --benchmark run the artifact, and this machine has "
                           f"no {kind} device: {_first_line(reason)}")


# ---- the command ----------------------------------------------------------------------------


def run(args: argparse.Namespace, progress: Progress) -> int:
    """Export, summarise, and check or benchmark as `args` ask; the exit status."""
    path = pathlib.Path(args.model)
    out = pathlib.Path(args.output)
    require_target(args.target, args.check or args.benchmark)
    progress.stream.write(f"neurenix-compile {path} --target {args.target} -> {out}\n")
    progress.start("load")
    model, inputs, line = load_model_file(path)
    model.eval()
    if args.input_shape:
        inputs = reshaped_inputs(inputs, args.input_shape)
    progress.done(f"{type(model).__name__}({', '.join(_spec(x) for x in inputs)})")
    started = time.perf_counter()
    info: dict[str, Any] = {}
    directory = _export(model, inputs, args.target, out, path, line, progress, info,
                        args.verbose, args.cpu, args.dynamic_batch)
    manifest = json.loads((directory / "manifest.json").read_text())
    sizes = list(manifest.get("files", {}))
    progress.done(_count(len(sizes) + 1, "file"))
    info["seconds"] = time.perf_counter() - started
    _summary(sys.stdout, directory, manifest, info, args.verbose)
    if not (args.check or args.benchmark):
        return 0
    progress.start("runtime")
    loaded = runtime.load(directory)
    progress.done(f"runtime.load({str(directory)!r}) on {loaded.target}")
    arrays = [x.numpy() for x in inputs]
    status = 0
    if args.check:
        progress.start("check")
        worst = 0.0
        for batch_inputs in _check_inputs(inputs, args.dynamic_batch):
            got = loaded([x.numpy() for x in batch_inputs])
            want = _eager(model, batch_inputs)
            worst = max(worst, max_relative_difference(got, want))
        progress.done("" if args.dynamic_batch is None else
                      f"batch sizes {', '.join(str(b) for b in _check_batches(inputs, args))}")
        ok = worst <= args.tolerance
        print(f"check: max relative difference vs eager {worst:.3g} "
              f"(tolerance {args.tolerance:g}): {'ok' if ok else 'FAILED'}")
        if not ok:
            progress.stream.write(f"neurenix-compile: error: the {args.target} artifact differs "
                                  f"from eager: max relative difference {worst:.3g} > "
                                  f"{args.tolerance:g}\n")
            status = 1
    if args.benchmark:
        progress.start("benchmark")
        artifact_ms = median_ms(lambda: loaded(arrays), args.runs)
        eager_ms = median_ms(lambda: _eager(model, inputs), args.runs)
        progress.done(f"{args.runs} runs each")
        print(f"benchmark: artifact {artifact_ms:.3f} ms, eager {eager_ms:.3f} ms per run "
              f"(median of {args.runs}; {eager_ms / max(artifact_ms, 1e-9):.2f}x)")
    return status


def _check_batches(inputs: tuple[Tensor, ...], args: argparse.Namespace) -> list[int]:
    """The batch sizes `--check` runs a dynamic-batch artifact at: 1, the example's, MAX."""
    return sorted({1, inputs[0].shape[0] if inputs and inputs[0].ndim else 1,
                   args.dynamic_batch})


def _check_inputs(inputs: tuple[Tensor, ...],
                  max_batch: int | None) -> list[tuple[Tensor, ...]]:
    """The inputs `--check` compares with eager mode: the example's; with a dynamic batch
    also random inputs of batch size 1 and `max_batch` (the example's other dimensions)."""
    out = [inputs]
    if max_batch is None or not inputs or not all(x.ndim for x in inputs):
        return out
    for batch in sorted({1, max_batch} - {inputs[0].shape[0]}):
        out.append(reshaped_inputs(inputs, [(batch, *x.shape[1:]) for x in inputs], batch))
    return out


def _export(model: Module, inputs: tuple[Tensor, ...], target: str, out: pathlib.Path,
            path: pathlib.Path, line: int, progress: Progress, info: dict,
            verbose: bool, cpu: str = "host", dynamic_batch: int | None = None) -> pathlib.Path:
    """`neurenix.export`, traced from the model file's frame, showing each stage as it ends;
    `info` collects the stats and the build report."""

    def stage_ended(stage: str, data: dict) -> None:
        if stage == "trace":
            stats = data["stats"]
            info["stats"] = stats
            passes = stats.get("passes", [])
            pass_seconds = sum(p[3] for p in passes)
            after = passes[-1][2] if passes else stats.get("ops_traced", 0)
            progress.done(f"{stats.get('ops_traced', 0)} ops",
                          max(time.perf_counter() - progress.started - pass_seconds, 0.0))
            progress.line("passes", pass_seconds, f"{after} ops")
            if verbose:
                for name, before, nodes, seconds in passes:
                    progress.stream.write(f"    {name:<22} {before:>5} -> {nodes:<5} "
                                          f"{_ms(seconds)}\n")
            progress.start("codegen")
        elif stage == "codegen":
            info["build"] = data["build"]
            progress.done(_count(data["build"].get("kernels", 0), "kernel"))
            progress.start("toolchain")
        elif stage == "toolchain":
            progress.done(TOOLCHAINS[target])
            progress.start("write")

    progress.start("trace")
    try:
        return _in_model_file(path, line, lambda: export(model, inputs, target, out, cpu=cpu,
                                                         progress=stage_ended,
                                                         dynamic_batch=dynamic_batch))
    except Exception as e:
        if progress.stage == "trace" and not isinstance(e, ExportError):
            where = _frame_in(e, path)
            raise CliError(f"the model's forward raised {_describe(e)}"
                           + (f" (at {where})" if where else "")) from e
        raise


def _summary(stream: TextIO, directory: pathlib.Path, manifest: dict,
             info: dict, verbose: bool) -> None:
    """The table: ops before/after the passes, kernels, memory, files and compile time."""
    stats, build = info.get("stats", {}), info.get("build", {})
    passes = stats.get("passes", [])
    after = passes[-1][2] if passes else stats.get("ops_traced", 0)
    memory = manifest.get("memory", {})
    dynamic = manifest.get("dynamic_batch")
    rows = [
        ("artifact", f"{directory} (target {manifest.get('target')}, "
                     f"{manifest.get('compiler_target')} code)"),
        *([("batch", f"any size 1..{dynamic['max']} at run time (one program for "
                     f"2..{dynamic['max']}, one for 1)")] if dynamic else []),
        ("ops", f"{stats.get('ops_traced', 0)} traced, {after} after passes"),
        ("kernels", str(len(manifest.get("kernels", [])))),
        ("memory", f"{_bytes(memory.get('planned', 0))} planned, "
                   f"{_bytes(memory.get('naive', 0))} naive, "
                   f"{_bytes(memory.get('lower_bound', 0))} lower bound "
                   f"(arena {_bytes(memory.get('arena_bytes', 0))})"),
    ]
    files = _file_rows(directory, manifest, verbose)
    total = sum(size for _, size in files)
    rows.append(("files", f"{len(manifest.get('files', {})) + 1} files, {_bytes(total)}"))
    rows += [("", f"{name:<28} {_bytes(size):>10}") for name, size in files]
    rows.append(("compile time", f"{_ms(info.get('seconds', 0.0))}"
                 + (f" (codegen stages {_ms(sum(build.get('stages', {}).values()))})"
                    if build.get("stages") else "")))
    if verbose:
        for kernel in manifest.get("program", {}).get("kernels", []):
            rows.append(("kernel", f"{kernel.get('name')}: {kernel.get('comment', '')}"))
    stream.write("summary\n")
    for label, value in rows:
        stream.write(f"  {label:<13} {value}\n")
    stream.flush()


def _file_rows(directory: pathlib.Path, manifest: dict, verbose: bool) -> list[tuple[str, int]]:
    """(name, bytes) of the artifact's files; files in a folder as one row unless `verbose`."""
    sizes = {name: int(entry["bytes"]) for name, entry in manifest.get("files", {}).items()}
    sizes["manifest.json"] = (directory / "manifest.json").stat().st_size
    rows: dict[str, int] = {}
    counts: dict[str, int] = {}
    for name, size in sorted(sizes.items()):
        key = name if verbose or "/" not in name else name.split("/", 1)[0] + "/"
        rows[key] = rows.get(key, 0) + size
        counts[key] = counts.get(key, 0) + 1
    return [(f"{key} ({counts[key]} files)" if key.endswith("/") else key, size)
            for key, size in rows.items()]


def _eager(model: Module, inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
    """The model's outputs in eager mode, as arrays (in the artifact's output order)."""
    with no_grad():
        outputs, _ = flatten_outputs(model(*inputs))
    return [t.numpy() for t in outputs]


def max_relative_difference(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """max |got - want| / max |want| over the outputs (NaN where both have NaN is equal;
    another count or shape of outputs is infinitely different)."""
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for g, w in zip(got, want):
        g = np.asarray(g, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        if g.shape != w.shape:
            return float("inf")
        if not w.size:
            continue
        both_nan = np.isnan(g) & np.isnan(w)
        difference = np.where(both_nan, 0.0, np.abs(g - w))
        if np.isnan(difference).any():
            return float("inf")
        scale = float(np.max(np.where(np.isfinite(w), np.abs(w), 0.0)))
        worst = max(worst, float(np.max(difference)) / max(scale, 1e-30))
    return worst


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    """The median wall time of `fn()` in milliseconds, over `runs` runs after a warm-up."""
    for _ in range(WARMUP_RUNS):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# ---- formatting -----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.1f} ms"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _spec(x: Tensor) -> str:
    return f"{x.dtype.name}[{','.join(str(n) for n in x.shape)}]"


def _first_line(text: str) -> str:
    lines = text.strip().splitlines() or [""]
    return lines[0] + (" [... --verbose shows the rest]" if len(lines) > 1 else "")


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _frame_in(e: BaseException, path: pathlib.Path) -> str | None:
    """`file:line` of the innermost frame of `e`'s traceback in the model file."""
    where = None
    target = str(path.resolve())
    for frame in traceback.extract_tb(e.__traceback__):
        if str(pathlib.Path(frame.filename).resolve()) == target and frame.name != "<module>":
            where = f"{path}:{frame.lineno}"
    return where


def make_parser() -> Parser:
    """The command's arguments (docs/deploy/cli.md)."""
    parser = Parser(prog="neurenix-compile",
                    description="Export MODEL.py's model as a deployable artifact "
                                "(neurenix.export), optionally checking and timing it.")
    parser.add_argument("model", help="a Python file defining `model` and `example_inputs`, "
                                      "or build() returning both")
    parser.add_argument("--target", default="cpu", choices=TARGETS,
                        help="the device kind to export for (default: cpu)")
    parser.add_argument("-o", "--output", default="neurenix-out",
                        help="the artifact's directory (default: neurenix-out); an earlier "
                             "artifact there is replaced")
    parser.add_argument("--input-shape", nargs="+", action="extend", type=parse_shape,
                        metavar="AxB", help="the inputs' shapes, one per example input "
                                            "(random values of its dtype)")
    parser.add_argument("--check", action="store_true",
                        help="load the artifact with neurenix.runtime.load and compare it "
                             "with eager mode (exit 1 beyond --tolerance)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"--check's largest max relative difference "
                             f"(default {DEFAULT_TOLERANCE:g})")
    parser.add_argument("--benchmark", action="store_true",
                        help="time the loaded artifact and eager mode (median ms per run)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help=f"--benchmark's timed runs each (default {DEFAULT_RUNS})")
    parser.add_argument("--cpu", default="host", metavar="CPU",
                        help="cpu target: the CPU model.so is compiled for: host (default: "
                             "this machine's), generic (any CPU of its architecture) or an "
                             "x86-64 level (x86-64-v2, x86-64-v3, x86-64-v4)")
    parser.add_argument("--dynamic-batch", type=int, metavar="MAX",
                        help="the batch size (every input's leading dimension) is chosen "
                             "at run time, from 1 to MAX (every target)")
    parser.add_argument("--verbose", action="store_true",
                        help="per-pass and per-kernel detail; a traceback with an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The neurenix-compile command; its exit status (0 ok, 1 error or failed check, 2
    usage)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.dynamic_batch is not None and args.dynamic_batch < 2:
        parser.error("--dynamic-batch must be at least 2 (the largest batch size)")
    progress = Progress(sys.stderr)
    try:
        return run(args, progress)
    except KeyboardInterrupt:
        progress.close()
        print("neurenix-compile: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line; the traceback with --verbose
        progress.close()
        if args.verbose:
            traceback.print_exc()
        message = str(e) if isinstance(e, (CliError, ExportError)) else _describe(e)
        print(f"neurenix-compile: error: {_first_line(message)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
