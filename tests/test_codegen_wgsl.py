"""The WGSL dialect (compiler/codegen/wgsl.py) against the kernel evaluator and the graph
reference, run on the WebGPU adapter (lavapipe in CI) by a minimal wgpu launcher written
here (the runtime module is separate), and what the dialect refuses.

Tolerances as in test_codegen_cstyle.py: float32 within 2e-6 relative (lavapipe's exp, log
and pow are within a few ulp; fmod, floor division and remainder are exact), reductions in
another order within 1e-5; integers (int64 over its whole range, emulated), bools and the
random numbers exactly.
"""
from __future__ import annotations

import numpy as np
import pytest
from neurenix.compiler import GraphBuilder, evaluate
from neurenix.compiler.codegen.cstyle import GridCodegenError
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.targets import (
    Capabilities,
    Target,
    get_target,
    register_target,
    unregister_target,
)
from neurenix.compiler.types import KERNEL_DTYPES, float64, int64
from test_codegen_cstyle import (
    check_graph,
    compare,
    gpu_program,
    graph_results,
    inplace_chain,
    op_graph,
    structural_graphs,
)
from test_lower import T, data_for


@pytest.fixture(scope="module")
def run_webgpu():
    """Runs a Program on the WebGPU adapter: inputs, outputs, constants in buffers of their
    own, temporaries bound at their offsets in one arena, every kernel in one submission."""
    try:
        import wgpu
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception:
        adapter = None
    if adapter is None:
        pytest.skip("no WebGPU adapter")
    names = ("max-storage-buffers-per-shader-stage", "max-compute-invocations-per-workgroup",
             "max-compute-workgroup-storage-size")
    device = adapter.request_device_sync(required_limits={n: adapter.limits[n] for n in names})
    usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST

    def nbytes(dtype: str, size: int) -> int:
        return max(4, size * (4 if dtype == "bool" else np.dtype(dtype).itemsize))

    def upload(array):
        array = np.ascontiguousarray(array)
        data = (array.astype(np.uint32) if array.dtype == np.bool_ else array).tobytes()
        data += b"\0" * (-len(data) % 4 or (4 if not data else 0))
        return device.create_buffer_with_data(data=data, usage=usage), 0, len(data)

    def run(program, inputs):
        buffers = {s.name: upload(np.asarray(a, s.dtype))
                   for s, a in zip(program.inputs, inputs)}
        buffers.update({n: upload(a) for n, a in program.constants.items()})
        arena = device.create_buffer(size=max(256, program.arena_bytes + 16), usage=usage)
        specs = {b.name: b for b in program.buffers}
        for b in program.buffers:
            if b.kind == "output":
                n = nbytes(b.dtype, b.size)
                buffers[b.name] = device.create_buffer(size=n, usage=usage), 0, n
            elif b.kind == "temp":
                buffers[b.name] = arena, b.offset, nbytes(b.dtype, b.size)
        encoder = device.create_command_encoder()
        for k in program.kernels:
            if 0 in k.grid:
                continue
            module = device.create_shader_module(code=k.source)
            pipeline = device.create_compute_pipeline(
                layout="auto", compute={"module": module, "entry_point": k.name})
            entries = [{"binding": i, "resource": {"buffer": buffers[a][0],
                                                   "offset": buffers[a][1],
                                                   "size": buffers[a][2]}}
                       for i, a in enumerate(k.args)]
            group = device.create_bind_group(layout=pipeline.get_bind_group_layout(0),
                                             entries=entries)
            compute = encoder.begin_compute_pass()
            compute.set_pipeline(pipeline)
            compute.set_bind_group(0, group)
            compute.dispatch_workgroups(*(tuple(k.grid) + (1, 1))[:3])
            compute.end()
        device.queue.submit([encoder.finish()])
        outputs = []
        for o in program.outputs:
            raw = device.queue.read_buffer(buffers[o.name][0])
            size = specs[o.name].size
            if o.dtype == "bool":
                out = np.frombuffer(raw, np.uint32)[:size].astype(bool)
            else:
                out = np.frombuffer(raw, o.dtype)[:size].copy()
            outputs.append(out.reshape(o.shape))
        return outputs

    return run


def test_every_op_dtype_and_cast_matches_the_evaluator(run_webgpu):
    dtypes = [d for d in KERNEL_DTYPES if d != float64]
    s, data = op_graph(dtypes)
    inputs = [data[n] for n in s.inputs]
    program = gpu_program(s, "webgpu")
    assert len(program.kernels) == len(s.kernels)
    with np.errstate(all="ignore"):
        want = run_schedule(s, inputs)
    compare(s.outputs, run_webgpu(program, inputs), want)


