"""The HIP dialect of the C-family renderer: the CUDA dialect (cuda.py) with AMD's wavefront
shuffles, and its generator.

HIP keeps CUDA's kernel syntax (`__global__`, `blockIdx`/`threadIdx`, `__shared__`,
`__syncthreads`), so one source serves every AMD architecture.  A wavefront is 64 lanes on
CDNA (gfx90a) and 32 on RDNA (gfx10xx, gfx11xx): reductions shuffle across 32 lanes, which
both hold, with `__shfl_down` (no mask; a 64-lane wavefront's upper half takes no part).
The runtime compiles the unit for the device's architecture (runtime/hip_compile.py).
Dynamic sizes are CUDA's: `const long long` parameters after the buffers, grid-stride loops
stepping by `gridDim.x`.
"""
from __future__ import annotations

from ...runtime.program import Program
from ..kernel.ir import KernelGraph
from ..kernel.memory import MemoryPlan
from ..targets import Capabilities, Target, get_target
from ..types import DType
from .cstyle import generate_program
from .cuda import CUDA, NATIVE_OPS


class HIP(CUDA):
    """HIP C++ (hiprtc or hipcc, ROCm)."""

    name = "hip"
    header = "#include <hip/hip_runtime.h>\n"

    def shuffle_down(self, x: str, offset: int, dtype: DType) -> str:
        return f"__shfl_down({x}, {offset})"


def capabilities() -> Capabilities:
    """What every AMD GPU since GCN 5 offers a kernel: 64 KiB of local data share, 1,024
    work-items per work-group (groups of 256 are used); dynamic sizes (launches of at most
    `MAX_GROUPS` = 2^20 work-groups, so grid x block stays below HIP's 2^32 work-items)."""
    return Capabilities(threads="grid", index_bits=(32, 64), preferred_index_bits=32,
                        alignment=256, float64=True, int64=True, bool_bytes=1,
                        local_memory_bytes=64 * 1024, max_workgroup_size=1024,
                        native_ops=NATIVE_OPS, dynamic_shapes=True)


def generate(kernels: KernelGraph, plan: MemoryPlan | None = None,
             target: Target | None = None) -> Program:
    """The HIP `Program` of `kernels` (docs/targets/gpu-programs.md)."""
    target = get_target("hip") if target is None else target
    return generate_program(kernels, plan, target, HIP())
