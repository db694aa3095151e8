"""The schedule layer: which rule takes which kernel, how capabilities change the choice, custom
rule lists, and the one-line text of a schedule.

Capability records are spelled out (not probed), so the decisions and their text are the same
on every host.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from kernel_helpers import c64, flat, run_both, schedule
from neurenix.compiler import GraphBuilder
from neurenix.compiler.codegen import generate
from neurenix.compiler.kernel.ir import BufferArg, Kernel, Load, Store, Var
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.schedule import (
    DEFAULT_RULES,
    ColumnReduction,
    Contraction,
    Dot,
    Elementwise,
    Fallback,
    SplitReduction,
    Window,
    fallback_rule,
    schedule_kernel,
    schedule_kernels,
    target_rules,
)
from neurenix.compiler.targets import (
    Capabilities,
    Target,
    get_target,
    register_target,
    unregister_target,
)
from neurenix.compiler.types import float32
from test_codegen_llvm import matmul_kernel
from test_codegen_small_gemm import pool_kernel
from test_lower import T, conv_graph, softmax

AVX2 = Capabilities(vector_bits=256, threads="pool", masked_loads=True, l2_bytes=1 << 20)
AVX512 = replace(AVX2, vector_bits=512)
SCALAR = Capabilities(vector_bits=0, threads="none")


def _lowered(build) -> list[Kernel]:
    b = GraphBuilder("g")
    return lower(b.build(build(b))).kernels


def _one(build) -> Kernel:
    (kernel,) = _lowered(build)
    return kernel


def _scatter() -> Kernel:
    """y[idx[i]] += x[i]: an accumulating store."""
    x, idx, y = (BufferArg("x", float32, 64), BufferArg("idx", c64(0).dtype, 64),
                 BufferArg("y", float32, 8))
    return Kernel("scatter", (x, idx), (y,), (64,),
                  (Store("y", Load("idx", Var(0), idx.dtype), Load("x", Var(0), float32),
                         accumulate=True),), parallel=False)


def test_a_matmul_is_tiled():
    plan = schedule_kernel(matmul_kernel("mm", 0, 64, 784, 96, bias=True), AVX2)
    assert isinstance(plan, Contraction)
    assert (plan.row, plan.col, plan.mr, plan.nr, plan.direct) == (0, 1, 6, 16, True)
    assert plan.blocking.k_blocks == 7 and plan.threaded


def test_a_transposed_weight_takes_dot_products_unless_k_is_short():
    assert isinstance(schedule_kernel(matmul_kernel("nt", 0, 64, 784, 96, b_t=True), AVX2), Dot)
    short = schedule_kernel(matmul_kernel("nt", 0, 32, 20, 80, b_t=True), AVX2)
    assert isinstance(short, Contraction) and short.k_major and not short.direct


def test_a_batched_dot_product_ranges_over_batch_and_column_blocks():
    plan = schedule_kernel(matmul_kernel("bnt", 3, 64, 784, 96, b_t=True), AVX2)
    assert isinstance(plan, Dot)
    assert plan.batch == (0,) and (plan.row, plan.col) == (1, 2)
    assert plan.count == 3 * 96 // plan.rn and plan.lanes == 8


def test_a_convolution_gathers_its_windows_in_a_tiled_gemm():
    plan = schedule_kernel(_lowered_conv(), AVX2)
    assert isinstance(plan, Contraction) and not plan.direct and not plan.k_major


def _lowered_conv() -> Kernel:
    (kernel,) = lower(conv_graph(True)).kernels
    return kernel


def test_the_vector_width_decides_between_dot_products_and_tiles():
    """Nine columns fill no 32-lane (AVX-512) tile, but an AVX2 one: tiles win there, since
    k is short over six rows."""
    kernel = matmul_kernel("mm", 2, 6, 40, 9, b_t=True)
    assert isinstance(schedule_kernel(kernel, AVX2), Contraction)
    assert isinstance(schedule_kernel(kernel, AVX512), Dot)


def test_pooling_windows_need_masked_loads():
    kernel = pool_kernel("p", (2, 3, 28, 28), 2, 2, "max")
    plan = schedule_kernel(kernel, AVX2)
    assert isinstance(plan, Window) and plan.stride == 2 and plan.offsets == (0, 1, 28, 29)
    assert schedule_kernel(kernel, AVX512).lanes == 16
    plain = schedule_kernel(kernel, replace(AVX2, masked_loads=False))
    assert isinstance(plain, Elementwise) and plain.unroll
    assert not plain.vectorize  # rows of 14: too short to force without a masked tail


def test_a_column_sum_runs_across_columns():
    plan = schedule_kernel(_one(lambda b: [b.reduce_sum(b.input("x", T(4096, 1024)),
                                                        axes=(0,))]), AVX2)
    assert isinstance(plan, ColumnReduction) and plan.strip == 256 and plan.threaded


def test_a_full_reduction_is_split_in_parts_only_with_threads():
    kernel = _one(lambda b: [b.reduce_sum(b.input("x", T(1 << 20)), axes=(0,))])
    plan = schedule_kernel(kernel, AVX2)
    assert isinstance(plan, SplitReduction) and plan.parts == 64 and plan.count == 1
    alone = schedule_kernel(kernel, replace(AVX2, threads="none"))
    assert isinstance(alone, Elementwise) and not alone.threaded and not alone.vectorize


def test_softmax_rows_reduce_per_row_and_vectorise_the_division():
    kernels = _lowered(lambda b: [softmax(b, b.input("x", T(5, 37)), -1)])
    plans = [schedule_kernel(k, AVX2) for k in kernels]
    assert all(isinstance(p, Elementwise) for p in plans), plans
    assert [p.vectorize for p in plans] == [False, False, True]


def test_elementwise_rows_vectorise_and_short_ones_fold_their_tail():
    long = schedule_kernel(_one(lambda b: [b.exp(b.input("x", T(64, 300)))]), AVX2)
    assert isinstance(long, Elementwise) and long.vectorize and not long.fold_tail
    x = BufferArg("x", float32, 4 * 14)
    short = Kernel("short", (x,), (BufferArg("y", float32, 4 * 14),), (4, 14),
                   (Store("y", flat((0, 14), (1, 1)), Load("x", flat((0, 14), (1, 1)),
                                                          float32)),))
    folded = schedule_kernel(short, AVX2)
    assert folded.vectorize and folded.fold_tail and folded.ranged == 1
    assert not schedule_kernel(short, replace(AVX2, masked_loads=False)).vectorize


def test_scalar_targets_get_scalar_schedules():
    elementwise = schedule_kernel(_one(lambda b: [b.exp(b.input("x", T(64, 300)))]), SCALAR)
    assert isinstance(elementwise, Elementwise)
    assert not elementwise.vectorize and elementwise.vector_bits == 0
    assert not elementwise.threaded
    product = schedule_kernel(matmul_kernel("mm", 0, 64, 784, 96), SCALAR)
    assert isinstance(product, Elementwise) and not product.vectorize


def test_a_scatter_falls_back():
    plan = schedule_kernel(_scatter(), AVX2)
    assert isinstance(plan, Fallback) and not plan.threaded


def test_a_custom_rule_put_first_wins():
    def loops_only(kernel, caps):
        return fallback_rule(kernel, caps)

    rng = np.random.default_rng(0)
    data = {"mm_a": rng.standard_normal(16 * 24, np.float32),
            "mm_b": rng.standard_normal(24 * 32, np.float32)}
    graph = schedule([matmul_kernel("mm", 0, 16, 24, 32)], data, {"mm": ((16 * 32,), float32)})
    scheduled = schedule_kernels(graph, AVX2, (loops_only, *DEFAULT_RULES))
    assert all(isinstance(k.schedule, Fallback) for k in scheduled.kernels)
    assert graph.kernels[0].schedule is None and scheduled.kernels == graph.kernels
    program = generate(scheduled)  # the generator carries the schedule out as it is
    assert set(program.metadata["paths"].values()) == {"generic"}
    got, want = run_both(scheduled, [data[n] for n in scheduled.inputs])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_a_rule_list_must_end_in_one_that_always_applies():
    with pytest.raises(ValueError, match="no schedule rule applies"):
        schedule_kernel(_scatter(), AVX2, DEFAULT_RULES[:-2])


def test_generate_schedules_with_the_targets_capabilities():
    llvm = get_target("llvm")
    wide = Target("llvm-avx512-test", "cpu", lambda: replace(llvm.capabilities,
                                                             vector_bits=512),
                  llvm.generator, llvm.runtime)
    register_target(wide)
    try:
        kernel = matmul_kernel("mm", 2, 6, 40, 9, b_t=True)
        data = {"mm_a": np.ones(2 * 6 * 40, np.float32), "mm_b": np.ones(2 * 40 * 9, np.float32)}
        graph = schedule([kernel], data, {"mm": ((2 * 6 * 9,), float32)})
        program = generate(graph, target=wide)
        assert program.metadata["vector_bits"] == 512
        assert list(program.metadata["paths"].values()) == ["dot"]
        assert target_rules(wide) == DEFAULT_RULES
    finally:
        unregister_target(wide.name)


def test_the_llvm_comment_shows_each_kernels_schedule():
    kernel = matmul_kernel("mm", 0, 16, 24, 32)
    data = {"mm_a": np.ones(16 * 24, np.float32), "mm_b": np.ones(24 * 32, np.float32)}
    graph = schedule_kernels(schedule([kernel], data, {"mm": ((16 * 32,), float32)}), AVX2)
    source = generate(graph).source
    assert f"; schedule: {graph.kernels[0].schedule}\n" in source


GOLDEN = [
    (lambda: matmul_kernel("mm", 0, 64, 784, 96), AVX2,
     "tiled: float32 rows axis 0 x 6, columns axis 1 x 16 (256-bit), batch (), a = factor 0, "
     "b contiguous along columns; K blocks 7 x 112, row blocks 1 x 11 tiles, column groups "
     "1 x 6 of 6 tiles, panels 43008 B (heap), scratch 25344 B; 6 range points, threaded"),
    (lambda: matmul_kernel("bnt", 3, 64, 784, 96, b_t=True), AVX2,
     "dot: float32 rows axis 1, columns axis 2, batch (0), a = factor 0, blocks 4 x 4, 8 lanes "
     "along k; 72 range points, threaded"),
    (lambda: pool_kernel("p", (2, 3, 28, 28), 2, 2, "max"), AVX2,
     "window: range over axes 0-2, stride 2, taps (0 1 28 29), 8 outputs per chunk; 84 range "
     "points"),
    (lambda: _one(lambda b: [b.reduce_sum(b.input("x", T(1 << 20)), axes=(0,))]), AVX2,
     "split reduction: 64 parts; 1 range point, threaded"),
    (lambda: _one(lambda b: [b.exp(b.input("x", T(64, 300)))]), AVX512,
     "elementwise: range over axis 0, inner loop vectorised (512-bit); 19200 range points"),
    (_scatter, AVX2, "loops: range over axis 0; 64 range points"),
]


@pytest.mark.parametrize("make, caps, text", GOLDEN, ids=[t.split(":")[0] for *_, t in GOLDEN])
def test_schedules_read_as_one_line(make, caps, text):
    assert str(schedule_kernel(make(), caps)) == text
