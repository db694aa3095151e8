"""`x @ w.T` over a short k: both operands contiguous along k, but with enough rows the
tiled path (b packed k-innermost) is chosen over the per-output dot products, whose horizontal
sums and scalar k tail dominate there.  Every case runs against np.matmul with its inputs
against a guard page, on one thread and split across several."""
from __future__ import annotations

import pytest
from kernel_helpers import (
    assert_same_across_threads,
    assert_same_guarded,
)
from neurenix.compiler.schedule.dot import SHORT_K, SHORT_K_ROWS
from neurenix.compiler.types import float32, float64
from test_codegen_llvm import assert_matmuls_match, build_matmul_program, kernel_paths

CASES = [  # (batch, m, k, n, a transposed, b transposed, bias, dtype, path)
    (0, 32, 20, 80, False, True, False, float32, "tiled"),     # the LSTM gate product
    (0, 480, 20, 80, False, True, True, float32, "tiled"),     # many rows, one row block
    (0, SHORT_K_ROWS, 40, 80, False, True, False, float32, "tiled"),
    (0, 33, SHORT_K - 1, 81, False, True, True, float32, "tiled"),  # ragged rows and columns
    (3, 17, 21, 13, False, True, False, float32, "tiled"),     # batched, narrow columns
    (2, 9, 16, 70, False, True, True, float64, "tiled"),       # float64
    (0, 7, 1, 40, False, True, False, float32, "tiled"),       # k = 1
    (0, 12, 70, 45, False, True, False, float32, "dot"),       # k at least SHORT_K
    (0, SHORT_K_ROWS - 1, 40, 80, False, True, False, float32, "dot"),  # few rows
    (0, 40, SHORT_K, 24, False, True, True, float64, "dot"),   # float64, k = SHORT_K
]


@pytest.fixture(scope="module")
def short_k_program():
    _, program, exe, inputs, data = build_matmul_program("nt", [c[:8] for c in CASES], 5)
    return program, exe, inputs, data


def test_short_k_nt_products_take_the_tiled_path(short_k_program):
    program = short_k_program[0]
    paths = kernel_paths(program)
    assert [paths[f"nt{i}"] for i in range(len(CASES))] == [c[-1] for c in CASES], paths


def test_short_k_nt_products_match_np_matmul_and_stay_in_bounds(short_k_program):
    _, exe, inputs, data = short_k_program
    got = exe.run(inputs)
    assert_matmuls_match(got, CASES, data, "nt")
    assert_same_guarded(exe, inputs, got)


def test_short_k_nt_products_split_across_threads_identically(short_k_program):
    _, exe, inputs, _ = short_k_program
    assert_same_across_threads(exe, inputs, (2, 3))
