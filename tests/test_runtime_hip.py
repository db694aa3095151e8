"""The HIP runtime (runtime/hip.py over runtime/gpu_driver.py; device kind "rocm").

Without a GPU: probing says exactly why there is no device, loading refuses with that reason,
the device is not listed, HIP's error names get the shared explanations, and a generated
program compiles to a code object with hipcc where hipcc is here.  With an AMD GPU
(`needs_device("rocm")`): the checks of tests/test_runtime_cuda.py, on ROCm.
"""
from __future__ import annotations

import sys
import types
from dataclasses import replace

import numpy as np
import pytest
from devices import needs_device
from neurenix.runtime import device_common, gpu_driver, hip, hip_compile
from neurenix.runtime.gpu_driver import DeviceInfo
from test_runtime_cuda import (
    build,
    check_block_above_the_functions_limit,
    check_buffers_round_trip,
    check_out_of_memory,
    check_profile,
    check_run_matches_the_reference,
    small_graph,
)

MI210 = DeviceInfo("rocm", "HIP", "AMD Instinct MI210", "gfx90a:sramecc+:xnack-", "6.2",
                   "hipcc /opt/rocm/bin/hipcc (HIP 6.2)", max_threads_per_block=1024,
                   max_shared_per_block=64 * 1024, max_grid=(2**31 - 1, 2**31 - 1, 2**31 - 1),
                   total_memory=64 * 2**30)


def fresh_state():
    return device_common.Lazy(lambda: gpu_driver.OpenDevice(*hip._open_driver()))


@pytest.fixture
def no_binding(monkeypatch):
    """The runtime as where hip-python is not installed (a fresh probe)."""
    for name in ("hip", "hip.hip", "rocm", "rocm.bindings", "rocm.bindings.hip"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(hip.RUNTIME, "state", fresh_state())


def test_a_missing_binding_is_the_reason(no_binding):
    assert not hip.available()
    assert hip.unavailable_reason() == "hip-python is not installed (pip install hip-python)"


def test_loading_says_why_there_is_no_device(no_binding):
    program = build(small_graph()[0], "hip")
    assert program.target == "rocm"
    with pytest.raises(RuntimeError, match=r"^rocm: unavailable: hip-python is not installed"):
        hip.Executable(program)
    with pytest.raises(RuntimeError, match="rocm: unavailable: hip-python is not installed"):
        hip.Buffer.from_host(np.zeros(3, np.float32))


def test_no_runtime_library_is_the_reason(monkeypatch):
    monkeypatch.setattr(hip, "_binding", lambda: types.SimpleNamespace())
    monkeypatch.setattr(hip, "_has_libamdhip", lambda: False)
    monkeypatch.setattr(hip.RUNTIME, "state", fresh_state())
    assert hip.unavailable_reason() == "no HIP runtime (libamdhip64.so not found)"


def test_hipinit_without_a_gpu_is_the_no_device_reason(monkeypatch):
    """ROCm's hipInit answers hipErrorInvalidDevice on a machine without an AMD GPU (seen
    with hip-python 6.2 over Debian's ROCm 5.2 runtime)."""
    status = types.SimpleNamespace(hipSuccess=0, hipErrorInvalidDevice=101)

    class Status(int):
        name = "hipErrorInvalidDevice"

    binding = types.SimpleNamespace(hipError_t=status, hipInit=lambda flags: (Status(101),))
    monkeypatch.setattr(hip, "_binding", lambda: binding)
    monkeypatch.setattr(hip, "_has_libamdhip", lambda: True)
    monkeypatch.setattr(hip.RUNTIME, "state", fresh_state())
    assert hip.unavailable_reason() == "HIP runtime found but no device"


def test_the_device_is_not_listed_where_it_cannot_run():
    import neurenix

    if hip.available():
        pytest.skip("a ROCm device is here")
    assert "rocm" not in [d.type.value for d in neurenix.get_available_devices()]
    assert not neurenix.Device("rocm").is_available()
    with pytest.raises(ValueError, match="rocm is not available: "):
        neurenix.device.as_device("rocm", check=True)


def test_a_program_of_another_target_is_refused():
    with pytest.raises(ValueError, match="expected a 'rocm' program, got target 'cuda'"):
        hip.Executable(build(small_graph()[0], "cuda"))


def test_hip_error_names_get_the_shared_explanations():
    oom = gpu_driver.error_message("hipErrorOutOfMemory", MI210, "allocating", nbytes=10,
                                   memory=(5, 64))
    assert oom.startswith("rocm (AMD Instinct MI210): allocating: out of device memory: "
                          "asked for 10 bytes, 5 of 64 bytes free")
    legacy = gpu_driver.error_message("hipErrorMemoryAllocation", MI210, "allocating",
                                      nbytes=10)
    assert "out of device memory: asked for 10 bytes" in legacy
    no_binary = gpu_driver.error_message("hipErrorNoBinaryForGpu", MI210, "loading")
    assert "no code for this GPU's architecture gfx90a:sramecc+:xnack-" in no_binary
    assert "hipcc --offload-arch" in no_binary and "NVRTC" not in no_binary
    assert "outside its buffers" in gpu_driver.error_message("hipErrorIllegalAddress", MI210,
                                                             "waiting")


def test_hip_versions():
    assert hip.hip_version(60241134) == "6.2"
    assert hip.hip_version(50221151) == "5.2"


def test_the_launch_limits_are_the_shared_ones():
    launch = gpu_driver.Launch("k", (1, 1, 1), (1024, 1, 1), ())
    with pytest.raises(ValueError, match=r"rocm \(AMD Instinct MI210, gfx90a:sramecc\+:xnack-\): "
                                         r"kernel 'k' .* at most 256 per block"):
        gpu_driver.check_launch(launch, {"max_threads": 256, "shared_bytes": 0,
                                         "registers": 64}, MI210)


@pytest.mark.skipif(not hip_compile.available() or "gfx90a" not in hip_compile.buildable_archs(),
                    reason="hipcc with gfx90a bitcode is not here")
def test_a_generated_program_compiles_to_a_code_object_for_the_devices_arch():
    program = build(small_graph()[0], "hip")
    code = hip._compile(program.source, MI210)
    assert code[:24] == b"__CLANG_OFFLOAD_BUNDLE__" or code[:4] == b"\x7fELF"
    for info in program.kernels:
        assert info.name.encode() in code
    with pytest.raises(hip_compile.HIPCompileError, match="no bitcode for gfx9999"):
        hip._compile(program.source, replace(MI210, arch="gfx9999"))


@pytest.fixture
def device():
    needs_device("rocm")


def test_run_matches_the_reference(device):
    check_run_matches_the_reference(hip, "hip")


def test_buffers_round_trip_every_dtype(device):
    check_buffers_round_trip(hip)


def test_an_oversized_allocation_names_the_memory(device):
    check_out_of_memory(hip, "rocm")


def test_profile_times_every_kernel(device):
    check_profile(hip, "hip")


def test_a_block_above_the_functions_limit_is_refused(device):
    check_block_above_the_functions_limit(hip, "hip")


def test_the_device_is_listed_and_identified(device):
    import neurenix

    assert neurenix.Device("rocm").is_available()
    assert "gfx" in hip.fingerprint() and "hipcc" in hip.code_identity()
    hip.synchronize()
