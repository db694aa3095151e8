"""lavapipe's loop limit and static programs (docs/targets/webgpu.md, "The loop limit").

Mesa's lavapipe silently ends every loop of an invocation after 65,535 loop-header runs in
all.  A static kernel whose loops (or the helper functions it calls) could run longer per
invocation is rendered again (compiler/codegen/cstyle.py `_render_static`): unrolled more,
then as a work-group per output point, and refused at compile time where nothing fits.
Each case here gave a wrong answer, silently, before: a serial scatter-add of 4.5M updates
(6.8% lost), a matmul with k = 1.1M (0.89 relative error), a sum of 500,000 float
remainders (3.9e14) and of 2M int64 floor divisions (0.76).  Now the first is unrolled
more, the second a work-group reduction per output, the third calls a loop-free fmod, the
fourth a loop-free int64 division; a serial kernel past the limit even so is split into
parts launched in order.  lavapipe compiles every copy of an unrolled loop body (some 20 ms
for a scatter-add's): the copies are kept to what the limit needs.  Codegen-only checks use a
target of WebGPU's capabilities with 1,024 invocations per work-group (lavapipe's), so they
do not depend on the adapter; the device checks run on lavapipe, a second or so each.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
from devices import needs_device
from neurenix.compiler import GraphBuilder, pipeline
from neurenix.compiler.codegen.cstyle import GridCodegenError, generate_program
from neurenix.compiler.codegen.wgsl import WGSL, _flat_prelude
from neurenix.compiler.codegen.wgsl_int64 import prelude as i64_prelude
from neurenix.compiler.codegen.wgsl_math import prelude
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.targets import (
    Capabilities,
    Target,
    get_target,
    register_target,
    unregister_target,
)
from neurenix.compiler.types import TensorType, float32, int32, int64
from test_codegen_cstyle import gpu_program

LIMIT = 65535


@pytest.fixture(scope="module")
def wide():
    """A WGSL target of lavapipe's capabilities (1,024 invocations per work-group)."""
    caps = Capabilities(**{**get_target("webgpu").capabilities.__dict__,
                           "max_workgroup_size": 1024, "local_memory_bytes": 32768,
                           "max_grid": 65535})
    target = register_target(Target("webgpu-loop-limit", "webgpu", lambda: caps,
                                    "neurenix.compiler.codegen.wgsl:generate", None,
                                    rules="neurenix.compiler.schedule.grid:GRID_RULES"),
                             replace=True)
    yield caps, target.name
    unregister_target(target.name)


def _graph(build):
    b = GraphBuilder()
    return b.build(build(b))


def _codegen(wide, build):
    caps, name = wide
    return gpu_program(lower(_graph(build), caps=caps), name)


def _run(build, inputs):
    needs_device("webgpu")
    from neurenix.runtime import webgpu
    program, _ = pipeline.build(_graph(build), "webgpu")
    return program, webgpu.Executable(program).run(inputs)


def _matmul(k: int):
    """(16, k) @ (k, 16) of broadcast rows and columns: k floats per operand in memory."""
    def build(b):
        x = b.apply("expand", b.input("x", TensorType((1, k), float32)), shape=(16, k))
        w = b.apply("expand", b.input("w", TensorType((k, 1), float32)), shape=(k, 16))
        return [b.apply("matmul", x, w)]
    return build


def _remainder_sum(n: int):
    def build(b):
        x, y = (b.input(name, TensorType((1, n), float32)) for name in "xy")
        return [b.reduce_sum(b.apply("remainder", x, y), axes=(1,))]
    return build


def test_a_long_k_unrolls_the_contraction_steps_then_takes_a_group_per_output(wide):
    """A tiled contraction runs k / 16 staging passes of 16 steps each (17 headers): past
    the limit at k ~ 58,000 as counted, its steps through the tiles are unrolled; past
    16 x 65,535 even so, each output is a work-group's reduction."""
    short, = _codegen(wide, _matmul(50_000)).kernels
    assert "tiled contraction" in short.source and "for (var j" in short.source
    longer, = _codegen(wide, _matmul(60_000)).kernels
    assert "tiled contraction" in longer.source and "for (var j" not in longer.source
    longest, = _codegen(wide, _matmul(1_100_000)).kernels
    assert "group reduction" in longest.source and longest.grid == (256,)


