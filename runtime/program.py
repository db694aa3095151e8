"""`Program`: the plain data a compiler hands a runtime (and an exported artifact holds).

It names the target, the generated source, the entry function that runs the whole schedule,
the signature (inputs and outputs with shapes and dtypes), every buffer with its place in one
arena, the kernels in launch order, and constants.  It imports nothing from the compiler or the
frontend: dtypes are strings ("float32"), arrays are NumPy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

BUFFER_KINDS = ("input", "output", "constant", "temp")


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: its name, shape and dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class BufferSpec:
    """A buffer the kernels use: inputs, outputs and constants are passed in; temporaries live
    in the arena at `offset` (bytes, aligned)."""

    name: str
    dtype: str
    size: int  # elements
    kind: str
    offset: int = -1

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class KernelInfo:
    """One kernel in launch order: its entry symbol, the buffers it takes, and what it does."""

    name: str
    args: tuple[str, ...]
    comment: str = ""
    domain: tuple[int, ...] = ()
    source: str = ""  # the kernel's own source, for per-kernel targets (GPU dialects)
    grid: tuple[int, ...] = ()
    """Work-groups (CUDA: blocks) per dimension for a GPU launch; () on the CPU.  A launch
    with a zero in `grid` does nothing (an empty kernel range)."""
    block: tuple[int, ...] = ()
    """Work-items (threads) per work-group, per dimension (as long as `grid`): the OpenCL
    global size is grid * block, WebGPU dispatches `grid` work-groups."""


@dataclass
class Program:
    """Everything needed to run one compiled signature on one target."""

    target: str
    entry: str  # the function that runs every kernel in order: entry(void** args, void* arena)
    source: str  # the generated module (LLVM IR text on the CPU)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    buffers: list[BufferSpec]
    kernels: list[KernelInfo]
    arena_bytes: int = 0
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)  # naive / planned / lower_bound bytes
    metadata: dict[str, object] = field(default_factory=dict)

    def entry_args(self) -> list[str]:
        """The order of the entry function's pointer arguments: inputs, outputs, constants."""
        return [t.name for t in self.inputs] + [t.name for t in self.outputs] + \
            sorted(self.constants)

    def __str__(self) -> str:
        """The generated source (what NEURENIX_DEBUG=4 prints after code generation)."""
        return self.source


# ---- serialization: JSON plus raw arrays, strictly validated on the way back ----------------

PROGRAM_FORMAT = 2
DTYPE_NAMES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                         "uint64", "float16", "float32", "float64"})
_TUPLE = "__tuple__"


class ProgramFormatError(ValueError):
    """Serialized program data that does not have the expected structure."""


