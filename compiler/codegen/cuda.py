"""The CUDA C++ dialect of the C-family renderer (cstyle.py) and its generator.

One translation unit holds every kernel (`Program.source`), `extern "C"` so that a module
finds them by name; the runtime compiles it with NVRTC to PTX for the device's compute
capability (runtime/nvrtc.py) and the driver assembles that.  It needs no header: a short
prelude defines bit reinterpretation (`nx_bits<T>`, through a union), integer max/min and a
wrapping |x|.  Buffers are pointers in the host's layouts, bools one byte (`unsigned char`);
read-only buffers are `const __restrict__` (the read-only data path; the runtime never passes
a buffer a kernel writes as one it reads elsewhere).  Wrapping signed arithmetic goes through
the unsigned types, since C++ leaves signed overflow undefined.  Work-group reductions end in
warp shuffles (`__shfl_down_sync`).  HIP (hip.py) is this dialect with AMD's shuffles.

Dynamic sizes (docs/compiler/dynamic-shapes.md): a kernel that reads symbols takes each as a
`const long long` parameter after its buffers (`Program.symbols` order) and steps its
grid-stride loops by `gridDim.x`; the runtime computes the grid per call (at most
`MAX_GROUPS` = 2^20 blocks along x, far below the 2^31 - 1 every device allows) and passes the
values as 64-bit kernel parameters.
"""
from __future__ import annotations

from collections.abc import Sequence

from ...runtime.program import Program
from ..kernel.ir import KernelGraph
from ..kernel.memory import MemoryPlan
from ..kernel.ops import OP_NAMES
from ..targets import Capabilities, Target, get_target
from ..types import DType, bool_, float32
from .cstyle import CFamily, Param, generate_program

NATIVE_OPS = OP_NAMES - {"sigmoid"}
"""Everything but sigmoid (decomposed into exp and a division) and the random-number
generator (decomposed into its integer hash)."""
FLOAT_CALLS = frozenset({"exp", "log", "sqrt", "tanh", "erf", "sin", "cos", "floor", "trunc",
                         "fabs", "fmod", "pow", "copysign"})
"""C math functions, called with an `f` suffix on float32 (no overloads are assumed)."""

PRELUDE = """\
template <typename T, typename S>
__device__ __forceinline__ T nx_bits(S s) {
  static_assert(sizeof(T) == sizeof(S), "nx_bits: widths differ");
  union { S s; T t; } u;  // punning through a union: defined by NVCC and Clang
  u.s = s;
  return u.t;
}
template <typename T> __device__ __forceinline__ T nx_max(T a, T b) { return a > b ? a : b; }
template <typename T> __device__ __forceinline__ T nx_min(T a, T b) { return a < b ? a : b; }
__device__ __forceinline__ int nx_iabs(int x) {
  return x < 0 ? nx_bits<int>(0u - nx_bits<unsigned int>(x)) : x;
}
__device__ __forceinline__ long long nx_iabs(long long x) {
  return x < 0 ? nx_bits<long long>(0ull - nx_bits<unsigned long long>(x)) : x;
}
"""
"""Helpers every unit starts with (`static` by being templates and inline: units concatenate
under namespaces)."""

TF32_GUARD = "__CUDA_ARCH__ >= 800"
"""Where TF32 tensor cores exist (Ampere and newer)."""

TF32_PRELUDE = f"""\
#if {TF32_GUARD}
__device__ __forceinline__ unsigned int nx_tf32(float x) {{
  unsigned int r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}}
__device__ __forceinline__ void nx_mma_tf32(float& c0, float& c1, float& c2, float& c3,
    unsigned int a0, unsigned int a1, unsigned int a2, unsigned int a3,
    unsigned int b0, unsigned int b1) {{
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
               "{{%0,%1,%2,%3}}, {{%4,%5,%6,%7}}, {{%8,%9}}, {{%0,%1,%2,%3}};"
               : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}}
#endif
"""
"""TF32 rounding (round to nearest, ties away, as cuBLAS) and the warp-wide 16 x 8 x 8 TF32
multiply-accumulate (PTX `mma.sync`), for units that use them."""


