"""The WebGPU runtime: runs the WGSL compute shaders of the "webgpu" target with wgpu-py.

One adapter and device per process (made on first use, thread-safe), requested with the
adapter's own limits for storage buffers per stage, binding and buffer sizes and work-group
sizes, so a device that allows more than WebGPU's defaults (lavapipe, desktop GPUs) can use
it.  Every kernel's module (`KernelInfo.source`) becomes one compute pipeline per process
(while an executable uses it), with an explicit bind group layout read from the module's
`@group(0) @binding(i)` declarations (read-only storage where the module declares `read`,
storage where it declares `read_write`).  `Executable` uploads the constants once and
allocates the arena once; each temporary is a binding of the arena at its offset (a kernel
that writes one temporary binds all of its temporaries read_write: WebGPU refuses a buffer
bound both ways in a dispatch).  `run_device` records every dispatch into one command encoder
and one compute pass and submits once (bind groups on the same buffers as the previous call
are reused); it returns new output buffers without waiting.  `Buffer.to_host` reads back with
`queue.read_buffer`; `run` reuses its own buffers and reads every output back through one
staging buffer.

A program with dynamic sizes (`Program.symbols`, docs/compiler/dynamic-shapes.md) binds them
from the inputs' shapes per call (`Program.sizes`; `sizes=` for symbols no input binds): per
tuple of input shapes (remembered) it checks `metadata["size_checks"]` (sizes past 32 bits,
loops past lavapipe's limit: a ValueError), grows the arena when the call needs more, binds
the temporaries at that call's offsets and evaluates each dispatch's work-groups (`Groups`)
and the outputs' shapes; the symbols' values are written once per call, as i32, into a
uniform buffer every sized kernel binds after its storage buffers (`var<uniform>`).

Storage (docs/targets/gpu-programs.md): a bool is a 4-byte 0/1 word in device memory, the
runtime converting at the boundary; every other dtype keeps its host layout.

wgpu is imported on first use: `import neurenix` never needs it.  Provides the runtime
protocol of `neurenix.runtime` and the device buffer of `runtime/buffer.py`.
"""
from __future__ import annotations

import importlib.metadata
import re
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import device_common as common
from .backend import LibraryCache
from .program import Program, ProgramSizes
from .sizes import Extent, extent_from_json, extent_value

DEVICE = "webgpu"
STORAGE = {"bool": "uint32"}
LIMITS = ("max-storage-buffers-per-shader-stage", "max-storage-buffer-binding-size",
          "max-buffer-size", "max-compute-workgroup-size-x", "max-compute-workgroup-size-y",
          "max-compute-workgroup-size-z", "max-compute-invocations-per-workgroup",
          "max-compute-workgroup-storage-size", "max-compute-workgroups-per-dimension",
          "max-bindings-per-bind-group")
_UNIFORM = re.compile(r"@group\s*\(\s*0\s*\)\s*@binding\s*\(\s*(\d+)\s*\)\s*var\s*<\s*uniform\s*>")
_BINDING = re.compile(r"@(group|binding)\s*\(\s*(\d+)\s*\)\s*@(group|binding)\s*\(\s*(\d+)\s*\)"
                      r"\s*var\s*<\s*(\w+)\s*(?:,\s*(\w+)\s*)?>")


@dataclass
class _Device:
    """The process's WebGPU adapter, device and compute pipelines."""

    wgpu: Any
    adapter: Any
    device: Any
    identity: str
    limits: dict[str, int]
    fence: Any = None  # a 4-byte buffer `synchronize` reads
    pipelines: weakref.WeakValueDictionary = field(default_factory=weakref.WeakValueDictionary)
    """Pipelines by (module source, entry point), while an executable uses them."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _open() -> _Device:
    """Request the adapter and device (a RuntimeError saying why there is none)."""
    try:
        import wgpu
    except ImportError as e:
        raise RuntimeError(f"wgpu is not installed ({e})") from None
    try:
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception as e:
        raise RuntimeError(f"no WebGPU adapter: {e}") from None
    if adapter is None:
        raise RuntimeError("no WebGPU adapter: none was found")
    limits = {name: int(adapter.limits[name]) for name in LIMITS if name in adapter.limits}
    try:
        device = adapter.request_device_sync(label="neurenix", required_limits=limits)
    except Exception as e:
        raise RuntimeError(f"no WebGPU device: {e}") from None
    info = adapter.info
    identity = "|".join(str(info.get(k, "")) for k in
                        ("vendor", "device", "description", "backend_type", "adapter_type"))
    return _Device(wgpu, adapter, device, identity, limits)


_STATE: common.Lazy[_Device] = common.Lazy(_open)


def _device() -> _Device:
    """The process's device; a RuntimeError saying why there is none."""
    try:
        return _STATE.get()
    except RuntimeError as e:
        raise RuntimeError(f"webgpu: unavailable: {e}") from None


