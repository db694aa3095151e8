"""What the CUDA and HIP runtimes share: their driver APIs mirror each other (cuInit/hipInit,
cuModuleLoadData/hipModuleLoadData, cuLaunchKernel/hipModuleLaunchKernel, cuMemAlloc/hipMalloc,
...), so each vendor module describes its API in a `Driver` table and this module does the rest
once: the per-process device, `GPUBuffer`, `GPUExecutable`, and turning a driver's error code
into a message that says what went wrong and what to do.

One device per process (ordinal 0) with one stream: every upload, launch, copy and download is
enqueued on it, so they run in order; `run` waits once, `run_device` returns without waiting.
`GPUExecutable` loads the module from the object code once (compiling the source when no object
code is given), resolves its kernels, checks each launch against the function's and the
device's limits before anything runs, uploads the constants once and allocates the arena once,
each temporary a pointer offset into it.  Device memory holds host layouts (bool one byte).

A program with dynamic sizes (`Program.symbols`, docs/compiler/dynamic-shapes.md) binds them
from the inputs' shapes per call (`device_common.Layouts`, with `sizes=` for symbols no input
binds): once per tuple of input shapes it evaluates the arena's size (growing the arena when a
call needs more), the temporaries' addresses, each launch's grid (ints, polynomials or
`runtime.sizes.Groups`, checked against the device's limits) and the outputs' shapes, and
remembers them; a kernel listed in `metadata["sized_kernels"]` gets the symbols' values as
64-bit integer parameters after its pointers.  Programs without symbols take the static path
unchanged.

The pure pieces (`plan_launches`, `arena_size`, `dim3`, `dynamic_dim3`, `launch_grid`,
`check_launch`, `error_message`) need no device and are what tests/test_runtime_cuda.py
exercises without one; tests/test_dynamic_cuda_hip.py runs the executable on a recording
`Driver`.
"""
from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from . import device_common as common
from .program import Program, ProgramSizes
from .sizes import Extent, extent_value

STORAGE: dict[str, str] = {}  # host layouts everywhere

ERROR_KINDS = {
    "CUDA_ERROR_OUT_OF_MEMORY": "out_of_memory",
    "hipErrorOutOfMemory": "out_of_memory",
    "hipErrorMemoryAllocation": "out_of_memory",
    "CUDA_ERROR_UNSUPPORTED_PTX_VERSION": "unsupported_ptx",
    "CUDA_ERROR_NO_BINARY_FOR_GPU": "no_binary",
    "hipErrorNoBinaryForGpu": "no_binary",
    "CUDA_ERROR_INVALID_PTX": "invalid_image",
    "CUDA_ERROR_INVALID_IMAGE": "invalid_image",
    "hipErrorInvalidImage": "invalid_image",
    "hipErrorInvalidKernelFile": "invalid_image",
    "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES": "launch_resources",
    "hipErrorLaunchOutOfResources": "launch_resources",
    "CUDA_ERROR_ILLEGAL_ADDRESS": "illegal_address",
    "hipErrorIllegalAddress": "illegal_address",
    "CUDA_ERROR_NO_DEVICE": "no_device",
    "hipErrorNoDevice": "no_device",
}
"""Driver error names (both vendors) that have an explanation of their own."""


@dataclass(frozen=True)
class DeviceInfo:
    """What the runtime knows about the device: for messages, identities and limit checks."""

    kind: str  # the device kind: "cuda" or "rocm"
    api: str  # "CUDA" or "HIP"
    name: str
    arch: str  # "sm_90", "gfx90a:sramecc+:xnack-"
    driver_version: str  # "12.4"
    compiler: str  # what makes object code: "NVRTC 13.0", "hipcc (ROCm 6.2)"
    max_threads_per_block: int = 1024
    max_shared_per_block: int = 48 * 1024
    max_grid: tuple[int, int, int] = (2**31 - 1, 65535, 65535)
    total_memory: int = 0


