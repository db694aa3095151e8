"""The programs the CUDA and HIP toolchain proofs compile: every graph that the parity
suite's case tables and the spec models ask the compiler to build.

Each case runs compiled on the reference target (the NumPy evaluator: no code generated),
with gradients and, for modules, also under no_grad, exactly as `check_compiled` runs it;
every graph `pipeline.build` is handed on the way (forward, backward and forward-only
programs) is recorded.  The spec models add their inference programs and their whole
compiled training steps (forward, loss, backward, optimizer) at the benchmark sizes, and the
elementwise chain and GEMM workloads theirs.  `sources(target)` then generates each graph's
program for a GPU target with kernel names unique across the corpus, so that many programs
compile as one translation unit.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import test_compile_parity as parity
from neurenix.compiler import pipeline
from neurenix.compiler.passes.manager import run_pipeline
from neurenix.compiler.targets import get_target

import neurenix as nx
from neurenix import nn

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SPEC_WORKLOADS = ("mlp_b64", "mlp_train_b64", "cnn_infer", "cnn_train", "lstm_infer",
                  "lstm_train", "eltwise", "gemm_1024")


def _cases() -> list[tuple[str, Any, list[np.ndarray], dict]]:
    """(id, function or module, inputs, check_compiled options) of every table case."""
    cases = []
    for p in parity.TENSOR_CASES:
        fn, data, options = p.values
        cases.append((p.id, parity._lib(fn)["fn"], data, {}))
    for p in parity.NO_GRAD_CASES:
        fn, data = p.values
        cases.append((p.id, parity._lib(fn)["fn"], data, {"grad": False}))
    for p in parity.FUNCTIONAL_CASES:
        fn, data, _ = p.values
        cases.append((p.id, parity._lib(fn)["fn"], data, {}))
    for p in parity.LAYER_CASES:
        make, args, kwargs, shape, _ = p.values
        mine, _ = parity._pair(make, *args, **kwargs)
        cases.append((p.id, mine, [np.round(parity._kinked(shape) * 2) / 2], {}))
    for cls, shape, kwargs in parity.BATCHNORM_CASES:
        for train in (True, False):
            mine, _, x = parity._batchnorm(cls, shape, kwargs, train)
            cases.append((f"{cls}-{shape}-{train}", mine, [x], {}))
    rng = np.random.default_rng(1)
    for cls, kwargs, _, _ in parity.RNN_CASES:
        mine, _ = parity._pair(lambda m, c=cls: getattr(m, c), parity.IN, parity.HID, **kwargs)
        shape = ((parity.BATCH, parity.SEQ, parity.IN) if kwargs.get("batch_first")
                 else (parity.SEQ, parity.BATCH, parity.IN))
        cases.append((f"{cls}-{kwargs}", mine, [rng.uniform(-1, 1, shape).astype(np.float32)],
                      {}))
    for p in parity.LOSS_CASES:
        make, data, _ = p.values
        cases.append((p.id, make(nx), data, {}))
    for cls, kwargs, kind in parity.MODULE_LOSSES:
        args = {k: nx.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        x = {"regression": parity._floats((4, 3))[0], "classes": parity._floats((6, 5))[0],
             "probabilities": parity._floats((4, 3), low=0.02, high=0.98)[0],
             "logits": parity._floats((4, 3), low=-6.0, high=6.0)[0]}[kind]
        t = {"classes": np.abs(parity.TARGETS) % 5}.get(
            kind, parity._floats((4, 3), seed=1, low=0.0, high=1.0)[0])
        cases.append((cls, getattr(nn, cls)(**args), [x, t], {}))
    return cases


@functools.cache
def graphs() -> tuple[tuple[str, Any], ...]:
    """(name, graph) of every program the corpus builds, in order."""
    recorded: list[tuple[str, Any]] = []
    current = [""]
    build = pipeline.build

    def recording(graph: Any, backend: str) -> Any:
        recorded.append((f"{current[0]} #{len(recorded)}", graph))
        return build(graph, backend)

    pipeline.build = recording
    try:
        for name, fn, data, options in _cases():
            current[0] = name
            parity.check_compiled(fn, data, ("reference",), **options)
        sys.path.insert(0, str(BENCH))
        try:
            import workloads
        finally:
            sys.path.remove(str(BENCH))
        for name in SPEC_WORKLOADS:
            current[0] = name
            runner = workloads.build_runner(name, "neurenix_compiled", backend="reference")
            with runner.context():
                runner.step()
    finally:
        pipeline.build = build
    return tuple(recorded)


def sources(target_name: str) -> list[tuple[str, str]]:
    """(name, source) of every corpus program generated for `target_name`, the kernels of
    program i named `p<i>_<name>` (unique across the corpus)."""
    target = get_target(target_name)
    stages = pipeline.codegen_stages(target)
    assert stages[-1].name == "codegen"
    generate = target.generate()
    out = []
    for i, (name, graph) in enumerate(graphs()):
        planned, _ = run_pipeline(graph, stages[:-1])
        kernels = replace(planned.kernels, kernels=[replace(k, name=f"p{i}_{k.name}")
                                                    for k in planned.kernels.kernels])
        out.append((name, generate(kernels, planned.plan, target).source))
    return out
