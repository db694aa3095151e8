"""Long reductions keep their accuracy: float sums run in blocks whose results add up in
float64 (compensated for float64 data), full reductions split in parts across threads combine
them in a fixed order; integer sums and max/min/argmax/argmin keep their exact semantics.

Sizes are big enough that the old serial accumulation failed (a relative error of 1e-5 to 1e-2
on these cases) and still run in a few seconds: the broadcast cases read one element 10^8
times, as `x.expand(10**4, 10**4).sum()` does, and cost no memory.  All hand-built kernels
share one LLVM compile.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from kernel_helpers import (
    assert_same_across_threads,
    assert_same_guarded,
    c64,
    compile_schedule,
    flat,
    schedule,
)
from neurenix.compiler.kernel.ir import Acc, BufferArg, Kernel, Load, Store, Var
from neurenix.compiler.schedule.reduction import (
    BLOCK,
    COLUMN_BLOCK,
    PARTS,
    across_columns,
    blocks,
    cut,
    part_count,
)
from neurenix.compiler.types import dtype_from_numpy, int64

import neurenix

LONG = 10**8  # steps of the broadcast sums (the old code was 2.6e-2 off on ones)
COLUMN = 3 * 10**6  # steps of the broadcast column sums (old: each column summed serially)


def _kernel(name: str, op: str, x: np.ndarray, domain: tuple, reduce: tuple, index,
            out_dtype=None) -> Kernel:
    dtype = dtype_from_numpy(x.dtype)
    acc = int64 if op in ("argmax", "argmin") else (out_dtype or dtype)
    size = math.prod(domain)
    store = flat(*[(i, math.prod(domain[i + 1:])) for i in range(len(domain))])
    return Kernel(name, (BufferArg(f"{name}_x", dtype, x.size),),
                  (BufferArg(name, acc, size),), domain, (Store(name, store, Acc()),),
                  reduce=reduce, reduce_op=op, reduce_value=Load(f"{name}_x", index, dtype))


def _cases() -> list[tuple[Kernel, np.ndarray, np.ndarray | None]]:
    """(kernel, input, exact result in float64 or None for the exact-semantics cases)."""
    rng = np.random.default_rng(0)
    cases = []

    def add(name, op, x, domain, reduce, index, exact):
        cases.append((_kernel(name, op, x, domain, reduce, index), x, exact))

    # a full float32 sum and row/column sums of positive data
    x = rng.random(1 << 24, dtype=np.float32)
    add("sum_full", "sum", x, (), (4096, 4096), flat((0, 4096), (1, 1)),
        x.astype(np.float64).sum(keepdims=True))
    rows = rng.random((4, 1 << 20), dtype=np.float32)
    add("sum_rows", "sum", rows.ravel(), (4,), (1 << 20,), flat((0, 1 << 20), (1, 1)),
        rows.astype(np.float64).sum(1))
    cols = rng.random((1 << 20, 4), dtype=np.float32)
    add("sum_cols", "sum", cols.ravel(), (4,), (1 << 20,), flat((1, 4), (0, 1)),
        cols.astype(np.float64).sum(0))
    # one value read LONG times: a full sum, two long rows, four long columns
    for value in (1.0, 0.1):
        tag = str(value).replace(".", "_")
        one = np.full(1, value, np.float32)
        exact = np.float64(np.float32(value)) * LONG
        add(f"bcast_full_{tag}", "sum", one, (), (10**4, 10**4), c64(0), np.array([exact]))
    two = np.array([1.0, 0.3], np.float32)
    add("bcast_rows", "sum", two, (2,), (LONG // 2,), Var(0),
        two.astype(np.float64) * (LONG // 2))
    four = np.array([1.0, 0.1, 0.7, 3.0], np.float32)  # 4 columns run serially: shorter
    add("bcast_cols", "sum", four, (4,), (COLUMN,), Var(0), four.astype(np.float64) * COLUMN)
    # float64 data: blocks combined with Neumaier's compensation
    tenth = np.full(1, 0.1)
    add("bcast_f64", "sum", tenth, (), (10**4, 10**4), c64(0), np.array([0.1 * LONG]))
    f64cols = np.array([0.1, 1 / 3, 2.0, 1e-3])
    add("bcast_cols_f64", "sum", f64cols, (4,), (COLUMN,), Var(0), f64cols * COLUMN)
    # integer sums stay exact; max/min/argmax/argmin keep their semantics across parts
    ints = rng.integers(-2**40, 2**40, 1 << 21)
    add("sum_int64", "sum", ints, (), (1 << 21,), Var(0), None)
    add("sum_int64_bcast", "sum", np.array([3]), (), (10**4, 10**4), c64(0), None)
    i32 = rng.integers(-1000, 1000, 1 << 21).astype(np.int32)
    add("sum_int32", "sum", i32, (), (1 << 21,), Var(0), None)
    ties = rng.random(1 << 21, dtype=np.float32)
    ties[[7, 700_000, 2_000_000]] = 2.0  # the same maximum in three different parts
    ties[[9, 1_000_000]] = -1.0
    nans = ties.copy()
    nans[[1_500_000, 1_800_000]] = np.nan
    for op in ("max", "min", "argmax", "argmin"):
        add(f"{op}_ties", op, ties, (), (1 << 21,), Var(0), None)
        add(f"{op}_nan", op, nans, (), (1 << 21,), Var(0), None)
    return cases


def _numpy(kernel: Kernel, x: np.ndarray) -> np.ndarray:
    """What the exact-semantics cases must give, by NumPy."""
    name = kernel.name
    if name == "sum_int64_bcast":
        return np.array([3 * 10**8])
    op = getattr(np, kernel.reduce_op)
    return np.array([op(x.astype(np.int64) if "sum" in name else x)])


@pytest.fixture(scope="module")
def program():
    cases = _cases()
    data = {k.inputs[0].name: x for k, x, _ in cases}
    outputs = {k.name: ((k.outputs[0].size,), k.outputs[0].dtype) for k, _, _ in cases}
    s = schedule([k for k, _, _ in cases], data, outputs)
    exe = compile_schedule(s)
    inputs = [data[n] for n in s.inputs]
    got = dict(zip(s.outputs, exe.run(inputs)))
    return cases, exe, inputs, got


def test_long_float32_sums_are_within_1e_6(program):
    cases, _, _, got = program
    for kernel, _, exact in cases:
        if exact is None or exact.dtype != np.float64 or kernel.inputs[0].dtype.itemsize != 4:
            continue
        assert got[kernel.name].dtype == np.float32
        error = np.max(np.abs(got[kernel.name] - exact) / np.abs(exact))
        assert error <= 1e-6, (kernel.name, error)
    assert got["bcast_full_1_0"][0] == LONG  # ones add up exactly


def test_long_float64_sums_are_compensated(program):
    cases, _, _, got = program
    for name in ("bcast_f64", "bcast_cols_f64"):
        exact = next(e for k, _, e in cases if k.name == name)
        error = np.max(np.abs(got[name] - exact) / np.abs(exact))
        assert error <= 1e-14, (name, error)  # serial lanes were 1e-10 off


def test_integer_sums_and_extremes_keep_their_exact_semantics(program):
    cases, _, _, got = program
    for kernel, x, exact in cases:
        if exact is None:
            np.testing.assert_array_equal(got[kernel.name], _numpy(kernel, x), kernel.name)
    assert got["argmax_ties"][0] == 7 and got["argmin_ties"][0] == 9  # the first of a tie
    assert got["argmax_nan"][0] == 1_500_000 and got["argmin_nan"][0] == 1_500_000
    assert np.isnan(got["max_nan"][0]) and np.isnan(got["min_nan"][0])


def test_full_reductions_split_in_parts_give_the_same_bits_on_any_threads(program):
    cases, exe, inputs, got = program
    threaded = exe.program.metadata["threaded"]
    for (kernel, _, _), info in zip(cases, exe.program.kernels):  # in launch order
        if not kernel.domain:  # every full reduction here is long enough to split
            assert info.name in threaded and f"{info.name}_part" in exe.program.source
    assert_same_across_threads(exe, inputs, (2, 3))
    exe.num_threads = 2
    assert_same_guarded(exe, inputs, list(got.values()))  # no part reads out of bounds
    times = exe.profile(inputs, repeat=1)  # each kernel function alone runs every part
    assert len(times) == len(exe.program.kernels)


def test_which_reductions_run_in_blocks(program):
    cases, _, _, _ = program
    by = {k.name: k for k, _, _ in cases}
    assert blocks(by["sum_full"], BLOCK) is not None and blocks(by["bcast_f64"], BLOCK)
    assert across_columns(by["bcast_cols"]) and blocks(by["bcast_cols"], COLUMN_BLOCK)
    for name in ("sum_int64", "max_ties", "argmax_nan"):
        assert blocks(by[name], BLOCK) is None, name
    short = _kernel("short", "sum", np.ones(BLOCK, np.float32), (), (BLOCK,), Var(0))
    assert blocks(short, BLOCK) is None  # one block: the code is what it always was
    assert part_count(by["sum_full"]) == PARTS


@pytest.mark.parametrize("sizes", [(30, 30), (100, 100), (3, 50, 7), (1000,), (65,),
                                   (17, 3, 10), (10, 10, 3), (7, 64), (5, 65)])
def test_blocks_cover_the_reduction_in_order(sizes):
    plan = cut(sizes, 64)
    inner = math.prod(sizes[plan.level + 1:])
    assert plan.steps <= 64 < inner * sizes[plan.level] and inner <= 64
    steps = []  # the flat step indices each_block visits, block by block
    for q in range(plan.count):
        point, chunk = divmod(q, plan.chunks)
        outer = np.unravel_index(point, sizes[:plan.level]) if plan.level else ()
        start = chunk * plan.chunk
        for j in range(start, min(start + plan.chunk, sizes[plan.level])):
            for rest in np.ndindex(*sizes[plan.level + 1:]):
                steps.append(np.ravel_multi_index((*outer, j, *rest), sizes))
    assert steps == list(range(math.prod(sizes)))


def test_compiled_mean_and_broadcast_sum_end_to_end():
    x = np.random.default_rng(1).random((16, 1024, 1024), dtype=np.float32)
    mean = neurenix.compile(lambda t: t.mean())(neurenix.tensor(x)).numpy()
    exact = x.astype(np.float64).mean()
    assert abs(mean - exact) / exact <= 1e-6  # was 1.8e-5
    ones = neurenix.tensor(np.ones((1, 1), np.float32))
    total = neurenix.compile(lambda t: t.expand(10**4, 10**4).sum())(ones).numpy()
    assert total == 1e8  # was 9.7379e7


def test_precision_benchmark_runs_quick(monkeypatch):
    """benchmarks/precision.py cannot rot: one case, in process, at its --quick size."""
    import pathlib

    bench = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    precision = __import__("precision")
    by = {c.name: c for c in precision.CASES}
    for name in ("expand_1e8", "cols_4Mx4"):
        row = precision.run_case(by[name], True, "neurenix", 0.01, warm_up=0.0)
        assert row["error"] <= 1e-6 and row["ms"] > 0, (name, row)
    table = precision.table([{"what": "w", "elements": 1, "numpy": {"error": 0.0, "ms": 1.0}}],
                            ["numpy"])
    assert table.count("\n") == 2