@dataclass(frozen=True)
class Driver:
    """How one vendor's driver API does each operation.  Every callable returns the binding's
    tuple `(status, *values)`; `ok`, `error_name` and `error_string` read a status.  Device
    pointers are Python ints; host memory is passed as an int address."""

    ok: Callable[[Any], bool]
    error_name: Callable[[Any], str]
    error_string: Callable[[Any], str]
    activate: Callable[[], tuple]  # make the device's context current on this thread
    alloc: Callable[[int], tuple]  # bytes -> (status, pointer)
    free: Callable[[int], tuple]
    mem_info: Callable[[], tuple]  # -> (status, free bytes, total bytes)
    upload: Callable[[int, int, int, Any], tuple]  # device dst, host src, bytes, stream
    download: Callable[[int, int, int, Any], tuple]  # host dst, device src, bytes, stream
    copy: Callable[[int, int, int, Any], tuple]  # device dst, device src, bytes, stream
    stream_create: Callable[[], tuple]
    stream_sync: Callable[[Any], tuple]
    module_load: Callable[[bytes], tuple]  # object code -> (status, module)
    module_unload: Callable[[Any], tuple]
    function: Callable[[Any, str], tuple]  # module, kernel name -> (status, function)
    function_attribute: Callable[[Any, str], tuple]
    """(function, "max_threads" | "shared_bytes" | "registers") -> (status, value)."""
    launch: Callable[..., tuple]
    """(function, grid xyz, block xyz, stream, pointer arguments[, sizes]) -> (status,);
    `sizes`, int64 values passed after the pointers, only for a kernel of dynamic sizes."""


# ---- pure pieces: no device needed ------------------------------------------------------------


def status_name(status: Any) -> str:
    """A binding's status enum as its name ("CUDA_ERROR_OUT_OF_MEMORY", "hipSuccess")."""
    return getattr(status, "name", None) or str(status).rsplit(".", 1)[-1]


def as_text(value: Any) -> str:
    """A binding's string result (bytes, NUL-padded, or a `(status, bytes)` tuple) as text."""
    if isinstance(value, tuple):
        value = value[-1]
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode(errors="replace").strip()
    return str(value)


def opening_value(result: tuple, ok: Callable[[Any], bool], describe: Callable[[Any], str],
                  no_device: str, what: str) -> Any:
    """The value of a driver call made while opening the device; a RuntimeError that is the
    `no_device` reason for a no-device status, else names the call and the error."""
    if not ok(result[0]):
        name = status_name(result[0])
        if ERROR_KINDS.get(name) == "no_device":
            raise RuntimeError(no_device)
        raise RuntimeError(f"{what} failed: {name}: {describe(result[0])}")
    return result[1] if len(result) == 2 else tuple(result[1:])


@dataclass(frozen=True)
class Arg:
    """Where a kernel argument's pointer comes from: an `input` (by index), an `output` (by
    name, allocated per call), a `temp` (the arena plus `key` bytes; by name in a program
    with dynamic sizes, placed per call) or a `constant` (by name)."""

    kind: str
    key: int | str


@dataclass(frozen=True)
class Launch:
    """One kernel launch: its name, geometry (three dimensions each; in a program with dynamic
    sizes a grid dimension may be a polynomial or `Groups`, evaluated per call) and
    arguments; `sized`: it takes the symbols' values after its pointers."""

    name: str
    grid: tuple[Extent, Extent, Extent]
    block: tuple[int, int, int]
    args: tuple[Arg, ...]
    sized: bool = False

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]


def dim3(grid: Sequence[int], block: Sequence[int]) -> tuple[tuple[int, int, int],
                                                             tuple[int, int, int]]:
    """A launch's grid and block as (x, y, z), dimension 0 being x: () is one thread; more than
    three dimensions is a ValueError."""
    grid, block = common.launch_shape(grid, block)
    if len(grid) > 3:
        raise ValueError(f"launch geometry: grid {grid} has more than three dimensions")
    pad = (1,) * (3 - len(grid))
    return tuple(grid) + pad, tuple(block) + pad  # type: ignore[return-value]


def dynamic_dim3(grid: Sequence[Extent], block: Sequence[int]
                 ) -> tuple[tuple[Extent, Extent, Extent], tuple[int, int, int]]:
    """`dim3` of a grid whose dimensions may be symbolic (kept as they are)."""
    if not grid:
        return (1, 1, 1), (1, 1, 1)
    block = tuple(int(b) for b in block)
    if len(block) != len(grid):
        raise ValueError(f"launch geometry: grid {tuple(grid)} and block {block} differ in "
                         "length")
    if len(grid) > 3:
        raise ValueError(f"launch geometry: grid {tuple(grid)} has more than three dimensions")
    pad = (1,) * (3 - len(grid))
    return tuple(grid) + pad, block + pad  # type: ignore[return-value]


