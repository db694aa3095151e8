"""The CUDA runtime (runtime/cuda.py over runtime/gpu_driver.py).

Without a GPU: probing says exactly why there is no device, loading refuses with that reason,
the device is not listed, and the pure pieces of loading a program (argument sources, arena,
launch geometry, limit checks, error messages, PTX compilation with NVRTC) are checked on
programs generated here.  With a GPU (`needs_device("cuda")`): programs match the reference,
buffers round-trip every dtype, and the limits raise their messages.  The `check_*` helpers
take the runtime module and target, so tests/test_runtime_hip.py runs the same checks on ROCm.
"""
from __future__ import annotations

import enum
import sys
import types
from dataclasses import replace

import numpy as np
import pytest
from devices import needs_device
from neurenix.runtime import cuda, device_common, gpu_driver, nvrtc
from neurenix.runtime.gpu_driver import Arg, DeviceInfo, Launch
from neurenix.runtime.program import BufferSpec, KernelInfo, Program, TensorSpec
from test_lower import mlp_graph

H200 = DeviceInfo("cuda", "CUDA", "NVIDIA H200", "sm_90", "12.4", "NVRTC 13.0",
                  max_threads_per_block=1024, max_shared_per_block=48 * 1024,
                  max_grid=(2**31 - 1, 65535, 65535), total_memory=141 * 2**30)


def small_graph():
    """Elementwise, a matmul, a row reduction, a bool, an argmax and an int64 output."""
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


def build(graph, target: str) -> Program:
    from neurenix.compiler import pipeline

    return pipeline.build(graph, target)[0]


@pytest.fixture
def no_binding(monkeypatch):
    """The runtime as where cuda-python is not installed (a fresh probe)."""
    for name in ("cuda", "cuda.bindings", "cuda.bindings.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(cuda.RUNTIME, "state", device_common.Lazy(
        lambda: gpu_driver.OpenDevice(*cuda._open_driver())))


# ---- without a device --------------------------------------------------------------------------


def test_a_missing_binding_is_the_reason(no_binding):
    assert not cuda.available()
    assert cuda.unavailable_reason() == "cuda-python is not installed (pip install cuda-python)"


def test_loading_says_why_there_is_no_device(no_binding):
    program = build(small_graph()[0], "cuda")
    with pytest.raises(RuntimeError, match=r"^cuda: unavailable: cuda-python is not installed"):
        cuda.Executable(program)
    with pytest.raises(RuntimeError, match="cuda: unavailable: cuda-python is not installed"):
        cuda.Buffer.from_host(np.zeros(3, np.float32))
    with pytest.raises(RuntimeError, match="cuda: unavailable"):
        cuda.synchronize()


def test_no_driver_library_is_the_reason(monkeypatch):
    monkeypatch.setattr(cuda, "_binding", lambda: types.SimpleNamespace())
    monkeypatch.setattr(cuda, "_has_libcuda", lambda: False)
    monkeypatch.setattr(cuda.RUNTIME, "state", device_common.Lazy(
        lambda: gpu_driver.OpenDevice(*cuda._open_driver())))
    assert cuda.unavailable_reason() == "no CUDA driver (libcuda.so not found)"


def test_a_no_device_status_while_opening_is_the_reason():
    class CUresult(enum.IntEnum):
        CUDA_SUCCESS = 0
        CUDA_ERROR_INVALID_VALUE = 1
        CUDA_ERROR_NO_DEVICE = 100

    ok = lambda status: status == CUresult.CUDA_SUCCESS
    describe = lambda status: "no CUDA-capable device is detected"
    with pytest.raises(RuntimeError, match="^CUDA driver found but no device$"):
        gpu_driver.opening_value((CUresult.CUDA_ERROR_NO_DEVICE,), ok, describe,
                                 "CUDA driver found but no device", "cuInit")
    with pytest.raises(RuntimeError, match="cuDeviceGet failed: CUDA_ERROR_INVALID_VALUE"):
        gpu_driver.opening_value((CUresult.CUDA_ERROR_INVALID_VALUE, 0), ok, describe,
                                 "no device", "cuDeviceGet")
    assert gpu_driver.opening_value((CUresult.CUDA_SUCCESS, 7), ok, describe, "", "") == 7
    assert gpu_driver.opening_value((CUresult.CUDA_SUCCESS, 1, 2), ok, describe, "", "") == (1, 2)


