"""Contractions over a long k: the tiled path blocks over k (and rows and column groups), so no
shape falls back to the scalar loop nest, and its large scratch lives on the heap.

Every case runs against np.matmul (in float64) with its inputs against guard pages, on one
thread and split across several; a subprocess runs a long-k product with a 512 KiB stack.
"""
from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from kernel_helpers import assert_same_across_threads, assert_same_guarded
from neurenix.compiler import evaluate
from neurenix.compiler.codegen import generate
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.schedule import Contraction, contraction, contraction_rule
from neurenix.compiler.schedule.contraction import KC, MAX_STACK_BYTES
from neurenix.compiler.targets import get_target
from neurenix.compiler.types import float32, float64
from neurenix.runtime.cpu import CpuExecutable
from test_codegen_llvm import (
    assert_matmuls_match,
    build_matmul_program,
    kernel_paths,
    matmul_kernel,
)

import neurenix

LONG = [  # (batch, m, k, n, a transposed, b transposed, bias + relu, dtype, path)
    (0, 13, 4096, 37, False, False, True, float32, "tiled"),   # the old limit with AVX-512
    (0, 13, 4097, 37, False, False, True, float32, "tiled"),   # just above it
    (0, 9, 8193, 20, False, False, True, float32, "tiled"),    # above the old AVX2 limit
    (0, 20, 4160, 33, False, False, True, float32, "tiled"),   # k not a multiple of KC
    (2, 7, 3001, 19, False, False, False, float32, "tiled"),   # batched, odd everything
    (0, 12, 2 * KC, 40, True, False, True, float32, "tiled"),  # a transposed, two full blocks
    (0, 30, 5000, 24, False, True, True, float32, "tiled"),    # x @ w.T past the dot limit
    (0, 2, 70000, 24, False, True, False, float32, "dot"),     # too few rows to pack
    (0, 1, 9000, 50, False, False, True, float32, "tiled"),    # one row: b in place, edge tile
    (0, 11, 4097, 21, False, False, True, float64, "tiled"),   # float64
    (2, 6, 2050, 17, True, True, False, float64, "tiled"),     # float64, both transposed
    (0, 8, KC + 1, 16, False, False, True, float32, "tiled"),  # two blocks of 129 and 128
]


@pytest.fixture(scope="module")
def long_program():
    _, program, exe, inputs, data = build_matmul_program("lk", [c[:8] for c in LONG], 7)
    return program, exe, inputs, data


def test_long_k_contractions_take_a_blocked_path(long_program):
    program = long_program[0]
    paths = kernel_paths(program)
    assert [paths[f"lk{i}"] for i in range(len(LONG))] == [c[-1] for c in LONG], paths


def test_long_k_contractions_match_np_matmul_and_stay_in_bounds(long_program):
    _, exe, inputs, data = long_program
    got = exe.run(inputs)
    assert_matmuls_match(got, LONG, data, "lk")
    assert_same_guarded(exe, inputs, got)


def test_long_k_contractions_split_across_threads_identically(long_program):
    _, exe, inputs, _ = long_program
    assert_same_across_threads(exe, inputs, (2, 3))


def _stack_bytes(source: str) -> list[int]:
    """The size of every fixed-size alloca in the module text."""
    sizes = {"float": 4, "double": 8, "i64": 8, "i8": 1, "i32": 4}
    out = []
    for typ, count in re.findall(r"= alloca (<\d+ x \w+>|\w+)(?:, i64 (\d+))?", source):
        vec = re.match(r"<(\d+) x (\w+)>", typ)
        size = int(vec[1]) * sizes[vec[2]] if vec else sizes.get(typ, 8)
        out.append(size * int(count or 1))
    return out


def test_large_scratch_is_on_the_heap_not_the_stack(long_program):
    program = long_program[0]
    source = program.source
    assert max(_stack_bytes(source)) <= MAX_STACK_BYTES
    assert re.search(r"call ptr @\"?malloc", source) and re.search(r"call void @\"?free", source)


