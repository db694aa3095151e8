"""The CUDA runtime: runs the CUDA C++ programs of the "cuda" target through NVIDIA's driver API.

The binding is NVIDIA's cuda-python (`cuda.bindings.driver` in cuda-bindings 12 and later, the
older `cuda.cuda`): a wheel that needs only the driver (libcuda.so) at run time, which is what
the GPU machines have; pycuda needs the CUDA toolkit to build and is not there.  Every call
returns `(CUresult, *values)`, checked by runtime/gpu_driver.py.

NVRTC (runtime/nvrtc.py) compiles the source to PTX for the device's compute capability; the
PTX is the object code a cache stores, and cuModuleLoadData hands it to the driver, which
assembles it for the GPU.  PTX from an NVRTC newer than the driver is refused
(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, explained with both versions).  The runtime uses device 0's
primary context (shared with other CUDA users in the process), current on every thread that
calls in.  Kernel arguments go through cuLaunchKernel's `kernelParams` as (values, ctypes
types): pointers as `c_void_p`, a kernel of dynamic sizes' symbols as `c_longlong`.
Everything else (device, buffers, executables, error messages) is gpu_driver.py.

cuda-python is imported on first use: `import neurenix` never needs it.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import re
from typing import Any

from . import gpu_driver, nvrtc
from .backend import LibraryCache
from .gpu_driver import DeviceInfo, Driver, as_text, status_name
from .program import Program

DEVICE = "cuda"
STORAGE = gpu_driver.STORAGE
FUNCTION_ATTRIBUTES = {"max_threads": "CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK",
                       "shared_bytes": "CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES",
                       "registers": "CU_FUNC_ATTRIBUTE_NUM_REGS"}


def cuda_version(number: int) -> str:
    """A CUDA version number as the driver reports it (12040) as "12.4"."""
    return f"{number // 1000}.{number % 1000 // 10}"


def ptx_origin(ptx: bytes) -> str:
    """What made a PTX module, from its header: "NVRTC 13.0", else its "PTX ISA 9.0"."""
    release = re.search(rb"Cuda compilation tools, release (\d+\.\d+)", ptx)
    if release:
        return f"NVRTC {release.group(1).decode()}"
    isa = re.search(rb"^\s*\.version\s+(\d+\.\d+)", ptx, re.MULTILINE)
    return f"PTX ISA {isa.group(1).decode()}" if isa else ""


def _binding() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver
        except ImportError:
            raise RuntimeError("cuda-python is not installed (pip install cuda-python)") from None
    return driver


def _has_libcuda() -> bool:
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def kernel_params(pointers: list[int], sizes: tuple[int, ...] = ()) -> Any:
    """cuLaunchKernel's `kernelParams` in cuda-python's form, (values, ctypes types): the
    pointers as `void*`, then a kernel of dynamic sizes' symbol values as `long long` (the
    binding copies each into a buffer of its type); 0 for no arguments."""
    if sizes:
        return (tuple(pointers) + tuple(sizes),
                (ctypes.c_void_p,) * len(pointers) + (ctypes.c_longlong,) * len(sizes))
    return (tuple(pointers), (ctypes.c_void_p,) * len(pointers)) if pointers else 0


def _driver(cu: Any, context: Any) -> Driver:
    """The driver table of cuda-python's `driver` module, on `context`."""

    def load(image: bytes) -> tuple:
        data = ctypes.create_string_buffer(image)  # PTX is text: the driver wants it NUL-ended
        return cu.cuModuleLoadData(ctypes.addressof(data))

    def launch(fn: Any, grid: tuple, block: tuple, stream: Any, pointers: list[int],
               sizes: tuple[int, ...] = ()) -> tuple:
        return cu.cuLaunchKernel(fn, *grid, *block, 0, stream, kernel_params(pointers, sizes), 0)

    return Driver(
        ok=lambda status: status == cu.CUresult.CUDA_SUCCESS,
        error_name=status_name, error_string=lambda status: as_text(cu.cuGetErrorString(status)),
        activate=lambda: cu.cuCtxSetCurrent(context),
        alloc=cu.cuMemAlloc, free=cu.cuMemFree, mem_info=cu.cuMemGetInfo,
        upload=cu.cuMemcpyHtoDAsync, download=cu.cuMemcpyDtoHAsync, copy=cu.cuMemcpyDtoDAsync,
        stream_create=lambda: cu.cuStreamCreate(0), stream_sync=cu.cuStreamSynchronize,
        module_load=load, module_unload=cu.cuModuleUnload,
        function=lambda module, name: cu.cuModuleGetFunction(module, name.encode()),
        function_attribute=lambda fn, key: cu.cuFuncGetAttribute(
            getattr(cu.CUfunction_attribute, FUNCTION_ATTRIBUTES[key]), fn),
        launch=launch)