def available() -> bool:
    """Whether a WebGPU device can run here (wgpu installed, an adapter and a device)."""
    return _STATE.reason() == ""


def unavailable_reason() -> str:
    """Why `available()` is False ("" when it is True)."""
    return _STATE.reason()


def fingerprint() -> str:
    """The adapter's identity: vendor, device, driver description, backend (probed once)."""
    return _device().identity


def code_identity() -> str:
    """What a pipeline depends on: the adapter and driver, wgpu-py's version."""
    return f"{fingerprint()}|wgpu {importlib.metadata.version('wgpu')}"


def limits() -> dict[str, int]:
    """The limits the device was requested with (the adapter's own)."""
    return dict(_device().limits)


def prepare(program: Program, cache: LibraryCache | None = None) -> None:
    """Nothing to load once per process: pipelines are made when a program is loaded."""


def synchronize() -> None:
    """Wait until everything submitted so far has finished (for timing; downloads wait
    anyway)."""
    dev = _device()
    try:
        poll = getattr(dev.device, "_poll_wait", None)  # wgpu-native's blocking device poll
        if poll is not None:
            poll()
            return
        # else a read, which waits for every earlier submission (wgpu-py 0.32's work-done
        # callback does not run)
        if dev.fence is None:
            dev.fence = Buffer.empty((1,), np.uint32).data
        dev.device.queue.read_buffer(dev.fence, 0, 4)
    except Exception as e:
        raise _fail("waiting for the queue (a submission may have failed)", e) from None


def _fail(what: str, error: Exception) -> RuntimeError:
    """A RuntimeError naming the device and what failed."""
    dev = _STATE.peek()
    name = dev.identity.split("|")[1] if dev is not None else "?"
    return RuntimeError(f"webgpu ({name}): {what}: {error}")


