"""Skinny and small contractions (convolution GEMMs) and strided window reductions (pooling).

The tiled path picks the tile height MR that wastes the fewest clamped rows (16 or 32 output
channels) and gives the last column tile the narrowest vector that holds it; pooling windows
read their strided taps through contiguous masked loads and deinterleaving shuffles.  Every
case runs against np.matmul or the kernel interpreter, with its inputs against a guard page.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from kernel_helpers import (
    assert_same_across_threads,
    assert_same_guarded,
    c64,
    compile_schedule,
    flat,
    run_both,
    schedule,
)
from neurenix.compiler.codegen import generate
from neurenix.compiler.kernel.ir import Acc, Binary, BufferArg, Const, Kernel, Load, Store, Var
from neurenix.compiler.schedule import Window, window_rule
from neurenix.compiler.schedule.contraction import rows_per_tile
from neurenix.compiler.schedule.ranges import MIN_RANGE
from neurenix.compiler.targets import get_target
from neurenix.compiler.types import float32, float64
from test_codegen_llvm import assert_tiled_matmuls_right, build_matmul_program

CAPS = get_target("llvm").capabilities
AVX512 = replace(CAPS, vector_bits=512, masked_loads=True)
AVX2 = replace(CAPS, vector_bits=256, masked_loads=True)


@pytest.mark.parametrize("rows, mr", [(1, 1), (4, 4), (6, 6), (16, 8), (32, 8), (20, 5),
                                      (1024, 6), (128, 6), (40, 8), (25, 5), (1000, 6)])
def test_tile_height_avoids_clamped_rows(rows, mr):
    assert rows_per_tile(rows) == mr


SKINNY = [  # (batch, m, k, n, a transposed, b transposed, bias, dtype): conv-like GEMMs
    (2, 16, 27, 196, False, False, True, float32),   # last column tile of 4: NR / 8 lanes
    (2, 32, 144, 36, False, False, True, float32),   # 4 left: a quarter-width tile
    (0, 16, 27, 48, False, False, True, float32),    # 16 left: a half-width tile
    (0, 20, 9, 40, False, False, False, float32),    # 8 left, MR 5
    (0, 17, 5, 33, True, False, False, float32),     # 1 left, rows clamped
    (3, 32, 11, 20, False, False, True, float64),    # float64: 4 left of 16
    (0, 16, 3, 17, False, True, False, float32),     # b contiguous along k, packed by rows
    (0, 8, 7, 16, False, False, False, float32),     # one half-width tile only
]


@pytest.fixture(scope="module")
def skinny_program():
    return build_matmul_program("sk", SKINNY, 11)


def test_skinny_contractions_match_np_matmul_and_stay_in_bounds(skinny_program):
    assert_tiled_matmuls_right(skinny_program, SKINNY, "sk")


def test_skinny_contractions_split_across_threads_identically(skinny_program):
    _, _, exe, inputs, _ = skinny_program
    assert_same_across_threads(exe, inputs, (2, 5))


def test_narrow_edge_tiles_use_narrow_vectors(skinny_program):
    """196 columns: six tiles of NR and a last one of 4 columns in the narrowest vector."""
    _, program, _, _, _ = skinny_program
    lanes = CAPS.vector_bits // 32
    if lanes < 8:
        pytest.skip("no wide vectors on this host")
    assert f"<{lanes // 2} x float>" in program.source


# ---- pooling windows ------------------------------------------------------------------------


def pool_kernel(name: str, shape: tuple[int, int, int, int], window: int, stride: int,
                op: str, dtype=float32, scale: float | None = None) -> Kernel:
    """y[n, c, i, j] = op over (r, t) < window of x[n, c, i * stride + r, j * stride + t]
    (times `scale`, for an average), on x of `shape` (N, C, H, W)."""
    n, c, h, w = shape
    ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
    index = flat((0, c * h * w), (1, h * w), (2, stride * w), (4, w), (3, stride), (5, 1))
    value = Acc() if scale is None else Binary("mul", Acc(), Const(scale, dtype))
    return Kernel(name, (BufferArg(f"{name}_x", dtype, n * c * h * w),),
                  (BufferArg(name, dtype, n * c * ho * wo),), (n, c, ho, wo),
                  (Store(name, flat((0, c * ho * wo), (1, ho * wo), (2, wo), (3, 1)), value),),
                  reduce=(window, window), reduce_op=op,
                  reduce_value=Load(f"{name}_x", index, dtype))


POOLS = [  # (shape, window, stride, op, dtype, scale)
    ((2, 3, 28, 28), 2, 2, "max", float32, None),
    ((2, 5, 14, 14), 2, 2, "max", float32, None),
    ((1, 2, 9, 37), 2, 2, "min", float32, None),     # 18 outputs a row: two chunks
    ((1, 3, 6, 7), 2, 2, "sum", float32, 0.25),      # odd width: the last column unused
    ((2, 2, 9, 10), 3, 3, "max", float32, None),     # stride 3, 3 x 3 taps
    ((1, 2, 8, 35), 2, 2, "max", float64, None),
    ((1, 1, 2, 2), 2, 2, "max", float32, None),      # one output
]


@pytest.fixture(scope="module")
def pool_program():
    rng = np.random.default_rng(5)
    kernels, data = [], {}
    for i, (shape, window, stride, op, dt, scale) in enumerate(POOLS):
        kern = pool_kernel(f"pool{i}", shape, window, stride, op, dt, scale)
        kernels.append(kern)
        x = rng.standard_normal(kern.inputs[0].size).astype(dt.np_type)
        x[::13] = np.nan if i == 0 else x[::13]
        data[kern.inputs[0].name] = x
    s = schedule(kernels, data, {k.name: ((k.outputs[0].size,), k.outputs[0].dtype)
                                 for k in kernels})
    return s, compile_schedule(s), [data[n] for n in s.inputs]


def test_pooling_windows_match_the_interpreter_and_stay_in_bounds(pool_program):
    s, exe, inputs = pool_program
    assert all(isinstance(window_rule(k, AVX512), Window) for k in s.kernels)
    got, want = run_both(s, inputs, exe)
    for g, w, case in zip(got, want, POOLS):
        tol = 1e-6 if case[4] == float32 else 1e-12
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=str(case))
    assert np.isnan(got[0]).any()  # max propagates NaN
    assert_same_guarded(exe, inputs, got)


def test_pooling_windows_load_contiguously(pool_program):
    s, exe, _ = pool_program
    if not CAPS.masked_loads:
        pytest.skip("no masked vector loads on this host")
    assert "llvm.masked.load" in exe.program.source


def test_window_path_declines_what_it_cannot_deinterleave():
    unit = pool_kernel("u", (1, 1, 4, 8), 2, 1, "max")          # stride 1: plain loads
    big = pool_kernel("b", (1, 1, 10, 10), 5, 5, "max")         # stride 5
    arg = Kernel("a", unit.inputs, (BufferArg("a", float32, 21),), unit.domain, unit.stores,
                 reduce=unit.reduce, reduce_op="argmax", reduce_value=unit.reduce_value)
    masked = Kernel("m", unit.inputs, unit.outputs, (1, 1, 3, 3), unit.stores,
                    reduce=(2, 2), reduce_op="max",
                    reduce_value=Load("u_x", flat((2, 8), (4, 8), (3, 2), (5, 1)), float32,
                                      mask=Binary("lt", Var(3), c64(2)), other=0.0))
    for kernel in (unit, big, arg, masked):
        assert window_rule(kernel, AVX512) is None, kernel.name
    wide = pool_kernel("d", (1, 1, 4, 8), 2, 2, "max", float64)
    assert isinstance(window_rule(wide, AVX512), Window)
    assert window_rule(wide, AVX512).lanes == 8
    assert window_rule(pool_kernel("f", (1, 1, 4, 8), 2, 2, "max"), AVX2).lanes == 8
    assert window_rule(wide, replace(AVX512, masked_loads=False)) is None


def test_pooling_window_threads_identically(pool_program):
    _, exe, inputs = pool_program
    exe.num_threads = 1
    serial = exe.run(inputs)
    exe.num_threads = 3
    for a, b in zip(serial, exe.run(inputs)):
        np.testing.assert_array_equal(a, b)


def test_float64_window_gives_exact_maxima():
    x = np.arange(2 * 6 * 12, dtype=np.float64)[::-1].copy()
    kern = pool_kernel("p", (1, 2, 6, 12), 2, 2, "max", float64)
    s = schedule([kern], {"p_x": x}, {"p": ((kern.outputs[0].size,), float64)})
    got, want = run_both(s, [x])
    np.testing.assert_array_equal(got[0], want[0])


# ---- unfolding (im2col) copies: short masked rows, outer axes counted ----------------------


def unfold_kernel(name: str, n: int, c: int, h: int, w: int, window: int = 3) -> Kernel:
    """t[n, c, r, s, i, j] = x[n, c, i + r - 1, j + s - 1] (zero outside): a padded 3 x 3
    unfold, with the masked load and six-axis domain lowering writes."""
    inside = None
    for tap, pos, size in ((2, 4, h), (3, 5, w)):
        at = Binary("sub", Binary("add", Var(tap), Var(pos)), c64(1))
        both = Binary("and", Binary("ge", at, c64(0)), Binary("lt", at, c64(size)))
        inside = both if inside is None else Binary("and", inside, both)
    index = Binary("sub", flat((0, c * h * w), (1, h * w), (2, w), (3, 1), (4, w), (5, 1)),
                   c64(w + 1))
    domain = (n, c, window, window, h, w)
    out = flat((0, c * window * window * h * w), (1, window * window * h * w),
               (2, window * h * w), (3, h * w), (4, w), (5, 1))
    return Kernel(name, (BufferArg(f"{name}_x", float32, n * c * h * w),),
                  (BufferArg(name, float32, n * c * window * window * h * w),), domain,
                  (Store(name, out, Load(f"{name}_x", index, float32, mask=inside)),))


UNFOLDS = [(2, 3, 28, 28), (4, 16, 14, 14), (1, 2, 7, 7), (3, 5, 9, 17), (1, 1, 3, 40)]


def test_unfold_copies_match_the_interpreter_and_stay_in_bounds():
    rng = np.random.default_rng(8)
    kernels = [unfold_kernel(f"uf{i}", *shape) for i, shape in enumerate(UNFOLDS)]
    data = {k.inputs[0].name: rng.standard_normal(k.inputs[0].size).astype(np.float32)
            for k in kernels}
    s = schedule(kernels, data, {k.name: ((k.outputs[0].size,), float32) for k in kernels})
    exe = compile_schedule(s)
    inputs = [data[n] for n in s.inputs]
    got, want = run_both(s, inputs, exe)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert_same_guarded(exe, inputs, got)
    for threads in (1, 3):
        exe.num_threads = threads
        for g, w in zip(exe.run(inputs), got):
            np.testing.assert_array_equal(g, w)


def test_outer_axes_past_a_few_hundred_rows_are_counted_not_divided():
    """The range covers the outer axes up to MIN_RANGE rows (batch x channels here); the
    window and row axes inside are plain loops."""
    kern = unfold_kernel("uf", 4, 80, 14, 14)
    small = unfold_kernel("us", 1, 2, 7, 7)
    data = {k.inputs[0].name: np.zeros(k.inputs[0].size, np.float32) for k in (kern, small)}
    s = schedule([kern, small], data, {k.name: ((k.outputs[0].size,), float32)
                                       for k in (kern, small)})
    ranges = generate(s).metadata["ranges"]
    assert ranges["neurenix_uf"] == 4 * 80 >= MIN_RANGE
    assert ranges["neurenix_us"] == 1 * 2 * 3 * 3 * 7  # all outer axes: still fewer rows