class CUDA(CFamily):
    """CUDA C++ (NVRTC)."""

    name = "cuda"
    warp = 32
    dynamic = True

    def __init__(self, tf32: bool = False) -> None:
        self.tf32_guard = TF32_GUARD if tf32 else ""
    TYPES = {"bool": "bool", "int32": "int", "int64": "long long", "uint32": "unsigned int",
             "uint64": "unsigned long long", "float32": "float", "float64": "double"}
    SUFFIX = {"int64": "LL", "uint32": "u", "uint64": "ull"}

    def reinterpret(self, x: str, dst: DType) -> str:
        return f"nx_bits<{self.type(dst)}>({x})"

    def storage(self, dtype: DType) -> str:
        return "unsigned char" if dtype == bool_ else self.type(dtype)

    def int_abs(self, x: str, dtype: DType) -> str:
        return f"nx_iabs({x})" if dtype.is_signed else x

    def call(self, fn: str, args: list[str], dtype: DType) -> str:
        if fn in ("max", "min") and not dtype.is_floating:
            return f"nx_{fn}<{self.type(dtype)}>({', '.join(args)})"
        if dtype == float32 and fn in FLOAT_CALLS:
            fn += "f"
        return f"{fn}({', '.join(args)})"

    def load(self, param: Param, index: str) -> str:
        text = f"{param.ident}[{index}]"
        return f"({text} != 0)" if param.dtype == bool_ else text

    def store(self, param: Param, index: str, value: str) -> list[str]:
        if param.dtype == bool_:
            value = f"(unsigned char)({value})"
        return [f"{param.ident}[{index}] = {value};"]

    def thread(self, kind: str, dim: int, dtype: DType) -> str:
        builtin = {"group": "blockIdx", "local": "threadIdx"}[kind]
        return f"(({self.type(dtype)}){builtin}.{'xyz'[dim]})"

    def barrier(self) -> str:
        return "__syncthreads();"

    def groups(self, dim: int, dtype: DType) -> str:
        return f"(({self.type(dtype)})gridDim.{'xyz'[dim]})"

    def shuffle_down(self, x: str, offset: int, dtype: DType) -> str:
        return f"__shfl_down_sync(0xffffffffu, {x}, {offset})"

    def kernel(self, name: str, params: list[Param], block: tuple[int, ...],
               local: list[tuple[str, DType, int]], body: list[str], comment: str,
               sizes: Sequence[str] = ()) -> str:
        args = ", ".join([f"{self.storage(p.dtype)}* {p.ident}" if p.writable else
                          f"const {self.storage(p.dtype)}* __restrict__ {p.ident}"
                          for p in params] + [f"const long long {s}" for s in sizes])
        threads = 1
        for b in block:
            threads *= b
        lines = [f"// {comment}",
                 f'extern "C" __global__ void __launch_bounds__({threads}) {name}({args}) {{']
        lines += [f"  __shared__ {self.type(d)} {n}[{count}];" for n, d, count in local]
        return "\n".join(lines + body + ["}"])

    header = ""
    """What the unit includes before the prelude (NVRTC needs nothing)."""

    def preamble(self) -> str:
        """The text every unit starts with: the header and the prelude."""
        return self.header + PRELUDE + "\n"

    def unit(self, sources: list[str], kernels: list) -> str:
        tf32 = TF32_PRELUDE + "\n" if any("nx_mma_tf32(" in s for s in sources) else ""
        return self.preamble() + tf32 + "\n\n".join(sources) + "\n"

    def tf32(self, x: str) -> str:
        return f"nx_tf32({x})"

    def mma_tf32(self, acc: list[str], a: list[str], b: list[str]) -> str:
        return f"nx_mma_tf32({', '.join(acc + a + b)});"


def capabilities() -> Capabilities:
    """What every CUDA device of compute capability 7.5 and newer offers a kernel: 48 KiB of
    static shared memory, 1,024 threads per block (blocks of 256 are used), grids of 2^31 - 1
    blocks along x (no `max_grid`: launches stay 1-D, at most `MAX_GROUPS` blocks); dynamic
    sizes."""
    return Capabilities(threads="grid", index_bits=(32, 64), preferred_index_bits=32,
                        alignment=256, float64=True, int64=True, bool_bytes=1,
                        local_memory_bytes=48 * 1024, max_workgroup_size=1024,
                        native_ops=NATIVE_OPS, dynamic_shapes=True)


def generate(kernels: KernelGraph, plan: MemoryPlan | None = None,
             target: Target | None = None) -> Program:
    """The CUDA `Program` of `kernels` (docs/targets/gpu-programs.md); for the "cuda_tf32"
    target (chosen while `neurenix.backends.allow_tf32` is set), float32 tiled contractions
    on TF32 tensor cores on sm_80 and newer."""
    target = get_target("cuda") if target is None else target
    return generate_program(kernels, plan, target, CUDA(tf32=target.name == "cuda_tf32"))
