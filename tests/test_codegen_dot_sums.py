"""The dot-product path's horizontal sums: a block's RM x RN accumulators reduced together by
a transposing tree (`llvm_dot._horizontal_sums`), one vector store per run of as many
accumulators as a vector has lanes.  Cases take the dot path in float32 (one run of 16) and
float64 (two runs of 8), with and without a k tail, ragged rows and columns, and batches;
each runs against np.matmul with its inputs against a guard page, on one thread and across
several.  The generated code keeps no per-accumulator reduction where a run covers them."""
from __future__ import annotations

import re

import pytest
from kernel_helpers import assert_same_across_threads, assert_same_guarded
from neurenix.compiler.schedule.dot import SHORT_K
from neurenix.compiler.types import float32, float64
from test_codegen_llvm import assert_matmuls_match, build_matmul_program, kernel_paths

CASES = [  # (batch, m, k, n, a transposed, b transposed, bias, dtype)
    (0, 4, SHORT_K, 4, False, True, False, float32),      # one block, no tail
    (0, 16, SHORT_K, 256, False, True, True, float32),    # the LSTM step's recurrent product
    (0, 5, 2 * SHORT_K + 3, 7, False, True, False, float32),  # ragged block, k tail
    (2, 3, 80, 9, False, True, True, float32),            # batched, few rows
    (0, 6, SHORT_K, 10, False, True, False, float64),     # two runs of 8 lanes
    (0, 9, SHORT_K + 5, 13, False, True, True, float64),  # float64 with a k tail
]


@pytest.fixture(scope="module")
def dot_program():
    _, program, exe, inputs, data = build_matmul_program("ds", CASES, 11)
    return program, exe, inputs, data


def test_every_case_takes_the_dot_path(dot_program):
    paths = kernel_paths(dot_program[0])
    assert [paths[f"ds{i}"] for i in range(len(CASES))] == ["dot"] * len(CASES), paths


def test_tree_sums_match_np_matmul_and_stay_in_bounds(dot_program):
    _, exe, inputs, data = dot_program
    got = exe.run(inputs)
    assert_matmuls_match(got, CASES, data, "ds")
    assert_same_guarded(exe, inputs, got)


def test_tree_sums_split_across_threads_identically(dot_program):
    _, exe, inputs, _ = dot_program
    assert_same_across_threads(exe, inputs, (2, 3))


def test_no_per_accumulator_reduction_is_left(dot_program):
    program = dot_program[0]
    calls = re.findall(r"call [^\n]*llvm\.vector\.reduce\.fadd", program.source)
    assert calls == []
