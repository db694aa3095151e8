"""What the GPU runtimes (OpenCL, WebGPU, CUDA and HIP) share: the per-process device
singleton, storage conversion at the host boundary, argument checking against a `Program`'s
signature, the arena's size, and the per-call layouts of a program with dynamic sizes
(`Layouts`: its sizes bound from the inputs' shapes once per tuple of shapes, remembered).

Storage (docs/targets/gpu-programs.md): device buffers hold the host layout of every dtype,
except where a storage map says otherwise; WebGPU's is `{"bool": "uint32"}` (a bool is a 4-byte
0/1 word).
Device buffers are at least 4 bytes and a multiple of 4 long: zero-size buffers are invalid in
both APIs, and WebGPU copies and binds in 4-byte units.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from .program import Program, ProgramSizes, TensorSpec
from .sizes import bind_sizes, size_value

T = TypeVar("T")
LAYOUTS = 64
"""Input shapes whose layouts an executable with dynamic sizes remembers (then starts over)."""


class Lazy(Generic[T]):
    """A per-process value made on first use, under a lock (thread-safe).  A failed attempt is
    remembered with its reason, so probing again is cheap and never raises from `reason()`;
    a forked child makes its own (a driver's context does not survive `fork`)."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._pid = -1
        self._value: T | None = None
        self._error = ""

    def _ensure(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            try:
                self._value, self._error = self._make(), ""
            except Exception as e:  # the reason a probe reports; never raised from here
                self._value, self._error = None, str(e) or type(e).__name__
            self._pid = os.getpid()

    def get(self) -> T:
        """The value; a RuntimeError with the reason when it could not be made."""
        self._ensure()
        if self._value is None:
            raise RuntimeError(self._error)
        return self._value

    def reason(self) -> str:
        """"" when the value could be made, otherwise why not."""
        self._ensure()
        return self._error

    def peek(self) -> T | None:
        """The value if it was made (in this process), without making it."""
        return self._value if self._pid == os.getpid() else None

    def reset(self) -> None:
        """Forget the value (tests, or a lost device): the next use makes a new one."""
        with self._lock:
            self._pid, self._value, self._error = -1, None, ""


def storage_dtype(dtype: np.dtype, storage: dict[str, str]) -> np.dtype:
    """The dtype `dtype` has in device memory under a storage map ({"bool": "uint32"})."""
    return np.dtype(storage.get(np.dtype(dtype).name, np.dtype(dtype).name))


def device_nbytes(shape: Sequence[int], dtype: np.dtype, storage: dict[str, str]) -> int:
    """Bytes a device buffer of this shape and dtype allocates: at least 4, a multiple of 4."""
    n = int(np.prod(shape, dtype=np.int64)) * storage_dtype(dtype, storage).itemsize
    return max(4, (n + 3) // 4 * 4)


def to_storage(array: np.ndarray, storage: dict[str, str]) -> np.ndarray:
    """`array` in its device layout, C-contiguous (a copy only where the layout differs)."""
    target = storage_dtype(array.dtype, storage)
    if target != array.dtype:
        return np.ascontiguousarray(array, dtype=target)
    return np.ascontiguousarray(array)


def from_storage(raw: Any, shape: Sequence[int], dtype: np.dtype,
                 storage: dict[str, str], offset: int = 0) -> np.ndarray:
    """A new host array of `shape` and logical `dtype` from device bytes `raw` at `offset`
    (which may be padded past the values)."""
    dtype = np.dtype(dtype)
    stored = storage_dtype(dtype, storage)
    count = int(np.prod(shape, dtype=np.int64))
    values = np.frombuffer(raw, dtype=stored, count=count, offset=offset)
    if stored != dtype:
        return (values != 0).reshape(shape) if dtype == np.bool_ else \
            values.astype(dtype).reshape(shape)
    return values.reshape(shape).copy()


def host_inputs(target: str, specs: Sequence[TensorSpec],
                inputs: Sequence[Any]) -> list[np.ndarray]:
    """Host inputs as C-contiguous arrays of their shapes (a scalar stays 0-d: a program with
    dynamic sizes binds them from these shapes) after checking count, shapes and dtypes; a
    ValueError naming what was expected and what came."""
    check_count(target, specs, inputs)
    arrays = []
    for spec, x in zip(specs, inputs):
        if not isinstance(x, np.ndarray):
            if hasattr(x, "to_host") and hasattr(x, "device"):
                raise TypeError(f"{target}: input {spec.name!r} is a {x.device} buffer; run() "
                                f"takes host arrays (run_device takes {target} buffers)")
            x = np.asarray(x)
        check_spec(target, spec, tuple(x.shape), x.dtype)
        y = np.ascontiguousarray(x)
        arrays.append(y if y.ndim == x.ndim else y.reshape(x.shape))  # keeps 0-d arrays 0-d
    return arrays


def check_count(target: str, specs: Sequence[TensorSpec], inputs: Sequence[Any]) -> None:
    """A ValueError unless there is one input per spec."""
    if len(inputs) != len(specs):
        names = ", ".join(s.name for s in specs)
        raise ValueError(f"{target}: the program takes {len(specs)} inputs ({names}), got "
                         f"{len(inputs)}")


def check_spec(target: str, spec: TensorSpec, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """A ValueError unless `shape` and `dtype` are the spec's (a dynamic dimension takes any
    size here: binding the program's symbols checks it, `Program.sizes_for`)."""
    if spec.symbolic:
        if len(shape) != len(spec.shape) or np.dtype(dtype) != np.dtype(spec.dtype) or any(
                isinstance(d, int) and d != s for d, s in zip(spec.shape, shape)):
            raise ValueError(f"{target}: input {spec.name!r} expects {spec.dtype}"
                             f"[{', '.join(str(d) for d in spec.shape)}], got "
                             f"{np.dtype(dtype)}{list(shape)}")
        return
    if shape != tuple(spec.shape) or np.dtype(dtype) != np.dtype(spec.dtype):
        raise ValueError(f"{target}: input {spec.name!r} expects {spec.dtype}"
                         f"{list(spec.shape)}, got {np.dtype(dtype)}{list(shape)}")


def device_inputs(target: str, specs: Sequence[TensorSpec], inputs: Sequence[Any],
                  buffer_type: type) -> None:
    """Check device inputs: count, type (a `buffer_type` on `target`), shape and dtype."""
    check_count(target, specs, inputs)
    for spec, x in zip(specs, inputs):
        if not isinstance(x, buffer_type):
            where = getattr(x, "device", None)
            what = "a host array" if isinstance(x, np.ndarray) else \
                f"a {where} buffer" if isinstance(where, str) else f"a {type(x).__name__}"
            raise TypeError(f"{target}: input {spec.name!r} must be a {target} Buffer "
                            f"(run_device takes device buffers), got {what}")
        check_spec(target, spec, tuple(x.shape), x.dtype)


def output_sources(program: Program) -> list[str]:
    """Per program output, the buffer kernels write it to: its own `output` buffer, or the
    input, constant or temp of that name (an output that is an input passed through)."""
    kinds = {b.name: b.kind for b in program.buffers}
    names = []
    for spec in program.outputs:
        if spec.name not in kinds and spec.name not in {t.name for t in program.inputs} \
                and spec.name not in program.constants:
            raise ValueError(f"{program.target}: output {spec.name!r} is not a buffer of the "
                             f"program")
        names.append(spec.name)
    return names


def written_buffers(program: Program, env: Mapping[str, int] | None = None
                    ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype of every `output` buffer, which each call allocates anew: a
    program output's, else (size,) (an output buffer the signature does not return); `env`
    gives a program with dynamic sizes the values of its symbols."""
    if env is None:
        shapes = {t.name: tuple(t.shape) for t in program.outputs}
        return {b.name: (shapes.get(b.name, (b.size,)), np.dtype(b.dtype))
                for b in program.buffers if b.kind == "output"}
    shapes = {t.name: t.shape_at(env) for t in program.outputs}
    return {b.name: (shapes.get(b.name, (size_value(b.size, env),)), np.dtype(b.dtype))
            for b in program.buffers if b.kind == "output"}


def launch_shape(grid: Sequence[int], block: Sequence[int]) -> tuple[tuple[int, ...],
                                                                     tuple[int, ...]]:
    """(grid, block) of a launch, as long as each other: () launches one work-item."""
    grid, block = tuple(int(g) for g in grid), tuple(int(b) for b in block)
    if not grid:
        return (1,), (1,)
    if len(block) != len(grid):
        raise ValueError(f"launch geometry: grid {grid} and block {block} differ in length")
    return grid, block


def arena_bytes(program: Program, sizes: ProgramSizes | None = None) -> int:
    """Bytes to allocate for the arena: the plan's, and at least every temp's range (a temp of
    no elements still gets 4 bytes), at least 4; `sizes`: one call of a program with dynamic
    sizes (its offsets and element counts)."""
    temps = [b for b in program.buffers if b.kind == "temp"]
    if sizes is None:
        return max([4, program.arena_bytes] + [b.offset + max(b.nbytes, 4) for b in temps])
    return max([4, sizes.arena_bytes] + [
        sizes.offsets[b.name] + max(sizes.elements[b.name] * np.dtype(b.dtype).itemsize, 4)
        for b in temps])


class Layouts(Generic[T]):
    """The per-call layouts of a program with dynamic sizes (`Program.symbols`): for a call
    with inputs of some shapes (and `known` values of symbols no input binds), the program's
    sizes (`Program.sizes` of `bind_sizes`) handed to `make`, whose result (the runtime's
    layout: temporaries placed, grids evaluated, outputs' shapes) is remembered per tuple of
    shapes, up to `LAYOUTS` of them (then starting over).  A runtime whose arena grows
    `clear`s it: older layouts point into the old arena."""

    def __init__(self, program: Program, target: str,
                 make: Callable[[ProgramSizes], T]) -> None:
        self.program = program
        self.target = target
        self.make = make
        self._made: dict[tuple, T] = {}

    def get(self, shapes: Sequence[Sequence[int]],
            known: Mapping[str, int] | None = None) -> T:
        """The layout of a call with inputs of these shapes; a ValueError (naming the target)
        when the shapes do not fit the program."""
        key = (tuple(tuple(s) for s in shapes), tuple(sorted(known.items())) if known else ())
        hit = self._made.get(key)
        if hit is not None:
            return hit
        program = self.program
        try:
            sizes = program.sizes(bind_sizes([t.shape for t in program.inputs], shapes, known))
        except ValueError as e:
            raise ValueError(f"{self.target}: {e}") from None
        layout = self.make(sizes)
        if len(self._made) >= LAYOUTS:
            self._made.clear()
        self._made[key] = layout
        return layout

    def clear(self) -> None:
        """Forget every layout (the arena they point into was replaced)."""
        self._made.clear()

    def __len__(self) -> int:
        return len(self._made)