def test_a_contraction_with_its_steps_unrolled_is_right():
    rng = np.random.default_rng(0)
    k = 60_000
    x, w = rng.uniform(-1, 1, (1, k)).astype(np.float32), rng.uniform(-1, 1, (k, 1)).astype(
        np.float32)
    program, (y,) = _run(_matmul(k), [x, w])
    assert "for (var j" not in program.kernels[0].source
    np.testing.assert_allclose(y, np.full((16, 16), (x.astype(np.float64) @ w)[0, 0]),
                               rtol=1e-4, atol=1e-3)


def test_a_serial_scatter_add_past_64_copies_unrolls_more():
    """One work-item adds 4.5M updates in order: 64 copies per iteration left 70,313
    iterations (the last 6.8% lost); now 79 copies, 56,963 iterations (lavapipe compiles
    each copy: about 1.5 s here without Mesa's shader cache)."""
    n = 4_500_000

    def build(b):
        return [b.apply("scatter_add", b.input("x", TensorType((4,), float32)),
                        b.input("i", TensorType((n,), int64)),
                        b.input("u", TensorType((n,), float32)), axis=0)]
    program, (y,) = _run(build, [np.zeros(4, np.float32), np.arange(n) % 4,
                                 np.ones(n, np.float32)])
    assert "p0 += 79i" in program.kernels[1].source
    np.testing.assert_array_equal(y, [n / 4] * 4)


def test_a_reduction_calling_fmod_calls_a_loop_free_fmod():
    """C's fmod loops up to 71 times per call (4 bits per iteration): a sum of 500,000
    remainders in a work-group of 256 counted 140,842 iterations per work-item and lost its
    tail on lavapipe (values near 1e38 reduced by ~1: 32 iterations per call, a 4e14 error);
    rendered again, it calls `nx_fmod_flat` (no loop) and counts 1,966."""
    n = 500_000
    rng = np.random.default_rng(1)
    x = rng.uniform(1e37, 3e38, (1, n)).astype(np.float32)
    y = rng.uniform(0.5, 1.0, (1, n)).astype(np.float32)
    program, (total,) = _run(_remainder_sum(n), [x, y])
    assert "nx_fmod_flat(" in program.kernels[0].source
    assert "nx_fmod(" not in program.kernels[0].source
    np.testing.assert_allclose(total, np.fmod(x, y).astype(np.float64).sum(1), rtol=1e-5)


def test_the_loop_free_fmod_is_exact():
    """`nx_fmod_flat` against C's fmod bit for bit: random bit patterns (denormals, NaNs,
    infinities), large quotients, and every pair of edge values."""
    needs_device("webgpu")
    from neurenix.runtime import webgpu
    from neurenix.runtime.program import BufferSpec, KernelInfo, Program, TensorSpec

    n = 1 << 18
    body = ["@group(0) @binding(0) var<storage, read> x: array<f32>;",
            "@group(0) @binding(1) var<storage, read> y: array<f32>;",
            "@group(0) @binding(2) var<storage, read_write> o: array<f32>;",
            "@compute @workgroup_size(256)",
            "fn f(@builtin(global_invocation_id) gid: vec3<u32>) {",
            "  o[gid.x] = nx_fmod_flat(x[gid.x], y[gid.x]);",
            "}"]
    flat = _flat_prelude(body)
    source = "\n".join(prelude(body + flat) + flat + body)
    specs = [TensorSpec(name, (n,), "float32") for name in "xyo"]
    program = Program("webgpu", "kernels", source, specs[:2], specs[2:],
                      [BufferSpec(name, "float32", n, "input" if name != "o" else "output")
                       for name in "xyo"],
                      [KernelInfo("f", ("x", "y", "o"), grid=(n // 256,), block=(256,),
                                  source=source)],
                      arena_bytes=0, constants={}, metadata={"storage": {"bool": "uint32"}})
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 1 << 32, (2, n), dtype=np.uint64).astype(np.uint32).view(np.float32)
    x[:1000], y[:1000] = rng.uniform(-1e38, 1e38, 1000), rng.uniform(0.1, 3, 1000)
    edge = np.array([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1.17549435e-38, 3.4028235e38,
                     np.inf, -np.inf, np.nan, 5.5, 3.0, 2.0 ** -140, 7e-39], np.float32)
    ex, ey = np.meshgrid(edge, edge)
    x[1000:1000 + ex.size], y[1000:1000 + ex.size] = ex.ravel(), ey.ravel()
    (got,) = webgpu.Executable(program).run([x, y])
    with np.errstate(all="ignore"):
        want = np.fmod(x, y)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), (x[~same][:5], y[~same][:5], got[~same][:5], want[~same][:5])