def launch_grid(launch: Launch, env: dict[str, int]) -> tuple[int, int, int]:
    """A launch's grid for one call's symbol values."""
    return tuple(extent_value(g, env) for g in launch.grid)  # type: ignore[return-value]


def plan_launches(program: Program) -> list[Launch]:
    """The launches of `program` in order, each argument resolved to its source; a launch whose
    grid has a zero is left out (an empty range; with dynamic sizes, decided per call).  A
    ValueError names an argument that is no input, output, constant or temp of the program."""
    input_index = {t.name: k for k, t in enumerate(program.inputs)}
    specs = {b.name: b for b in program.buffers}
    symbolic = bool(program.symbols)
    sized = set(program.metadata.get("sized_kernels", ())) if symbolic else set()
    launches = []
    for info in program.kernels:
        if symbolic and not all(isinstance(g, int) for g in info.grid):
            grid, block = dynamic_dim3(info.grid, info.block)
        else:
            grid, block = dim3(info.grid, info.block)
            if 0 in grid:
                continue
        args = []
        for name in info.args:
            spec = specs.get(name)
            kind = spec.kind if spec is not None else "input"
            if name in input_index and kind == "input":
                args.append(Arg("input", input_index[name]))
            elif kind == "output":
                args.append(Arg("output", name))
            elif kind == "temp" and spec is not None:
                args.append(Arg("temp", name if symbolic else spec.offset))
            elif name in program.constants:
                args.append(Arg("constant", name))
            else:
                raise ValueError(f"{program.target}: kernel {info.name!r} takes {name!r}, which "
                                 f"is no input, output, constant or temp of the program")
        launches.append(Launch(info.name, grid, block, tuple(args), info.name in sized))
    return launches


def arena_size(program: Program, sizes: ProgramSizes | None = None) -> int:
    """Bytes to allocate for the arena: the plan's, and at least every temp's range (a temp
    of no elements still gets 4 bytes), at least 4; `sizes`: one call's of a program with
    dynamic sizes."""
    return common.arena_bytes(program, sizes)


def check_launch(launch: Launch, limits: dict[str, int], info: DeviceInfo) -> None:
    """A ValueError naming the limit and the device when `launch` cannot run: more threads per
    block than the compiled function allows (registers limit it below the device's maximum),
    more static shared memory than a block may have, or a grid larger than the device's."""
    where = f"{info.kind} ({info.name}, {info.arch})"
    if launch.threads > limits["max_threads"]:
        raise ValueError(f"{where}: kernel {launch.name!r} is launched with blocks of "
                         f"{launch.threads} threads {launch.block}, but the compiled function "
                         f"allows at most {limits['max_threads']} per block (it uses "
                         f"{limits.get('registers', '?')} registers per thread)")
    if limits["shared_bytes"] > info.max_shared_per_block:
        raise ValueError(f"{where}: kernel {launch.name!r} uses {limits['shared_bytes']} bytes "
                         f"of shared memory per block, more than the device's "
                         f"{info.max_shared_per_block}")
    for axis, g, most in zip("xyz", launch.grid, info.max_grid):
        if g > most:
            raise ValueError(f"{where}: kernel {launch.name!r} is launched with {g} blocks "
                             f"along {axis}, more than the device's {most}")


def nvrtc_install(cuda_version: str) -> str:
    """How to install the NVRTC of CUDA `cuda_version` ("12.4"): its wheel is
    nvidia-cuda-nvrtc-cu12 up to CUDA 12, nvidia-cuda-nvrtc from 13."""
    wheel = "nvidia-cuda-nvrtc" if int(cuda_version.split(".")[0]) >= 13 else \
        f"nvidia-cuda-nvrtc-cu{cuda_version.split('.')[0]}"
    return f"pip install '{wheel}=={cuda_version}.*', or set NEURENIX_NVRTC to its libnvrtc.so"


