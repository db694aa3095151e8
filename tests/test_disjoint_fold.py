"""Folds whose windows do not overlap (pooling's gradient) lowered as elementwise kernels.

Each output position takes at most one tap (`s // stride` window, tap `(s % stride) /
dilation`), so no reduction over the taps is emitted.  The cases cover exact tilings, gaps
(stride above the window), odd sizes with uncovered positions, dilation, batch 1 and float64,
checked against the graph's NumPy reference, the kernel interpreter and PyTorch, with guard
pages and across thread counts; an overlapping fold keeps the reduction.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_helpers import assert_same_across_threads, assert_same_guarded
from neurenix.compiler import GraphBuilder, evaluate
from neurenix.compiler.codegen import generate
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.types import TensorType, float32, float64
from neurenix.runtime.cpu import CpuExecutable

# (n, c, spatial, kernel, stride, dilation, dtype)
CASES = [
    (2, 3, (8, 6), (2, 2), (2, 2), (1, 1), float32),
    (1, 2, (7, 9), (2, 2), (2, 2), (1, 1), float32),
    (3, 2, (11, 10), (2, 3), (3, 4), (1, 1), float64),
    (2, 1, (9, 13), (2, 2), (4, 3), (2, 1), float32),
    (1, 5, (5, 33), (3, 1), (3, 2), (1, 1), float64),
]


def windows(spatial, kernel, stride, dilation) -> tuple[int, ...]:
    return tuple((s - (k - 1) * d - 1) // st + 1
                 for s, k, st, d in zip(spatial, kernel, stride, dilation))


def fold_graph(case, relu: bool):
    """fold(g) over the case's windows, optionally masked by relu'(x) as in a backward pass."""
    n, c, spatial, kernel, stride, dil, dtype = case
    b = GraphBuilder("fold")
    g = b.input("g", TensorType((n, c) + kernel + windows(spatial, kernel, stride, dil), dtype))
    out = b.fold(g, spatial=spatial, kernel=kernel, stride=stride, dilation=dil)
    if relu:
        x = b.input("x", TensorType((n, c) + spatial, dtype))
        zero = b.full(shape=out.type.shape, value=0.0, dtype=dtype.name)
        out = b.where(b.gt(x, zero), out, zero)
    return b.build([out])


def data(graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n.type.shape).astype(n.type.dtype.np_type) for n in graph.inputs]


def torch_fold(g: np.ndarray, case) -> np.ndarray:
    n, c, spatial, kernel, stride, dil, _ = case
    cols = torch.from_numpy(g).reshape(n, c * kernel[0] * kernel[1], -1)
    return torch.nn.functional.fold(cols, spatial, kernel, dilation=dil, stride=stride).numpy()


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_disjoint_fold_matches_references(case, relu):
    graph = fold_graph(case, relu)
    s = lower(graph)
    assert len(s.kernels) == 1
    assert all(k.reduce_value is None for k in s.kernels), s
    inputs = data(graph, 7)
    want = evaluate(graph, inputs)[0]
    tol = 1e-6 if case[-1] == float32 else 1e-12
    np.testing.assert_allclose(run_schedule(s, inputs)[0], want, rtol=tol, atol=tol)
    ref = torch_fold(inputs[0], case)
    if relu:
        ref = np.where(inputs[1] > 0, ref, 0)
    np.testing.assert_allclose(want, ref, rtol=tol, atol=tol)
    exe = CpuExecutable(generate(s))
    got = exe.run(inputs)
    np.testing.assert_allclose(got[0], want, rtol=tol, atol=tol)
    assert_same_guarded(exe, inputs, got)
    assert_same_across_threads(exe, inputs, (2, 3))


def test_overlapping_fold_keeps_the_tap_reduction():
    case = (1, 2, (6, 5), (3, 2), (2, 1), (1, 1), float32)
    graph = fold_graph(case, False)
    s = lower(graph)
    assert [k.reduce for k in s.kernels] == [(3, 2)]
    inputs = data(graph, 3)
    np.testing.assert_allclose(CpuExecutable(generate(s)).run(inputs)[0],
                               torch_fold(inputs[0], case), rtol=1e-5, atol=1e-5)
