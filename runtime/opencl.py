"""The OpenCL runtime: runs the OpenCL C programs of the "opencl" target with pyopencl.

One context and one in-order command queue per process, on the first device found (a GPU
before an accelerator before a CPU; `NEURENIX_OPENCL_DEVICE=<substring>` picks by name).  A
`Program`'s source is one translation unit, built once per process per (source, build
options) while an executable uses it; `Executable` creates its kernels by name, uploads the
constants once and allocates the arena once, each temporary a sub-buffer of it (a buffer of
its own where the device aligns sub-buffers more coarsely than the plan's 256 bytes).
`run_device` enqueues every kernel in order on the queue (global size grid * block, local
size block; an empty grid is skipped) and returns new output buffers without waiting;
`Buffer.to_host` and `synchronize()` wait.  `run` reuses its own input and output buffers
and waits once.  Device buffers hold host layouts (docs/targets/gpu-programs.md).

A program with dynamic sizes (`Program.symbols`, docs/compiler/dynamic-shapes.md) binds them
from the inputs' shapes per call (`Program.sizes`): the arena grows when a call needs more,
the temporaries' sub-buffers, the outputs' shapes and each launch's work-groups (ints,
polynomials or `runtime.sizes.Groups`) are evaluated once per tuple of input shapes and
remembered, and a kernel listed in `metadata["sized_kernels"]` gets the symbols' values as
`long` arguments after its buffers.

pyopencl is imported on first use: `import neurenix` never needs it.  Provides the runtime
protocol of `neurenix.runtime` and the device buffer of `runtime/buffer.py`.
"""
from __future__ import annotations

import atexit
import importlib.metadata
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import device_common as common
from .backend import LibraryCache
from .program import Program, ProgramSizes
from .sizes import Extent, extent_value

DEVICE = "opencl"
STORAGE: dict[str, str] = {}  # host layouts everywhere


@dataclass
class _Device:
    """The process's OpenCL device, context, queue and built programs."""

    cl: Any
    device: Any
    context: Any
    queue: Any
    identity: str
    base_align: int  # bytes a sub-buffer's origin must be a multiple of
    programs: weakref.WeakValueDictionary = field(default_factory=weakref.WeakValueDictionary)
    """Built programs by (source, options), while an executable uses them."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _open() -> _Device:
    """Find a device and make the context and queue (a RuntimeError saying why not)."""
    try:
        import pyopencl as cl
    except ImportError as e:
        raise RuntimeError(f"pyopencl is not installed ({e})") from None
    try:
        platforms = cl.get_platforms()
    except cl.Error as e:
        raise RuntimeError(f"no OpenCL platform: {e}") from None
    rank = {cl.device_type.GPU: 0, cl.device_type.ACCELERATOR: 1, cl.device_type.CPU: 2}
    found = []
    for platform in platforms:
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        found += [(rank.get(d.type, 3), i, d) for i, d in enumerate(devices)]
    if not found:
        raise RuntimeError("no OpenCL platform has a device")
    wanted = os.environ.get("NEURENIX_OPENCL_DEVICE", "")
    if wanted:
        found = [f for f in found if wanted.lower() in f[2].name.lower()]
        if not found:
            raise RuntimeError(f"no OpenCL device name contains {wanted!r} "
                               f"(NEURENIX_OPENCL_DEVICE)")
    device = min(found, key=lambda f: (f[0], f[1]))[2]
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    # kernels still in flight when the interpreter tears pyopencl down crash the process
    # (PoCL: a segfault or std::bad_alloc at exit): wait for them first
    atexit.register(queue.finish)
    identity = "|".join((device.platform.name.strip(), device.platform.version.strip(),
                         device.name.strip(), device.version.strip(),
                         device.driver_version.strip()))
    return _Device(cl, device, context, queue, identity, max(1, device.mem_base_addr_align // 8))


_STATE: common.Lazy[_Device] = common.Lazy(_open)


def _device() -> _Device:
    """The process's device; a RuntimeError saying why there is none."""
    try:
        return _STATE.get()
    except RuntimeError as e:
        raise RuntimeError(f"opencl: unavailable: {e}") from None


def available() -> bool:
    """Whether an OpenCL device can run here (pyopencl installed, a platform with a device)."""
    return _STATE.reason() == ""