def error_message(code: str, info: DeviceInfo, what: str, *, detail: str = "",
                  nbytes: int | None = None, memory: tuple[int, int] | None = None,
                  made_by: str = "") -> str:
    """The message for driver error `code` (its name, e.g. "CUDA_ERROR_OUT_OF_MEMORY") met
    while doing `what`: what it means here and what to do.  `nbytes` and `memory` (free,
    total) describe an allocation, `made_by` what produced the object code being loaded,
    `detail` is the driver's own description."""
    kind = ERROR_KINDS.get(code, "")
    if kind == "out_of_memory":
        asked = f"asked for {nbytes:,} bytes" if nbytes is not None else "out of memory"
        free = f", {memory[0]:,} of {memory[1]:,} bytes free" if memory else ""
        text = (f"out of device memory: {asked}{free} (free device tensors or executables, or "
                f"use smaller inputs)")
    elif kind == "unsupported_ptx":
        text = (f"the driver (CUDA {info.driver_version}) cannot load PTX made by "
                f"{made_by or info.compiler}, which is newer: update the NVIDIA driver, or "
                f"install the NVRTC matching the driver ({nvrtc_install(info.driver_version)})")
    elif kind == "no_binary":
        text = (f"the program has no code for this GPU's architecture {info.arch}: "
                + ("the driver (CUDA " + info.driver_version + ") or " + info.compiler
                   + " does not support it; install a driver and NVRTC that do"
                   if info.api == "CUDA" else
                   f"it was built for another architecture; build it for {info.arch} "
                   f"(hipcc --offload-arch)"))
    elif kind == "invalid_image":
        text = (f"the driver refused the compiled program for {info.arch} (too many registers "
                f"or too much shared memory for the device, or code it cannot run)")
    elif kind == "launch_resources":
        text = ("a block needs more registers or shared memory than the device's "
                "multiprocessor has (a smaller block would fit)")
    elif kind == "illegal_address":
        text = ("a kernel accessed memory outside its buffers; the device context is unusable "
                "for the rest of this process")
    elif kind == "no_device":
        text = f"the {info.api} driver found no device"
    else:
        text = detail or "failed"
    if kind and detail:
        text += f" ({detail})"
    return f"{info.kind} ({info.name}): {what}: {text} [{code}]"


# ---- the device -------------------------------------------------------------------------------


class OpenDevice:
    """The process's device: the driver table, what it is, and the one stream."""

    def __init__(self, driver: Driver, info: DeviceInfo) -> None:
        self.driver = driver
        self.info = info
        self.closing = False
        self._local = threading.local()
        self.activate()
        self.stream = self.call(driver.stream_create(), "creating a stream")
        atexit.register(self.close)

    def activate(self) -> None:
        """Make the device's context current on this thread (once per thread)."""
        if not getattr(self._local, "active", False):
            self.call(self.driver.activate(), "making the context current")
            self._local.active = True

    def call(self, result: tuple, what: str, **details: Any) -> Any:
        """The values of a driver call's result (None, one value, or a tuple); a RuntimeError
        from `error_message` when its status is an error."""
        status, values = result[0], tuple(result[1:])
        if not self.driver.ok(status):
            raise RuntimeError(error_message(self.driver.error_name(status), self.info, what,
                                             detail=self.driver.error_string(status), **details))
        return None if not values else values[0] if len(values) == 1 else values

    def alloc(self, nbytes: int, what: str) -> int:
        """A new device allocation of `nbytes`; the out-of-memory message names the bytes
        asked for and the free and total memory."""
        result = self.driver.alloc(nbytes)
        if not self.driver.ok(result[0]):
            info = self.driver.mem_info()
            memory = tuple(info[1:3]) if self.driver.ok(info[0]) else None
            self.call(result, what, nbytes=nbytes, memory=memory)
        return int(result[1])

    def free(self, pointer: int) -> None:
        """Free an allocation (a finalizer: errors and a closing process are ignored).  The
        driver's free waits for work still using it."""
        if not self.closing:
            self.activate()
            self.driver.free(pointer)

    def sync(self, what: str) -> None:
        """Wait for everything enqueued on the stream."""
        self.call(self.driver.stream_sync(self.stream), what)

    def close(self) -> None:
        """At exit: wait for work in flight, then stop freeing (the process frees it all)."""
        try:
            self.driver.stream_sync(self.stream)
        except Exception:  # noqa: BLE001  (exiting anyway; a failed kernel was reported before)
            pass
        self.closing = True


