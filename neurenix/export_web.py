"""The browser half of a WebGPU artifact (docs/deploy/browser.md).

`export(..., target="webgpu")` also writes `neurenix.js` (a dependency-free ES module that
loads the artifact with WebGPU and runs it, as `runtime/webgpu.py` does), `index.html` (a page
that runs the model on the stored example and reports the difference from the expected output
and the time per run) and `example.safetensors`: the example inputs (`input:K`) and the outputs
computed eagerly at export (`expected:K`), named in the manifest's `example` field.  The two
web files are package data under `neurenix/web/`.
"""
from __future__ import annotations

import importlib.resources
import pathlib
from typing import Any

import numpy as np

from neurenix.compiler import evaluate
from neurenix.runtime.artifact import write_safetensors
from neurenix.runtime.program import Program

from .state import no_grad
from .tensor import Tensor
from .version import __version__

WEB_FILES = ("neurenix.js", "index.html")
EXAMPLE = "example.safetensors"


def web_file(name: str) -> str:
    """The text of one of the web files shipped with Neurenix (`neurenix/web/NAME`)."""
    return (importlib.resources.files("neurenix") / "web" / name).read_text(encoding="utf-8")


def _flatten(value: Any) -> list[Tensor] | None:
    """The tensors a function returned (a Tensor, or nested tuples/lists of them); None when
    it returned anything else."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        out: list[Tensor] = []
        for item in value:
            flat = _flatten(item)
            if flat is None:
                return None
            out += flat
        return out
    return None


def example(model_or_fn: Any, inputs: list[Tensor], program: Program,
            sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """The example inputs and the outputs computed eagerly (under no_grad): `inputs` and
    `expected`, lists of arrays (`expected` empty when the eager outputs do not match the
    program's outputs in number and shape; `sizes`: the values of a program's dynamic sizes
    in the example, its batch size)."""
    arrays = [np.array(x.numpy(), copy=True) for x in inputs]
    with no_grad():
        outputs = _flatten(model_or_fn(*inputs))
    expected: list[np.ndarray] = []
    env = dict(sizes or {})
    if outputs is not None and len(outputs) == len(program.outputs):
        expected = [np.asarray(y.numpy()).astype(spec.dtype) for y, spec in
                    zip(outputs, program.outputs)]
        if any(e.shape != spec.shape_at(env) for e, spec in zip(expected, program.outputs)):
            expected = []
    return {"inputs": arrays, "expected": expected}


def training_example(inputs: list[Tensor], plan: dict[str, Any],
                     steps: int) -> dict[str, Any]:
    """The example of an exported training step: the example inputs, and the model's outputs
    over its first `steps` runs on them (`expected_steps`, one array of shape (steps, *shape)
    per output), each run starting from the state the previous one left.  Computed by the
    reference evaluator on the exported graph, so the model itself is not trained."""
    arrays = [np.array(x.numpy(), copy=True) for x in inputs]
    graph, bindings, weights = plan["graph"], plan["bindings"], plan["weights"]
    state = {b["tensor"]: weights[b["tensor"]] for b in bindings if b["from"] == "state"}
    per_run: list[list[np.ndarray]] = []
    for run in range(steps):
        values = []
        for b in bindings:
            if b["from"] == "input":
                values.append(arrays[b["index"]])
            elif b["from"] == "seed":
                values.append(np.asarray(b["seed"] + run, dtype=np.int64))
            elif b["from"] == "state":
                values.append(state[b["tensor"]])
            else:
                values.append(weights[b["tensor"]])
        results = evaluate(graph, values)
        per_run.append([np.asarray(r) for r in results[:plan["outputs"]]])
        for b in bindings:
            if b["from"] == "state":
                state[b["tensor"]] = np.asarray(results[b["output"]])
    expected = [np.stack([outs[k] for outs in per_run]) for k in range(plan["outputs"])]
    return {"inputs": arrays, "expected": [], "expected_steps": expected}


def write(work: pathlib.Path, manifest: dict, data: dict[str, Any]) -> None:
    """Write `neurenix.js`, `index.html` and `example.safetensors` into the artifact under
    construction and describe them in the manifest (`web`, `example`)."""
    for name in WEB_FILES:
        (work / name).write_text(web_file(name), encoding="utf-8")
    names = [f"input:{k}" for k in range(len(data["inputs"]))]
    expected = [f"expected:{k}" for k in range(len(data["expected"]))]
    steps = [f"expected_steps:{k}" for k in range(len(data.get("expected_steps", [])))]
    tensors = (dict(zip(names, data["inputs"])) | dict(zip(expected, data["expected"]))
               | dict(zip(steps, data.get("expected_steps", []))))
    write_safetensors(work / EXAMPLE, tensors, metadata={"neurenix": __version__})
    manifest["web"] = {"module": "neurenix.js", "page": "index.html"}
    manifest["example"] = {"file": EXAMPLE, "inputs": names, "expected": expected}
    if steps:
        manifest["example"].update(steps=len(data["expected_steps"][0]), expected_steps=steps)