def test_blocks_cover_k_evenly():
    for k in (1, KC, KC + 1, 4096, 4160, 16384, 70001):
        kernel = matmul_kernel("m", 0, 64, k, 64)
        tiles = contraction_rule(kernel, get_target("llvm").capabilities)
        assert isinstance(tiles, Contraction)
        plan = tiles.blocking
        assert plan.kc <= KC or plan.k_blocks == 1 and k <= KC
        assert (plan.k_blocks - 1) * plan.kc < k <= plan.k_blocks * plan.kc
        assert plan.k_blocks == -(-k // KC)
        assert (plan.scratch_bytes > 0) == (plan.k_blocks > 1)


@pytest.mark.parametrize("k, b_t, row_blocks", [(64, False, 2), (1024, False, 1),
                                                (1024, True, 1)])
def test_rows_are_cut_for_the_threads_less_when_b_outgrows_l2(k, b_t, row_blocks):
    """256 rows against 1024 columns (32 column tiles): with a `b` that fits in L2 the rows
    are cut in two for `MIN_UNITS` (64) range points; a 4 MiB `b`, which every row block
    would pack again from L3, is not cut (`MIN_UNITS_LARGE_B`, 32, range points), whichever
    way it is stored."""
    caps = replace(get_target("llvm").capabilities, l2_bytes=1 << 20, vector_bits=512)
    tiles = contraction_rule(matmul_kernel("m", 0, 256, k, 1024, b_t=b_t), caps)
    assert isinstance(tiles, Contraction) and tiles.k_major == b_t
    assert tiles.blocking.col_tiles == 32
    assert tiles.blocking.row_blocks == row_blocks
    assert tiles.count == 32 * row_blocks


# ---- row blocks and column groups: forced small, so that small products have many ----------

GROUPED = [  # (batch, m, k, n, a transposed, b transposed, bias + relu, dtype)
    (0, 50, 1000, 70, False, False, True, float32),
    (2, 45, 700, 45, True, False, False, float32),
    (0, 40, 600, 29, True, False, True, float64),
]


@pytest.fixture(scope="module")
def grouped_program():
    caps = replace(get_target("llvm").capabilities, l2_bytes=16 * 1024)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(contraction, "KC", 64)
        mp.setattr(contraction, "SCRATCH_BYTES", 4096)
        mp.setattr(contraction, "MAX_STACK_BYTES", 1024)  # panels on the heap, as AVX-512's
        plans = []
        for i, case in enumerate(GROUPED):
            batch, m, k, n, a_t, b_t, bias, dtype = case
            kernel = matmul_kernel(f"g{i}", batch, m, k, n, dtype, a_t, b_t, bias)
            plans.append(contraction_rule(kernel, caps).blocking)
        built = build_matmul_program("gr", GROUPED, 9, caps)
    return plans, built


def test_forced_blocking_has_many_row_blocks_column_groups_and_k_blocks(grouped_program):
    plans, _ = grouped_program
    for case, plan in zip(GROUPED, plans):
        assert plan.k_blocks > 5 and plan.row_blocks > 1, (case, plan)
    assert any(plan.col_groups > 1 for plan in plans), plans


def test_grouped_contractions_match_np_matmul_on_any_thread_count(grouped_program):
    _, (_, program, exe, inputs, data) = grouped_program
    assert set(program.metadata["paths"].values()) == {"tiled"}
    assert '"panel" = alloca' not in program.source
    got = exe.run(inputs)
    assert_matmuls_match(got, GROUPED, data, "gr")
    assert_same_guarded(exe, inputs, got)
    assert_same_across_threads(exe, inputs, (2, 3, 7))


# ---- through the frontend and convolutions -------------------------------------------------


def test_public_api_fused_epilogue_and_batched_long_k():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 9, 4160), dtype=np.float32)
    b = rng.standard_normal((2, 4160, 21), dtype=np.float32)
    bias = rng.standard_normal(21, dtype=np.float32)
    fn = neurenix.compile(lambda x, y, c: neurenix.relu(x @ y + c))
    got = fn(neurenix.Tensor(a), neurenix.Tensor(b), neurenix.Tensor(bias)).numpy()
    want = np.maximum(a.astype(np.float64) @ b + bias, 0)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert "generic" not in _forward_paths(fn)


@pytest.mark.parametrize("shapes", [((5000,), (5000, 37)), ((37, 5000), (5000,)),
                                    ((3, 9000), (9000, 20))])
def test_public_api_vector_products_with_a_long_k(shapes):
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal(s, dtype=np.float32) for s in shapes)
    fn = neurenix.compile(lambda x, y: x @ y)
    got = fn(neurenix.Tensor(a), neurenix.Tensor(b)).numpy()
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=2e-3, atol=2e-3)
    assert "generic" not in _forward_paths(fn)


