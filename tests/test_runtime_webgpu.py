"""The WebGPU runtime on hand-written WGSL programs: two kernels through arena bindings,
constants, bools as 4-byte words, wide int64 inputs, zero sizes, skipped dispatches, buffer
round trips, argument errors, failed submissions and probing without wgpu."""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from devices import needs_device
from neurenix.runtime import device_common, webgpu
from neurenix.runtime.program import BufferSpec, KernelInfo, Program, TensorSpec

N = 1000
ADD = """
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> t: array<f32>;
@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>,
       @builtin(num_workgroups) groups: vec3<u32>) {
    for (var i = gid.x; i < 1000u; i += groups.x * 64u) { t[i] = a[i] + b[i]; }
}
"""
SCALE = """
@group(0) @binding(0) var<storage, read_write> t: array<f32>;
@group(0) @binding(1) var<storage, read> c: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<u32>;
@compute @workgroup_size(256)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < 1000u) { y[i] = t[i] * c[0]; m[i] = select(0u, 1u, t[i] > 1.0); }
}
"""
POISON = """
@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(1)
fn poison(@builtin(global_invocation_id) gid: vec3<u32>) { y[gid.x] = -1.0; }
"""
NEG = """
@group(0) @binding(0) var<storage, read> i: array<u32>;
@group(0) @binding(1) var<storage, read_write> o: array<u32>;
@compute @workgroup_size(4)
fn neg(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    if (k < 3u) {
        let lo = ~i[2u * k] + 1u;
        o[2u * k] = lo;
        o[2u * k + 1u] = ~i[2u * k + 1u] + select(0u, 1u, lo == 0u);
    }
}
"""


def two_kernels(poison_grid=(0,), outputs=("y", "m", "y")) -> Program:
    """t = a + b (a temp bound at arena offset 256, grid-stride), y = t * c, m = t > 1 (a bool
    output); `poison` overwrites y unless its grid is empty."""
    specs = {"y": TensorSpec("y", (10, 100), "float32"), "m": TensorSpec("m", (10, 100), "bool"),
             "a": TensorSpec("a", (10, 100), "float32"), "t": TensorSpec("t", (N,), "float32")}
    return Program(
        "webgpu", "kernels", ADD + SCALE + POISON,
        [TensorSpec("a", (10, 100), "float32"), TensorSpec("b", (10, 100), "float32")],
        [specs[name] for name in outputs],
        [BufferSpec("a", "float32", N, "input"), BufferSpec("b", "float32", N, "input"),
         BufferSpec("t", "float32", N, "temp", 256), BufferSpec("c", "float32", 1, "constant"),
         BufferSpec("y", "float32", N, "output"), BufferSpec("m", "bool", N, "output")],
        [KernelInfo("add", ("a", "b", "t"), grid=(2,), block=(64,), source=ADD),
         KernelInfo("scale", ("t", "c", "y", "m"), grid=(4,), block=(256,), source=SCALE),
         KernelInfo("poison", ("y",), grid=poison_grid, block=(1,), source=POISON)],
        arena_bytes=256 + 4 * N, constants={"c": np.array([3.0], np.float32)},
        metadata={"storage": {"bool": "uint32"}})


HOST_ONLY = {  # tests that need no device
    'test_a_missing_package_is_a_reason_not_an_error',
    'test_bindings_are_read_from_the_module',
    'test_promotion_rewrites_only_the_named_bindings',
}


@pytest.fixture(autouse=True)
def _device(request):
    if request.function.__name__ not in HOST_ONLY:
        needs_device("webgpu")


@pytest.fixture(scope="module")
def exe():
    needs_device("webgpu")  # module fixtures are made before the autouse check
    return webgpu.Executable(two_kernels())


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return [rng.random((10, 100), dtype=np.float32) for _ in range(2)]


def test_two_kernels_through_the_arena(exe, data):
    a, b = data
    y, m, y_again = exe.run(data)
    np.testing.assert_array_equal(y, (a + b) * 3)
    np.testing.assert_array_equal(m, a + b > 1)
    assert m.dtype == np.bool_ and y.shape == (10, 100)
    np.testing.assert_array_equal(y_again, y)
    assert y_again is not y
    np.testing.assert_array_equal(data[0], a)


