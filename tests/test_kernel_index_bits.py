"""Index width per kernel (compiler/kernel/index_bits.py) and the evaluator's int32 oracle."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from kernel_helpers import c64, compile_schedule, flat, schedule
from neurenix.compiler.kernel.eval import KernelEvalError, run_schedule
from neurenix.compiler.kernel.index_bits import choose_index_bits, index_span
from neurenix.compiler.kernel.ir import Binary, BufferArg, Kernel, Load, Store, Var
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.types import float32
from test_kernel_verify import composite_graphs
from test_lower import data_for

BIG = 1 << 31  # one past int32's largest value


def copy(size: int, index, domain, name: str = "k0_copy", src: int | None = None) -> Kernel:
    """y[i] = x[index] over `domain`."""
    x, y = BufferArg("x", float32, src or size), BufferArg("y", float32, size)
    at = flat((0, domain[1]), (1, 1)) if len(domain) == 2 else Var(0)
    return Kernel(name, (x,), (y,), domain, (Store("y", at, Load("x", index, float32)),))


def graph(*kernels: Kernel):
    inputs = {"x": np.zeros(kernels[0].inputs[0].size, np.float32)}
    return schedule(list(kernels), inputs, {"y": ((kernels[0].outputs[0].size,), float32)})


def test_small_kernels_take_the_preferred_width():
    g = graph(copy(12, flat((0, 4), (1, 1)), (3, 4)))
    assert choose_index_bits(g, (32, 64), 64) is g  # already 64
    narrow = choose_index_bits(g, (32, 64), 32)
    assert [k.index_bits for k in narrow.kernels] == [32]
    assert narrow.kernels[0].stores == g.kernels[0].stores


def test_a_buffer_past_int32_needs_64_bits():
    k = copy(BIG, Var(0), (BIG,))
    assert index_span(k) == (0, BIG)
    assert choose_index_bits(graph(k), (32, 64), 32).kernels[0].index_bits == 64
    with pytest.raises(ValueError, match=r"k0_copy: indices up to 2147483648 fit none of the "
                                         r"target's index widths \(32,\)"):
        choose_index_bits(graph(k), (32,), 32)


def test_the_iteration_count_counts_even_when_every_buffer_fits():
    k = replace(copy(16, Binary("mod", Var(0), c64(16)), (1 << 16,)), domain=(1 << 16, 1 << 16))
    assert index_span(k)[1] >= 1 << 32
    assert choose_index_bits(graph(k), (32, 64), 32).kernels[0].index_bits == 64


def test_intermediate_products_count():
    """(i * 2**28) // 2**20 stays below 2**11, but i * 2**28 does not fit an int32."""
    index = Binary("idiv", Binary("mul", Var(0), c64(1 << 28)), c64(1 << 20))
    k = copy(16, index, (16,), src=1 << 12)
    assert index_span(k)[1] == 15 << 28
    assert choose_index_bits(graph(k), (32, 64), 32).kernels[0].index_bits == 64
    with pytest.raises(KernelEvalError, match=r"k0_copy: index arithmetic overflows int32 "
                                              r"\(index_bits 32\): \(i0 \* 268435456\)"):
        run_schedule(graph(replace(k, index_bits=32)), [np.zeros(1 << 12, np.float32)])
    run_schedule(graph(k), [np.zeros(1 << 12, np.float32)])  # fine at 64 bits


def test_an_index_the_intervals_cannot_follow_takes_the_widest_width():
    index = Binary("shl", Var(0), c64(1))  # bit ops are not followed
    k = copy(8, index, (4,))
    assert index_span(k) is None
    assert choose_index_bits(graph(k), (32, 64), 32).kernels[0].index_bits == 64
    with pytest.raises(ValueError, match="an index it cannot bound fit none"):
        choose_index_bits(graph(k), (32,), 32)


def test_negative_indices_under_a_mask_count_with_their_sign():
    index = Binary("sub", Var(0), c64(5))
    mask = Binary("ge", index, c64(0))
    x, y = BufferArg("x", float32, 8), BufferArg("y", float32, 8)
    k = Kernel("k0_shift", (x,), (y,), (8,), (Store("y", Var(0), Load("x", index, float32,
                                                                       mask)),))
    assert index_span(k) == (-5, 8)


def test_lowered_graphs_run_the_same_with_32_bit_indices():
    for name, g in composite_graphs().items():
        kernels = lower(g)
        narrow = choose_index_bits(kernels, (32, 64), 32)
        assert {k.index_bits for k in narrow.kernels} == {32}, name
        inputs = data_for(g, np.random.default_rng(0))
        for a, b in zip(run_schedule(kernels, inputs), run_schedule(narrow, inputs)):
            np.testing.assert_array_equal(a, b)


def test_llvm_generates_kernels_marked_32_bit():
    k = replace(copy(12, flat((0, 4), (1, 1)), (3, 4)), index_bits=32)
    x = np.arange(12, dtype=np.float32)
    (got,) = compile_schedule(graph(k)).run([x])
    np.testing.assert_array_equal(got, x)


def test_the_evaluator_refuses_other_widths_and_oversized_32_bit_kernels():
    x = np.zeros(12, np.float32)
    with pytest.raises(KernelEvalError, match="k0_copy: index_bits 16 is not 32 or 64"):
        run_schedule(graph(replace(copy(12, Var(0), (12,)), index_bits=16)), [x])
    k = replace(copy(12, Binary("mod", Var(0), c64(12)), (12,)), domain=(1 << 16, 1 << 16),
                index_bits=32)
    with pytest.raises(KernelEvalError, match="k0_copy: index_bits 32, but it reaches "
                                              "4294967296 elements"):
        run_schedule(graph(k), [x])
