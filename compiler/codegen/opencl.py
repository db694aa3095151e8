"""The OpenCL C dialect of the C-family renderer (cstyle.py), its capability probe and its
generator.

One translation unit holds every kernel (`Program.source`), built once per program with
`metadata["build_options"]` (correctly rounded float32 division and square root, as the other
targets compute them); float64 enables `cl_khr_fp64`.  Buffers are `__global` pointers in
the host's layouts, bools one byte (`uchar`); wrapping signed arithmetic goes through the
unsigned types (`as_uint`), since C leaves signed overflow undefined.

Dynamic sizes (docs/compiler/dynamic-shapes.md): a kernel that reads symbols takes each as a
`const long` argument after its buffers (`Program.symbols` order) and steps its grid-stride
loops by `get_num_groups(0)`; the runtime sets them and computes the launch per call.
"""
from __future__ import annotations

from collections.abc import Sequence

from ...runtime.program import Program
from ..kernel.ir import Kernel, KernelGraph
from ..kernel.memory import MemoryPlan
from ..kernel.ops import OP_NAMES
from ..targets import Capabilities, Target, get_target
from ..types import DType, bool_, float64
from .cstyle import CFamily, GridCodegenError, Param, generate_program

BUILD_OPTIONS = "-cl-fp32-correctly-rounded-divide-sqrt"
DYNAMIC_SHAPES = True
"""Whether OpenCL programs may have dynamic sizes (`Capabilities.dynamic_shapes`)."""
NATIVE_OPS = OP_NAMES - {"sigmoid"}
"""Everything but sigmoid (decomposed into exp and a division) and the random-number
generator (decomposed into its integer hash)."""


class OpenCL(CFamily):
    """OpenCL C 1.2 (`float64`: whether the device has cl_khr_fp64)."""

    name = "opencl"
    dynamic = True

    def __init__(self, float64: bool = True) -> None:
        self.float64 = float64

    def check(self, kernel: Kernel, kernels: KernelGraph) -> None:
        if not self.float64 and any(b.dtype == float64 for b in kernel.buffers()):
            raise GridCodegenError("opencl: float64 is not supported by this device (no "
                                   "cl_khr_fp64); use float32")

    def reinterpret(self, x: str, dst: DType) -> str:
        return f"as_{self.type(dst)}({x})"

    def storage(self, dtype: DType) -> str:
        return "uchar" if dtype == bool_ else self.type(dtype)

    def int_abs(self, x: str, dtype: DType) -> str:
        return self.reinterpret(f"abs({x})", dtype) if dtype.is_signed else x

    def load(self, param: Param, index: str) -> str:
        text = f"{param.ident}[{index}]"
        return f"({text} != 0)" if param.dtype == bool_ else text

    def store(self, param: Param, index: str, value: str) -> list[str]:
        if param.dtype == bool_:
            value = f"(uchar)({value})"
        return [f"{param.ident}[{index}] = {value};"]

    def thread(self, kind: str, dim: int, dtype: DType) -> str:
        return f"(({self.type(dtype)})get_{kind}_id({dim}))"

    def barrier(self) -> str:
        return "barrier(CLK_LOCAL_MEM_FENCE);"

    def groups(self, dim: int, dtype: DType) -> str:
        return f"(({self.type(dtype)})get_num_groups({dim}))"

    def kernel(self, name: str, params: list[Param], block: tuple[int, ...],
               local: list[tuple[str, DType, int]], body: list[str], comment: str,
               sizes: Sequence[str] = ()) -> str:
        args = ", ".join([f"__global {'' if p.writable else 'const '}{self.storage(p.dtype)}* "
                          f"{p.ident}" for p in params] + [f"const long {s}" for s in sizes])
        size = ", ".join(str(b) for b in (tuple(block) + (1, 1, 1))[:3])
        lines = [f"// {comment}",
                 f"__kernel __attribute__((reqd_work_group_size({size}))) void {name}({args}) {{"]
        lines += [f"  __local {self.type(d)} {n}[{count}];" for n, d, count in local]
        return "\n".join(lines + body + ["}"])

    def unit(self, sources: list[str], kernels: list[Kernel]) -> str:
        fp64 = any(b.dtype == float64 for k in kernels for b in k.buffers()) or any(
            "double" in s for s in sources)
        head = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n\n" if fp64 else ""
        return head + "\n\n".join(sources) + "\n"

    def metadata(self, kernels: KernelGraph, scheduled: list[Kernel]) -> dict:
        return {"build_options": BUILD_OPTIONS}


def capabilities() -> Capabilities:
    """The first OpenCL device's limits (pyopencl), else OpenCL's minimums with float64
    allowed (code generated without a device, for export or a toolchain check, enables
    cl_khr_fp64 and a device lacking it refuses to build it); never raises."""
    device = None
    try:
        import pyopencl as cl
        for platform in cl.get_platforms():
            devices = platform.get_devices()
            if devices:
                device = devices[0]
                break
    except Exception:
        device = None
    local, workgroup, fp64, align = 16 * 1024, 256, True, 256
    if device is not None:
        try:
            local = int(device.local_mem_size)
            workgroup = int(device.max_work_group_size)
            fp64 = "cl_khr_fp64" in device.extensions
            align = max(align, int(device.mem_base_addr_align) // 8)
        except Exception:
            pass
    return Capabilities(threads="grid", index_bits=(32, 64), preferred_index_bits=32,
                        alignment=align, float64=fp64, int64=True, bool_bytes=1,
                        local_memory_bytes=local, max_workgroup_size=workgroup,
                        native_ops=NATIVE_OPS, dynamic_shapes=DYNAMIC_SHAPES)


def generate(kernels: KernelGraph, plan: MemoryPlan | None = None,
             target: Target | None = None) -> Program:
    """The OpenCL `Program` of `kernels` (docs/targets/gpu-programs.md)."""
    target = get_target("opencl") if target is None else target
    return generate_program(kernels, plan, target, OpenCL(target.capabilities.float64))