def test_run_device_returns_new_buffers(exe, data):
    inputs = [webgpu.Buffer.from_host(x) for x in data]
    first = exe.run_device(inputs)
    second = exe.run_device(inputs)
    assert all(isinstance(b, webgpu.Buffer) and b.device == "webgpu" for b in first)
    assert {id(b) for b in first}.isdisjoint(id(b) for b in second)
    assert first[0] is not first[2]
    np.testing.assert_array_equal(second[0].to_host(), (data[0] + data[1]) * 3)
    np.testing.assert_array_equal(first[1].to_host(), data[0] + data[1] > 1)
    np.testing.assert_array_equal(first[2].to_host(), first[0].to_host())


def test_bind_groups_follow_the_buffers_passed(exe, data):
    a, b = (webgpu.Buffer.from_host(x) for x in data)
    first = exe.run_device([a, b])[0].to_host()
    swapped = exe.run_device([b, a])[0].to_host()
    c = webgpu.Buffer.from_host(data[0] * 2)
    third = exe.run_device([c, b])[0].to_host()
    np.testing.assert_array_equal(first, (data[0] + data[1]) * 3)
    np.testing.assert_array_equal(swapped, (data[1] + data[0]) * 3)
    np.testing.assert_array_equal(third, (data[0] * 2 + data[1]) * 3)


def test_synchronize_waits_for_submitted_work(exe, data):
    outputs = exe.run_device([webgpu.Buffer.from_host(x) for x in data])
    webgpu.synchronize()
    np.testing.assert_array_equal(outputs[0].to_host(), (data[0] + data[1]) * 3)


def test_one_pipeline_per_kernel_module_per_process(exe):
    dev = webgpu._STATE.get()
    before = len(dev.pipelines)
    webgpu.Executable(two_kernels())
    assert len(dev.pipelines) == before


def test_the_device_is_asked_for_the_adapters_limits():
    limits = webgpu.limits()
    adapter = webgpu._STATE.get().adapter.limits
    assert limits["max-storage-buffers-per-shader-stage"] == \
        adapter["max-storage-buffers-per-shader-stage"]
    assert limits["max-storage-buffer-binding-size"] == adapter["max-storage-buffer-binding-size"]


def test_profile_times_every_launched_kernel(exe, data):
    times = exe.profile(data, repeat=1)
    assert [name for name, _ in times] == ["add", "scale"]  # poison's grid is empty
    assert all(t > 0 for _, t in times)


def test_an_empty_grid_is_skipped_and_a_full_one_runs(data):
    y = webgpu.Executable(two_kernels(poison_grid=(N,))).run(data)[0]
    assert (y == -1).all()


def test_outputs_that_are_inputs_or_temps_are_copies(data):
    a_out, t, y = webgpu.Executable(two_kernels(outputs=("a", "t", "y"))).run(data)
    np.testing.assert_array_equal(a_out, data[0])
    np.testing.assert_array_equal(t, (data[0] + data[1]).reshape(-1))
    np.testing.assert_array_equal(y, (data[0] + data[1]) * 3)


FILL = """
@group(0) @binding(0) var<storage, read_write> t: array<f32>;
@compute @workgroup_size(4)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>) { t[gid.x] = f32(gid.x); }
"""
TWICE = """
@group(0) @binding(0) var<storage, read_write> t: array<f32>;
@group(0) @binding(1) var<storage, read_write> u: array<f32>;
@compute @workgroup_size(4)
fn twice(@builtin(global_invocation_id) gid: vec3<u32>) { u[gid.x] = t[gid.x] * 2.0; }
"""


def test_an_in_place_temporary_binds_its_inputs_range_twice():
    program = Program("webgpu", "kernels", FILL + TWICE, [],
                      [TensorSpec("u", (4,), "float32")],
                      [BufferSpec("t", "float32", 4, "temp", 256),
                       BufferSpec("u", "float32", 4, "temp", 256)],
                      [KernelInfo("fill", ("t",), grid=(1,), block=(4,), source=FILL),
                       KernelInfo("twice", ("t", "u"), grid=(1,), block=(4,), source=TWICE)],
                      arena_bytes=512)
    np.testing.assert_array_equal(webgpu.Executable(program).run([])[0], [0, 2, 4, 6])