def _forward_paths(fn) -> set[str]:
    return set(fn._last.forward.program.metadata["paths"].values())


@pytest.mark.parametrize("case", [(0, 6272, 70, 40, float32, True),   # stored transposed
                                  (2, 5000, 33, 19, float64, False)])
def test_weight_gradient_over_a_long_batch_is_tiled_and_right(case):
    """`(x.T @ dy).T` summed over a long batch: the tiles run along the stored rows."""
    from test_transposed_gemm import weight_grad

    graph = weight_grad(*case)
    program = generate(lower(graph))
    assert set(program.metadata["paths"].values()) == {"tiled"}
    rng = np.random.default_rng(5)
    x, dy = (rng.standard_normal(n.type.shape).astype(case[4].np_type) for n in graph.inputs)
    (got,) = CpuExecutable(program).run([x, dy])
    want = np.swapaxes(dy.astype(np.float64), -1, -2) @ x * (0.5 if case[5] else 1.0)
    tol = 1e-5 * np.sqrt(case[1]) if case[4] == float32 else 1e-12 * case[1]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", [
    (1, 512, 5, 5, 8, (3, 3), (1, 1), (1, 1), (1, 1), float32),    # k = 4608
    (2, 300, 6, 6, 16, (5, 5), (2, 2), (1, 1), (1, 1), float32),   # k = 7500, 16 channels
    (1, 200, 4, 5, 8, (3, 3), (1, 1), (1, 1), (1, 1), float64),    # k = 1800, float64
])
def test_conv_with_a_long_k_is_tiled_and_right(case):
    from test_conv_gather_gemm import conv_graph, data

    graph = conv_graph(case)
    program = generate(lower(graph))
    assert "tiled" in program.metadata["paths"].values()
    assert "generic" not in program.metadata["paths"].values()
    arrays = data(graph, 3)
    (got,) = CpuExecutable(program).run(arrays)
    want = evaluate(graph, arrays)[0]
    k = case[1] * case[5][0] * case[5][1]
    tol = 1e-5 * np.sqrt(k) if case[-1] == float32 else 1e-12 * k
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# ---- a small stack ---------------------------------------------------------------------------

SMALL_STACK = textwrap.dedent("""
    import numpy as np
    from neurenix.compiler import GraphBuilder
    from neurenix.compiler.codegen import generate
    from neurenix.compiler.lowering.lower import lower
    from neurenix.compiler.types import TensorType, float32, float64
    from neurenix.runtime.cpu import CpuExecutable

    rng = np.random.default_rng(0)
    for m, k, n, dtype in ((64, 4160, 64, float32), (64, 8000, 48, float32),
                           (40, 4160, 40, float64)):
        g = GraphBuilder("mm")
        x = g.input("x", TensorType((m, k), dtype))
        y = g.input("y", TensorType((k, n), dtype))
        program = generate(lower(g.build([g.matmul(x, y)])))
        assert set(program.metadata["paths"].values()) == {"tiled"}, program.metadata["paths"]
        exe = CpuExecutable(program)
        a = rng.standard_normal((m, k)).astype(dtype.np_type)
        b = rng.standard_normal((k, n)).astype(dtype.np_type)
        (got,) = exe.run([a, b])
        np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=2e-3, atol=2e-3)
    print("ok")
""")


def _small_stack() -> None:
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    resource.setrlimit(resource.RLIMIT_STACK, (512 * 1024, hard))


def test_long_k_runs_with_a_512_kib_stack():
    """The calling thread runs chunks of every kernel too, within the process's stack limit
    (the pool's workers get stacks of their own size)."""
    env = dict(os.environ, NEURENIX_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", SMALL_STACK], env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=_small_stack)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_gemm_sweep_measures_a_small_shape():
    """The sweep script's worker, on one small shape without PyTorch."""
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    try:
        import gemm_sweep
    finally:
        sys.path.pop(0)
    for layout in ("nn", "nt", "tn"):
        shape = gemm_sweep.Shape("small", 64, 300, 64, layout=layout)
        row = gemm_sweep.run_shape(shape, 0.01, 1, None, "cpu")
        assert row["rel_error"] < 1e-5 and row["paths"] and "generic" not in row["paths"]
        run = {"rows": [row], "threads": 1, "clock": "cpu"}
        assert "64x300x64 " + layout in gemm_sweep.table(run, markdown=True)
        assert "worst target shape" in gemm_sweep.summary(run)
