"""Adversarial checks of the CUDA and HIP code generators (compiler/codegen/cstyle.py,
cuda.py, hip.py): programs at the edges (indices near and past 2^31, long reductions of every
dtype, warp shuffles, barriers, integer division and float-to-int casts) whose generated source
must be well defined and compile with the real toolchains (NVRTC + ptxas for sm_80/sm_90,
hipcc for gfx90a and gfx1030).  Huge shapes are built as graphs only (nothing allocated).
"""
from __future__ import annotations

import re

import pytest
from neurenix.compiler import GraphBuilder
from neurenix.compiler.codegen import ptxas
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.targets import get_target
from neurenix.compiler.types import bool_, float32, float64, int32, int64
from neurenix.runtime import hip_compile, nvrtc
from test_codegen_cstyle import gpu_program
from test_lower import T

INT_MAX = (1 << 31) - 1
LOOP = re.compile(r"for \((int|long long) (\w+) = [^;]+; \2 < \(?(-?\d+)(?:LL)?\)?; "
                  r"\2 \+= (\d+)(?:LL)?\)")
"""A counted loop of the renderer: type, variable, literal bound, literal step."""


def _source(graph, target: str = "cuda") -> str:
    return gpu_program(lower(graph, caps=get_target(target).capabilities), target).source


def _overflowing_loops(source: str) -> list[str]:
    """Loops whose variable, stepping past the bound, leaves its signed type (UB in C++)."""
    bad = []
    for m in LOOP.finditer(source):
        kind, _, stop, step = m.groups()
        limit = INT_MAX if kind == "int" else (1 << 63) - 1
        if int(stop) - 1 + int(step) > limit:
            bad.append(m.group(0))
    return bad


def _compile_cuda(source: str) -> None:
    try:
        nvrtc.version()
        ptxas.find()
    except (nvrtc.NVRTCError, ptxas.PTXASError) as e:
        pytest.skip(f"cuda toolchain absent: {e}")
    for arch in (80, 90):
        assert ptxas.assemble(nvrtc.compile_ptx(source, arch), arch)


def _compile_hip(source: str) -> None:
    if not hip_compile.available():
        pytest.skip("hipcc absent")
    assert hip_compile.compile_code_object(source, ("gfx90a", "gfx1030"))


def _reduce(shape, op="reduce_sum", dtype=float32, axis=-1):
    b = GraphBuilder()
    x = b.input("x", T(*shape, dtype=dtype))
    axis = axis % len(shape)
    if op in ("argmax", "argmin"):
        return b.build([b.apply(op, x, axis=axis)])
    return b.build([b.apply(op, x, axes=(axis,))])


# ---- regressions --------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["reduce_sum", "argmax"])
def test_group_reduction_strided_loop_never_steps_past_int_max(op):
    """2^31 - 1 steps in a group reduction: `r += 256` from 2^31 - 256 would overflow a
    32-bit loop variable (undefined behaviour), so the loop variable is 64-bit while the
    body's index stays 32-bit."""
    source = _source(_reduce((INT_MAX,), op))
    assert "group reduction" in source
    assert _overflowing_loops(source) == []


# ---- the nastiest cases that work today -----------------------------------------------------


def test_grid_loops_near_int_max_widen_the_flat_index():
    """2^31 - 8 points: the grid-stride variable would pass INT_MAX, so it is 64-bit while
    the in-range index is 32-bit."""
    b = GraphBuilder()
    x = b.input("x", T(INT_MAX - 7))
    source = _source(b.build([b.exp(x)]))
    assert "for (long long p0 = g0; p0 < 2147483640LL;" in source
    assert _overflowing_loops(source) == []


@pytest.mark.parametrize("make", [
    lambda b, x: b.exp(x),
    lambda b, x: b.permute(x, perm=(1, 0)),
    lambda b, x: b.apply("reduce_sum", x, axes=(1,)),
    lambda b, x: b.apply("reduce_sum", x, axes=(0,)),
    lambda b, x: b.apply("argmax", x, axis=1),
], ids=["exp", "transpose", "row_sum", "col_sum", "argmax"])
def test_more_than_2_31_elements_index_in_64_bits(make):
    """A 70000 x 40000 tensor (2.8e9 elements): no 32-bit index arithmetic anywhere."""
    b = GraphBuilder()
    x = b.input("x", T(70000, 40000))
    source = _source(b.build([make(b, x)]))
    assert "const int " not in source and "for (int " not in source
    assert _overflowing_loops(source) == []


def test_argmax_over_a_huge_axis_shuffles_64_bit_indices():
    source = _source(_reduce((4, 1 << 30), "argmax"))
    assert "__shared__ long long part_index0[256];" in source
    assert len(re.findall(r"__shfl_down_sync\(0xffffffffu, wi0, \d+\)", source)) == 5
    assert "long long wi0" in source


def _barriers_and_shuffles(source: str) -> tuple[int, int]:
    """Walk the source's blocks: every barrier outside any `if`, every shuffle inside
    `if (lid < 32)` of a kernel whose blocks are a multiple of 32 threads."""
    stack: list[str] = []
    barriers = shuffles = 0
    threads = 0
    for line in source.splitlines():
        text = line.strip()
        m = re.search(r"__launch_bounds__\((\d+)\)", text)
        if m:
            threads = int(m.group(1))
        if "__syncthreads" in text:
            assert not any(h.startswith("if") for h in stack), f"barrier in a branch: {stack}"
            barriers += 1
        if "__shfl_down" in text:
            assert threads % 32 == 0, f"a shuffle in a {threads}-thread block"
            guards = [h for h in stack if h.startswith("if")]
            assert guards and re.fullmatch(r"if \(lid\d+ < 32(LL)?\) \{", guards[0]), stack
            shuffles += 1
        if text.endswith("{"):
            stack.append(text)
        elif text == "}":
            stack.pop()
    return barriers, shuffles