def test_threads_share_an_executable(exe):
    rng = np.random.default_rng(2)
    cases = [[rng.random((10, 100), dtype=np.float32) for _ in range(2)] for _ in range(8)]

    def call(k):  # host and device calls, interleaved
        case = cases[k % len(cases)]
        if k % 2:
            return exe.run(case)[0]
        return exe.run_device([webgpu.Buffer.from_host(x) for x in case])[0].to_host()

    with ThreadPoolExecutor(4) as pool:
        for case, y in zip(cases * 3, pool.map(call, range(3 * len(cases)))):
            np.testing.assert_array_equal(y, (case[0] + case[1]) * 3)


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "uint16", "float16",
                                   "int32", "uint32", "float32", "int64", "uint64",
                                   "float64"])
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 5)])
def test_buffer_round_trip(dtype, shape):
    rng = np.random.default_rng(1)
    x = (rng.random(shape) * 100).astype(dtype)
    b = webgpu.Buffer.from_host(x)
    assert (b.shape, b.dtype, b.device) == (shape, np.dtype(dtype), "webgpu")
    y = b.to_host()
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, x)


def test_bools_are_words_on_the_device():
    b = webgpu.Buffer.from_host(np.array([True, False, True]))
    raw = webgpu._STATE.get().device.queue.read_buffer(b.data, 0, 12)
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint32), [1, 0, 1])


def int64_program() -> Program:
    return Program("webgpu", "kernels", NEG, [TensorSpec("i", (3,), "int64")],
                   [TensorSpec("o", (3,), "int64")],
                   [BufferSpec("i", "int64", 3, "input"), BufferSpec("o", "int64", 3, "output")],
                   [KernelInfo("neg", ("i", "o"), grid=(1,), block=(4,), source=NEG)],
                   metadata={"storage": {"bool": "uint32"}})


def test_wide_int64_inputs_round_trip_exactly_in_host_layout():
    exe = webgpu.Executable(int64_program())
    big = np.array([2**40 + 3, -2**63 + 1, -2**31 - 1])
    np.testing.assert_array_equal(exe.run([big]), [-big])
    (out,) = exe.run_device([webgpu.Buffer.from_host(big)])
    np.testing.assert_array_equal(out.to_host(), -big)


def test_zero_size_tensors():
    program = Program("webgpu", "kernels", POISON, [TensorSpec("x", (0, 3), "float32")],
                      [TensorSpec("y", (0, 3), "float32")],
                      [BufferSpec("x", "float32", 0, "input"),
                       BufferSpec("y", "float32", 0, "output")],
                      [KernelInfo("poison", ("y",), grid=(0,), block=(1,), source=POISON)])
    (y,) = webgpu.Executable(program).run([np.zeros((0, 3), np.float32)])
    assert y.shape == (0, 3) and y.dtype == np.float32


def test_argument_errors(exe, data):
    with pytest.raises(ValueError, match=r"takes 2 inputs \(a, b\), got 3"):
        exe.run(data + data[:1])
    with pytest.raises(ValueError, match=r"input 'b' expects float32\[10, 100\], got "
                                         r"float32\[1000\]"):
        exe.run([data[0], data[1].reshape(-1)])
    with pytest.raises(ValueError, match=r"expects float32.*got int32"):
        exe.run_device([webgpu.Buffer.from_host(data[0]),
                        webgpu.Buffer.from_host(data[1].astype(np.int32))])
    with pytest.raises(TypeError, match="input 'a' must be a webgpu Buffer .* got a host array"):
        exe.run_device(data)
    with pytest.raises(TypeError, match="run\\(\\) takes host arrays"):
        exe.run([webgpu.Buffer.from_host(x) for x in data])
    with pytest.raises(ValueError, match="expected a 'webgpu' program"):
        webgpu.Executable(Program("opencl", "kernels", "", [], [], [], []))


def test_a_buffer_of_another_device_is_refused(exe, data):
    class Other:
        device, shape, dtype = "opencl", (10, 100), np.dtype(np.float32)

    with pytest.raises(TypeError, match="must be a webgpu Buffer .* got a opencl buffer"):
        exe.run_device([Other(), Other()])