def to_json_value(value: object) -> object:
    """Plain data (dicts with str keys, lists, tuples, str, int, float, bool, None, NumPy
    scalars) as a JSON value; tuples are tagged so that `from_json_value` gives them back as
    tuples.  Anything else raises TypeError: data must come back exactly as it went in."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if type(value) is tuple:
        return {_TUPLE: [to_json_value(v) for v in value]}
    if type(value) is list:
        return [to_json_value(v) for v in value]
    if type(value) is dict:
        if not all(type(k) is str for k in value) or _TUPLE in value:
            raise TypeError(f"to_json_value: dict keys must be strings other than {_TUPLE!r}")
        return {k: to_json_value(v) for k, v in value.items()}
    raise TypeError(f"to_json_value: cannot store a {type(value).__name__}")


def from_json_value(data: object) -> object:
    """The inverse of `to_json_value`; ProgramFormatError on anything it could not produce."""
    if data is None or type(data) in (str, int, float, bool):
        return data
    if type(data) is list:
        return [from_json_value(v) for v in data]
    if type(data) is dict:
        if _TUPLE in data:
            items = data[_TUPLE]
            _check(len(data) == 1 and type(items) is list, "a malformed tuple")
            return tuple(from_json_value(v) for v in items)
        return {k: from_json_value(v) for k, v in data.items()}
    raise ProgramFormatError(f"unexpected {type(data).__name__} in JSON data")


def program_to_json(program: Program) -> tuple[dict, dict[str, np.ndarray]]:
    """A program as a JSON-able dict and its constant arrays (stored alongside, as raw data)."""
    data = {
        "format": PROGRAM_FORMAT, "target": program.target, "entry": program.entry,
        "source": program.source,
        "inputs": [_spec_json(t) for t in program.inputs],
        "outputs": [_spec_json(t) for t in program.outputs],
        "buffers": [{"name": b.name, "dtype": b.dtype, "size": int(b.size), "kind": b.kind,
                     "offset": int(b.offset)} for b in program.buffers],
        "kernels": [{"name": k.name, "args": list(k.args), "comment": k.comment,
                     "domain": [int(d) for d in k.domain], "source": k.source,
                     "grid": [int(d) for d in k.grid], "block": [int(d) for d in k.block]}
                    for k in program.kernels],
        "arena_bytes": int(program.arena_bytes),
        "constants": sorted(program.constants),
        "memory": {k: int(v) for k, v in program.memory.items()},
        "metadata": to_json_value(program.metadata),
    }
    return data, dict(program.constants)


def program_from_json(data: object, arrays: dict[str, np.ndarray]) -> Program:
    """The program `program_to_json` described, after checking every field's type and that
    buffers, kernels and constants agree; ProgramFormatError when anything is off."""
    d = _fields(data, "program", {"format", "target", "entry", "source", "inputs", "outputs",
                                  "buffers", "kernels", "arena_bytes", "constants", "memory",
                                  "metadata"})
    _check(d["format"] == PROGRAM_FORMAT, f"program format {d['format']!r}")
    for name in ("target", "entry", "source"):
        _check(type(d[name]) is str, f"program {name} is not a string")
    arena = _count(d["arena_bytes"], "arena_bytes")
    inputs = [_spec_from(t) for t in _list(d["inputs"], "inputs")]
    outputs = [_spec_from(t) for t in _list(d["outputs"], "outputs")]
    buffers = [_buffer_from(b, arena) for b in _list(d["buffers"], "buffers")]
    names = {b.name for b in buffers}
    kernels = [_kernel_from(k, names) for k in _list(d["kernels"], "kernels")]
    constant_names = _list(d["constants"], "constants")
    _check(all(type(n) is str for n in constant_names) and set(constant_names) == set(arrays)
           and len(constant_names) == len(arrays), "constants do not match the stored arrays")
    by_name = {b.name: b for b in buffers}
    for name, array in arrays.items():
        _check(isinstance(array, np.ndarray) and array.dtype.name in DTYPE_NAMES,
               f"constant {name!r} is not a numeric array")
        spec = by_name.get(name)
        _check(spec is None or (spec.dtype == array.dtype.name and spec.size == array.size),
               f"constant {name!r} does not match its buffer")
    memory = d["memory"]
    _check(type(memory) is dict and all(type(v) is int for v in memory.values()),
           "memory is not a dict of byte counts")
    metadata = from_json_value(d["metadata"])
    _check(type(metadata) is dict, "metadata is not a dict")
    _check_runtime_metadata(metadata)
    return Program(d["target"], d["entry"], d["source"], inputs, outputs, buffers, kernels,
                   arena, dict(arrays), dict(memory), metadata)


def _check_runtime_metadata(metadata: dict) -> None:
    """The metadata a runtime reads (the CPU's thread pool symbols, kernel ranges)."""
    pool = metadata.get("pool")
    if pool is not None:
        _check(type(pool) is dict and set(pool) == {"start", "stop", "size"}
               and all(type(v) is str for v in pool.values()), "metadata pool is malformed")
    ranges = metadata.get("ranges", {})
    _check(type(ranges) is dict and all(type(v) is int for v in ranges.values()),
           "metadata ranges is malformed")


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ProgramFormatError(f"serialized program: {what}")


def _fields(data: Any, what: str, keys: set[str]) -> dict:
    _check(type(data) is dict and set(data) == keys, f"{what} does not have fields {sorted(keys)}")
    return data


def _list(data: Any, what: str) -> list:
    _check(type(data) is list, f"{what} is not a list")
    return data


def _count(value: Any, what: str, low: int = 0) -> int:
    _check(type(value) is int and value >= low, f"{what} is not an integer >= {low}")
    return value


def _dtype(value: Any, what: str) -> str:
    _check(type(value) is str and value in DTYPE_NAMES, f"{what} has no known dtype")
    return value


def _shape(value: object, what: str) -> tuple[int, ...]:
    return tuple(_count(d, f"{what} dimension") for d in _list(value, f"{what} shape"))


def _spec_json(t: TensorSpec) -> dict:
    return {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": t.dtype}


def _spec_from(data: object) -> TensorSpec:
    d = _fields(data, "tensor spec", {"name", "shape", "dtype"})
    _check(type(d["name"]) is str, "tensor spec name is not a string")
    return TensorSpec(d["name"], _shape(d["shape"], d["name"]), _dtype(d["dtype"], d["name"]))


def _buffer_from(data: object, arena: int) -> BufferSpec:
    d = _fields(data, "buffer", {"name", "dtype", "size", "kind", "offset"})
    _check(type(d["name"]) is str and d["kind"] in BUFFER_KINDS, "buffer name or kind")
    buffer = BufferSpec(d["name"], _dtype(d["dtype"], d["name"]), _count(d["size"], "size"),
                        d["kind"], _count(d["offset"], "offset", -1))
    if buffer.kind == "temp" and buffer.offset >= 0:
        _check(buffer.offset + buffer.nbytes <= arena, f"buffer {buffer.name!r} outside the arena")
    return buffer


def _kernel_from(data: object, buffers: set[str]) -> KernelInfo:
    d = _fields(data, "kernel", {"name", "args", "comment", "domain", "source", "grid",
                                 "block"})
    _check(all(type(d[k]) is str for k in ("name", "comment", "source")), "kernel strings")
    args = _list(d["args"], "kernel args")
    _check(all(type(a) is str and a in buffers for a in args),
           f"kernel {d['name']!r} takes an unknown buffer")
    grid, block = _shape(d["grid"], "grid"), _shape(d["block"], "block")
    _check(len(grid) == len(block) <= 3, f"kernel {d['name']!r} launch geometry")
    return KernelInfo(d["name"], tuple(args), d["comment"], _shape(d["domain"], "domain"),
                      d["source"], grid, block)