class Buffer:
    """A tensor's values in WebGPU device memory (`runtime.buffer.DeviceBuffer`): host layout
    except bools (4-byte words), at least 4 bytes and a multiple of 4 allocated."""

    device = DEVICE

    def __init__(self, data: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.data = data
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes the values take in device memory (the allocation may be larger)."""
        return int(np.prod(self.shape, dtype=np.int64)) * \
            common.storage_dtype(self.dtype, STORAGE).itemsize

    @classmethod
    def empty(cls, shape: tuple[int, ...], dtype: np.dtype) -> Buffer:
        """A new buffer with unspecified values."""
        dev = _device()
        usage = dev.wgpu.BufferUsage
        size = common.device_nbytes(shape, dtype, STORAGE)
        try:
            data = dev.device.create_buffer(
                size=size, usage=usage.STORAGE | usage.COPY_SRC | usage.COPY_DST)
        except Exception as e:
            raise _fail(f"allocating {size} bytes", e) from None
        return cls(data, shape, dtype)

    @classmethod
    def from_host(cls, array: np.ndarray, device: str = DEVICE) -> Buffer:
        """A new buffer holding `array`'s values (queued before any later submission)."""
        if device != DEVICE:
            raise ValueError(f"webgpu.Buffer.from_host: device {device!r} is not {DEVICE!r}")
        array = np.asarray(array)
        buffer = cls.empty(array.shape, array.dtype)
        buffer.write(array)
        return buffer

    def write(self, array: np.ndarray) -> None:
        """Replace the values with `array`'s (of this buffer's shape and dtype)."""
        host = common.to_storage(array, STORAGE)
        if not host.nbytes:
            return
        raw = host.reshape(-1).view(np.uint8)
        if raw.size % 4:
            raw = np.concatenate([raw, np.zeros(4 - raw.size % 4, np.uint8)])
        try:
            _device().device.queue.write_buffer(self.data, 0, raw)
        except Exception as e:
            raise _fail("upload", e) from None

    def to_host(self) -> np.ndarray:
        """The values in a new host array (waits for the submissions writing them)."""
        if not self.nbytes:
            return np.empty(self.shape, self.dtype)
        size = (self.nbytes + 3) // 4 * 4
        try:
            raw = _device().device.queue.read_buffer(self.data, 0, size)
        except Exception as e:
            raise _fail("download (a submission before it may have failed)", e) from None
        return common.from_storage(raw, self.shape, self.dtype, STORAGE)

    def __repr__(self) -> str:
        return f"webgpu.Buffer({self.dtype}{list(self.shape)})"


def bindings(source: str) -> dict[int, bool]:
    """The `@group(0)` storage bindings a WGSL module declares: binding -> read-only."""
    found = {}
    for m in _BINDING.finditer(source):
        attrs = {m.group(1): int(m.group(2)), m.group(3): int(m.group(4))}
        if attrs.get("group") == 0 and "binding" in attrs and m.group(5) == "storage":
            found[attrs["binding"]] = (m.group(6) or "read") == "read"
    return found


def uniform_binding(source: str) -> int | None:
    """The `@group(0)` binding of the module's uniform buffer (dynamic sizes), if any."""
    m = _UNIFORM.search(source)
    return int(m.group(1)) if m else None


@dataclass(eq=False)
class _Pipeline:
    """A kernel module's compute pipeline, its bind group layout, its storage bindings
    (binding -> read-only) and its uniform binding (the symbols' values), if any."""

    pipeline: Any
    layout: Any
    declared: dict[int, bool]
    uniform: int | None = None


def _pipeline(dev: _Device, source: str, entry: str) -> _Pipeline:
    """The compute pipeline of a kernel module: made once per process while loaded
    executables use it (one no executable holds is freed)."""
    key = (source, entry)
    with dev.lock:
        made = dev.pipelines.get(key)
        if made is None:
            wgpu = dev.wgpu
            declared = bindings(source)
            uniform = uniform_binding(source)
            try:
                module = dev.device.create_shader_module(label=entry, code=source)
                if declared:
                    entries = [{"binding": i, "visibility": wgpu.ShaderStage.COMPUTE,
                                "buffer": {"type": wgpu.BufferBindingType.read_only_storage
                                           if ro else wgpu.BufferBindingType.storage}}
                               for i, ro in sorted(declared.items())]
                    if uniform is not None:
                        entries.append({"binding": uniform,
                                        "visibility": wgpu.ShaderStage.COMPUTE,
                                        "buffer": {"type": wgpu.BufferBindingType.uniform}})
                    layout = dev.device.create_bind_group_layout(label=entry, entries=entries)
                    pipeline_layout = dev.device.create_pipeline_layout(
                        bind_group_layouts=[layout])
                else:  # declarations not recognised: the layout the module implies
                    pipeline_layout = wgpu.AutoLayoutMode.auto
                pipeline = dev.device.create_compute_pipeline(
                    label=entry, layout=pipeline_layout,
                    compute={"module": module, "entry_point": entry})
                if not declared:
                    layout = pipeline.get_bind_group_layout(0)
            except Exception as e:
                raise _fail(f"kernel {entry!r} does not compile", e) from None
            made = dev.pipelines[key] = _Pipeline(pipeline, layout, declared, uniform)
    return made


def arena_promotions(args: tuple[str, ...], declared: dict[int, bool],
                     temps: dict) -> set[int]:
    """The bindings of arena temporaries a kernel declares read-only while it also writes
    another temporary: WebGPU forbids a writable storage binding of a buffer beside any other
    kind of binding of it in one dispatch, so those are declared read_write instead."""
    arena = {i: declared[i] for i, name in enumerate(args) if name in temps and i in declared}
    if all(arena.values()):
        return set()
    return {i for i, read_only in arena.items() if read_only}


def writable(source: str, which: set[int]) -> str:
    """The module with its `@group(0)` storage bindings `which` declared read_write."""
    def declare(m: re.Match) -> str:
        attrs = {m.group(1): int(m.group(2)), m.group(3): int(m.group(4))}
        if attrs.get("group") != 0 or attrs.get("binding") not in which:
            return m.group(0)
        return m.group(0)[:m.start(5) - m.start(0)] + "storage, read_write>"
    return _BINDING.sub(declare, source)


def _check_program(program: Program, dev: _Device) -> None:
    """A ValueError when the program stores values otherwise than this runtime's buffers do,
    or needs more of a limit (`metadata["required_limits"]`) than the device has."""
    storage = program.metadata.get("storage", STORAGE)
    if storage != STORAGE:
        raise ValueError(f"webgpu: the program stores {storage}, this runtime's buffers "
                         f"{STORAGE}")
    for name, need in dict(program.metadata.get("required_limits", {})).items():
        have = dev.limits.get(name.replace("_", "-"))
        if have is not None and int(need) > have:
            raise ValueError(f"webgpu: the program needs {name} = {need}, the device "
                             f"({dev.identity.split('|')[1]}) has {have}")


@dataclass
class _Launch:
    """One dispatch: the pipeline, its layout, the work-groups (extents of the symbols with
    dynamic sizes), and per binding where its buffer comes from: ("input", k), ("output",
    name), ("temp", name) (dynamic sizes: placed per call) or ("fixed", (buffer, offset,
    size))."""

    name: str
    pipeline: Any
    layout: Any
    grid: tuple[Extent, ...]
    slots: list[tuple[int, str, Any]]
    bind_group: Any = None  # made once when every binding is fixed
    last: tuple[list[Any], Any, Any] | None = None
    """Without outputs: the previous call's inputs (weak references), layout and bind group,
    reused while the same buffers come (weights do, call after call)."""

    def group(self, make: Any, inputs: list[Buffer], layout: Any = None) -> Any:
        """The bind group on this call's buffers: the fixed one, the previous call's when the
        inputs it binds are the same objects (and the temporaries the same places), else
        `make()`'s."""
        if self.bind_group is not None:
            return self.bind_group
        used = [inputs[what] for _, kind, what in self.slots if kind == "input"]
        if self.last is not None and len(self.last[0]) == len(used) and \
                self.last[1] is layout and all(ref() is b for ref, b in zip(self.last[0], used)):
            return self.last[2]
        group = make()
        if len(used) == sum(1 for _, kind, _ in self.slots if kind not in ("fixed", "temp")):
            self.last = ([weakref.ref(b) for b in used], layout, group)
        return group


@dataclass
class _Layout:
    """What one tuple of input shapes gives a program with dynamic sizes: its sizes, each
    temporary's (offset, size) in the arena, each dispatch's work-groups (None: nothing to
    run), the output buffers' shapes and the symbols' values as the uniform's bytes."""

    sizes: ProgramSizes
    temps: dict[str, tuple[int, int]]
    grids: list[tuple[int, int, int] | None]
    written: dict[str, tuple[tuple[int, ...], np.dtype]]
    uniform: bytes


@dataclass
class _HostIO:
    """What `run` reuses from call to call (nothing of it is handed out): input and output
    buffers, the bind groups on them, and the staging buffer outputs are read back from."""

    inputs: list[Buffer]
    written: dict[str, Buffer]
    groups: list[Any]
    staging: Any
    offsets: list[int]
    layout: _Layout | None = None


class WebGPUExecutable:
    """A `Program` loaded on the process's WebGPU device: `run(inputs)` on host arrays,
    `run_device(buffers)` on `Buffer`s (see the module docstring)."""

    def __init__(self, program: Program, object_code: bytes | None = None,
                 library: bytes | None = None) -> None:
        if program.target != DEVICE:
            raise ValueError(f"webgpu: expected a 'webgpu' program, got target "
                             f"{program.target!r}")
        self.program = program
        self.source = program.source
        self.object_code = None
        self.library = None
        dev = self._dev = _device()
        _check_program(program, dev)
        self._outputs = common.output_sources(program)
        self._written = common.written_buffers(program)
        self._constants = {name: Buffer.from_host(array)
                           for name, array in program.constants.items()}
        temps = [b for b in program.buffers if b.kind == "temp"]
        self._symbols = tuple(program.symbols)
        self._layouts = common.Layouts(program, DEVICE, self._make_layout)
        self._last: _Layout | None = None
        self._checks = [(extent_from_json(c["size"]), int(c["most"]), str(c["what"]))
                        for c in program.metadata.get("size_checks", ())]
        most = dev.limits.get("max-compute-workgroups-per-dimension", 65535)
        self._uniform = None
        if self._symbols:  # the arena and the temporaries are placed per call (`_layout`)
            self._temp_ranges = {}
            self._arena, self._arena_bytes = None, 0
            usage = dev.wgpu.BufferUsage
            self._uniform = dev.device.create_buffer(
                size=max(16, -(-4 * len(self._symbols) // 16) * 16),
                usage=usage.UNIFORM | usage.COPY_DST)
        else:
            self._temp_ranges = {b.name: (b.offset, max(4, (self._stored(b) + 3) // 4 * 4))
                                 for b in temps}
            arena = max([program.arena_bytes, 4] + [o + s for o, s in
                                                    self._temp_ranges.values()])
            self._arena = Buffer.empty(((arena + 3) // 4,), np.uint32)
        temp_names = {b.name for b in temps}
        input_index = {t.name: k for k, t in enumerate(program.inputs)}
        kinds = {b.name: b.kind for b in program.buffers}
        self._launches: list[_Launch] = []
        self._pipelines: list[_Pipeline] = []  # held: the process's cache keeps them weakly
        for info in program.kernels:
            if all(isinstance(g, int) for g in info.grid):
                grid, _ = common.launch_shape(info.grid, info.block)
                if 0 in grid:
                    continue
                tops = grid
            else:
                grid = tuple(info.grid)
                tops = [g.most if getattr(g, "most", 0) else 0 for g in grid]
            if len(grid) > 3 or max(tops) > most:
                shown = "(" + ", ".join(map(str, grid)) + ("," if len(grid) == 1 else "") + ")"
                raise ValueError(f"webgpu: kernel {info.name!r} dispatches a grid of "
                                 f"{shown} work-groups; the device takes at "
                                 f"most 3 dimensions of {most}")
            source = info.source or program.source
            promote = arena_promotions(info.args, bindings(source), self._temp_ranges)
            if promote:
                source = writable(source, promote)
            made = _pipeline(dev, source, info.name)
            self._pipelines.append(made)
            pipeline, layout, declared = made.pipeline, made.layout, made.declared
            slots = []
            if made.uniform is not None:
                if self._uniform is None:
                    raise ValueError(f"webgpu: kernel {info.name!r} binds the sizes' uniform "
                                     "of a program without dynamic sizes")
                slots.append((made.uniform, "fixed", (self._uniform, 0, self._uniform.size)))
            for i, name in enumerate(info.args):
                if declared and i not in declared:
                    continue  # the module does not use the argument
                if name in input_index and kinds.get(name, "input") == "input":
                    slots.append((i, "input", input_index[name]))
                elif kinds.get(name) == "output":
                    slots.append((i, "output", name))
                elif self._symbols and name in temp_names:
                    slots.append((i, "temp", name))
                elif name in self._temp_ranges:
                    offset, size = self._temp_ranges[name]
                    slots.append((i, "fixed", (self._arena.data, offset, size)))
                elif name in self._constants:
                    const = self._constants[name]
                    slots.append((i, "fixed", (const.data, 0, const.data.size)))
                else:
                    raise ValueError(f"webgpu: kernel {info.name!r} takes {name!r}, which is "
                                     f"no input, output, constant or temp of the program")
            launch = _Launch(info.name, pipeline, layout, tuple(grid) + (1,) * (3 - len(grid)),
                             sorted(slots, key=lambda slot: slot[0]))
            if all(kind == "fixed" for _, kind, _ in slots):
                launch.bind_group = self._bind_group(launch, [], {})
            self._launches.append(launch)
        self._io: _HostIO | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _stored(b) -> int:
        """Bytes a buffer spec takes in device memory (bools as 4-byte words)."""
        return b.size * common.storage_dtype(np.dtype(b.dtype), STORAGE).itemsize

    def _bind_group(self, launch: _Launch, inputs: list[Buffer],
                    written: dict[str, Buffer], layout: _Layout | None = None) -> Any:
        """The bind group of one launch on this call's inputs and outputs (and, with dynamic
        sizes, its temporaries where this call's layout places them)."""
        entries = []
        for i, kind, what in launch.slots:
            if kind == "input":
                buffer = inputs[what].data
                resource = {"buffer": buffer, "offset": 0, "size": buffer.size}
            elif kind == "output":
                buffer = written[what].data
                resource = {"buffer": buffer, "offset": 0, "size": buffer.size}
            elif kind == "temp":
                offset, size = layout.temps[what]
                resource = {"buffer": self._arena.data, "offset": offset, "size": size}
            else:
                buffer, offset, size = what
                resource = {"buffer": buffer, "offset": offset, "size": size}
            entries.append({"binding": i, "resource": resource})
        try:
            return self._dev.device.create_bind_group(layout=launch.layout, entries=entries)
        except Exception as e:
            raise _fail(f"binding the buffers of kernel {launch.name!r}", e) from None

    @property
    def last_sizes(self) -> dict[str, int]:
        """The dynamic sizes of the latest call (`Program.symbols` -> value; empty for a
        program without symbols or before its first call)."""
        return dict(self._last.sizes.env) if self._last is not None else {}

    def _layout(self, shapes: list[tuple[int, ...]],
                known: dict[str, int] | None = None) -> _Layout:
        """The layout of a call with inputs of these shapes (a program with dynamic sizes;
        `known`: symbols no input binds), remembered per tuple of shapes (`common.Layouts`);
        the arena grows when the call needs more.  A ValueError when the shapes do not fit
        the program, or its sizes pass what its kernels take (`metadata["size_checks"]`)."""
        return self._layouts.get(shapes, known)

    def _make_layout(self, sizes: ProgramSizes) -> _Layout:
        """The layout of one call's sizes (`common.Layouts` remembers it)."""
        program = self.program
        for size, most, what in self._checks:
            value = extent_value(size, sizes.env)
            if value > most:
                raise ValueError(f"{DEVICE}: at sizes {sizes.env} the program's size {size} is "
                                 f"{value}, more than {most} ({what}); compile it for these "
                                 "sizes (static shapes)")
        for name, value in sizes.env.items():
            if not 0 <= value < 2 ** 31:
                raise ValueError(f"{DEVICE}: size {name} = {value} does not fit 32 bits")
        temps = {}
        for b in program.buffers:
            if b.kind == "temp":
                stored = sizes.elements[b.name] * \
                    common.storage_dtype(np.dtype(b.dtype), STORAGE).itemsize
                temps[b.name] = (sizes.offsets[b.name], max(4, (stored + 3) // 4 * 4))
        need = max([4, sizes.arena_bytes] + [o + n for o, n in temps.values()])
        if need > self._arena_bytes:  # earlier layouts bind the old arena
            self._arena = Buffer.empty(((need + 3) // 4,), np.uint32)
            self._arena_bytes = need
            self._layouts.clear()
            self._io = None
        most = self._dev.limits.get("max-compute-workgroups-per-dimension", 65535)
        grids = []
        for launch in self._launches:
            grid = tuple(extent_value(g, sizes.env) for g in launch.grid)
            if max(grid) > most:
                raise ValueError(f"{DEVICE}: kernel {launch.name!r} dispatches {grid} "
                                 f"work-groups at sizes {sizes.env}; the device takes {most} "
                                 "per dimension")
            grids.append(None if 0 in grid else grid)
        values = np.zeros(max(4, -(-len(self._symbols) // 4) * 4), np.int32)
        values[:len(sizes.values)] = sizes.values
        return _Layout(sizes, temps, grids, common.written_buffers(program, sizes.env),
                       values.tobytes())

    def run(self, inputs: list[np.ndarray],
            sizes: dict[str, int] | None = None) -> list[np.ndarray]:
        """Run the program on host arrays: written into input buffers kept for `run`, the
        dispatches and the copies of every output into one staging buffer in one submission,
        and one mapping of it read back.  `sizes`: values of dynamic sizes no input's shape
        gives (symbol -> value)."""
        arrays = common.host_inputs(DEVICE, self.program.inputs, inputs)
        with self._lock:
            layout = self._layout([x.shape for x in arrays], sizes) if self._symbols else None
            io = self._io if self._io is not None and self._io.layout is layout else \
                self._host_io(layout)
            for buffer, x in zip(io.inputs, arrays):
                buffer.write(x)
            outputs = self._submit(io.inputs, io.written, io.groups, io, layout)
            try:
                io.staging.map_sync(self._dev.wgpu.MapMode.READ)
                try:
                    raw = io.staging.read_mapped()
                finally:
                    io.staging.unmap()
            except Exception as e:
                raise _fail("reading the outputs back (a kernel may have failed)", e) from None
        return [common.from_storage(raw, b.shape, b.dtype, STORAGE, offset)
                for b, offset in zip(outputs, io.offsets)]

    __call__ = run

    def run_device(self, inputs: list[Buffer],
                   sizes: dict[str, int] | None = None) -> list[Buffer]:
        """Record every dispatch on `inputs` (Buffers of the program's input shapes and
        dtypes) into one command encoder and submit it once; new output Buffers, returned
        before the kernels finish.  `sizes`: as `run`."""
        common.device_inputs(DEVICE, self.program.inputs, inputs, Buffer)
        with self._lock:
            layout = self._layout([x.shape for x in inputs], sizes) if self._symbols else None
            written = {name: Buffer.empty(shape, dtype) for name, (shape, dtype) in
                       (layout.written if layout else self._written).items()}
            groups = [launch.group(lambda launch=launch: self._bind_group(
                launch, inputs, written, layout), inputs, layout) for launch in self._launches]
            return self._submit(inputs, written, groups, layout=layout)

    def _host_io(self, layout: _Layout | None = None) -> _HostIO:
        """The buffers `run` keeps (for one layout, with dynamic sizes): inputs, outputs,
        their bind groups, the staging buffer."""
        shapes = layout.sizes.input_shapes if layout else [tuple(t.shape)
                                                           for t in self.program.inputs]
        inputs = [Buffer.empty(tuple(shape), t.dtype)
                  for shape, t in zip(shapes, self.program.inputs)]
        written = {name: Buffer.empty(shape, dtype) for name, (shape, dtype) in
                   (layout.written if layout else self._written).items()}
        groups = [launch.bind_group or self._bind_group(launch, inputs, written, layout)
                  for launch in self._launches]
        offsets, size = [], 0
        for k, t in enumerate(self.program.outputs):
            offsets.append(size)
            shape = layout.sizes.output_shapes[k] if layout else t.shape
            stored = int(np.prod(shape, dtype=np.int64)) * \
                common.storage_dtype(np.dtype(t.dtype), STORAGE).itemsize
            size += (stored + 3) // 4 * 4
        usage = self._dev.wgpu.BufferUsage
        try:
            staging = self._dev.device.create_buffer(size=max(4, size),
                                                     usage=usage.MAP_READ | usage.COPY_DST)
        except Exception as e:
            raise _fail(f"allocating a {size}-byte staging buffer", e) from None
        self._io = _HostIO(inputs, written, groups, staging, offsets, layout)
        return self._io

    def _grids(self, layout: _Layout | None) -> list[tuple[int, int, int] | None]:
        """Each launch's work-groups for this call (None: nothing to dispatch)."""
        return layout.grids if layout is not None else [launch.grid
                                                        for launch in self._launches]

    def _submit(self, inputs: list[Buffer], written: dict[str, Buffer], groups: list,
                io: _HostIO | None = None, layout: _Layout | None = None) -> list[Buffer]:
        """Record the dispatches (one compute pass), the outputs' copies (and, for `run`,
        their copies into the staging buffer) and submit; the output Buffers.  With dynamic
        sizes the symbols' values are written into the uniform first (queue order keeps
        earlier submissions on theirs)."""
        outputs = []
        try:
            if layout is not None:
                self._dev.device.queue.write_buffer(self._uniform, 0, layout.uniform)
            encoder = self._dev.device.create_command_encoder()
            if self._launches:
                compute = encoder.begin_compute_pass()
                for launch, group, grid in zip(self._launches, groups, self._grids(layout)):
                    if grid is None:
                        continue
                    compute.set_pipeline(launch.pipeline)
                    compute.set_bind_group(0, group)
                    compute.dispatch_workgroups(*grid)
                compute.end()
            for k, name in enumerate(self._outputs):
                outputs.append(self._output(encoder, k, name, written, inputs, layout))
            if io is not None:
                for out, offset in zip(outputs, io.offsets):
                    if out.nbytes:
                        encoder.copy_buffer_to_buffer(out.data, 0, io.staging, offset,
                                                      (out.nbytes + 3) // 4 * 4)
            self._dev.device.queue.submit([encoder.finish()])
        except Exception as e:
            raise _fail(f"{self._culprit(groups, layout)} failed", e) from None
        if layout is not None:
            self._last = layout
        return outputs

    def profile(self, inputs: list[np.ndarray], repeat: int = 3) -> list[tuple[str, float]]:
        """Seconds per kernel (best of `repeat`), each dispatched alone in its own submission
        and waited for, in launch order, on `inputs` (host arrays); for finding the kernel a
        slow program spends its time in."""
        arrays = common.host_inputs(DEVICE, self.program.inputs, inputs)
        buffers = [Buffer.from_host(x) for x in arrays]
        times = []
        with self._lock:
            layout = self._layout([x.shape for x in arrays]) if self._symbols else None
            written = {name: Buffer.empty(shape, dtype) for name, (shape, dtype) in
                       (layout.written if layout else self._written).items()}
            if layout is not None:
                self._dev.device.queue.write_buffer(self._uniform, 0, layout.uniform)
            for launch, grid in zip(self._launches, self._grids(layout)):
                if grid is None:
                    continue
                group = launch.bind_group or self._bind_group(launch, buffers, written, layout)
                best = float("inf")
                for _ in range(max(1, repeat)):
                    start = time.perf_counter()
                    encoder = self._dev.device.create_command_encoder()
                    compute = encoder.begin_compute_pass()
                    compute.set_pipeline(launch.pipeline)
                    compute.set_bind_group(0, group)
                    compute.dispatch_workgroups(*grid)
                    compute.end()
                    self._dev.device.queue.submit([encoder.finish()])
                    synchronize()
                    best = min(best, time.perf_counter() - start)
                times.append((launch.name, best))
        return times

    def _culprit(self, groups: list, layout: _Layout | None = None) -> str:
        """Which kernel a failed submission failed on, found by recording each dispatch
        alone (only after a failure): "kernel 'name'", else every kernel's name."""
        for launch, group, grid in zip(self._launches, groups, self._grids(layout)):
            if grid is None:
                continue
            try:
                encoder = self._dev.device.create_command_encoder()
                compute = encoder.begin_compute_pass()
                compute.set_pipeline(launch.pipeline)
                compute.set_bind_group(0, group)
                compute.dispatch_workgroups(*grid)
                compute.end()
                encoder.finish()
            except Exception:
                return f"kernel {launch.name!r}"
        names = ", ".join(repr(launch.name) for launch in self._launches)
        return f"the submission of kernels {names}"

    def _output(self, encoder: Any, k: int, name: str, written: dict[str, Buffer],
                inputs: list[Buffer], layout: _Layout | None = None) -> Buffer:
        """Output `k`: the buffer the kernels wrote (the first time the name appears), else a
        copy recorded into `encoder` of it, of the input passed through, of the constant or
        of the temp."""
        if name in written and self._outputs.index(name) == k:
            return written[name]
        spec = self.program.outputs[k]
        shape = tuple(spec.shape) if layout is None else layout.sizes.output_shapes[k]
        out = Buffer.empty(shape, spec.dtype)
        temps = self._temp_ranges if layout is None else layout.temps
        if name in written:
            source, offset = written[name].data, 0
        elif name in self._constants:
            source, offset = self._constants[name].data, 0
        elif name in temps:
            source, offset = self._arena.data, temps[name][0]
        else:
            source = next(x for t, x in zip(self.program.inputs, inputs) if t.name == name).data
            offset = 0
        if out.nbytes:
            encoder.copy_buffer_to_buffer(source, offset, out.data, 0,
                                          (out.nbytes + 3) // 4 * 4)
        return out


Executable = WebGPUExecutable  # the runtime protocol's name for the class