def _open_driver() -> tuple[Driver, DeviceInfo]:
    """Device 0 and its primary context (a RuntimeError saying why there is none)."""
    cu = _binding()
    if not _has_libcuda():
        raise RuntimeError("no CUDA driver (libcuda.so not found)")

    def value(result: tuple, what: str) -> Any:
        return gpu_driver.opening_value(
            result, lambda status: status == cu.CUresult.CUDA_SUCCESS,
            lambda status: as_text(cu.cuGetErrorString(status)),
            "CUDA driver found but no device", what)

    value(cu.cuInit(0), "cuInit")
    if value(cu.cuDeviceGetCount(), "cuDeviceGetCount") == 0:
        raise RuntimeError("CUDA driver found but no device")
    try:
        major, minor = nvrtc.version()
    except nvrtc.NVRTCError as e:
        raise RuntimeError(str(e)) from None
    dev = value(cu.cuDeviceGet(0), "cuDeviceGet")
    context = value(cu.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
    attr = lambda name: int(value(cu.cuDeviceGetAttribute(
        getattr(cu.CUdevice_attribute, f"CU_DEVICE_ATTRIBUTE_{name}"), dev), name))
    info = DeviceInfo(
        DEVICE, "CUDA", as_text(value(cu.cuDeviceGetName(256, dev), "cuDeviceGetName")),
        f"sm_{attr('COMPUTE_CAPABILITY_MAJOR')}{attr('COMPUTE_CAPABILITY_MINOR')}",
        cuda_version(value(cu.cuDriverGetVersion(), "cuDriverGetVersion")),
        f"NVRTC {major}.{minor}", attr("MAX_THREADS_PER_BLOCK"),
        attr("MAX_SHARED_MEMORY_PER_BLOCK"),
        (attr("MAX_GRID_DIM_X"), attr("MAX_GRID_DIM_Y"), attr("MAX_GRID_DIM_Z")),
        int(value(cu.cuDeviceTotalMem(dev), "cuDeviceTotalMem")))
    return _driver(cu, context), info


def _compile(source: str, info: DeviceInfo) -> bytes:
    """PTX for the device's compute capability."""
    return nvrtc.compile_ptx(source, int(info.arch.removeprefix("sm_")))


RUNTIME = gpu_driver.Runtime(DEVICE, _open_driver, _compile, ptx_origin)
available = RUNTIME.available
unavailable_reason = RUNTIME.unavailable_reason
fingerprint = RUNTIME.fingerprint
synchronize = RUNTIME.synchronize


def code_identity() -> str:
    """What PTX depends on: the device and driver (fingerprint), NVRTC, the binding."""
    binding = "unknown"
    for package in ("cuda-bindings", "cuda-python"):
        try:
            binding = f"{package} {importlib.metadata.version(package)}"
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"{fingerprint()}|{RUNTIME.device().info.compiler}|{binding}"


def prepare(program: Program, cache: LibraryCache | None = None) -> None:
    """Nothing to load once per process: programs are compiled when loaded."""


class Buffer(gpu_driver.GPUBuffer):
    """A tensor's values in CUDA device memory (see gpu_driver.GPUBuffer)."""

    runtime = RUNTIME
    device = DEVICE


class CUDAExecutable(gpu_driver.GPUExecutable):
    """A "cuda" `Program` loaded on device 0 (see gpu_driver.GPUExecutable)."""

    runtime = RUNTIME
    buffer_type = Buffer


Executable = CUDAExecutable  # the runtime protocol's name for the class