class Runtime:
    """One vendor's runtime: opens the device on first use (`open_driver` returns the driver
    table and the device's description, or raises a RuntimeError saying why not), and turns
    source into object code (`compile`); `origin` describes object code for messages."""

    def __init__(self, kind: str, open_driver: Callable[[], tuple[Driver, DeviceInfo]],
                 compile: Callable[[str, DeviceInfo], bytes],
                 origin: Callable[[bytes], str] = lambda code: "") -> None:
        self.kind = kind
        self.compile = compile
        self.origin = origin
        self.state: common.Lazy[OpenDevice] = common.Lazy(lambda: OpenDevice(*open_driver()))

    def device(self) -> OpenDevice:
        """The process's device, current on this thread; a RuntimeError saying why there is
        none."""
        try:
            dev = self.state.get()
        except RuntimeError as e:
            raise RuntimeError(f"{self.kind}: unavailable: {e}") from None
        dev.activate()
        return dev

    def available(self) -> bool:
        return self.state.reason() == ""

    def unavailable_reason(self) -> str:
        return self.state.reason()

    def fingerprint(self) -> str:
        """The device and driver (probed once per process)."""
        info = self.device().info
        return f"{info.name}|{info.arch}|{info.api} driver {info.driver_version}"

    def synchronize(self) -> None:
        self.device().sync("waiting for the stream (a kernel may have failed)")

    def free(self, pointer: int) -> None:
        """Free device memory of this process's device (a finalizer: never raises)."""
        dev = self.state.peek()
        if dev is not None:
            try:
                dev.free(pointer)
            except Exception:  # noqa: BLE001  (a finalizer must not raise; the memory is lost)
                pass

    def unload(self, module: Any) -> None:
        """Unload a module (a finalizer: never raises)."""
        dev = self.state.peek()
        if dev is not None and not dev.closing:
            try:
                dev.activate()
                dev.driver.module_unload(module)
            except Exception:  # noqa: BLE001
                pass


# ---- buffers and executables ------------------------------------------------------------------


class GPUBuffer:
    """A tensor's values in device memory (`runtime.buffer.DeviceBuffer`): host layout, at
    least 4 bytes allocated; `ptr` is the device address.  A vendor module subclasses it to
    name its runtime and device kind."""

    runtime: ClassVar[Runtime]
    device: ClassVar[str]

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.ptr = int(ptr)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        weakref.finalize(self, self.runtime.free, self.ptr)

    @property
    def nbytes(self) -> int:
        """Bytes the values take (the allocation may be larger)."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @classmethod
    def empty(cls, shape: tuple[int, ...], dtype: np.dtype) -> GPUBuffer:
        """A new buffer with unspecified values."""
        dev = cls.runtime.device()
        size = common.device_nbytes(shape, dtype, STORAGE)
        return cls(dev.alloc(size, f"allocating a {np.dtype(dtype)}{list(shape)} buffer"),
                   shape, dtype)

    @classmethod
    def from_host(cls, array: np.ndarray, device: str | None = None) -> GPUBuffer:
        """A new buffer holding `array`'s values (copied before this returns)."""
        if device is not None and device != cls.device:
            raise ValueError(f"{cls.device}.Buffer.from_host: device {device!r} is not "
                             f"{cls.device!r}")
        array = common.to_storage(np.asarray(array), STORAGE)
        buffer = cls.empty(array.shape, array.dtype)
        if array.nbytes:
            dev = cls.runtime.device()
            dev.call(dev.driver.upload(buffer.ptr, array.ctypes.data, array.nbytes, dev.stream),
                     "upload")
            dev.sync("upload")
        return buffer

    def to_host(self) -> np.ndarray:
        """The values in a new host array (waits for the kernels writing them)."""
        host = np.empty(self.shape, self.dtype)
        if host.nbytes:
            dev = self.runtime.device()
            dev.call(dev.driver.download(host.ctypes.data, self.ptr, host.nbytes, dev.stream),
                     "download (a kernel before it may have failed)")
            dev.sync("download (a kernel before it may have failed)")
        return host

    def __repr__(self) -> str:
        return f"{self.device}.Buffer({self.dtype}{list(self.shape)})"


@dataclass
class _Loaded:
    """A launch with its function, the function's limits and its fixed pointers (temps and
    constants; None where the call supplies an input or output; a program with dynamic sizes
    fixes them per call, in its `_Layout`)."""

    launch: Launch
    function: Any
    fixed: list[int | None] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)


@dataclass
class _Layout:
    """What one tuple of input shapes gives a program with dynamic sizes: its sizes, each
    launch of a non-empty grid with that grid and its fixed pointers (temps placed in the
    arena, constants), the temporaries' addresses and the output buffers' shapes."""

    sizes: ProgramSizes
    launches: list[tuple[_Loaded, tuple[int, int, int], list[int | None]]]
    temps: dict[str, int]
    written: dict[str, tuple[tuple[int, ...], np.dtype]]