def _accepted(graphs) -> tuple[dict, dict]:
    """The graphs WGSL carries out, and the refusals of the others (float64)."""
    accepted, refused = {}, {}
    for name, (g, inputs) in graphs.items():
        try:
            gpu_program(lower(g, caps=get_target("webgpu").capabilities), "webgpu")
            accepted[name] = (g, inputs)
        except GridCodegenError as e:
            refused[name] = str(e)
    return accepted, refused


@pytest.fixture(scope="module")
def graphs_webgpu(run_webgpu):
    accepted, refused = _accepted(structural_graphs())
    assert len(accepted) >= 0.8 * (len(accepted) + len(refused))
    assert {"softmax_rows", "full_sum", "mlp", "conv_pad", "rng_uniform-0"} <= set(accepted)
    return graph_results("webgpu", run_webgpu, accepted), refused


@pytest.mark.parametrize("name", list(structural_graphs()))
def test_graphs_match_the_reference_or_are_refused(graphs_webgpu, name):
    results, refused = graphs_webgpu
    if name in refused:
        assert refused[name].startswith("webgpu: ") and "float64" in refused[name]
        return
    check_graph(name, *results[name])


# ---- what WGSL refuses, and the program's metadata ----------------------------------------


def _program(build):
    b = GraphBuilder()
    return gpu_program(lower(b.build(build(b)), caps=get_target("webgpu").capabilities),
                       "webgpu")


def test_float64_is_refused_naming_the_target():
    with pytest.raises(ValueError, match=r"^webgpu: float64 is not supported \(WGSL has no "
                                         r"64-bit floats\); use float32$"):
        _program(lambda b: [b.exp(b.input("x", T(4, dtype=float64)))])


def test_int64_is_emulated_and_bools_are_words():
    def build(b):
        seed = b.input("seed", T(dtype=int64))
        idx = b.input("idx", T(3, dtype=int64))
        x = b.input("x", T(5))
        noise = b.rng_uniform(seed, shape=(5,), dtype="float32")
        return [b.gt(b.add(x, noise), x), b.gather(x, idx, axis=0),
                b.reduce_sum(b.add(idx, idx), axes=(0,))]
    program = _program(build)
    assert "int32_inputs" not in program.metadata
    assert program.metadata["storage"] == {"bool": "uint32"}
    assert program.target == "webgpu" and program.entry == "kernels"
    assert "array<u32>" in program.source and "select(0u, 1u, " in program.source
    assert "fn i64_add(" in program.source and "fn i64_mul(" not in program.source
    for k in program.kernels:
        assert f"fn {k.name}(" in k.source and k.source in program.source
        assert all(f"@binding({j})" in k.source for j in range(len(k.args)))


def test_long_loops_are_unrolled_short_ones_not():
    """lavapipe stops an invocation's loops after 65,535 iterations in all: a loop of at
    least `LONG` steps per work-item runs guarded copies of its body per step, enough to
    keep to a quarter of the limit (8 to 64)."""
    program = _program(lambda b: [b.reduce_sum(b.input("x", T(1 << 22)), axes=(0,)),
                                  b.reduce_sum(b.input("y", T(1 << 25)), axes=(0,)),
                                  b.reduce_sum(b.input("z", T(4, 300)), axes=(1,))])
    long, longer, short = (k.source for k in program.kernels)
    assert long.count("if (r") == 7 and "r0 += 2048i" in long
    assert longer.count("if (r") == 8 and "r0 += 2304i" in longer  # 131,072 steps: 9
    assert "if (r" not in short


def test_too_many_buffers_is_refused_naming_the_limit():
    caps = Capabilities(**{**get_target("webgpu").capabilities.__dict__,
                           "max_kernel_buffers": 8})
    target = register_target(Target("webgpu-eight", "webgpu", lambda: caps,
                                    "neurenix.compiler.codegen.wgsl:generate", None,
                                    rules="neurenix.compiler.schedule.grid:GRID_RULES"),
                             replace=True)
    try:
        b = GraphBuilder()
        xs = [b.input(f"x{i}", T(4)) for i in range(9)]
        total = xs[0]
        for x in xs[1:]:
            total = b.add(total, x)
        # fusion keeps kernels within the limit it is given; fused without one, the code
        # generator is the last line
        assert all(len(k.buffers()) <= 8 for k in lower(b.build([total]), caps=caps).kernels)
        kernels = lower(b.build([total]))
        with pytest.raises(ValueError, match="binds 10 buffers, more than the limit of 8"):
            gpu_program(kernels, target.name)
    finally:
        unregister_target(target.name)


