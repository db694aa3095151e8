"""`neurenix-compile MODEL.py [--target cpu] [-o DIR] [--check]`: compile a model file.

MODEL.py defines a module-level `model` (a `neurenix.nn.Module`) and `example_inputs` (a
tuple of Tensors), or a function `build()` returning both.  The command traces and compiles
the model for the example inputs, prints progress and a summary, writes the graph and the
generated code to DIR, and with --check compares the compiled result with eager mode.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import runpy
import sys
import time
import traceback
from typing import Any

import numpy as np

from neurenix.compiler.targets import get_target

from .compilation.arguments import flatten_outputs
from .compilation.compiled import compile as compile_model
from .nn import Module
from .state import no_grad
from .tensor import Tensor

TARGETS = ("cpu",)


class CliError(Exception):
    """A problem with the user's input: reported as one line, exit status 1."""


def _load(path: pathlib.Path) -> tuple[Any, tuple]:
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    namespace = runpy.run_path(str(path), run_name="__neurenix_model__")
    if "build" in namespace and callable(namespace["build"]):
        built = namespace["build"]()
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
        raise CliError(f"{path}: `example_inputs` must be a tuple of Tensors")
    return model, tuple(inputs)


def _step(message: str) -> float:
    print(f"  {message} ...", end="", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f" {1e3 * (time.perf_counter() - start):.0f} ms", flush=True)


def run(args: argparse.Namespace) -> int:
    path = pathlib.Path(args.model)
    print(f"neurenix-compile {path} --target {args.target}")
    t = _step("loading the model")
    model, inputs = _load(path)
    model.eval()
    _done(t)
    t = _step("tracing, optimising and generating code")
    compiled = compile_model(model)
    try:
        with no_grad():
            outputs = compiled(*inputs)
    except Exception as e:  # noqa: BLE001 - the user's forward raised: report it, one line
        raise CliError(f"the model's forward raised {type(e).__name__}: {e}") from e
    _done(t)
    stats = compiled.stats()
    out_dir = pathlib.Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "graph.txt").write_text(str(compiled.graph) + "\n")
    suffix = get_target(compiled.backend).source_suffix
    (out_dir / f"forward{suffix}").write_text(compiled.source() + "\n")
    manifest = {
        "format": 1, "target": args.target, "backend": compiled.backend,
        "inputs": [{"shape": list(x.shape), "dtype": x.dtype.name} for x in inputs],
        "stats": stats,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    _summary(stats)
    print(f"  wrote {out_dir}/graph.txt, forward{suffix}, manifest.json")
    if args.check:
        with no_grad():
            expected = model(*inputs)
        got, _ = flatten_outputs(outputs)
        want, _ = flatten_outputs(expected)
        worst = max((float(np.max(np.abs(g.numpy().astype(np.float64) - w.numpy())))
                     for g, w in zip(got, want) if g.numel()), default=0.0)
        ok = worst <= 1e-4
        print(f"  check vs eager: max abs error {worst:.3g} {'ok' if ok else 'FAILED'}")
        if not ok:
            return 1
    return 0


def _summary(stats: dict) -> None:
    passes = stats.get("passes", [])
    after = passes[-1][2] if passes else stats.get("ops_traced", 0)
    print(f"  ops: {stats.get('ops_traced', 0)} traced, {after} after passes; "
          f"kernels: {stats.get('kernels', 0)}")
    if stats.get("bytes_naive"):
        print(f"  memory: {stats['bytes_planned']} B planned, {stats['bytes_naive']} B naive, "
              f"{stats['bytes_lower_bound']} B lower bound")
    total = sum(stats.get("seconds", {}).values())
    print(f"  compile time: {total * 1e3:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neurenix-compile", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a Python file defining `model` and `example_inputs`")
    parser.add_argument("--target", default="cpu", choices=TARGETS)
    parser.add_argument("-o", "--output", default="neurenix-out", help="output directory")
    parser.add_argument("--check", action="store_true", help="compare with eager mode")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CliError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"neurenix-compile: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one clear line unless --verbose
        if args.verbose:
            traceback.print_exc()
        print(f"neurenix-compile: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