class GPUExecutable:
    """A `Program` loaded on the process's device: `run(inputs)` on host arrays,
    `run_device(buffers)` on the vendor's Buffers (see the module docstring).  A vendor module
    subclasses it to name its runtime and Buffer class."""

    runtime: ClassVar[Runtime]
    buffer_type: ClassVar[type[GPUBuffer]]

    def __init__(self, program: Program, object_code: bytes | None = None,
                 library: bytes | None = None) -> None:
        kind = self.runtime.kind
        if program.target != kind:
            raise ValueError(f"{kind}: expected a {kind!r} program, got target "
                             f"{program.target!r}")
        self.program = program
        self.source = program.source
        self.library = None
        launches = plan_launches(program)
        self._outputs = common.output_sources(program)
        self._written = common.written_buffers(program)
        self._symbols = tuple(program.symbols)
        dev = self._dev = self.runtime.device()
        if object_code is None:
            try:
                object_code = self.runtime.compile(program.source, dev.info)
            except RuntimeError as e:
                raise RuntimeError(f"{kind} ({dev.info.name}): compiling the program for "
                                   f"{dev.info.arch} failed: {e}") from None
        self.object_code = object_code
        image = bytes(object_code)
        module = dev.call(dev.driver.module_load(image), "loading the compiled program",
                          made_by=self.runtime.origin(image))
        weakref.finalize(self, self.runtime.unload, module)
        self._loaded = []
        for launch in launches:
            fn = dev.call(dev.driver.function(module, launch.name),
                          f"finding kernel {launch.name!r} in the program")
            limits = {key: int(dev.call(dev.driver.function_attribute(fn, key),
                                        f"reading kernel {launch.name!r}'s {key}"))
                      for key in ("max_threads", "shared_bytes", "registers")}
            static = all(isinstance(g, int) for g in launch.grid)
            check_launch(launch if static else replace(launch, grid=(1, 1, 1)), limits,
                         dev.info)  # a grid of dynamic size: checked per call (`_layout`)
            self._loaded.append(_Loaded(launch, fn, limits=limits))
        buffer = self.buffer_type
        self._constants = {name: buffer.from_host(array)
                           for name, array in program.constants.items()}
        self._layouts = common.Layouts(program, kind, self._make_layout)
        self._last: _Layout | None = None
        if self._symbols:  # the arena, temps and grids are sized per call (`_layout`)
            self._arena: GPUBuffer | None = None
            self._arena_bytes = 0
        else:
            self._arena = buffer.empty((arena_size(program),), np.uint8)
            for loaded in self._loaded:
                loaded.fixed = [self._arena.ptr + int(a.key) if a.kind == "temp" else
                                self._constants[str(a.key)].ptr if a.kind == "constant" else
                                None for a in loaded.launch.args]
        self._io: tuple | None = None  # what run reuses: inputs, outputs (and their layout)
        self._lock = threading.Lock()

    def _layout(self, shapes: Sequence[Sequence[int]],
                known: dict[str, int] | None = None) -> _Layout:
        """The layout of a call with inputs of these shapes (a program with dynamic sizes;
        `known`: symbols no input binds), remembered per tuple of shapes; the arena grows
        when the call needs more.  A ValueError when the shapes do not fit the program or a
        grid the device's."""
        return self._layouts.get(shapes, known)

    def _make_layout(self, sizes: ProgramSizes) -> _Layout:
        """The layout of one call's sizes (`common.Layouts` remembers it)."""
        program, dev = self.program, self._dev
        need = arena_size(program, sizes)
        if need > self._arena_bytes:
            if self._arena is not None:  # kernels in flight may still use the old arena
                dev.sync("growing the arena (a kernel may have failed)")
            self._layouts.clear()  # earlier layouts point into the old arena
            self._arena, self._arena_bytes = None, 0  # freed before the larger one is made
            self._arena = self.buffer_type.empty((need,), np.uint8)
            self._arena_bytes = need
        base = self._arena.ptr
        temps = {b.name: base + sizes.offsets[b.name] for b in program.buffers
                 if b.kind == "temp"}
        launches = []
        for loaded in self._loaded:
            grid = launch_grid(loaded.launch, sizes.env)
            if 0 in grid:
                continue
            check_launch(replace(loaded.launch, grid=grid), loaded.limits, dev.info)
            fixed = [temps[str(a.key)] if a.kind == "temp" else
                     self._constants[str(a.key)].ptr if a.kind == "constant" else None
                     for a in loaded.launch.args]
            launches.append((loaded, grid, fixed))
        return _Layout(sizes, launches, temps, common.written_buffers(program, sizes.env))

    @property
    def last_sizes(self) -> dict[str, int]:
        """The dynamic sizes of the latest call (`Program.symbols` -> value; empty for a
        program without symbols or before its first call)."""
        return dict(self._last.sizes.env) if self._last is not None else {}

    def run(self, inputs: list[np.ndarray],
            sizes: dict[str, int] | None = None) -> list[np.ndarray]:
        """Run the program on host arrays: copied into input buffers kept for `run`, the
        kernels launched, every output read back into new host arrays, one wait.  `sizes`:
        values of dynamic sizes no input's shape gives (symbol -> value)."""
        arrays = common.host_inputs(self.runtime.kind, self.program.inputs, inputs)
        dev = self.runtime.device()
        with self._lock:
            if self._symbols:
                layout = self._layout([x.shape for x in arrays], sizes)
                if self._io is None or self._io[2] is not layout:
                    self._io = ([self.buffer_type.empty(shape, t.dtype) for shape, t in
                                 zip(layout.sizes.input_shapes, self.program.inputs)],
                                {name: self.buffer_type.empty(shape, dtype)
                                 for name, (shape, dtype) in layout.written.items()}, layout)
            elif self._io is None:
                self._io = ([self.buffer_type.empty(tuple(t.shape), t.dtype)
                             for t in self.program.inputs],
                            {name: self.buffer_type.empty(shape, dtype)
                             for name, (shape, dtype) in self._written.items()}, None)
            buffers, written, layout = self._io
            for buffer, x in zip(buffers, arrays):
                if x.nbytes:
                    dev.call(dev.driver.upload(buffer.ptr, x.ctypes.data, x.nbytes, dev.stream),
                             "upload")
            outputs = self._enqueue(dev, buffers, written) if layout is None else \
                self._enqueue_sized(dev, layout, buffers, written)
            hosts = [np.empty(b.shape, b.dtype) for b in outputs]
            for host, b in zip(hosts, outputs):
                if host.nbytes:
                    dev.call(dev.driver.download(host.ctypes.data, b.ptr, host.nbytes,
                                                 dev.stream),
                             "reading the outputs back (a kernel may have failed)")
            dev.sync("reading the outputs back (a kernel may have failed)")
        return hosts

    __call__ = run

    def run_device(self, inputs: list[GPUBuffer],
                   sizes: dict[str, int] | None = None) -> list[GPUBuffer]:
        """Launch every kernel on `inputs` (Buffers of the program's input shapes and dtypes);
        new output Buffers, returned before the kernels finish.  `sizes`: as `run`."""
        kind = self.runtime.kind
        common.device_inputs(kind, self.program.inputs, inputs, self.buffer_type)
        dev = self.runtime.device()
        if not self._symbols:
            written = {name: self.buffer_type.empty(shape, dtype)
                       for name, (shape, dtype) in self._written.items()}
            with self._lock:
                return self._enqueue(dev, inputs, written)
        with self._lock:
            layout = self._layout([x.shape for x in inputs], sizes)
            written = {name: self.buffer_type.empty(shape, dtype)
                       for name, (shape, dtype) in layout.written.items()}
            return self._enqueue_sized(dev, layout, inputs, written)

    def profile(self, inputs: list[np.ndarray], repeat: int = 3) -> list[tuple[str, float]]:
        """Seconds per kernel (best of `repeat`), each launched alone and waited for, in launch
        order, on `inputs` (host arrays); for finding the kernel a slow program spends its time
        in."""
        arrays = common.host_inputs(self.runtime.kind, self.program.inputs, inputs)
        buffers = [self.buffer_type.from_host(x) for x in arrays]
        dev = self.runtime.device()
        times = []
        with self._lock:
            layout = self._layout([x.shape for x in arrays]) if self._symbols else None
            written = {name: self.buffer_type.empty(shape, dtype) for name, (shape, dtype) in
                       (self._written if layout is None else layout.written).items()}
            launches = [(loaded, loaded.launch.grid, loaded.fixed) for loaded in self._loaded] \
                if layout is None else layout.launches
            values = () if layout is None else layout.sizes.values
            for loaded, grid, fixed in launches:
                best = float("inf")
                for _ in range(max(1, repeat)):
                    start = time.perf_counter()
                    self._launch_at(dev, loaded, grid, fixed, values, buffers, written)
                    dev.sync(f"running kernel {loaded.launch.name!r}")
                    best = min(best, time.perf_counter() - start)
                times.append((loaded.launch.name, best))
        return times

    def _launch(self, dev: OpenDevice, loaded: _Loaded, inputs: Sequence[GPUBuffer],
                written: dict[str, GPUBuffer]) -> None:
        """Enqueue one kernel of a program without dynamic sizes on these buffers."""
        launch = loaded.launch
        pointers = [p if p is not None else
                    inputs[int(a.key)].ptr if a.kind == "input" else written[str(a.key)].ptr
                    for p, a in zip(loaded.fixed, launch.args)]
        dev.call(dev.driver.launch(loaded.function, launch.grid, launch.block, dev.stream,
                                   pointers),
                 f"launching kernel {launch.name!r} (grid {launch.grid}, block {launch.block})")

    def _launch_at(self, dev: OpenDevice, loaded: _Loaded, grid: tuple[int, int, int],
                   fixed: list[int | None], values: tuple[int, ...],
                   inputs: Sequence[GPUBuffer], written: dict[str, GPUBuffer]) -> None:
        """Enqueue one kernel with this call's grid and fixed pointers; a kernel of dynamic
        sizes gets the symbols' `values` after its pointers."""
        launch = loaded.launch
        pointers = [p if p is not None else
                    inputs[int(a.key)].ptr if a.kind == "input" else written[str(a.key)].ptr
                    for p, a in zip(fixed, launch.args)]
        extra = (values,) if launch.sized else ()
        dev.call(dev.driver.launch(loaded.function, grid, launch.block, dev.stream, pointers,
                                   *extra),
                 f"launching kernel {launch.name!r} (grid {grid}, block {launch.block})")

    def _enqueue(self, dev: OpenDevice, inputs: Sequence[GPUBuffer],
                 written: dict[str, GPUBuffer]) -> list[GPUBuffer]:
        """Enqueue the kernels on these buffers and the outputs' copies; the output Buffers."""
        for loaded in self._loaded:
            self._launch(dev, loaded, inputs, written)
        return [self._output(dev, k, name, written, inputs)
                for k, name in enumerate(self._outputs)]

    def _enqueue_sized(self, dev: OpenDevice, layout: _Layout, inputs: Sequence[GPUBuffer],
                       written: dict[str, GPUBuffer]) -> list[GPUBuffer]:
        """`_enqueue` for a program with dynamic sizes, at one call's layout."""
        values = layout.sizes.values
        for loaded, grid, fixed in layout.launches:
            self._launch_at(dev, loaded, grid, fixed, values, inputs, written)
        self._last = layout
        return [self._output(dev, k, name, written, inputs, layout)
                for k, name in enumerate(self._outputs)]

    def _output(self, dev: OpenDevice, k: int, name: str, written: dict[str, GPUBuffer],
                inputs: Sequence[GPUBuffer], layout: _Layout | None = None) -> GPUBuffer:
        """Output `k`: the buffer the kernels wrote (the first time the name appears), else a
        device copy of it, of the input passed through, of the constant or of the temp."""
        spec = self.program.outputs[k]
        if name in written and self._outputs.index(name) == k:
            return written[name]
        source = written[name].ptr if name in written else \
            self._source_of(name, inputs, layout)
        shape = tuple(spec.shape) if layout is None else layout.sizes.output_shapes[k]
        out = self.buffer_type.empty(shape, spec.dtype)
        if out.nbytes:
            dev.call(dev.driver.copy(out.ptr, source, out.nbytes, dev.stream),
                     f"copying output {name!r}")
        return out

    def _source_of(self, name: str, inputs: Sequence[GPUBuffer],
                   layout: _Layout | None = None) -> int:
        """The device address of a non-output buffer an output names."""
        for t, x in zip(self.program.inputs, inputs):
            if t.name == name:
                return x.ptr
        if name in self._constants:
            return self._constants[name].ptr
        if layout is not None:
            return layout.temps[name]
        spec = next(b for b in self.program.buffers if b.name == name)
        return self._arena.ptr + spec.offset