def test_compile_and_submission_failures_name_the_device_and_kernel(monkeypatch, data):
    bad = Program("webgpu", "kernels", "", [], [], [],
                  [KernelInfo("k", (), grid=(1,), block=(1,),
                              source="@compute @workgroup_size(1) fn k() { let x = nope; }")])
    with pytest.raises(RuntimeError, match=r"webgpu \(.*\): kernel 'k' does not compile"):
        webgpu.Executable(bad)
    too_many = two_kernels()
    too_many.kernels[0] = KernelInfo("add", ("a", "b", "t"), grid=(1 << 20,), block=(64,),
                                     source=ADD)
    with pytest.raises(ValueError, match=r"kernel 'add' dispatches a grid of \(1048576,\) "
                                         r"work-groups; the device takes at most 3 dimensions "
                                         r"of 65535"):
        webgpu.Executable(too_many)
    monkeypatch.setitem(webgpu._STATE.get().limits, "max-compute-workgroups-per-dimension",
                        1 << 30)  # let it through, to fail when submitted
    before = [x.copy() for x in data]
    with pytest.raises(RuntimeError, match=r"(?s)webgpu \(.*\): kernel 'add' failed: .*65535"):
        webgpu.Executable(too_many).run(data)
    np.testing.assert_array_equal(data, before)
    np.testing.assert_array_equal(webgpu.Executable(two_kernels()).run(data)[0],
                                  (data[0] + data[1]) * 3)  # the device still works


def test_temporaries_read_beside_one_written_are_bound_read_write(data):
    """a and b are read-only in ADD, t read_write: all three in the arena would be one
    buffer bound with two usages in a dispatch, which WebGPU refuses."""
    program = Program("webgpu", "kernels", ADD + SCALE,
                      [TensorSpec("x", (10, 100), "float32"),
                       TensorSpec("z", (10, 100), "float32")],
                      [TensorSpec("y", (10, 100), "float32")],
                      [BufferSpec("x", "float32", N, "input"),
                       BufferSpec("z", "float32", N, "input"),
                       BufferSpec("a", "float32", N, "temp", 0),
                       BufferSpec("b", "float32", N, "temp", 4096),
                       BufferSpec("t", "float32", N, "temp", 8192),
                       BufferSpec("c", "float32", 1, "constant"),
                       BufferSpec("y", "float32", N, "output"),
                       BufferSpec("m", "bool", N, "output")],
                      [KernelInfo("scale", ("x", "c", "a", "m"), grid=(4,), block=(256,),
                                  source=SCALE),
                       KernelInfo("scale", ("z", "c", "b", "m"), grid=(4,), block=(256,),
                                  source=SCALE),
                       KernelInfo("add", ("a", "b", "t"), grid=(2,), block=(64,), source=ADD),
                       KernelInfo("scale", ("t", "c", "y", "m"), grid=(4,), block=(256,),
                                  source=SCALE)],
                      arena_bytes=12288, constants={"c": np.array([2.0], np.float32)})
    (y,) = webgpu.Executable(program).run(data)
    np.testing.assert_allclose(y, (data[0] * 2 + data[1] * 2) * 2, rtol=1e-6)


def test_promotion_rewrites_only_the_named_bindings():
    assert webgpu.arena_promotions(("a", "b", "t"), webgpu.bindings(ADD), {"a", "t"}) == {0}
    assert webgpu.arena_promotions(("x", "b", "t"), webgpu.bindings(ADD), {"t"}) == set()
    assert webgpu.arena_promotions(("a", "b", "x"), webgpu.bindings(ADD), {"a", "b"}) == set()
    assert webgpu.bindings(webgpu.writable(ADD, {0})) == {0: False, 1: True, 2: False}


def test_bindings_are_read_from_the_module():
    assert webgpu.bindings(SCALE) == {0: False, 1: True, 2: False, 3: False}
    assert webgpu.bindings("@binding(2) @group(0) var<storage> x: array<f32>;") == {2: True}
    assert webgpu.bindings("@group(1) @binding(0) var<storage, read> x: array<f32>;") == {}


def test_no_adapter_is_a_reason(monkeypatch):
    import wgpu

    def fail(**kwargs):
        raise RuntimeError("no Vulkan driver")

    monkeypatch.setattr(wgpu.gpu, "request_adapter_sync", fail)
    monkeypatch.setattr(webgpu, "_STATE", device_common.Lazy(webgpu._open))
    assert not webgpu.available()
    assert webgpu.unavailable_reason() == "no WebGPU adapter: no Vulkan driver"


