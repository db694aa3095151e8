"""The HIP runtime: runs the HIP C++ programs of the "hip" target (device kind "rocm") on an AMD
GPU through ROCm's HIP module API.

The binding is AMD's hip-python (`from hip import hip`; newer releases also as
`rocm.bindings.hip`), whose calls mirror cuda-python's: every call returns
`(hipError_t, *values)`, checked by runtime/gpu_driver.py.  hipcc (runtime/hip_compile.py)
compiles the source to a code object for the device's exact architecture (`gcnArchName`, e.g.
"gfx90a:sramecc+:xnack-"); the code object is what a cache stores, and hipModuleLoadData loads
it.  Kernel arguments are passed through `extra` (hip-python packs a tuple of ctypes values,
each at its alignment), the form hip-python documents for hipModuleLaunchKernel: pointers as
`c_void_p`, a kernel of dynamic sizes' symbols after them as `c_int64`.  Device 0, made
current on every thread that calls in.  Everything else (device, buffers, executables, error
messages) is gpu_driver.py.

hip-python is imported on first use: `import neurenix` never needs it.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
from typing import Any

from . import gpu_driver, hip_compile
from .backend import LibraryCache
from .gpu_driver import DeviceInfo, Driver, as_text, status_name
from .program import Program

DEVICE = "rocm"
STORAGE = gpu_driver.STORAGE
FUNCTION_ATTRIBUTES = {"max_threads": "HIP_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK",
                       "shared_bytes": "HIP_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES",
                       "registers": "HIP_FUNC_ATTRIBUTE_NUM_REGS"}


def hip_version(number: int) -> str:
    """A HIP version number (major * 10^7 + minor * 10^5 + patch: 60241134) as "6.2"."""
    return f"{number // 10_000_000}.{number // 100_000 % 100}"


def _binding() -> Any:
    try:
        from hip import hip
    except ImportError:
        try:
            from rocm.bindings import hip
        except ImportError:
            raise RuntimeError("hip-python is not installed (pip install hip-python)") from None
    return hip


def _has_libamdhip() -> bool:
    for name in ("libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def launch_extra(pointers: list[int], sizes: tuple[int, ...] = ()) -> tuple | None:
    """hipModuleLaunchKernel's `extra` in hip-python's form: a tuple of ctypes values, which
    it packs into one argument buffer, each at its type's alignment: the pointers as
    `c_void_p`, then a kernel of dynamic sizes' symbol values as `c_int64` (`long long`);
    None for no arguments."""
    args = tuple(ctypes.c_void_p(p) for p in pointers)
    if sizes:
        args += tuple(ctypes.c_int64(v) for v in sizes)
    return args or None


def _driver(hp: Any) -> Driver:
    """The driver table of hip-python's `hip` module, on device 0."""
    kinds = hp.hipMemcpyKind

    def launch(fn: Any, grid: tuple, block: tuple, stream: Any, pointers: list[int],
               sizes: tuple[int, ...] = ()) -> tuple:
        return hp.hipModuleLaunchKernel(fn, *grid, *block, sharedMemBytes=0, stream=stream,
                                        kernelParams=None, extra=launch_extra(pointers, sizes))

    return Driver(
        ok=lambda status: status == hp.hipError_t.hipSuccess,
        error_name=status_name, error_string=lambda status: as_text(hp.hipGetErrorString(status)),
        activate=lambda: hp.hipSetDevice(0),
        alloc=hp.hipMalloc, free=hp.hipFree, mem_info=hp.hipMemGetInfo,
        upload=lambda dst, src, n, stream: hp.hipMemcpyAsync(
            dst, src, n, kinds.hipMemcpyHostToDevice, stream),
        download=lambda dst, src, n, stream: hp.hipMemcpyAsync(
            dst, src, n, kinds.hipMemcpyDeviceToHost, stream),
        copy=lambda dst, src, n, stream: hp.hipMemcpyAsync(
            dst, src, n, kinds.hipMemcpyDeviceToDevice, stream),
        stream_create=hp.hipStreamCreate, stream_sync=hp.hipStreamSynchronize,
        module_load=lambda image: hp.hipModuleLoadData(bytearray(image)),
        module_unload=hp.hipModuleUnload,
        function=lambda module, name: hp.hipModuleGetFunction(module, name.encode()),
        function_attribute=lambda fn, key: hp.hipFuncGetAttribute(
            getattr(hp.hipFunction_attribute, FUNCTION_ATTRIBUTES[key]), fn),
        launch=launch)


