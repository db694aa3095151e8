"""The OpenCL runtime on hand-written programs: two kernels through an arena temporary,
constants, bools, wide int64 inputs, zero sizes, skipped launches, buffer round trips,
argument errors, launch failures, and probing without pyopencl."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from devices import needs_device
from neurenix.runtime import device_common, opencl
from neurenix.runtime.program import BufferSpec, KernelInfo, Program, TensorSpec

N = 1000
SOURCE = """
__kernel void add(__global const float *a, __global const float *b, __global float *t) {
    for (size_t i = get_global_id(0); i < 1000; i += get_global_size(0)) t[i] = a[i] + b[i];
}
__kernel void scale(__global const float *t, __global const float *c, __global float *y,
                    __global uchar *m) {
    size_t i = get_global_id(0);
    if (i < 1000) { y[i] = t[i] * c[0]; m[i] = t[i] > 1.0f; }
}
__kernel void poison(__global float *y) { y[get_global_id(0)] = -1.0f; }
__kernel void neg(__global const long *i, __global long *o) {
    size_t k = get_global_id(0);
    if (k < 3) o[k] = -i[k];
}
__kernel void nothing(__global const float *x, __global float *y) {}
__kernel void fill(__global float *t) { t[get_global_id(0)] = get_global_id(0); }
__kernel void twice(__global const float *t, __global float *u) {
    u[get_global_id(0)] = t[get_global_id(0)] * 2;
}
__kernel void copy(__global const float *u, __global float *y) {
    y[get_global_id(0)] = u[get_global_id(0)];
}
"""  # one translation unit for every test program: PoCL builds it once


def two_kernels(poison_grid=(0,), outputs=("y", "m", "y"), metadata=None) -> Program:
    """t = a + b (a temp at arena offset 256, grid-stride), y = t * c, m = t > 1; `poison`
    overwrites y unless its grid is empty."""
    specs = {"y": TensorSpec("y", (10, 100), "float32"), "m": TensorSpec("m", (10, 100), "bool"),
             "a": TensorSpec("a", (10, 100), "float32")}
    return Program(
        "opencl", "kernels", SOURCE,
        [TensorSpec("a", (10, 100), "float32"), TensorSpec("b", (10, 100), "float32")],
        [specs[name] for name in outputs],
        [BufferSpec("a", "float32", N, "input"), BufferSpec("b", "float32", N, "input"),
         BufferSpec("t", "float32", N, "temp", 256), BufferSpec("c", "float32", 1, "constant"),
         BufferSpec("y", "float32", N, "output"), BufferSpec("m", "bool", N, "output")],
        [KernelInfo("add", ("a", "b", "t"), grid=(2,), block=(64,)),
         KernelInfo("scale", ("t", "c", "y", "m"), grid=(4,), block=(256,)),
         KernelInfo("poison", ("y",), grid=poison_grid, block=(1,))],
        arena_bytes=256 + 4 * N, constants={"c": np.array([3.0], np.float32)},
        metadata=metadata or {})


HOST_ONLY = {  # tests that need no device
    'test_a_missing_package_is_a_reason_not_an_error',
    'test_neurenix_imports_without_either_package',
    'test_lazy_remembers_a_failure_until_reset',
}


@pytest.fixture(autouse=True)
def _device(request):
    if request.function.__name__ not in HOST_ONLY:
        needs_device("opencl")


@pytest.fixture(scope="module")
def exe():
    needs_device("opencl")  # module fixtures are made before the autouse check
    return opencl.Executable(two_kernels())


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
    np.testing.assert_array_equal(data[0], a)  # inputs untouched


def test_run_device_returns_new_buffers_and_copies_nothing_back(exe, data):
    inputs = [opencl.Buffer.from_host(x) for x in data]
    first = exe.run_device(inputs)
    second = exe.run_device(inputs)
    assert all(isinstance(b, opencl.Buffer) and b.device == "opencl" for b in first)
    assert {id(b) for b in first}.isdisjoint(id(b) for b in second)
    assert first[0] is not first[2]
    np.testing.assert_array_equal(second[0].to_host(), (data[0] + data[1]) * 3)
    np.testing.assert_array_equal(first[2].to_host(), first[0].to_host())


def test_built_once_per_process(exe):
    dev = opencl._STATE.get()
    before = len(dev.programs)
    opencl.Executable(two_kernels())
    assert len(dev.programs) == before


def test_a_program_no_executable_holds_is_freed():
    import gc

    dev = opencl._STATE.get()
    source = "__kernel void lonely(__global float *y) { y[0] = 1; }"
    program = Program("opencl", "kernels", source, [], [TensorSpec("y", (1,), "float32")],
                      [BufferSpec("y", "float32", 1, "output")],
                      [KernelInfo("lonely", ("y",), grid=(1,), block=(1,))])
    exe = opencl.Executable(program)
    assert exe.run([])[0] == 1 and (source, "") in dev.programs
    del exe
    gc.collect()
    assert (source, "") not in dev.programs


def test_profile_times_every_launched_kernel(exe, data):
    times = exe.profile(data, repeat=1)
    assert [name for name, _ in times] == ["add", "scale"]  # poison's grid is empty
    assert all(t > 0 for _, t in times)


def test_an_empty_grid_is_skipped_and_a_full_one_runs(data):
    y = opencl.Executable(two_kernels(poison_grid=(N,))).run(data)[0]
    assert (y == -1).all()


def test_outputs_that_are_inputs_are_copies(data):
    a_out, y = opencl.Executable(two_kernels(outputs=("a", "y"))).run(data)
    np.testing.assert_array_equal(a_out, data[0])
    np.testing.assert_array_equal(y, (data[0] + data[1]) * 3)


def test_temporaries_off_the_device_alignment_get_buffers_of_their_own(monkeypatch, data):
    monkeypatch.setattr(opencl._STATE.get(), "base_align", 4096)
    y = opencl.Executable(two_kernels()).run(data)[0]
    np.testing.assert_array_equal(y, (data[0] + data[1]) * 3)


@pytest.mark.parametrize("align", [None, 4096])
def test_an_in_place_temporary_shares_its_input(monkeypatch, align):
    if align is not None:
        monkeypatch.setattr(opencl._STATE.get(), "base_align", align)
    program = Program("opencl", "kernels", SOURCE, [], [TensorSpec("y", (4,), "float32")],
                      [BufferSpec("t", "float32", 4, "temp", 256),
                       BufferSpec("u", "float32", 4, "temp", 256),
                       BufferSpec("y", "float32", 4, "output")],
                      [KernelInfo("fill", ("t",), grid=(1,), block=(4,)),
                       KernelInfo("twice", ("t", "u"), grid=(1,), block=(4,)),
                       KernelInfo("copy", ("u", "y"), grid=(1,), block=(4,))], arena_bytes=512)
    exe = opencl.Executable(program)
    assert exe._temps["t"] is exe._temps["u"]
    np.testing.assert_array_equal(exe.run([])[0], [0, 2, 4, 6])


def test_threads_share_an_executable(exe):
    rng = np.random.default_rng(2)
    cases = [[rng.random((10, 100), dtype=np.float32) for _ in range(2)] for _ in range(8)]

    def call(k):  # host and device calls, interleaved
        case = cases[k % len(cases)]
        if k % 2:
            return exe.run(case)[0]
        return exe.run_device([opencl.Buffer.from_host(x) for x in case])[0].to_host()

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
    b = opencl.Buffer.from_host(x)
    assert (b.shape, b.dtype, b.device) == (shape, np.dtype(dtype), "opencl")
    y = b.to_host()
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, x)


def int64_program() -> Program:
    return Program("opencl", "kernels", SOURCE, [TensorSpec("i", (3,), "int64")],
                   [TensorSpec("o", (3,), "int64")],
                   [BufferSpec("i", "int64", 3, "input"), BufferSpec("o", "int64", 3, "output")],
                   [KernelInfo("neg", ("i", "o"), grid=(1,), block=(4,))])


def test_wide_int64_inputs_round_trip_exactly():
    exe = opencl.Executable(int64_program())
    big = np.array([2**40 + 3, -2**63 + 1, 2**31])
    np.testing.assert_array_equal(exe.run([big]), [-big])
    (out,) = exe.run_device([opencl.Buffer.from_host(big)])
    np.testing.assert_array_equal(out.to_host(), -big)


def test_zero_size_tensors():
    program = Program("opencl", "kernels", SOURCE, [TensorSpec("x", (0, 3), "float32")],
                      [TensorSpec("y", (0, 3), "float32")],
                      [BufferSpec("x", "float32", 0, "input"),
                       BufferSpec("y", "float32", 0, "output")],
                      [KernelInfo("nothing", ("x", "y"), grid=(0,), block=(64,))])
    (y,) = opencl.Executable(program).run([np.zeros((0, 3), np.float32)])
    assert y.shape == (0, 3) and y.dtype == np.float32


def test_argument_errors(exe, data):
    with pytest.raises(ValueError, match=r"takes 2 inputs \(a, b\), got 1"):
        exe.run(data[:1])
    with pytest.raises(ValueError, match=r"input 'b' expects float32\[10, 100\], got "
                                         r"float32\[100, 10\]"):
        exe.run([data[0], data[1].reshape(100, 10)])
    with pytest.raises(ValueError, match=r"expects float32.*got float64"):
        exe.run([data[0], data[1].astype(np.float64)])
    with pytest.raises(TypeError, match="input 'a' must be a opencl Buffer .* got a host array"):
        exe.run_device(data)
    with pytest.raises(TypeError, match="run\\(\\) takes host arrays"):
        exe.run([opencl.Buffer.from_host(x) for x in data])
    with pytest.raises(ValueError, match="expected an 'opencl' program"):
        opencl.Executable(Program("webgpu", "kernels", "", [], [], [], []))
    with pytest.raises(ValueError, match="is not 'opencl'"):
        opencl.Buffer.from_host(data[0], "webgpu")


def test_build_and_launch_failures_name_the_device_and_kernel(data):
    bad = Program("opencl", "kernels", "__kernel void k(__global float *y) { y[0] = nope; }",
                  [], [], [], [KernelInfo("k", (), grid=(1,), block=(1,))])
    with pytest.raises(RuntimeError, match=r"opencl \(.*\): building the program failed"):
        opencl.Executable(bad)
    too_big = two_kernels()
    too_big.kernels[1] = KernelInfo("scale", ("t", "c", "y", "m"), grid=(1,), block=(1 << 20,))
    with pytest.raises(RuntimeError, match=r"opencl \(.*\): kernel 'scale' failed to launch"):
        opencl.Executable(too_big).run(data)


def test_a_missing_package_is_a_reason_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyopencl", None)
    monkeypatch.setattr(opencl, "_STATE", device_common.Lazy(opencl._open))
    assert not opencl.available()
    assert opencl.unavailable_reason().startswith("pyopencl is not installed")
    with pytest.raises(RuntimeError, match="opencl: unavailable: pyopencl is not installed"):
        opencl.Executable(two_kernels())


def test_no_platform_is_a_reason(monkeypatch):
    import pyopencl

    monkeypatch.setattr(pyopencl, "get_platforms", lambda: [])
    monkeypatch.setattr(opencl, "_STATE", device_common.Lazy(opencl._open))
    assert not opencl.available()
    assert opencl.unavailable_reason() == "no OpenCL platform has a device"


def test_a_device_named_by_the_environment_must_exist(monkeypatch):
    monkeypatch.setenv("NEURENIX_OPENCL_DEVICE", "no such device")
    monkeypatch.setattr(opencl, "_STATE", device_common.Lazy(opencl._open))
    assert opencl.unavailable_reason() == \
        "no OpenCL device name contains 'no such device' (NEURENIX_OPENCL_DEVICE)"


def test_neurenix_imports_without_either_package():
    code = ("import sys; sys.modules['pyopencl'] = sys.modules['wgpu'] = None\n"
            "import neurenix\n"
            "from neurenix.runtime import opencl, webgpu, is_available\n"
            "assert not opencl.available() and not webgpu.available()\n"
            "assert not is_available('opencl') and not is_available('webgpu')\n"
            "print(opencl.unavailable_reason(), '|', webgpu.unavailable_reason())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pyopencl is not installed" in out.stdout and "wgpu is not installed" in out.stdout


def test_lazy_remembers_a_failure_until_reset():
    calls = []

    def make():
        calls.append(1)
        if len(calls) == 1:
            raise OSError("no driver")
        return "device"

    lazy = device_common.Lazy(make)
    assert lazy.reason() == "no driver" and lazy.reason() == "no driver"
    with pytest.raises(RuntimeError, match="no driver"):
        lazy.get()
    assert len(calls) == 1
    lazy.reset()
    assert lazy.get() == "device" and lazy.reason() == ""


def compiled_graph():
    """A small traced graph: elementwise, matmul, a reduction, a bool and an int64 output,
    an argmax, and its inputs."""
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
                     b.apply("argmax", m, axis=1), b.apply("add", i, i)])
    rng = np.random.default_rng(0)
    return graph, [rng.standard_normal((16, 33), dtype=np.float32),
                   rng.standard_normal((33, 5), dtype=np.float32), np.arange(16) - 8]


def test_a_compiled_program_matches_the_evaluator():
    from neurenix.compiler import evaluate, pipeline

    graph, args = compiled_graph()
    program, _ = pipeline.build(graph, "opencl")
    exe = opencl.Executable(program)
    got = exe.run(args)
    for g, r in zip(got, evaluate(graph, args)):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    device = exe.run_device([opencl.Buffer.from_host(a) for a in args])
    for g, d in zip(got, device):
        np.testing.assert_array_equal(d.to_host(), g)
