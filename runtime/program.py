"""`Program`: the plain data a compiler hands a runtime (and an exported artifact holds).

It names the target, the generated source, the entry function that runs the whole schedule,
the signature (inputs and outputs with shapes and dtypes), every buffer with its place in one
arena, the kernels in launch order, and constants.  It imports nothing from the compiler or the
frontend: dtypes are strings ("float32"), arrays are NumPy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