@pytest.mark.parametrize("dtype", [float32, float64, int32, int64, bool_])
@pytest.mark.parametrize("length", [256, 257, 1000, 4096])
def test_work_group_reductions_keep_barriers_uniform_and_shuffles_in_full_warps(dtype, length):
    op = "argmax" if dtype == bool_ else "reduce_max"
    for target in ("cuda", "hip"):
        barriers, shuffles = _barriers_and_shuffles(_source(_reduce((3, length), op, dtype),
                                                            target))
        assert barriers >= 3
        assert shuffles >= 5 or dtype == bool_


def _every_dtype_long_reductions():
    """One program: long-axis reductions of every kind on every dtype (work-group trees
    ending in shuffles of int, long long, float and double), plus full reductions."""
    b = GraphBuilder()
    outs = []
    for dtype in (float32, float64, int32, int64):
        x = b.input(f"x_{dtype.name}", T(3, 1000, dtype=dtype))
        for op in ("reduce_sum", "reduce_prod", "reduce_max", "reduce_min"):
            outs.append(b.apply(op, x, axes=(1,)))
        for op in ("argmax", "argmin"):
            outs.append(b.apply(op, x, axis=1))
    full = b.input("full", T(5000, dtype=float64))
    outs.append(b.apply("reduce_sum", full, axes=(0,)))
    flag = b.input("flag", T(3, 1000, dtype=bool_))
    outs.append(b.apply("argmax", flag, axis=1))
    return b.build(outs)


def test_long_reductions_of_every_dtype_compile_for_cuda():
    source = _source(_every_dtype_long_reductions(), "cuda")
    assert "__shfl_down_sync(0xffffffffu, wv" in source and "long long wv" in source
    assert "double wv" in source
    _compile_cuda(source)


def test_long_reductions_of_every_dtype_compile_for_hip():
    source = _source(_every_dtype_long_reductions(), "hip")
    assert "__shfl_down(wv" in source
    _compile_hip(source)


def test_integer_floor_division_never_divides_by_zero_or_overflows():
    """`x // y` and `x % y` on int32/int64: the divisor is replaced where it is 0 or -1
    (INT_MIN / -1 traps), and the results wrap through unsigned arithmetic."""
    for dtype, suffix in ((int32, ""), (int64, "LL")):
        b = GraphBuilder()
        x, y = b.input("x", T(5, 7, dtype=dtype)), b.input("y", T(5, 7, dtype=dtype))
        source = _source(b.build([b.apply("floordiv", x, y), b.apply("remainder", x, y)]))
        assert f"== 0{suffix}) || (" in source and f"== (-1{suffix}))" in source
        divisions = re.findall(r"\((\w+) [/%] (\w+)\)", source)
        assert divisions
        guarded = set(re.findall(rf"const {'int' if dtype == int32 else 'long long'} (\w+) = "
                                 rf"\(\w+ \? 1{suffix} : \w+\);", source))
        assert all(d in guarded for _, d in divisions), (divisions, guarded)
        _compile_cuda(source)


@pytest.mark.parametrize("src", [float32, float64])
def test_float_to_int_casts_are_range_guarded(src):
    """Out-of-range and NaN floats give INT_MIN (x86's rule), never C++'s undefined
    conversion."""
    b = GraphBuilder()
    x = b.input("x", T(4, 5, dtype=src))
    source = _source(b.build([b.apply("cast", x, dtype="int64"),
                              b.apply("cast", x, dtype="int32")]))
    fabs = "fabsf" if src == float32 else "fabs"
    assert re.search(rf"\({fabs}\(\w+\) < [^)]+\) \? \(\(long long\)\(\w+\)\) : "
                     r"\(-9223372036854775807LL - 1LL\)", source)
    assert re.search(rf"\({fabs}\(\w+\) < [^)]+\) \? \(\(int\)\(\w+\)\) : "
                     r"\(-2147483647 - 1\)", source)
    _compile_cuda(source)


@pytest.mark.parametrize("m, n, k", [(16, 16, 16), (15, 17, 16), (65, 63, 17), (64, 64, 1)])
def test_gemms_at_tile_edges_stage_only_in_bounds(m, n, k):
    """Around the 16 x 16 tile (and its 4 x 2 register blocking): every staged load and
    every store is guarded by the row, column and k bounds, barriers stay uniform."""
    b = GraphBuilder()
    x, w = b.input("x", T(m, k, dtype=float64)), b.input("w", T(k, n, dtype=float64))
    source = _source(b.build([b.matmul(x, w)]))
    _barriers_and_shuffles(source)
    if "tiled contraction" in source:
        assert re.search(rf"if \(\(m\w* < {m}\) && \(kk\w* < {k}\)\) \{{", source)
        assert re.search(rf"if \(\(m\w* < {m}\) && \(n\w* < {n}\)\) \{{", source)
    _compile_cuda(source)