def test_the_device_is_not_listed_where_it_cannot_run():
    import neurenix

    if cuda.available():
        pytest.skip("a CUDA device is here")
    assert "cuda" not in [d.type.value for d in neurenix.get_available_devices()]
    assert not neurenix.Device("cuda").is_available()
    with pytest.raises(ValueError, match="cuda is not available: "):
        neurenix.device.as_device("cuda", check=True)


def test_a_program_of_another_target_is_refused():
    with pytest.raises(ValueError, match="expected a 'cuda' program, got target 'rocm'"):
        cuda.Executable(build(small_graph()[0], "hip"))


def test_launches_resolve_every_argument_to_its_source():
    program = build(small_graph()[0], "cuda")
    launches = gpu_driver.plan_launches(program)
    assert [launch.name for launch in launches] == [k.name for k in program.kernels
                                                    if 0 not in k.grid]
    inputs = {t.name: k for k, t in enumerate(program.inputs)}
    specs = {b.name: b for b in program.buffers}
    for launch, info in zip(launches, program.kernels):
        assert len(launch.args) == len(info.args)
        for arg, name in zip(launch.args, info.args):
            spec = specs[name]
            want = {"input": Arg("input", inputs.get(name)), "output": Arg("output", name),
                    "temp": Arg("temp", spec.offset), "constant": Arg("constant", name)}
            assert arg == want[spec.kind]
        assert launch.grid == tuple(info.grid) + (1,) * (3 - len(info.grid))
        assert launch.threads == int(np.prod(info.block))
    assert {a.kind for launch in launches for a in launch.args} >= {"input", "output", "temp"}


def test_the_arena_covers_every_temp():
    program = build(mlp_graph(), "cuda")
    size = gpu_driver.arena_size(program)
    assert size >= program.arena_bytes
    for b in program.buffers:
        if b.kind == "temp":
            assert b.offset % 256 == 0 and b.offset + b.nbytes <= size


def hand_program() -> Program:
    """Two kernels through a temp at offset 256 (one of no elements at 512), a constant, and
    a launch with an empty grid."""
    return Program(
        "cuda", "kernels", "",
        [TensorSpec("a", (4,), "float32")], [TensorSpec("y", (4,), "float32")],
        [BufferSpec("a", "float32", 4, "input"), BufferSpec("t", "float32", 4, "temp", 256),
         BufferSpec("e", "float32", 0, "temp", 512), BufferSpec("c", "float32", 1, "constant"),
         BufferSpec("y", "float32", 4, "output")],
        [KernelInfo("first", ("a", "c", "t")), KernelInfo("skipped", ("y",), grid=(0,),
                                                          block=(32,)),
         KernelInfo("second", ("t", "e", "y"), grid=(2, 3), block=(32, 4))],
        arena_bytes=272, constants={"c": np.ones(1, np.float32)})


def test_hand_written_launches_offsets_and_geometry():
    program = hand_program()
    assert gpu_driver.plan_launches(program) == [
        Launch("first", (1, 1, 1), (1, 1, 1),
               (Arg("input", 0), Arg("constant", "c"), Arg("temp", 256))),
        Launch("second", (2, 3, 1), (32, 4, 1),
               (Arg("temp", 256), Arg("temp", 512), Arg("output", "y")))]
    assert gpu_driver.arena_size(program) == 516  # the empty temp still gets 4 bytes


def test_an_unknown_kernel_argument_is_refused():
    program = hand_program()
    program.kernels[0] = replace(program.kernels[0], args=("a", "nowhere"))
    with pytest.raises(ValueError, match="kernel 'first' takes 'nowhere', which is no input"):
        gpu_driver.plan_launches(program)


def test_dim3():
    assert gpu_driver.dim3((), ()) == ((1, 1, 1), (1, 1, 1))
    assert gpu_driver.dim3((5,), (256,)) == ((5, 1, 1), (256, 1, 1))
    with pytest.raises(ValueError, match="more than three dimensions"):
        gpu_driver.dim3((1, 1, 1, 1), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="differ in length"):
        gpu_driver.dim3((1, 1), (1,))


