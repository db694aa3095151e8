"""Contractions stored through a transpose: weight gradients `(x.T @ dy).T`.

The tiled path vectorises such a kernel along the axis its stores are contiguous in (the
stored rows) rather than scattering one element per row; the result must still equal
np.matmul and the kernel interpreter, for awkward shapes, batches and float64, with every input
against a guard page.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from kernel_helpers import compile_schedule, guarded, merge
from neurenix.compiler import GraphBuilder
from neurenix.compiler.codegen import generate
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.schedule import Contraction, contraction_rule
from neurenix.compiler.schedule.contraction import stores_contiguous_along
from neurenix.compiler.targets import get_target
from neurenix.compiler.types import DType, TensorType, float32, float64

CASES = [  # (group, batch k, in features, out features, dtype, scaled epilogue)
    (0, 64, 784, 512, float32, False),   # the MLP's first weight gradient
    (0, 37, 33, 19, float32, False),     # 33 stored columns: one full tile and a tail of 1
    (0, 5, 70, 13, float32, True),       # rows clamped (13 % MR), short k, an epilogue
    (3, 9, 41, 7, float32, False),       # batched: (3, 7, 41) stored from (3, 41, 7)
    (0, 11, 50, 6, float64, True),       # float64, 50 columns: 3 tiles of 16 and a tail
    (0, 20, 20, 80, float32, False),     # fewer stored columns than a tile: not reordered
]


def weight_grad(group: int, k: int, n_in: int, n_out: int, dtype: DType, scaled: bool):
    """The graph of `(x.T @ dy).T` (optionally times 0.5), batched over `group` if nonzero."""
    b = GraphBuilder("wgrad")
    lead = (group,) if group else ()
    x = b.input("x", TensorType(lead + (k, n_in), dtype))
    dy = b.input("dy", TensorType(lead + (k, n_out), dtype))
    swap = tuple(range(len(lead))) + (len(lead) + 1, len(lead))
    g = b.matmul(b.permute(x, perm=swap), dy)
    if scaled:
        g = b.mul(g, b.full(shape=g.type.shape, value=0.5, dtype=dtype.name))
    return b.build([b.permute(g, perm=swap)])


@pytest.fixture(scope="module")
def program():
    rng = np.random.default_rng(3)
    schedules, inputs, wants = [], [], []
    for case in CASES:
        graph = weight_grad(*case)
        s = lower(graph)
        assert len(s.kernels) == 1, case
        schedules.append(s)
        x, dy = (rng.standard_normal(n.type.shape).astype(case[4].np_type)
                 for n in graph.inputs)
        inputs += [x, dy]
        want = np.swapaxes(dy, -1, -2) @ x * (0.5 if case[5] else 1.0)
        wants.append(want.reshape(-1))
        np.testing.assert_allclose(run_schedule(s, [x, dy])[0].reshape(-1), want.reshape(-1),
                                   rtol=1e-4, atol=1e-4)
    s = merge(schedules)
    return s, generate(s), compile_schedule(s), inputs, wants


def test_transposed_stores_match_np_matmul_and_stay_in_bounds(program):
    s, prog, exe, inputs, wants = program
    assert set(prog.metadata["paths"].values()) == {"tiled"}
    got = exe.run(inputs)
    for case, g, w in zip(CASES, got, wants):
        tol = 1e-5 * np.sqrt(case[1]) if case[4] == float32 else 1e-12 * case[1]
        np.testing.assert_allclose(g.reshape(-1), w, rtol=tol, atol=tol, err_msg=str(case))
    for after in (True, False):
        for g, w in zip(exe.run([guarded(x, after) for x in inputs]), got):
            np.testing.assert_array_equal(g, w)
    exe.num_threads = 1
    serial = exe.run(inputs)
    exe.num_threads = 2
    for a, b in zip(serial, exe.run(inputs)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("vector_bits", [512, 256])
@pytest.mark.parametrize("case", CASES)
def test_tiles_run_along_the_stored_rows(case, vector_bits):
    """Columns are tiled along the axis the stores are contiguous in when it fills a tile."""
    (kernel,) = lower(weight_grad(*case)).kernels
    nd = len(kernel.domain)
    assert stores_contiguous_along(kernel, nd - 2)
    assert not stores_contiguous_along(kernel, nd - 1)
    m = contraction_rule(kernel, replace(get_target("llvm").capabilities,
                                         vector_bits=vector_bits))
    nr = 2 * vector_bits // (8 * case[4].itemsize)
    assert isinstance(m, Contraction) and m.nr == nr
    want = nd - 2 if kernel.domain[nd - 2] >= nr else nd - 1
    if kernel.domain[nd - 1] < nr // 2 <= kernel.domain[nd - 2]:
        want = nd - 2  # the narrow-column swap, as for any contraction
    assert m.col == want, (case, m)


def test_plain_stores_keep_the_row_major_layout():
    """`x.T @ dy` stored as it is: contiguous along the last axis, tiles along it."""
    b = GraphBuilder("plain")
    x = b.input("x", TensorType((64, 96), float32))
    dy = b.input("dy", TensorType((64, 80), float32))
    (kernel,) = lower(b.build([b.matmul(b.permute(x, perm=(1, 0)), dy)])).kernels
    assert not stores_contiguous_along(kernel, 0)
    m = contraction_rule(kernel, replace(get_target("llvm").capabilities, vector_bits=512))
    assert isinstance(m, Contraction) and m.col == 1