def test_capabilities_follow_the_webgpu_contract():
    caps = get_target("webgpu").capabilities
    assert caps.threads == "grid" and not caps.float64 and not caps.int64
    assert caps.bool_bytes == 4 and caps.alignment == 256 and caps.preferred_index_bits == 32
    assert caps.max_grid >= 65535 and caps.max_kernel_buffers >= 8
    assert caps.max_workgroup_size >= 256 and caps.local_memory_bytes >= 16384
    assert "erf" not in caps.native_ops and "sigmoid" not in caps.native_ops


def test_buffers_sharing_storage_are_one_binding(run_webgpu):
    s, data = inplace_chain()
    program = gpu_program(s, "webgpu")
    assert [k.args for k in program.kernels[1:3]] == [("t0",), ("t1",)]
    np.testing.assert_array_equal(run_webgpu(program, [data["x"]])[0],
                                  run_schedule(s, [data["x"]])[0])


def test_a_small_max_grid_takes_a_2d_grid_and_a_stride_loop(run_webgpu):
    caps = Capabilities(**{**get_target("webgpu").capabilities.__dict__, "max_grid": 3,
                           "max_workgroup_size": 32})
    target = register_target(Target("webgpu-small-grid", "webgpu", lambda: caps,
                                    "neurenix.compiler.codegen.wgsl:generate", None,
                                    rules="neurenix.compiler.schedule.grid:GRID_RULES"),
                             replace=True)
    try:
        b = GraphBuilder()
        x = b.input("x", T(50, 100))
        g = b.build([b.exp(x), b.argmax(x, axis=1), b.reduce_sum(x, axes=(0,))])
        data = data_for(g, np.random.default_rng(0))
        program = gpu_program(lower(g, caps=caps), target.name)
        assert all(max(k.grid) <= 3 for k in program.kernels)
        assert any(len(k.grid) == 2 for k in program.kernels)
        for got, want in zip(run_webgpu(program, data), evaluate(g, data)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    finally:
        unregister_target(target.name)


def test_no_constant_expression_is_infinite_or_nan():
    """WebGPU makes a constant expression that evaluates to an infinity or NaN a shader
    creation error (Chrome's compiler enforces it; wgpu's did not): the max reduction's
    -inf start and the helpers' NaN results are built at run time (`nx_f32`)."""
    import re

    def build(b):
        x = b.input("x", T(3, 5))
        return [b.apply("reduce_max", x, axes=(1,)), b.apply("pow", x, x),
                b.apply("remainder", x, x), b.apply("sin", x)]
    source = _program(build).source
    assert "nx_f32(0xff800000u)" in source and "fn nx_f32(" in source
    for bits in re.findall(r"bitcast<f32>\(\s*(0x[0-9a-fA-F]+)u\s*\)", source):
        assert int(bits, 16) & 0x7F800000 != 0x7F800000, bits


def test_dynamic_sizes_are_a_uniform_of_i32_and_index_typed_arithmetic():
    """A symbolic kernel reads the symbols from `var<uniform> nx_sizes` (after its storage
    buffers), computes its sizes in i32 (no emulated int64) and strides by the work-groups
    launched, at most `max_grid` of them."""
    from neurenix.compiler.symbolic import ShapeEnv, shape_env

    env = ShapeEnv()
    n = env.symbol("s0", 100)
    with shape_env(env):
        program = _program(lambda b: [b.mul(b.input("x", T(n, 7)), b.input("y", T(n, 7)))])
    (kernel,) = program.kernels
    source = kernel.source
    assert program.symbols == ("s0",) and program.metadata["sized_kernels"] == [kernel.name]
    assert "struct NxSizes { s0: i32 }" in source
    assert "@group(0) @binding(3) var<uniform> nx_sizes: NxSizes;" in source
    assert "let s0: i32 = nx_sizes.s0;" in source and "(7i * s0)" in source
    assert "vec2<u32>" not in source and "i64_" not in source
    assert "@builtin(num_workgroups) nx_groups: vec3<u32>" in source
    assert "i32(nx_groups.x)" in source
    (grid,) = kernel.grid
    assert grid.most == get_target("webgpu").capabilities.max_grid
    checks = {c["what"] for c in program.metadata["size_checks"]}
    assert checks == {"the 32-bit size limit"}
    assert get_target("webgpu").capabilities.dynamic_shapes