def test_a_missing_package_is_a_reason_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wgpu", None)
    monkeypatch.setattr(webgpu, "_STATE", device_common.Lazy(webgpu._open))
    assert not webgpu.available()
    assert webgpu.unavailable_reason().startswith("wgpu is not installed")
    with pytest.raises(RuntimeError, match="webgpu: unavailable: wgpu is not installed"):
        webgpu.Executable(two_kernels())


def compiled_graph():
    """A small traced graph: elementwise, matmul, a reduction, a bool output, an argmax (int64
    output), a wide int64 input cast to float32, and its inputs."""
    from neurenix.compiler import GraphBuilder
    from neurenix.compiler.types import TensorType, float32, int64

    b = GraphBuilder("small")
    x = b.input("x", TensorType((16, 33), float32))
    w = b.input("w", TensorType((33, 5), float32))
    i = b.input("i", TensorType((16,), int64))
    m = b.apply("matmul", b.apply("mul", x, x), w)
    y = b.apply("tanh", m)
    zero = b.apply("full", shape=(16, 5), dtype="float32", value=0.0)
    graph = b.build([y, b.apply("reduce_sum", y, axes=(1,)), b.apply("lt", y, zero),
                     b.apply("argmax", m, axis=1), b.apply("cast", i, dtype="float32")])
    rng = np.random.default_rng(0)
    return graph, [rng.standard_normal((16, 33), dtype=np.float32),
                   rng.standard_normal((33, 5), dtype=np.float32),
                   (np.arange(16) - 8) * 2**40 + 3]


def test_a_compiled_program_matches_the_evaluator():
    from neurenix.compiler import evaluate, pipeline

    graph, args = compiled_graph()
    program, _ = pipeline.build(graph, "webgpu")
    exe = webgpu.Executable(program)
    got = exe.run(args)
    for g, r in zip(got, evaluate(graph, args)):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    assert "int32_inputs" not in program.metadata
    device = exe.run_device([webgpu.Buffer.from_host(a) for a in args])
    for g, d in zip(got, device):
        np.testing.assert_array_equal(d.to_host(), g)
    assert device[3].dtype == np.int64


def test_programs_the_device_cannot_hold_are_refused():
    program = two_kernels()
    program.metadata["required_limits"] = {"max_storage_buffers_per_shader_stage": 1 << 20}
    with pytest.raises(ValueError, match=r"needs max_storage_buffers_per_shader_stage = "
                                         r"1048576, the device .* has \d+"):
        webgpu.Executable(program)
    program.metadata = {"storage": {}}
    with pytest.raises(ValueError, match="stores {}, this runtime's buffers"):
        webgpu.Executable(program)


def test_loops_past_the_drivers_iteration_limit():
    """lavapipe ends an invocation's loops after 65,535 iterations in all: a serial
    scatter-add of 140,000 updates and a full sum of 2**24 + 1 ones (a work-group of 256 each
    stepping 65,537 times) unroll their loops and see every element."""
    from neurenix.compiler import GraphBuilder, pipeline
    from neurenix.compiler.types import TensorType, float32, int64

    n = 140_000
    b = GraphBuilder("long")
    x = b.input("x", TensorType((4,), float32))
    i = b.input("i", TensorType((n,), int64))
    u = b.input("u", TensorType((n,), float32))
    graph = b.build([b.apply("scatter_add", x, i, u, axis=0)])
    program, _ = pipeline.build(graph, "webgpu")
    (y,) = webgpu.Executable(program).run([np.zeros(4, np.float32), np.arange(n) % 4,
                                           np.ones(n, np.float32)])
    np.testing.assert_array_equal(y, [n / 4] * 4)
    b = GraphBuilder("sum")
    x = b.input("x", TensorType(((1 << 24) + 1,), float32))
    graph = b.build([b.apply("reduce_sum", x, axes=(0,)), b.apply("argmax", x, axis=0)])
    program, _ = pipeline.build(graph, "webgpu")
    ones = np.ones((1 << 24) + 1, np.float32)
    ones[-1] = 2.0
    total, at = webgpu.Executable(program).run([ones])
    assert total == (1 << 24) + 2 and at == 1 << 24