def _open_driver() -> tuple[Driver, DeviceInfo]:
    """Device 0 (a RuntimeError saying why there is none)."""
    hp = _binding()
    if not _has_libamdhip():
        raise RuntimeError("no HIP runtime (libamdhip64.so not found)")

    def value(result: tuple, what: str) -> Any:
        return gpu_driver.opening_value(
            result, lambda status: status == hp.hipError_t.hipSuccess,
            lambda status: as_text(hp.hipGetErrorString(status)),
            "HIP runtime found but no device", what)

    init = hp.hipInit(0)
    if gpu_driver.status_name(init[0]) == "hipErrorInvalidDevice":  # ROCm: no GPU at all
        raise RuntimeError("HIP runtime found but no device")
    value(init, "hipInit")
    if value(hp.hipGetDeviceCount(), "hipGetDeviceCount") == 0:
        raise RuntimeError("HIP runtime found but no device")
    try:
        hipcc = hip_compile.hipcc()
    except hip_compile.HIPCompileError as e:
        raise RuntimeError(str(e)) from None
    value(hp.hipSetDevice(0), "hipSetDevice")
    props = hp.hipDeviceProp_t()
    value(hp.hipGetDeviceProperties(props, 0), "hipGetDeviceProperties")
    attr = lambda name: int(value(hp.hipDeviceGetAttribute(
        getattr(hp.hipDeviceAttribute_t, f"hipDeviceAttribute{name}"), 0), name))
    runtime = hip_version(value(hp.hipRuntimeGetVersion(), "hipRuntimeGetVersion"))
    info = DeviceInfo(
        DEVICE, "HIP", as_text(props.name), as_text(props.gcnArchName),
        hip_version(value(hp.hipDriverGetVersion(), "hipDriverGetVersion")),
        f"hipcc {hipcc} (HIP {runtime})", attr("MaxThreadsPerBlock"),
        attr("MaxSharedMemoryPerBlock"),
        (attr("MaxGridDimX"), attr("MaxGridDimY"), attr("MaxGridDimZ")),
        int(props.totalGlobalMem))
    return _driver(hp), info


def _compile(source: str, info: DeviceInfo) -> bytes:
    """A code object for the device's architecture (with its feature flags)."""
    return hip_compile.compile_code_object(source, (info.arch,))


RUNTIME = gpu_driver.Runtime(DEVICE, _open_driver, _compile)
available = RUNTIME.available
unavailable_reason = RUNTIME.unavailable_reason
fingerprint = RUNTIME.fingerprint
synchronize = RUNTIME.synchronize


def code_identity() -> str:
    """What a code object depends on: the device and driver (fingerprint), hipcc, the
    binding."""
    return (f"{fingerprint()}|{RUNTIME.device().info.compiler}|"
            f"hip-python {importlib.metadata.version('hip-python')}")


def prepare(program: Program, cache: LibraryCache | None = None) -> None:
    """Nothing to load once per process: programs are compiled when loaded."""


class Buffer(gpu_driver.GPUBuffer):
    """A tensor's values in HIP device memory (see gpu_driver.GPUBuffer)."""

    runtime = RUNTIME
    device = DEVICE


class HIPExecutable(gpu_driver.GPUExecutable):
    """A "rocm" `Program` loaded on device 0 (see gpu_driver.GPUExecutable)."""

    runtime = RUNTIME
    buffer_type = Buffer


Executable = HIPExecutable  # the runtime protocol's name for the class