def unavailable_reason() -> str:
    """Why `available()` is False ("" when it is True)."""
    return _STATE.reason()


def fingerprint() -> str:
    """The device and driver identity (probed once per process)."""
    return _device().identity


def code_identity() -> str:
    """What a built program depends on: the device, its driver and platform, pyopencl."""
    return f"{fingerprint()}|pyopencl {importlib.metadata.version('pyopencl')}"


def prepare(program: Program, cache: LibraryCache | None = None) -> None:
    """Nothing to load once per process: programs are built when loaded."""


def synchronize() -> None:
    """Wait until everything enqueued so far has finished (for timing; downloads wait
    anyway)."""
    dev = _device()
    try:
        dev.queue.finish()
    except dev.cl.Error as e:
        raise _fail("waiting for the queue (a kernel may have failed)", e) from None


def _fail(what: str, error: Exception) -> RuntimeError:
    """A RuntimeError naming the device and what failed."""
    dev = _STATE.peek()
    name = dev.device.name.strip() if dev is not None else "?"
    return RuntimeError(f"opencl ({name}): {what}: {error}")


class Buffer:
    """A tensor's values in OpenCL device memory (`runtime.buffer.DeviceBuffer`): host layout,
    at least 4 bytes allocated."""

    device = DEVICE

    def __init__(self, data: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.data = data
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes the values take (the allocation may be larger)."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @classmethod
    def empty(cls, shape: tuple[int, ...], dtype: np.dtype) -> Buffer:
        """A new buffer with unspecified values."""
        dev = _device()
        size = common.device_nbytes(shape, dtype, STORAGE)
        return cls(dev.cl.Buffer(dev.context, dev.cl.mem_flags.READ_WRITE, size), shape, dtype)

    @classmethod
    def from_host(cls, array: np.ndarray, device: str = DEVICE) -> Buffer:
        """A new buffer holding `array`'s values (copied before this returns)."""
        if device != DEVICE:
            raise ValueError(f"opencl.Buffer.from_host: device {device!r} is not {DEVICE!r}")
        array = np.asarray(array)
        host = common.to_storage(array, STORAGE)
        buffer = cls.empty(array.shape, array.dtype)
        if host.nbytes:
            dev = _device()
            try:
                dev.cl.enqueue_copy(dev.queue, buffer.data, host, is_blocking=True)
            except dev.cl.Error as e:
                raise _fail("upload", e) from None
        return buffer

    def to_host(self) -> np.ndarray:
        """The values in a new host array (waits for the kernels writing them)."""
        host = np.empty(self.shape, self.dtype)
        if host.nbytes:
            dev = _device()
            try:
                dev.cl.enqueue_copy(dev.queue, host, self.data, is_blocking=True)
            except dev.cl.Error as e:
                raise _fail("download (a kernel before it may have failed)", e) from None
        return host

    def __repr__(self) -> str:
        return f"opencl.Buffer({self.dtype}{list(self.shape)})"


def _build(dev: _Device, source: str, options: str) -> Any:
    """The program built from `source` with `options`: once per process while loaded
    executables use it (a program no executable holds is freed)."""
    key = (source, options)
    with dev.lock:
        built = dev.programs.get(key)
        if built is None:
            try:
                built = dev.cl.Program(dev.context, source).build(options=options)
            except dev.cl.Error as e:
                raise _fail("building the program failed", e) from None
            dev.programs[key] = built
    return built


@dataclass
class _Launch:
    """One kernel launch: the kernel object (fixed arguments set), its range, and which
    arguments are set per call (argument index, input index or output name); with dynamic
    sizes also its work-groups (`grid`), the temporaries it takes and where the symbols'
    values go (`sizes_at`, -1: nowhere)."""

    name: str
    kernel: Any
    global_size: tuple[int, ...]
    local_size: tuple[int, ...]
    inputs: list[tuple[int, int]]
    outputs: list[tuple[int, str]]
    grid: tuple[Extent, ...] = ()
    temps: list[tuple[int, str]] = field(default_factory=list)
    sizes_at: int = -1


@dataclass
class _Layout:
    """What one tuple of input shapes gives a program with dynamic sizes: its sizes, the
    temporaries placed in the arena, each launch's global size (None: an empty range) and
    the output buffers' shapes."""

    sizes: ProgramSizes
    temps: dict[str, Any]
    global_sizes: list[tuple[int, ...] | None]
    written: dict[str, tuple[tuple[int, ...], np.dtype]]


class OpenCLExecutable:
    """A `Program` loaded on the process's OpenCL device: `run(inputs)` on host arrays,
    `run_device(buffers)` on `Buffer`s (see the module docstring)."""

    def __init__(self, program: Program, object_code: bytes | None = None,
                 library: bytes | None = None) -> None:
        if program.target != DEVICE:
            raise ValueError(f"opencl: expected an 'opencl' program, got target "
                             f"{program.target!r}")
        self.program = program
        self.source = program.source
        self.object_code = None
        self.library = None
        dev = self._dev = _device()
        cl = dev.cl
        self._outputs = common.output_sources(program)
        self._written = common.written_buffers(program)
        built = self._built = _build(dev, program.source,
                                     str(program.metadata.get("build_options", "")))
        self._constants = {name: Buffer.from_host(array)
                           for name, array in program.constants.items()}
        self._symbols = tuple(program.symbols)
        self._layouts = common.Layouts(program, DEVICE, self._make_layout)
        self._last: _Layout | None = None
        temps = [b for b in program.buffers if b.kind == "temp"]
        if self._symbols:  # the arena and the temporaries are sized per call (`_layout`)
            self._arena, self._arena_bytes, self._temps = None, 0, {}
        else:
            self._arena = cl.Buffer(dev.context, cl.mem_flags.READ_WRITE,
                                    common.arena_bytes(program))
            self._temps = self._place_temps(temps)
        temp_names = {b.name for b in temps}
        sized = set(program.metadata.get("sized_kernels", ())) if self._symbols else set()
        input_index = {t.name: k for k, t in enumerate(program.inputs)}
        kinds = {b.name: b.kind for b in program.buffers}
        self._launches: list[_Launch] = []
        for info in program.kernels:
            dynamic = not all(isinstance(g, int) for g in info.grid)
            if dynamic:
                grid, block = tuple(info.grid), tuple(int(b) for b in info.block)
                if len(grid) != len(block):
                    raise ValueError(f"launch geometry: grid {grid} and block {block} differ "
                                     "in length")
            else:
                grid, block = common.launch_shape(info.grid, info.block)
                if 0 in grid:
                    continue
            try:
                kernel = cl.Kernel(built, info.name)
            except cl.Error as e:
                raise _fail(f"the program has no kernel {info.name!r}", e) from None
            launch = _Launch(info.name, kernel, () if dynamic else tuple(
                g * b for g, b in zip(grid, block)), block if info.block else None, [], [],
                grid=grid, sizes_at=len(info.args) if info.name in sized else -1)
            for i, name in enumerate(info.args):
                if name in input_index and kinds.get(name, "input") == "input":
                    launch.inputs.append((i, input_index[name]))
                elif kinds.get(name) == "output":
                    launch.outputs.append((i, name))
                elif self._symbols and name in temp_names:
                    launch.temps.append((i, name))
                elif name in self._temps:
                    kernel.set_arg(i, self._temps[name])
                elif name in self._constants:
                    kernel.set_arg(i, self._constants[name].data)
                else:
                    raise ValueError(f"opencl: kernel {info.name!r} takes {name!r}, which is "
                                     f"no input, output, constant or temp of the program")
            self._launches.append(launch)
        self._io: tuple[list[Buffer], dict[str, Buffer]] | None = None  # what `run` reuses
        self._lock = threading.Lock()

    def _place_temps(self, temps: list, sizes: ProgramSizes | None = None) -> dict[str, Any]:
        """Each temporary as a sub-buffer of the arena; where the device wants sub-buffers
        aligned more coarsely than the plan's offsets, a buffer of its own per distinct range
        instead (temporaries sharing a range at different times, or in place, share it).
        `sizes`: the offsets and sizes of one call of a program with dynamic sizes."""
        cl, placed, ranges = self._dev.cl, {}, {}
        for b in temps:
            if sizes is None:
                offset, size = b.offset, max(b.nbytes, 4)
            else:
                offset = sizes.offsets[b.name]
                size = max(sizes.elements[b.name] * np.dtype(b.dtype).itemsize, 4)
            key = (offset, size)
            if key not in ranges:  # one buffer per range: an in-place output is its input
                ranges[key] = self._arena.get_sub_region(offset, size) \
                    if offset % self._dev.base_align == 0 else \
                    cl.Buffer(self._dev.context, cl.mem_flags.READ_WRITE, size)
            placed[b.name] = ranges[key]
        return placed

    def _layout(self, shapes: list[tuple[int, ...]],
                known: dict[str, int] | None = None) -> _Layout:
        """The layout of a call with inputs of these shapes (a program with dynamic sizes;
        `known`: symbols no input binds), remembered per tuple of shapes; the arena grows
        when the call needs more.  A ValueError when the shapes do not fit the program."""
        return self._layouts.get(shapes, known)

    def _make_layout(self, sizes: ProgramSizes) -> _Layout:
        """The layout of one call's sizes (`common.Layouts` remembers it)."""
        program = self.program
        need = common.arena_bytes(program, sizes)
        if need > self._arena_bytes:  # earlier layouts hold sub-buffers of the old arena
            cl = self._dev.cl
            self._arena = cl.Buffer(self._dev.context, cl.mem_flags.READ_WRITE, need)
            self._arena_bytes = need
            self._layouts.clear()
        globals_ = []
        for launch in self._launches:
            grid = tuple(extent_value(g, sizes.env) for g in launch.grid)
            globals_.append(None if 0 in grid else tuple(
                g * b for g, b in zip(grid, launch.local_size)))
        temps = [b for b in program.buffers if b.kind == "temp"]
        return _Layout(sizes, self._place_temps(temps, sizes), globals_,
                       common.written_buffers(program, sizes.env))

    @property
    def last_sizes(self) -> dict[str, int]:
        """The dynamic sizes of the latest call (`Program.symbols` -> value; empty for a
        program without symbols or before its first call)."""
        return dict(self._last.sizes.env) if self._last is not None else {}

    def run(self, inputs: list[np.ndarray],
            sizes: dict[str, int] | None = None) -> list[np.ndarray]:
        """Run the program on host arrays: copied into input buffers kept for `run`, the
        kernels enqueued, every output read back, one wait.  `sizes`: values of dynamic sizes
        no input's shape gives (symbol -> value)."""
        arrays = common.host_inputs(DEVICE, self.program.inputs, inputs)
        cl, queue = self._dev.cl, self._dev.queue
        with self._lock:
            layout = self._layout([x.shape for x in arrays], sizes) if self._symbols else None
            shapes = layout.sizes.input_shapes if layout else [tuple(t.shape)
                                                               for t in self.program.inputs]
            if self._io is None or self._io[2] is not layout:
                written = layout.written if layout else self._written
                self._io = ([Buffer.empty(shape, t.dtype)
                             for shape, t in zip(shapes, self.program.inputs)],
                            {name: Buffer.empty(shape, dtype)
                             for name, (shape, dtype) in written.items()}, layout)
            buffers, written, _ = self._io
            try:
                for buffer, x in zip(buffers, arrays):
                    if x.nbytes:
                        cl.enqueue_copy(queue, buffer.data, x, is_blocking=False)
            except cl.Error as e:
                raise _fail("upload", e) from None
            outputs = self._enqueue(buffers, written, layout)
            hosts = [np.empty(b.shape, b.dtype) for b in outputs]
            try:
                for host, b in zip(hosts, outputs):
                    if host.nbytes:
                        cl.enqueue_copy(queue, host, b.data, is_blocking=False)
                queue.finish()
            except cl.Error as e:
                raise _fail("reading the outputs back (a kernel may have failed)", e) from None
        return hosts

    __call__ = run

    def run_device(self, inputs: list[Buffer],
                   sizes: dict[str, int] | None = None) -> list[Buffer]:
        """Enqueue every kernel on `inputs` (Buffers of the program's input shapes and
        dtypes); new output Buffers, returned before the kernels finish.  `sizes`: as `run`."""
        common.device_inputs(DEVICE, self.program.inputs, inputs, Buffer)
        with self._lock:
            layout = self._layout([x.shape for x in inputs], sizes) if self._symbols else None
            shapes = layout.written if layout else self._written
            written = {name: Buffer.empty(shape, dtype)
                       for name, (shape, dtype) in shapes.items()}
            return self._enqueue(inputs, written, layout)

    def _set_args(self, launch: _Launch, inputs: list[Buffer], written: dict[str, Buffer],
                  layout: _Layout | None) -> None:
        """Set the arguments that change per call: inputs, outputs, and for dynamic sizes
        the temporaries and the symbols' values."""
        for i, k in launch.inputs:
            launch.kernel.set_arg(i, inputs[k].data)
        for i, name in launch.outputs:
            launch.kernel.set_arg(i, written[name].data)
        if layout is not None:
            for i, name in launch.temps:
                launch.kernel.set_arg(i, layout.temps[name])
            if launch.sizes_at >= 0:
                for j, value in enumerate(layout.sizes.values):
                    launch.kernel.set_arg(launch.sizes_at + j, np.int64(value))

    def _enqueue(self, inputs: list[Buffer], written: dict[str, Buffer],
                 layout: _Layout | None = None) -> list[Buffer]:
        """Enqueue the kernels on these buffers and the outputs' copies; the output Buffers."""
        cl, queue = self._dev.cl, self._dev.queue
        for j, launch in enumerate(self._launches):
            size = launch.global_size if layout is None else layout.global_sizes[j]
            if size is None:
                continue
            try:
                self._set_args(launch, inputs, written, layout)
                cl.enqueue_nd_range_kernel(queue, launch.kernel, size, launch.local_size)
            except cl.Error as e:
                raise _fail(f"kernel {launch.name!r} failed to launch", e) from None
        if layout is not None:
            self._last = layout
        return [self._output(k, name, written, inputs, layout)
                for k, name in enumerate(self._outputs)]

    def profile(self, inputs: list[np.ndarray], repeat: int = 3) -> list[tuple[str, float]]:
        """Seconds per kernel (best of `repeat`), each enqueued alone and waited for, in
        launch order, on `inputs` (host arrays); for finding the kernel a slow program spends
        its time in."""
        arrays = common.host_inputs(DEVICE, self.program.inputs, inputs)
        buffers = [Buffer.from_host(x) for x in arrays]
        cl, queue = self._dev.cl, self._dev.queue
        times = []
        with self._lock:
            layout = self._layout([x.shape for x in arrays]) if self._symbols else None
            written = {name: Buffer.empty(shape, dtype) for name, (shape, dtype) in
                       (layout.written if layout else self._written).items()}
            for j, launch in enumerate(self._launches):
                size = launch.global_size if layout is None else layout.global_sizes[j]
                if size is None:
                    continue
                self._set_args(launch, buffers, written, layout)
                best = float("inf")
                for _ in range(max(1, repeat)):
                    start = time.perf_counter()
                    cl.enqueue_nd_range_kernel(queue, launch.kernel, size, launch.local_size)
                    queue.finish()
                    best = min(best, time.perf_counter() - start)
                times.append((launch.name, best))
        return times

    def _output(self, k: int, name: str, written: dict[str, Buffer],
                inputs: list[Buffer], layout: _Layout | None = None) -> Buffer:
        """Output `k`: the buffer the kernels wrote (the first time the name appears), else a
        device copy of it, of the input passed through, of the constant or of the temp."""
        spec = self.program.outputs[k]
        first = self._outputs.index(name) == k
        if first and name in written:
            return written[name]
        source = written.get(name)
        source = source.data if source is not None else self._source_of(name, inputs, layout)
        shape = tuple(spec.shape) if layout is None else layout.sizes.output_shapes[k]
        out = Buffer.empty(shape, spec.dtype)
        nbytes = out.nbytes
        if nbytes:
            try:
                self._dev.cl.enqueue_copy(self._dev.queue, out.data, source, byte_count=nbytes)
            except self._dev.cl.Error as e:
                raise _fail(f"copying output {name!r}", e) from None
        return out

    def _source_of(self, name: str, inputs: list[Buffer], layout: _Layout | None = None) -> Any:
        """The device memory of a non-output buffer an output names."""
        for t, x in zip(self.program.inputs, inputs):
            if t.name == name:
                return x.data
        if name in self._constants:
            return self._constants[name].data
        return (self._temps if layout is None else layout.temps)[name]


Executable = OpenCLExecutable  # the runtime protocol's name for the class
