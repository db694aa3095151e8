"""`Program`: the plain data a compiler hands a runtime (and an exported artifact holds).

It names the target, the generated source, the entry function that runs the whole schedule,
the signature (inputs and outputs with shapes and dtypes), every buffer with its place in one
arena, the kernels in launch order, and constants.  It imports nothing from the compiler or the
frontend: dtypes are strings ("float32"), arrays are NumPy.

A shape-polymorphic program (docs/compiler/dynamic-shapes.md) names its symbols
(`Program.symbols`); its shapes, buffer sizes and offsets and its arena size may then be
`runtime.sizes.Poly`s, which a runtime evaluates per call: `Program.sizes_for(input shapes)`
binds the symbols and gives every number of that call (`ProgramSizes`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sizes import (
    Extent,
    Poly,
    Size,
    bind_sizes,
    extent_from_json,
    extent_to_json,
    size_from_json,
    size_value,
)

BUFFER_KINDS = ("input", "output", "constant", "temp")


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: its name, shape (dimensions may be symbolic) and dtype
    name."""

    name: str
    shape: tuple[Size, ...]
    dtype: str

    @property
    def symbolic(self) -> bool:
        return any(isinstance(d, Poly) for d in self.shape)

    @property
    def nbytes(self) -> int:
        """The bytes of a static tensor (TypeError for a symbolic shape: `nbytes_at`)."""
        if self.symbolic:
            raise TypeError(f"tensor {self.name!r} has the symbolic shape {_text(self.shape)}: "
                            "its bytes depend on the call (use nbytes_at)")
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def shape_at(self, env: Mapping[str, int]) -> tuple[int, ...]:
        """The shape for these symbol values."""
        return tuple(size_value(d, env) for d in self.shape)

    def nbytes_at(self, env: Mapping[str, int]) -> int:
        """The bytes for these symbol values."""
        return math.prod(self.shape_at(env)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class BufferSpec:
    """A buffer the kernels use: inputs, outputs and constants are passed in; temporaries live
    in the arena at `offset` (bytes, aligned).  `size` and `offset` may be symbolic."""

    name: str
    dtype: str
    size: Size  # elements
    kind: str
    offset: Size = -1

    @property
    def symbolic(self) -> bool:
        return isinstance(self.size, Poly) or isinstance(self.offset, Poly)

    @property
    def nbytes(self) -> int:
        """The bytes of a static buffer (TypeError for a symbolic size: `nbytes_at`)."""
        if isinstance(self.size, Poly):
            raise TypeError(f"buffer {self.name!r} has the symbolic size {self.size}: its "
                            "bytes depend on the call (use nbytes_at)")
        return self.size * np.dtype(self.dtype).itemsize

    def nbytes_at(self, env: Mapping[str, int]) -> int:
        """The bytes for these symbol values."""
        return size_value(self.size, env) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class KernelInfo:
    """One kernel in launch order: its entry symbol, the buffers it takes, and what it does."""

    name: str
    args: tuple[str, ...]
    comment: str = ""
    domain: tuple[Size, ...] = ()
    source: str = ""  # the kernel's own source, for per-kernel targets (GPU dialects)
    grid: tuple[Extent, ...] = ()
    """Work-groups (CUDA: blocks) per dimension for a GPU launch; () on the CPU.  A launch
    with a zero in `grid` does nothing (an empty kernel range).  In a program with dynamic
    sizes an entry may be a `Poly` or `runtime.sizes.Groups`, evaluated per call."""
    block: tuple[int, ...] = ()
    """Work-items (threads) per work-group, per dimension (as long as `grid`): the OpenCL
    global size is grid * block, WebGPU dispatches `grid` work-groups."""


@dataclass
class Program:
    """Everything needed to run one compiled signature on one target."""

    target: str
    entry: str  # runs every kernel in order: entry(args, arena, pool[, sizes]) (see symbols)
    source: str  # the generated module (LLVM IR text on the CPU)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    buffers: list[BufferSpec]
    kernels: list[KernelInfo]
    arena_bytes: Size = 0
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    memory: dict[str, Size] = field(default_factory=dict)  # naive / planned / lower_bound bytes
    metadata: dict[str, object] = field(default_factory=dict)
    symbols: tuple[str, ...] = ()
    """The dynamic sizes (docs/compiler/dynamic-shapes.md), in the order the entry function
    takes their values; () for a static program."""

    def entry_args(self) -> list[str]:
        """The order of the entry function's pointer arguments: inputs, outputs, constants."""
        return [t.name for t in self.inputs] + [t.name for t in self.outputs] + \
            sorted(self.constants)

    def bind_symbols(self, shapes: Sequence[Sequence[int]]) -> dict[str, int]:
        """The symbols' values for a call whose inputs have these shapes (in `inputs`
        order); a ValueError when a shape does not fit or an input dimension leaves a symbol
        unbound (`runtime.sizes.bind_sizes`)."""
        env = bind_sizes([t.shape for t in self.inputs], shapes)
        missing = [s for s in self.symbols if s not in env]
        if missing:
            raise ValueError(f"symbol {missing[0]} is not the size of any input dimension")
        return {s: env[s] for s in self.symbols}

    def sizes(self, env: Mapping[str, int]) -> ProgramSizes:
        """Every size of one call for these symbol values, checked: each temporary inside
        the arena (a ValueError otherwise; a static program needs no values)."""
        missing = [s for s in self.symbols if s not in env]
        if missing:
            raise ValueError(f"no value for the symbol {missing[0]}")
        env = {s: int(env[s]) for s in self.symbols}
        arena = size_value(self.arena_bytes, env)
        offsets: dict[str, int] = {}
        elements: dict[str, int] = {}
        for b in self.buffers:
            elements[b.name] = size_value(b.size, env)
            if elements[b.name] < 0:
                raise ValueError(f"buffer {b.name!r} has {elements[b.name]} elements at {env}")
            if b.kind == "temp" and not (isinstance(b.offset, int) and b.offset < 0):
                start = offsets[b.name] = size_value(b.offset, env)
                end = start + elements[b.name] * np.dtype(b.dtype).itemsize
                if start < 0 or end > arena:
                    raise ValueError(f"buffer {b.name!r} at [{start}, {end}) leaves the "
                                     f"{arena}-byte arena at {env}")
        return ProgramSizes(env, tuple(env[s] for s in self.symbols), arena, offsets, elements,
                            [t.shape_at(env) for t in self.inputs],
                            [t.shape_at(env) for t in self.outputs])

    def sizes_for(self, shapes: Sequence[Sequence[int]]) -> ProgramSizes:
        """`sizes` for a call whose inputs have these shapes (`bind_symbols`)."""
        return self.sizes(self.bind_symbols(shapes))

    def __str__(self) -> str:
        """The generated source (what NEURENIX_DEBUG=4 prints after code generation)."""
        return self.source


@dataclass(frozen=True)
class ProgramSizes:
    """The numbers of one call of a (possibly symbolic) program: the symbols' values by
    name and as the entry's `sizes` array (`Program.symbols` order), the arena's bytes, each
    temporary's byte offset, each buffer's elements and the tensors' shapes."""

    env: dict[str, int]
    values: tuple[int, ...]
    arena_bytes: int
    offsets: dict[str, int]
    elements: dict[str, int]
    input_shapes: list[tuple[int, ...]]
    output_shapes: list[tuple[int, ...]]


def _text(shape: Sequence[Size]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


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
    """A program as a JSON-able dict and its constant arrays (stored alongside, as raw data).
    Sizes are ints or `{"poly": ...}` (`runtime.sizes.size_to_json`); "symbols" is written
    only for a symbolic program, so a static one serializes as before."""
    data = {
        "format": PROGRAM_FORMAT, "target": program.target, "entry": program.entry,
        "source": program.source,
        "inputs": [_spec_json(t) for t in program.inputs],
        "outputs": [_spec_json(t) for t in program.outputs],
        "buffers": [{"name": b.name, "dtype": b.dtype, "size": _size_json(b.size),
                     "kind": b.kind, "offset": _size_json(b.offset)} for b in program.buffers],
        "kernels": [{"name": k.name, "args": list(k.args), "comment": k.comment,
                     "domain": [_size_json(d) for d in k.domain], "source": k.source,
                     "grid": [extent_to_json(d) for d in k.grid],
                     "block": [int(d) for d in k.block]}
                    for k in program.kernels],
        "arena_bytes": _size_json(program.arena_bytes),
        "constants": sorted(program.constants),
        "memory": {k: _size_json(v) for k, v in program.memory.items()},
        "metadata": to_json_value(program.metadata),
    }
    if program.symbols:
        data["symbols"] = list(program.symbols)
    return data, dict(program.constants)


def _size_json(size: Size) -> int | dict:
    return size.to_json() if isinstance(size, Poly) else int(size)


def program_from_json(data: object, arrays: dict[str, np.ndarray]) -> Program:
    """The program `program_to_json` described, after checking every field's type and that
    buffers, kernels and constants agree; ProgramFormatError when anything is off."""
    d = _fields(data, "program", {"format", "target", "entry", "source", "inputs", "outputs",
                                  "buffers", "kernels", "arena_bytes", "constants", "memory",
                                  "metadata"}, optional={"symbols"})
    _check(d["format"] == PROGRAM_FORMAT, f"program format {d['format']!r}")
    for name in ("target", "entry", "source"):
        _check(type(d[name]) is str, f"program {name} is not a string")
    symbols = _symbols(d.get("symbols", []))
    size = _Sizes(symbols)
    arena = size(d["arena_bytes"], "arena_bytes")
    inputs = [_spec_from(t, size) for t in _list(d["inputs"], "inputs")]
    outputs = [_spec_from(t, size) for t in _list(d["outputs"], "outputs")]
    buffers = [_buffer_from(b, arena, size) for b in _list(d["buffers"], "buffers")]
    names = {b.name for b in buffers}
    kernels = [_kernel_from(k, names, size) for k in _list(d["kernels"], "kernels")]
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
    _check(type(d["memory"]) is dict, "memory is not a dict of byte counts")
    memory = {k: size(v, "memory") for k, v in d["memory"].items()}
    metadata = from_json_value(d["metadata"])
    _check(type(metadata) is dict, "metadata is not a dict")
    _check_runtime_metadata(metadata, size)
    return Program(d["target"], d["entry"], d["source"], inputs, outputs, buffers, kernels,
                   arena, dict(arrays), memory, metadata, symbols)


def _check_runtime_metadata(metadata: dict, size: _Sizes) -> None:
    """The metadata a runtime reads (the CPU's thread pool symbols, kernel ranges: ints, or
    sizes as `runtime.sizes.size_to_json` writes them)."""
    pool = metadata.get("pool")
    if pool is not None:
        _check(type(pool) is dict and set(pool) == {"start", "stop", "size"}
               and all(type(v) is str for v in pool.values()), "metadata pool is malformed")
    ranges = metadata.get("ranges", {})
    _check(type(ranges) is dict, "metadata ranges is malformed")
    for v in ranges.values():
        _check(type(v) in (int, dict), "metadata ranges is malformed")
        if type(v) is dict:
            size(v, "metadata range")


def _symbols(data: object) -> tuple[str, ...]:
    names = _list(data, "symbols")
    _check(all(type(n) is str and n.isidentifier() for n in names)
           and len(set(names)) == len(names), "symbols are not distinct identifiers")
    return tuple(names)


class _Sizes:
    """Reads a size (an int or `{"poly": ...}` over the program's symbols) and checks it."""

    def __init__(self, symbols: tuple[str, ...]) -> None:
        self.symbols = frozenset(symbols)

    def __call__(self, value: Any, what: str, low: int = 0) -> Size:
        if type(value) is int:
            return _count(value, what, low)
        _check(type(value) is dict, f"{what} is not an integer or a size polynomial")
        try:
            size = size_from_json(value)
        except ValueError as e:
            raise ProgramFormatError(f"serialized program: {what}: {e}") from None
        if isinstance(size, int):
            return _count(size, what, low)
        unknown = sorted(size.symbols() - self.symbols)
        _check(not unknown, f"{what} {size} uses {', '.join(unknown)}, not among the "
                            "program's symbols")
        return size


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ProgramFormatError(f"serialized program: {what}")


def _fields(data: Any, what: str, keys: set[str], optional: frozenset[str] | set[str] = frozenset()
            ) -> dict:
    _check(type(data) is dict and keys <= set(data) <= keys | optional,
           f"{what} does not have fields {sorted(keys)}")
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


def _sizes(value: object, what: str, size: _Sizes) -> tuple[Size, ...]:
    return tuple(size(d, f"{what} dimension") for d in _list(value, f"{what} shape"))


def _grid(value: object, size: _Sizes) -> tuple[Extent, ...]:
    """A launch's work-groups: ints, or sizes and `Groups` over the program's symbols."""
    out: list[Extent] = []
    for d in _list(value, "grid"):
        if type(d) is dict and "groups" in d:
            try:
                groups = extent_from_json(d)
            except ValueError as e:
                raise ProgramFormatError(f"serialized program: grid: {e}") from None
            for part, _ in groups.parts:
                if not isinstance(part, int):
                    size(part.to_json(), "grid")
            out.append(groups)
        else:
            out.append(size(d, "grid dimension"))
    return tuple(out)


def _spec_json(t: TensorSpec) -> dict:
    return {"name": t.name, "shape": [_size_json(d) for d in t.shape], "dtype": t.dtype}


def _spec_from(data: object, size: _Sizes) -> TensorSpec:
    d = _fields(data, "tensor spec", {"name", "shape", "dtype"})
    _check(type(d["name"]) is str, "tensor spec name is not a string")
    return TensorSpec(d["name"], _sizes(d["shape"], d["name"], size),
                      _dtype(d["dtype"], d["name"]))


def _buffer_from(data: object, arena: Size, size: _Sizes) -> BufferSpec:
    """A buffer; a static temporary is checked to lie in a static arena here, a symbolic
    one per call (`Program.sizes`)."""
    d = _fields(data, "buffer", {"name", "dtype", "size", "kind", "offset"})
    _check(type(d["name"]) is str and d["kind"] in BUFFER_KINDS, "buffer name or kind")
    buffer = BufferSpec(d["name"], _dtype(d["dtype"], d["name"]), size(d["size"], "size"),
                        d["kind"], size(d["offset"], "offset", -1))
    if isinstance(buffer.offset, Poly):
        _check(buffer.kind == "temp", f"buffer {buffer.name!r} has an offset but is no temporary")
    elif buffer.kind == "temp" and buffer.offset >= 0 and not isinstance(buffer.size, Poly) \
            and not isinstance(arena, Poly):
        _check(buffer.offset + buffer.nbytes <= arena, f"buffer {buffer.name!r} outside the arena")
    return buffer


def _kernel_from(data: object, buffers: set[str], size: _Sizes) -> KernelInfo:
    d = _fields(data, "kernel", {"name", "args", "comment", "domain", "source", "grid",
                                 "block"})
    _check(all(type(d[k]) is str for k in ("name", "comment", "source")), "kernel strings")
    args = _list(d["args"], "kernel args")
    _check(all(type(a) is str and a in buffers for a in args),
           f"kernel {d['name']!r} takes an unknown buffer")
    grid, block = _grid(d["grid"], size), _shape(d["block"], "block")
    _check(len(grid) == len(block) <= 3, f"kernel {d['name']!r} launch geometry")
    return KernelInfo(d["name"], tuple(args), d["comment"], _sizes(d["domain"], "domain", size),
                      d["source"], grid, block)