def test_sines_in_a_long_sum_call_a_loop_free_sine(wide):
    """sin runs 4 loop iterations per call as counted (its range reduction's loop over 3
    words of 2/pi, which LLVM unrolls on lavapipe: such a sum of 20M sines was right): a sum
    of 5M sines counts 80,662 iterations per work-item of 256, so it calls `nx_trig_flat`."""
    def build(b):
        return [b.reduce_sum(b.apply("sin", b.input("x", TensorType((1, 5_000_000), float32))),
                             axes=(1,))]
    kernel, = _codegen(wide, build).kernels
    assert kernel.block == (256,) and "nx_trig_flat(" in kernel.source
    assert "nx_trig(" not in kernel.source


def test_the_loop_free_sine_is_the_looping_one():
    """`nx_trig_flat` against `nx_trig`, bit for bit, sin and cos of 2**16 random bit
    patterns (every exponent: the range reduction's every word of 2/pi)."""
    needs_device("webgpu")
    from neurenix.runtime import webgpu
    from neurenix.runtime.program import BufferSpec, KernelInfo, Program, TensorSpec

    n = 1 << 16
    body = ["@group(0) @binding(0) var<storage, read> x: array<f32>;",
            "@group(0) @binding(1) var<storage, read_write> o: array<u32>;",
            "@compute @workgroup_size(256)",
            "fn f(@builtin(global_invocation_id) gid: vec3<u32>) {",
            "  let v = x[gid.x];",
            "  o[gid.x] = select(0u, 1u, "
            "bitcast<u32>(nx_trig(v, 0u)) == bitcast<u32>(nx_trig_flat(v, 0u)) && "
            "bitcast<u32>(nx_trig(v, 1u)) == bitcast<u32>(nx_trig_flat(v, 1u)));",
            "}"]
    flat = _flat_prelude(body)
    source = "\n".join(prelude(body + flat) + flat + body)
    program = Program("webgpu", "kernels", source, [TensorSpec("x", (n,), "float32")],
                      [TensorSpec("o", (n,), "uint32")],
                      [BufferSpec("x", "float32", n, "input"),
                       BufferSpec("o", "uint32", n, "output")],
                      [KernelInfo("f", ("x", "o"), grid=(n // 256,), block=(256,),
                                  source=source)],
                      arena_bytes=0, constants={}, metadata={"storage": {"bool": "uint32"}})
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.where(np.isnan(x), np.float32(1.5), x)
    (same,) = webgpu.Executable(program).run([x])
    assert same.all()


def test_many_points_reducing_through_looping_helpers(wide):
    """70,000 points (too many for a work-group each, by the rule) each summing 20,000
    results of a looping helper, a work-item per point (x 72 for fmod, x 10 for int64 floor
    division, x 5 for sin, as counted): each calls its loop-free version."""
    def build(dtype, op):
        def graph(b):
            x, y = (b.input(name, TensorType((70_000, 200, 100), dtype)) for name in "xy")
            value = b.apply(op, x) if op == "sin" else b.apply(op, x, y)
            return [b.reduce_sum(value, axes=(1, 2))]
        return graph
    fmod, = _codegen(wide, build(float32, "remainder")).kernels
    assert "grid loop" in fmod.source and "nx_fmod_flat(" in fmod.source
    idiv, = _codegen(wide, build(int64, "floordiv")).kernels
    assert "grid loop" in idiv.source and "i64_idiv_flat(" in idiv.source
    sin, = _codegen(wide, build(float32, "sin")).kernels
    assert "grid loop" in sin.source and "nx_trig_flat(" in sin.source


def test_a_serial_kernel_past_the_limit_even_unrolled_is_split_into_parts(wide):
    """A serial scatter-add of 40M updates (one work-item, in order) counts 156,251
    iterations even with 256 copies per iteration: three kernels, launched in order, each
    adding a third of the updates in 57,225 iterations of 233 copies."""
    n = 40_000_000

    def build(b):
        return [b.apply("scatter_add", b.input("x", TensorType((4,), float32)),
                        b.input("i", TensorType((n,), int64)),
                        b.input("u", TensorType((n,), float32)), axis=0)]
    program = _codegen(wide, build)
    names = [k.name for k in program.kernels]
    assert names == ["k0_scatter_add_init"] + [f"k1_scatter_add_part{i}" for i in range(3)]
    assert list(program.metadata["schedules"]) == names
    assert "p0 < 13333334i; p0 += 233i" in program.kernels[1].source
    assert "+ 26666668i);" in program.kernels[3].source


class SmallLimit(WGSL):
    """WGSL with a loop limit of 200 (or 20), so that what passes it is small enough to
    compile and run here fast (lavapipe's own limit is far from reached)."""

    loop_limit = 200


def generate_small_limit(kernels, plan, target):
    return generate_program(kernels, plan, target, SmallLimit())


def generate_limit_20(kernels, plan, target):
    return generate_program(kernels, plan, target, type("Limit20", (WGSL,), {"loop_limit": 20})())


def generate_limit_50(kernels, plan, target):
    return generate_program(kernels, plan, target, type("Limit50", (WGSL,), {"loop_limit": 50})())


@contextmanager
def limited(generate: str, caps):
    """A WGSL target whose programs `generate` (a function here) generates."""
    target = register_target(Target(f"webgpu-{generate}", "webgpu", lambda: caps,
                                    f"test_webgpu_loop_limit:{generate}", None,
                                    rules="neurenix.compiler.schedule.grid:GRID_RULES"),
                             replace=True)
    try:
        yield target.name
    finally:
        unregister_target(target.name)


def test_the_parts_of_a_serial_kernel_add_every_update(monkeypatch):
    """10,000 updates under a limit of 200 with 8 copies per iteration, or 16 rendered
    again: 4 parts of 2,500 (167 iterations of 15 copies each), run in order on lavapipe."""
    needs_device("webgpu")
    from neurenix.compiler.codegen import cstyle
    from neurenix.runtime import webgpu
    monkeypatch.setattr(cstyle, "MAX_UNROLL", 8)
    monkeypatch.setattr(cstyle, "MAX_BOOST", 16)
    caps = get_target("webgpu").capabilities
    n = 10_000

    def build(b):
        return [b.apply("scatter_add", b.input("x", TensorType((5,), float32)),
                        b.input("i", TensorType((n,), int64)),
                        b.input("u", TensorType((n,), float32)), axis=0)]
    with limited("generate_small_limit", caps) as name:
        program = gpu_program(lower(_graph(build), caps=caps), name)
    assert len(program.kernels) == 5 and "p0 < 5000i; p0 += 15i" in program.kernels[2].source
    i = np.arange(n) % 5
    u = np.arange(n, dtype=np.float32) % 3
    (y,) = webgpu.Executable(program).run([np.ones(5, np.float32), i, u])
    np.testing.assert_array_equal(y, np.ones(5) + np.bincount(i, weights=u, minlength=5))


def test_int64_division_and_power_are_rendered_without_loops(wide):
    """A sum of 8M int64 floor divisions (9 iterations each) counts 71,479 iterations per
    work-item even with 1,024 of them: it calls `i64_idiv_flat` (the division's 64 steps
    unrolled) in a work-group of 256; modulo and power likewise."""
    def build(op):
        def graph(b):
            a, d = (b.input(name, TensorType((1, 8_000_000), int64)) for name in "ad")
            return [b.reduce_sum(b.apply(op, a, d), axes=(1,))]
        return graph
    for op, helper in (("floordiv", "i64_idiv"), ("remainder", "i64_mod"), ("pow", "i64_pow")):
        kernel, = _codegen(wide, build(op)).kernels
        assert f"{helper}_flat(" in kernel.source and f"{helper}(" not in kernel.source
        assert "for (" not in kernel.source.split("@group")[0]  # no loop in its helpers
        assert kernel.block == (256,)


def test_the_loop_free_int64_helpers_agree_with_the_looping_ones():
    """i64_idiv, i64_mod and i64_pow against their `_flat` versions on lavapipe: random
    values over the whole range, small divisors, small bases and exponents, edge values."""
    needs_device("webgpu")
    from neurenix.runtime import webgpu
    from neurenix.runtime.program import BufferSpec, KernelInfo, Program, TensorSpec

    n = 1 << 14
    body = ["@group(0) @binding(0) var<storage, read> a: array<u32>;",
            "@group(0) @binding(1) var<storage, read> b: array<u32>;",
            "@group(0) @binding(2) var<storage, read_write> o: array<u32>;",
            "@compute @workgroup_size(256)",
            "fn f(@builtin(global_invocation_id) gid: vec3<u32>) {",
            "  let k = gid.x;",
            "  let x = vec2<u32>(a[2u * k], a[2u * k + 1u]);",
            "  let y = vec2<u32>(b[2u * k], b[2u * k + 1u]);",
            "  let p = vec2<u32>(b[2u * k] & 0x7fu, 0u);",
            "  o[3u * k] = select(0u, 1u, all(i64_idiv(x, y) == i64_idiv_flat(x, y)));",
            "  o[3u * k + 1u] = select(0u, 1u, all(i64_mod(x, y) == i64_mod_flat(x, y)));",
            "  o[3u * k + 2u] = select(0u, 1u, all(i64_pow(x, p) == i64_pow_flat(x, p)) && "
            "all(i64_pow(x, y) == i64_pow_flat(x, y)));",
            "}"]
    flat = _flat_prelude(body)
    source = "\n".join(i64_prelude(body + flat) + flat + body)
    program = Program("webgpu", "kernels", source,
                      [TensorSpec(name, (2 * n,), "uint32") for name in "ab"],
                      [TensorSpec("o", (3 * n,), "uint32")],
                      [BufferSpec("a", "uint32", 2 * n, "input"),
                       BufferSpec("b", "uint32", 2 * n, "input"),
                       BufferSpec("o", "uint32", 3 * n, "output")],
                      [KernelInfo("f", ("a", "b", "o"), grid=(n // 256,), block=(256,),
                                  source=source)],
                      arena_bytes=0, constants={}, metadata={"storage": {"bool": "uint32"}})
    rng = np.random.default_rng(0)
    a, b = rng.integers(-2 ** 63, 2 ** 63 - 1, (2, n), dtype=np.int64, endpoint=True)
    b[:n // 4] = rng.integers(-1000, 1000, n // 4)
    a[n // 4:n // 2] = rng.integers(-5, 5, n // 4)
    edge = np.array([0, 1, -1, 2, -2, 2 ** 63 - 1, -2 ** 63, 2 ** 32, -2 ** 32, 2 ** 31 - 1,
                     7, -7], np.int64)
    ea, eb = np.meshgrid(edge, edge)
    a[n // 2:n // 2 + ea.size], b[n // 2:n // 2 + ea.size] = ea.ravel(), eb.ravel()
    (same,) = webgpu.Executable(program).run([a.view(np.uint32), b.view(np.uint32)])
    assert same.reshape(n, 3).all(axis=0).tolist() == [True, True, True]


def _sum_100k(b):
    return [b.reduce_sum(b.input("x", TensorType((100_000,), float32)), axes=(0,))]


def test_the_widest_work_groups_are_taken_where_256_do_not_fit(wide):
    """Under a loop limit of 50, a sum of 100,000 elements counts 403 iterations per
    work-item of 256 (45 unrolled more), 112 of 1,024 and 47 unrolled more: that one."""
    caps, _ = wide
    with limited("generate_limit_50", caps) as name:
        kernel, = gpu_program(lower(_graph(_sum_100k), caps=caps), name).kernels
    assert kernel.block == (1024,) and "group reduction" in kernel.source


def test_what_no_rendering_fits_is_refused_at_compile_time(wide):
    """Under a loop limit of 20, the same sum counts 31 iterations per work-item even as
    work-groups of 1,024 unrolled more (98 steps each in 17 iterations of 6 copies, a tree
    of 10 levels): refused, naming the kernel, the limit and the counts tried, never a wrong
    answer."""
    caps, _ = wide
    with limited("generate_limit_20", caps) as name, \
            pytest.raises(GridCodegenError, match=r"webgpu: kernel \w+: its loops would run "
                                                  r"past the driver's limit of 20 loop "
                                                  r"iterations per invocation.*; 31 as "
                                                  r"GroupReduction of 1024 work-items unrolled "
                                                  r"more\.  Split the computation"):
        gpu_program(lower(_graph(_sum_100k), caps=caps), name)


def test_no_limit_no_change():
    """Targets without a loop limit (OpenCL) render the long matmul as scheduled."""
    program = gpu_program(lower(_graph(_matmul(1_100_000)),
                                caps=get_target("opencl").capabilities), "opencl")
    assert "tiled contraction" in program.kernels[0].source



def test_an_integer_power_in_a_long_reduction_is_unrolled(wide):
    """An int32 power runs a 32-step square-and-multiply loop per element: a sum of 1M of
    them counts 132,850 iterations per work-item of 256 (LLVM unrolls so short a loop on
    lavapipe, but the count cannot know it); rendered again without that loop, 3,919."""
    def build(b):
        a, e = (b.input(name, TensorType((1, 1_000_000), int32)) for name in "ae")
        return [b.reduce_sum(b.apply("pow", a, e), axes=(1,))]
    kernel, = _codegen(wide, build).kernels
    assert "group reduction" in kernel.source and kernel.block == (256,)
    assert "var pk" not in kernel.source and kernel.source.count("pw0 = ") == 32