def test_launch_limits_name_the_limit_and_the_device():
    launch = Launch("k0_sum", (4, 1, 1), (512, 1, 1), ())
    fits = {"max_threads": 1024, "shared_bytes": 4096, "registers": 32}
    gpu_driver.check_launch(launch, fits, H200)
    with pytest.raises(ValueError, match=r"cuda \(NVIDIA H200, sm_90\): kernel 'k0_sum' is "
                                         r"launched with blocks of 512 threads .* at most 256 "
                                         r"per block \(it uses 128 registers"):
        gpu_driver.check_launch(launch, dict(fits, max_threads=256, registers=128), H200)
    with pytest.raises(ValueError, match="uses 65536 bytes of shared memory per block, more "
                                         "than the device's 49152"):
        gpu_driver.check_launch(launch, dict(fits, shared_bytes=65536), H200)
    with pytest.raises(ValueError, match="70000 blocks along y, more than the device's 65535"):
        gpu_driver.check_launch(Launch("k", (1, 70000, 1), (1, 1, 1), ()), fits, H200)


def test_out_of_memory_names_the_bytes_asked_and_free():
    text = gpu_driver.error_message("CUDA_ERROR_OUT_OF_MEMORY", H200, "allocating a buffer",
                                    nbytes=2**40, memory=(3 * 2**30, 141 * 2**30),
                                    detail="out of memory")
    assert text.startswith("cuda (NVIDIA H200): allocating a buffer: out of device memory")
    assert f"asked for {2**40:,} bytes" in text
    assert f"{3 * 2**30:,} of {141 * 2**30:,} bytes free" in text
    assert text.endswith("[CUDA_ERROR_OUT_OF_MEMORY]")


def test_ptx_newer_than_the_driver_says_what_to_do():
    text = gpu_driver.error_message("CUDA_ERROR_UNSUPPORTED_PTX_VERSION", H200,
                                    "loading the compiled program", made_by="NVRTC 13.0")
    assert "the driver (CUDA 12.4) cannot load PTX made by NVRTC 13.0" in text
    assert "update the NVIDIA driver" in text
    assert "pip install 'nvidia-cuda-nvrtc-cu12==12.4.*'" in text
    assert gpu_driver.nvrtc_install("13.0").startswith("pip install 'nvidia-cuda-nvrtc==13.0.*'")


def test_other_errors_explain_or_pass_the_drivers_words():
    no_binary = gpu_driver.error_message("CUDA_ERROR_NO_BINARY_FOR_GPU", H200, "loading")
    assert "no code for this GPU's architecture sm_90" in no_binary
    assert "CUDA 12.4" in no_binary and "NVRTC 13.0" in no_binary
    illegal = gpu_driver.error_message("CUDA_ERROR_ILLEGAL_ADDRESS", H200, "waiting")
    assert "outside its buffers" in illegal and "unusable" in illegal
    other = gpu_driver.error_message("CUDA_ERROR_INVALID_HANDLE", H200, "launching kernel 'k'",
                                     detail="invalid resource handle")
    assert other == ("cuda (NVIDIA H200): launching kernel 'k': invalid resource handle "
                     "[CUDA_ERROR_INVALID_HANDLE]")


def test_status_names_and_strings():
    class CUresult(enum.IntEnum):
        CUDA_ERROR_OUT_OF_MEMORY = 2

    assert gpu_driver.status_name(CUresult.CUDA_ERROR_OUT_OF_MEMORY) == "CUDA_ERROR_OUT_OF_MEMORY"
    assert gpu_driver.as_text((CUresult.CUDA_ERROR_OUT_OF_MEMORY, b"out of memory\0\0")) == \
        "out of memory"
    assert gpu_driver.as_text(b"NVIDIA H200\0\0\0") == "NVIDIA H200"


def test_versions_and_ptx_origin():
    assert cuda.cuda_version(12040) == "12.4" and cuda.cuda_version(13000) == "13.0"
    assert cuda.ptx_origin(b"//\n// Cuda compilation tools, release 13.0, V13.0.88\n") == \
        "NVRTC 13.0"
    assert cuda.ptx_origin(b".version 8.5\n.target sm_90\n") == "PTX ISA 8.5"
    assert cuda.ptx_origin(b"") == ""


@pytest.mark.skipif(not nvrtc.available(), reason="NVRTC is not installed")
def test_a_generated_program_compiles_to_ptx_for_the_devices_capability():
    program = build(small_graph()[0], "cuda")
    ptx = cuda._compile(program.source, H200)
    assert b".target sm_90" in ptx
    assert cuda.ptx_origin(ptx) == "NVRTC {}.{}".format(*nvrtc.version())
    for info in program.kernels:
        assert f".entry {info.name}(".encode() in ptx
    with pytest.raises(nvrtc.NVRTCError, match="cannot generate code for compute capability 3.7"):
        cuda._compile(program.source, replace(H200, arch="sm_37"))


