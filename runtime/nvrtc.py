"""NVRTC, NVIDIA's runtime compiler: CUDA C source to PTX, in process, through ctypes.

The library comes from the `nvidia-cuda-nvrtc` wheel (pinned to the CUDA 13.0 release:
the `ptxas` 13.0 of these machines refuses PTX of a newer ISA), else `NEURENIX_NVRTC` (a
path to libnvrtc.so), else the system's.  NVRTC loads its builtins library by name at the
first compile, so it is loaded first, globally, from the same folder.  Nothing here needs a
GPU or a driver: the compiler's toolchain checks and the CUDA runtime both call `compile_ptx`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import threading
from functools import cache


class NVRTCError(RuntimeError):
    """NVRTC is missing or refused a program (the message holds its log)."""


@cache
def _library() -> ctypes.CDLL:
    candidates = [os.environ.get("NEURENIX_NVRTC", "")]
    try:
        import nvidia
        for root in nvidia.__path__:
            candidates += sorted(glob.glob(os.path.join(root, "cu*", "lib", "libnvrtc.so.*")))
            candidates += sorted(glob.glob(os.path.join(root, "cuda_nvrtc", "lib",
                                                        "libnvrtc.so.*")))
    except ImportError:
        pass
    candidates += [ctypes.util.find_library("nvrtc") or "",
                   *sorted(glob.glob("/usr/local/cuda/lib64/libnvrtc.so*"))]
    tried = []
    for path in candidates:
        if not path or ".alt." in path:
            continue
        folder = os.path.dirname(path)
        for builtins in sorted(glob.glob(os.path.join(folder, "libnvrtc-builtins.so.*"))):
            if ".alt." not in builtins:
                try:
                    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    pass
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path}: {e}")
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        return lib
    raise NVRTCError("NVRTC is not installed (pip install 'nvidia-cuda-nvrtc==13.0.*', or set "
                     "NEURENIX_NVRTC to libnvrtc.so)" + (f"; tried {tried}" if tried else ""))


_LOCK = threading.Lock()


def available() -> bool:
    """Whether NVRTC can be loaded here."""
    try:
        _library()
    except NVRTCError:
        return False
    return True


def version() -> tuple[int, int]:
    """NVRTC's (major, minor) CUDA version."""
    lib = _library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def supported_archs() -> list[int]:
    """The compute capabilities NVRTC generates code for (75, 80, 86, 90, ...)."""
    lib = _library()
    count = ctypes.c_int()
    _check(lib, lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * count.value)()
    _check(lib, lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return list(archs)


def compile_ptx(source: str, arch: int, options: tuple[str, ...] = (),
                name: str = "kernels.cu") -> bytes:
    """The PTX of `source` for compute capability `arch` (80 for sm_80); an NVRTCError with
    NVRTC's log when it refuses the program, or when it does not know `arch`."""
    lib = _library()
    known = supported_archs()
    if arch not in known:
        major, minor = version()
        raise NVRTCError(f"NVRTC {major}.{minor} cannot generate code for compute capability "
                         f"{arch // 10}.{arch % 10} (it supports "
                         f"{', '.join(f'{a // 10}.{a % 10}' for a in known)})")
    program = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(),
                                       0, None, None), "nvrtcCreateProgram")
    try:
        flags = [f"--gpu-architecture=compute_{arch}", *options]
        argv = (ctypes.c_char_p * len(flags))(*(f.encode() for f in flags))
        with _LOCK:  # NVRTC is thread-safe per program; the lock keeps the logs apart
            status = lib.nvrtcCompileProgram(program, len(flags), argv)
        if status != 0:
            raise NVRTCError(f"NVRTC refused the program ({_message(lib, status)}):\n"
                             f"{_log(lib, program)}")
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetPTXSize(program, ctypes.byref(size)), "nvrtcGetPTXSize")
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetPTX(program, ptx), "nvrtcGetPTX")
        return ptx.raw.rstrip(b"\0")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def _log(lib: ctypes.CDLL, program: ctypes.c_void_p) -> str:
    size = ctypes.c_size_t()
    if lib.nvrtcGetProgramLogSize(program, ctypes.byref(size)) != 0:
        return "(no log)"
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(program, log)
    return log.value.decode(errors="replace").strip()


def _message(lib: ctypes.CDLL, status: int) -> str:
    return (lib.nvrtcGetErrorString(status) or b"?").decode()


def _check(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status != 0:
        raise NVRTCError(f"{what} failed: {_message(lib, status)}")
