"""The target table: where a code generator plugs into the compiler.

A `Target` names everything the compiler, the frontend and the caches need to know about one
kind of generated code: its capability record (what the schedule rules, the decompositions,
lowering and memory planning may assume), the generator that turns a scheduled kernel list
into a `runtime.program.Program`, and the runtime module that loads and runs such a program.
`pipeline.build`, `neurenix.compile` and the disk cache look targets up here by name; no other
module names a backend.  Adding a target is one `register_target` call, one generator and one
runtime module (see docs/architecture.md, "Adding a target").

Generators and runtime modules are named by dotted path and imported on first use, so that a
program loaded from the disk cache needs no code generator, and the compiler never imports a
runtime module (it may not: the runtime sits below it).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Capabilities:
    """What generated code for a target may use.  Read by schedule rules (vector width,
    threads, local memory), decompositions (`native_ops`), lowering (index width) and memory
    planning (alignment)."""

    vector_bits: int = 0
    """Widest SIMD register in bits (0: scalar code only)."""
    threads: str = "none"
    """How a kernel's range is spread: "pool" (CPU thread pool over ranges of the outermost
    axis), "grid" (GPU work-groups / blocks and threads), "none" (one thread)."""
    index_bits: tuple[int, ...] = (32, 64)
    """Integer widths index arithmetic can be generated in."""
    preferred_index_bits: int = 64
    """The width used when every size fits it (a CPU's native word; 32 on GPUs)."""
    alignment: int = 64
    """Byte alignment of every buffer in the arena (WebGPU binds storage at 256)."""
    float64: bool = True
    """Whether float64 tensors can be computed (WGSL has no 64-bit types: refused there)."""
    int64: bool = True
    """Whether int64 arithmetic is native; without it the generator emulates it exactly
    (WGSL: two 32-bit words, codegen/wgsl_int64.py)."""
    bool_bytes: int = 1
    """Bytes a bool takes in the target's buffers (WebGPU has no byte stores: 4)."""
    max_kernel_buffers: int = 0
    """Buffers one kernel may bind (WebGPU: storage buffers per shader stage); 0: no limit."""
    max_grid: int = 0
    """Work-groups per grid dimension (WebGPU: 65,535); 0: no limit."""
    local_memory_bytes: int = 0
    """Work-group shared memory a schedule may stage tiles in (0: none)."""
    max_workgroup_size: int = 0
    native_ops: frozenset[str] | None = None
    """Kernel-IR operations the generator renders itself; others are decomposed before
    code generation.  None: every operation."""
    masked_loads: bool = False
    """Vector loads and stores under a lane mask (AVX2, AVX-512): short rows may run their
    tail as one masked vector iteration, and strided windows load contiguous masked vectors."""
    l2_bytes: int = 0
    """Per-core level-2 cache in bytes, which tiled contractions block for (0: not known)."""
    dynamic_shapes: bool = False
    """Whether the generator and runtime take programs with dynamic sizes (symbols that
    each call gives: docs/compiler/dynamic-shapes.md); without it such graphs compile for
    static sizes."""
    inline_unfold_limit: int = 64
    """Fusion question: a matmul reading an unfolded (im2col) operand keeps the unfold inline
    while the other operand's free extent is at most this; past it, the unfold is
    materialised (the CPU's register-tiled GEMM stops winning from inline gathers there)."""

    def __post_init__(self) -> None:
        def fail(field: str, expected: str) -> None:
            raise ValueError(f"Capabilities: {field} must be {expected}, got "
                             f"{getattr(self, field)!r}")

        vb = self.vector_bits
        if type(vb) is not int or not (vb == 0 or (vb >= 64 and vb & (vb - 1) == 0)):
            fail("vector_bits", "0 or a power of two >= 64")
        if self.threads not in ("pool", "grid", "none"):
            fail("threads", "'pool', 'grid' or 'none'")
        if not self.index_bits or any(b not in (32, 64) for b in self.index_bits):
            fail("index_bits", "a non-empty tuple of 32 and/or 64")
        if self.preferred_index_bits not in self.index_bits:
            fail("preferred_index_bits", f"one of index_bits {tuple(self.index_bits)}")
        a = self.alignment
        if type(a) is not int or a <= 0 or a & (a - 1):
            fail("alignment", "a positive power of two")
        if self.bool_bytes not in (1, 4):
            fail("bool_bytes", "1 or 4")
        for name in ("local_memory_bytes", "max_workgroup_size", "inline_unfold_limit",
                     "max_kernel_buffers", "max_grid"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 0:
                fail(name, "a non-negative int")


def load_named(path: str) -> Any:
    """`"package.module:attr"` -> the attribute; `"package.module"` -> the module."""
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


@dataclass(frozen=True)
class Target:
    """One row of the target table."""

    name: str
    device: str
    """The device kind programs for this target run on ("cpu", "cuda", "webgpu", ...)."""
    probe: Callable[[], Capabilities]
    """The capability record, probed on first use (a CPU target reads the host's features)."""
    generator: str | None
    """`module:function` with signature `(schedule, plan, target) -> Program`; None for a
    target that runs the optimised graph itself (the reference evaluator)."""
    runtime: str | None
    """The runtime module that loads the target's programs (see runtime/__init__.py for what
    such a module provides); None for the reference target."""
    rules: str | None = None
    """`module:attr` naming the ordered schedule rules for this target (None: the default
    rules of `compiler.schedule`)."""
    source_suffix: str = ".txt"
    """The file suffix of the generated source (`Program.source`): ".ll" for LLVM IR."""
    disk_cache: bool = True
    """Whether built programs are kept in the disk cache (a program must then be a
    `runtime.program.Program` of plain data)."""
    description: str = ""

    def __post_init__(self) -> None:
        def fail(field: str, expected: str) -> None:
            raise TypeError(f"Target: {field} must be {expected}, got "
                            f"{getattr(self, field)!r}")

        if not isinstance(self.name, str) or not self.name:
            fail("name", "a non-empty str")
        if not isinstance(self.device, str):
            fail("device", "a str such as 'cpu'")
        if not callable(self.probe):
            fail("probe", "a callable returning Capabilities")
        for field, form in (("generator", "'module:function'"), ("rules", "'module:attr'")):
            value = getattr(self, field)
            if value is not None and not (isinstance(value, str) and ":" in value):
                fail(field, f"None or a {form} string")
        if self.runtime is not None and not (isinstance(self.runtime, str) and self.runtime):
            fail("runtime", "None or a module name")

    @property
    def capabilities(self) -> Capabilities:
        return _capabilities(self.name, self.probe)

    def identity(self) -> str:
        """What a program built for this target depends on besides its graph: the row and
        its capability record (a disk-cache key part: a target re-registered with another
        record must not find the old record's programs)."""
        return (f"{self.name}|{self.generator}|{self.runtime}|{self.rules}|"
                f"{self.capabilities!r}")

    def generate(self) -> Callable[..., Any]:
        """The generator function (imported on first use)."""
        if self.generator is None:
            raise ValueError(f"target {self.name!r} runs graphs; it has no generator")
        return load_named(self.generator)

    def runtime_module(self) -> Any:
        """The runtime module (imported on first use)."""
        if self.runtime is None:
            raise ValueError(f"target {self.name!r} has no runtime module")
        return load_named(self.runtime)


@functools.cache
def _capabilities(name: str, probe: Callable[[], Capabilities]) -> Capabilities:
    caps = probe()
    if not isinstance(caps, Capabilities):
        raise TypeError(f"target {name!r}: its probe must return Capabilities, got "
                        f"{type(caps).__name__}")
    return caps


def _cpu_capabilities() -> Capabilities:
    from . import host
    bits = host.host_vector_bits()
    return Capabilities(vector_bits=bits, threads="pool", index_bits=(32, 64),
                        preferred_index_bits=64, alignment=64, masked_loads=bits >= 256,
                        l2_bytes=host.host_l2_bytes(), dynamic_shapes=True)


def _reference_capabilities() -> Capabilities:
    return Capabilities()


def _probe(path: str) -> Callable[[], Capabilities]:
    """A probe imported on first use (a GPU target's generator module reads the device's
    limits, or the API's defaults when no device is present)."""
    def probe() -> Capabilities:
        return load_named(path)()
    probe.__qualname__ = f"probe[{path}]"
    return probe


_TABLE: dict[str, Target] = {}


def register_target(target: Target, *, replace: bool = False) -> Target:
    """Add `target` to the table (a test registers a toy target this way); a name already
    taken raises ValueError unless `replace`."""
    if not isinstance(target, Target):
        raise TypeError(f"register_target: expected a Target, got {type(target).__name__}")
    if target.name in _TABLE and not replace:
        raise ValueError(f"register_target: target {target.name!r} is already registered")
    _TABLE[target.name] = target
    _capabilities.cache_clear()
    return target


def unregister_target(name: str) -> None:
    """Remove a target added with `register_target` (tests clean up with it)."""
    if name in BUILTIN:
        raise ValueError(f"unregister_target: {name!r} is a built-in target")
    _TABLE.pop(name, None)
    _capabilities.cache_clear()


def get_target(name: str) -> Target:
    """The table row for `name`; an unknown name raises ValueError listing the known ones."""
    if not isinstance(name, str):
        raise TypeError(f"target name must be a str, got {type(name).__name__}")
    try:
        return _TABLE[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; known targets: {sorted(_TABLE)}") from None


def default_target() -> str:
    """The target `neurenix.compile` uses unless told: "llvm" when llvmlite (its generator's
    one dependency) is installed, else "reference".  Looked up, not imported: a program
    loaded from the disk cache needs no code generator."""
    return "llvm" if importlib.util.find_spec("llvmlite") is not None else "reference"


def target_for_device(kind: str) -> str:
    """The target whose programs run on device kind `kind` ("cpu" -> the default target,
    "opencl" -> "opencl", ...); ValueError when no registered target runs there."""
    if kind == "cpu":
        return default_target()
    for name, target in _TABLE.items():
        if target.device == kind and target.generator is not None:
            return name
    raise ValueError(f"no compiler target generates code for device {kind!r}; targets: "
                     f"{sorted(_TABLE)}")


def target_names() -> list[str]:
    """The registered target names."""
    return sorted(_TABLE)


def _grid_target(name: str, device: str, codegen: str, runtime: str, suffix: str,
                 description: str) -> Target:
    """A GPU target of the C-family renderer: its dialect module `codegen` (capabilities and
    generator), runtime module `runtime`, the grid schedule rules."""
    return register_target(Target(
        name, device, _probe(f"neurenix.compiler.codegen.{codegen}:capabilities"),
        f"neurenix.compiler.codegen.{codegen}:generate", f"neurenix.runtime.{runtime}",
        rules="neurenix.compiler.schedule.grid:GRID_RULES", source_suffix=suffix,
        description=description))


BUILTIN = (
    register_target(Target(
        "llvm", "cpu", _cpu_capabilities, "neurenix.compiler.codegen.llvm:generate",
        "neurenix.runtime.cpu", source_suffix=".ll",
        description="native CPU code through LLVM (llvmlite)")),
    _grid_target("opencl", "opencl", "opencl", "opencl", ".cl",
                 "OpenCL C kernels from the shared C-family renderer (pyopencl)"),
    _grid_target("webgpu", "webgpu", "wgsl", "webgpu", ".wgsl",
                 "WGSL compute shaders (wgpu-py; a browser through export)"),
    register_target(Target(
        "webgpu_web", "webgpu", _probe("neurenix.compiler.codegen.wgsl:web_capabilities"),
        "neurenix.compiler.codegen.wgsl:generate", "neurenix.runtime.webgpu",
        rules="neurenix.compiler.schedule.grid:GRID_RULES", source_suffix=".wgsl",
        description="the webgpu target at WebGPU's default limits, which every adapter "
                    "grants: what an exported artifact (a browser) runs")),
    _grid_target("cuda", "cuda", "cuda", "cuda", ".cu",
                 "CUDA C++ kernels from the shared C-family renderer, NVRTC to PTX"),
    _grid_target("cuda_tf32", "cuda", "cuda", "cuda", ".cu",
                 "the cuda target with float32 matmul and convolution on TF32 tensor cores "
                 "(sm_80+; neurenix.backends.allow_tf32)"),
    _grid_target("hip", "rocm", "hip", "hip", ".hip",
                 "HIP C++ kernels from the shared C-family renderer (ROCm)"),
    register_target(Target(
        "reference", "cpu", _reference_capabilities, None, None,
        description="the optimised graph run by the NumPy reference evaluator (the oracle)")),
)
BUILTIN = tuple(t.name for t in BUILTIN)