# ---- with a device: helpers shared with tests/test_runtime_hip.py ------------------------------


def check_run_matches_the_reference(module, target: str) -> None:
    """A compiled program (matmul, reduction, bool, argmax, int64) and the spec MLP match the
    reference evaluator and NumPy; `run_device` gives the same values without the host."""
    from neurenix.compiler import evaluate

    graph, args = small_graph()
    exe = module.Executable(build(graph, target))
    got = exe.run(args)
    for g, r in zip(got, evaluate(graph, args)):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    x, w = args[0], args[1]
    y = np.tanh((x * x) @ w)
    np.testing.assert_allclose(got[0], y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], y.sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[4], args[2] * 2)
    outs = exe.run_device([module.Buffer.from_host(a) for a in args])
    assert all(isinstance(o, module.Buffer) for o in outs)
    for g, d in zip(got, outs):
        np.testing.assert_array_equal(d.to_host(), g)
    mlp = mlp_graph()
    rng = np.random.default_rng(1)
    mlp_args = [rng.standard_normal(t.shape).astype(np.float32) for t in
                (i.type for i in mlp.inputs)]
    (out,) = module.Executable(build(mlp, target)).run(mlp_args)
    xx, w1, b1, w2, b2 = mlp_args
    np.testing.assert_allclose(out, np.maximum(xx @ w1.T + b1, 0) @ w2.T + b2, rtol=1e-5,
                               atol=1e-5)


def check_buffers_round_trip(module) -> None:
    for dtype in (np.bool_, np.int32, np.int64, np.float32, np.float64):
        for shape in ((3, 5), (0,), ()):
            host = (np.arange(int(np.prod(shape))) % 3 - 1).astype(dtype).reshape(shape)
            buffer = module.Buffer.from_host(host)
            assert buffer.shape == shape and buffer.dtype == np.dtype(dtype)
            back = buffer.to_host()
            assert back.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(back, host)


def check_out_of_memory(module, kind: str) -> None:
    with pytest.raises(RuntimeError, match=rf"^{kind} \(.*\): allocating .*: out of device "
                                           rf"memory: asked for {2**50:,} bytes, .* bytes free"):
        module.Buffer.empty((2**50,), np.uint8)


def check_profile(module, target: str) -> None:
    graph, args = small_graph()
    program = build(graph, target)
    times = module.Executable(program).profile(args, repeat=2)
    assert [name for name, _ in times] == [k.name for k in program.kernels if 0 not in k.grid]
    assert all(t > 0 for _, t in times)


def check_block_above_the_functions_limit(module, target: str) -> None:
    """The generator bounds each kernel's block (`__launch_bounds__`): a larger block is refused
    before any launch, naming the limit."""
    program = build(small_graph()[0], target)
    k = next(i for i, info in enumerate(program.kernels) if info.block)
    block = (program.kernels[k].block[0] * 4,) + tuple(program.kernels[k].block[1:])
    program.kernels[k] = replace(program.kernels[k], block=block)
    with pytest.raises(ValueError, match="but the compiled function allows at most"):
        module.Executable(program)


@pytest.fixture
def device():
    needs_device("cuda")


def test_run_matches_the_reference(device):
    check_run_matches_the_reference(cuda, "cuda")


def test_buffers_round_trip_every_dtype(device):
    check_buffers_round_trip(cuda)


def test_an_oversized_allocation_names_the_memory(device):
    check_out_of_memory(cuda, "cuda")


def test_profile_times_every_kernel(device):
    check_profile(cuda, "cuda")


def test_a_block_above_the_functions_limit_is_refused(device):
    check_block_above_the_functions_limit(cuda, "cuda")


def test_the_device_is_listed_and_identified(device):
    import neurenix

    assert neurenix.Device("cuda").is_available()
    assert "cuda" in [d.type.value for d in neurenix.get_available_devices()]
    assert cuda.fingerprint().count("|") == 2 and "sm_" in cuda.fingerprint()
    assert "NVRTC" in cuda.code_identity()
    cuda.synchronize()
