"""The WGSL dialect of the C-family renderer (cstyle.py), its capability probe and its
generator: one compute-shader module per kernel (docs/targets/gpu-programs.md).

WGSL has no 64-bit types.  float64 is refused.  int64 is emulated exactly
(compiler/codegen/wgsl_int64.py): a value is a `vec2<u32>` (low, high words), int64 buffers
keep the host's 8-byte layout (`array<u32>`, element i at words 2i and 2i + 1), and every
operation on int64 values is a helper function in the module's prelude; index arithmetic
stays 32-bit.  Float functions WGSL gets wrong or lacks (fmod, pow at its special values,
tanh near 0, sign's zeros) are helpers too (wgsl_math.py).  Bools are 0/1 `u32` words in
buffers (`metadata["storage"]`).  Inputs and constants bind read-only, outputs and
temporaries read-write (the arena is one buffer, which a dispatch may not bind both ways); a
buffer the memory plan puts in place of another shares its binding.  Long loops are
unrolled (`loop_limit`: lavapipe ends an invocation's loops after 65,535 iterations), and a
static kernel whose loops could still pass the limit is rendered another way (unrolled more,
calling the loop-free `FLAT_HELPERS`, a work-group per output point, a serial kernel in parts)
or refused at compile time (cstyle.py `_render_static`).
Capabilities come from the adapter's limits, so `metadata["required_limits"]` says what the
program needs of the device beyond WebGPU's defaults (storage buffers per stage, invocations
per work-group).

Dynamic sizes (docs/compiler/dynamic-shapes.md, docs/targets/webgpu.md): a kernel that reads
symbols gets their values in a uniform buffer bound after its storage buffers (`struct
NxSizes`, one i32 per symbol in `Program.symbols` order, `metadata["sizes_binding"]`), which
the runtime writes once per call; sizes are computed in i32 (`size_type`), the runtime refusing
a call whose sizes pass `SIZE_LIMIT` (`metadata["size_checks"]`).  A symbolic grid is capped at
`max_grid` work-groups, the grid-stride loops stepping by `num_workgroups`; a kernel whose loops
could pass half of `loop_limit` iterations per invocation at some size records a guard on the
sizes (a call past it compiles another program), and the runtime checks it too.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numpy as np

from ...runtime.program import Program
from ..kernel.ir import (
    Kernel,
    KernelGraph,
    dtype_of,
    postorder,
)
from ..kernel.memory import MemoryPlan
from ..kernel.ops import OP_NAMES
from ..schedule.grid import GroupReduction, TiledContraction
from ..targets import Capabilities, Target, get_target
from ..types import DType, bool_, float64, int32, int64, uint32
from . import wgsl_int64 as i64
from .cstyle import Dialect, GridCodegenError, Param, generate_program
from .wgsl_math import FMOD_PROLOGUE, HELPERS, helper_prelude, prelude

NATIVE_OPS = OP_NAMES - {"sigmoid", "erf"}
"""WGSL has no erf; sigmoid, erf and the random-number generator are decomposed."""
FLOAT64 = "webgpu: float64 is not supported (WGSL has no 64-bit floats); use float32"
NAN = "((bitcast<u32>({}) & 0x7fffffffu) > 0x7f800000u)"
SIZE_LIMIT = 1 << 30
"""The largest dynamic size a WGSL kernel takes: sizes are i32, and a grid-stride loop's
variable passes its end by at most 2**28 (WebGPU buffers hold far fewer elements)."""
HELPER_LOOPS = {"i64_divmodu": 9, "i64_pow": 9, "nx_fmod": 71, "nx_trig": 4}
"""Loop iterations one call of a helper runs at most (i64_idiv and i64_mod call
i64_divmodu, counted by its name in their bodies: counted as calls of it)."""
SIZES_STRUCT = "NxSizes"


def _pow2mod() -> str:
    steps = "".join(f"  r = nx_mulmod(r, r, m);\n  if (((d >> {bit}u) & 1u) == 1u) "
                    "{ r = (r << 1u) % m; }\n" for bit in range(8, -1, -1))
    return ("fn nx_pow2mod(d: u32, m: u32) -> u32 {\n"
            "  // 2**d mod m (d < 512, 2**23 <= m < 2**24): square-and-multiply, unrolled\n"
            f"  var r = 1u;\n{steps}  return r;\n}}")


def _trig_flat() -> str:
    """nx_trig with its loop over 3 words of 2/pi unrolled (and its own nx_mul64, which
    nx_trig's text defines)."""
    text = HELPERS["nx_trig"].replace("fn nx_trig(", "fn nx_trig_flat(").replace(
        "nx_mul64(", "nx_mul64_flat(")
    head = "    for (var j = 0u; j < 3u; j += 1u) {\n"
    start = text.index(head)
    end = text.index("\n    }\n", start) + len("\n    }\n")
    body = text[start + len(head):end - len("    }\n")]
    copies = "".join(f"    {{\n      let j = {j}u;\n{body}    }}\n" for j in range(3))
    return text[:start] + copies + text[end:]


FLAT_HELPERS = {
    "nx_fmod_flat": """fn nx_fmod_flat(x: f32, y: f32) -> f32 {
  // nx_fmod without a loop, for kernels whose loops would pass lavapipe's limit: the
  // shift-subtract reduction of the mantissas leaves (ux * 2**(ex - ey)) mod uy, computed
  // here by modular exponentiation (exact in u32: every value stays below 2**32)
""" + FMOD_PROLOGUE + """  ux = nx_mulmod(ux % uy, nx_pow2mod(u32(ex - ey), uy), uy);
  if (ux == 0u) { return bitcast<f32>(sx); }
  ex = ey;
  let shift = i32(countLeadingZeros(ux)) - 8;
  ux = ux << u32(shift);
  ex -= shift;
  if (ex > 0) { ux = (ux - 0x800000u) | (u32(ex) << 23u); } else { ux = ux >> u32(1 - ex); }
  return bitcast<f32>(ux | sx);
}""",
    "nx_mulmod": """fn nx_mulmod(a: u32, b: u32, m: u32) -> u32 {
  // a * b mod m for a, b < m < 2**24: b's bytes, high first (each product below 2**32)
  var r = (a * (b >> 16u)) % m;
  r = ((r << 8u) % m + (a * ((b >> 8u) & 0xffu)) % m) % m;
  return ((r << 8u) % m + (a * (b & 0xffu)) % m) % m;
}""",
    "nx_pow2mod": _pow2mod(),
    "nx_trig_flat": _trig_flat(),
    "i64_divmodu_flat": i64.HELPERS["i64_divmodu"].split("  for (")[0].replace(
        "fn i64_divmodu(", "fn i64_divmodu_flat(").replace(
        "eight bits per iteration", "unrolled: no loop") + "".join(
        f"  {{\n    let i = {i}i;\n{i64._unrolled(i64._DIVIDE_STEP, 8)}\n  }}\n"
        for i in range(63, -1, -8)) + "  return vec4<u32>(q, r);\n}",
    "i64_idiv_flat": i64.HELPERS["i64_idiv"].replace("fn i64_idiv(", "fn i64_idiv_flat(")
    .replace("i64_divmodu(", "i64_divmodu_flat("),
    "i64_mod_flat": i64.HELPERS["i64_mod"].replace("fn i64_mod(", "fn i64_mod_flat(")
    .replace("i64_divmodu(", "i64_divmodu_flat("),
    "i64_pow_flat": i64.HELPERS["i64_pow"].split("  for (")[0].replace(
        "fn i64_pow(", "fn i64_pow_flat(") + "\n".join(
        [i64._unrolled(i64._POWER_STEP, 64)]) + "\n  return result;\n}",
}
"""Loop-free versions of the helpers that loop (`WGSL.flat_calls`: C's fmod, sin and cos, int64
floor division, modulo and power), which a kernel rendered again because its loops would pass
lavapipe's limit calls; in a module only where its kernel calls them."""
_FLAT_CALL = re.compile(r"\b((?:nx|i64)_[a-z0-9_]+_flat|nx_mulmod|nx_pow2mod)\(")


def _flat_prelude(body: list[str]) -> list[str]:
    """The loop-free helpers `body` calls and those they call, in a fixed order."""
    return helper_prelude(body, FLAT_HELPERS, _FLAT_CALL)


class WGSL(Dialect):
    """WGSL compute shaders."""

    name = "webgpu"
    int64 = False
    loop_limit = 65535
    dynamic = True
    size_type = int32
    size_limit = SIZE_LIMIT
    helper_loops = {**HELPER_LOOPS, "i64_idiv": 9, "i64_mod": 9}
    flat_calls = frozenset({"fmod", "sin", "cos", "int64_idiv", "int64_mod", "int64_pow"})
    TYPES = {"bool": "bool", "int32": "i32", "int64": "vec2<u32>", "uint32": "u32",
             "float32": "f32"}

    def type(self, dtype: DType) -> str:
        if dtype == float64:
            raise GridCodegenError(FLOAT64)
        return self.TYPES[dtype.name]

    def storage(self, dtype: DType) -> str:
        return "u32" if dtype in (bool_, int64) else self.type(dtype)

    def int_literal(self, value: int, dtype: DType) -> str:
        if dtype == uint32:
            return f"{value}u"
        if dtype == int64:
            return i64.literal(value)
        if value == -(1 << 31):
            return "bitcast<i32>(0x80000000u)"
        return f"{value}i" if value >= 0 else f"({value}i)"

    def float_literal(self, value: float, dtype: DType) -> str:
        self.type(dtype)
        text = str(np.float32(value))
        text += "" if "e" in text or "." in text else ".0"
        return f"({text}f)" if text.startswith("-") else f"{text}f"

    def float_bits(self, bits: int, dtype: DType) -> str:
        if bits & 0x7F800000 == 0x7F800000:  # infinite or NaN: not a constant expression
            return f"nx_f32({bits:#x}u)"
        return f"bitcast<f32>({bits:#x}u)"

    def truncate(self, x: str, src: DType, dst: DType) -> str:
        return f"i64_from_f32({x})" if dst == int64 else f"i32({x})"

    def convert(self, x: str, src: DType, dst: DType) -> str:
        if self.type(src) == self.type(dst):
            return x
        if src == int64:
            return {"int32": f"bitcast<i32>(({x}).x)", "uint32": f"({x}).x",
                    "float32": f"i64_to_f32({x})"}[dst.name]
        if dst == int64:
            return {"int32": f"i64_from_i32({x})", "uint32": f"vec2<u32>({x}, 0u)",
                    "bool": f"vec2<u32>(select(0u, 1u, {x}), 0u)"}[src.name]
        return f"{self.type(dst)}({x})"

    def int64_op(self, op: str, args: list[str]) -> str:
        if op.endswith("_flat"):  # idiv, mod, pow without loops (FLAT_HELPERS)
            return f"i64_{op}({', '.join(args)})"
        if len(args) == 1:
            return i64.unary(op, args[0])
        return i64.binary(op, *args)

    def select(self, cond: str, a: str, b: str) -> str:
        return f"select({b}, {a}, {cond})"

    def wrap(self, op: str, a: str, b: str, dtype: DType) -> str:
        return f"({a} {op} {b})"

    def shift(self, op: str, a: str, count: str, dtype: DType) -> str:
        count = count[:-1] + "u" if count[-1:] == "i" and count[:-1].isdigit() else \
            f"u32({count})"
        return f"({a} {op} {count})"

    def int_abs(self, x: str, dtype: DType) -> str:
        return f"abs({x})"

    def bitcast(self, x: str, src: DType, dst: DType) -> str:
        return f"bitcast<{self.type(dst)}>({x})"

    def compare(self, op: str, a: str, b: str, dtype: DType) -> str:
        if op == "!=" and dtype.is_floating:  # as unordered: true for NaN on every driver
            return f"(!({a} == {b}))"
        return f"({a} {op} {b})"

    def isnan(self, x: str, dtype: DType) -> str:
        return NAN.format(x)

    def call(self, fn: str, args: list[str], dtype: DType) -> str:
        if fn in ("fmod", "pow", "tanh", "fmod_flat"):  # exact or accurate helpers
            return f"nx_{fn}({', '.join(args)})"
        if fn in ("sin", "cos", "sin_flat", "cos_flat"):
            name = "nx_trig_flat" if fn.endswith("_flat") else "nx_trig"
            return f"{name}({args[0]}, {'1u' if fn.startswith('cos') else '0u'})"
        if fn == "copysign":
            a, b = args
            return (f"bitcast<f32>((bitcast<u32>({a}) & 0x7fffffffu) | "
                    f"(bitcast<u32>({b}) & 0x80000000u))")
        name = {"fabs": "abs"}.get(fn, fn)
        return f"{name}({', '.join(args)})"

    def sign(self, x: str, dtype: DType) -> str:
        return f"nx_sign({x})"

    def declare(self, name: str, dtype: DType, value: str, mutable: bool = False) -> str:
        return f"{'var' if mutable else 'let'} {name}: {self.type(dtype)} = {value};"

    def loop(self, var: str, dtype: DType, start: str, stop: str, step: str) -> str:
        return (f"for (var {var}: {self.type(dtype)} = {start}; {var} < {stop}; "
                f"{var} += {step}) {{")

    def load(self, param: Param, index: str) -> str:
        if param.dtype == int64:
            return (f"vec2<u32>({param.ident}[({index}) * 2], "
                    f"{param.ident}[({index}) * 2 + 1])")
        if param.dtype == bool_:
            return f"({param.ident}[{index}] != 0u)"
        return f"{param.ident}[{index}]"

    def store(self, param: Param, index: str, value: str) -> list[str]:
        if param.dtype == int64:
            return [f"{param.ident}[({index}) * 2] = {value}.x;",
                    f"{param.ident}[({index}) * 2 + 1] = {value}.y;"]
        if param.dtype == bool_:
            value = f"select(0u, 1u, {value})"
        return [f"{param.ident}[{index}] = {value};"]

    def thread(self, kind: str, dim: int, dtype: DType) -> str:
        return f"{self.type(dtype)}(nx_{'wid' if kind == 'group' else 'lid'}.{'xyz'[dim]})"

    def barrier(self) -> str:
        return "workgroupBarrier();"

    def groups(self, dim: int, dtype: DType) -> str:
        return f"{self.type(dtype)}(nx_groups.{'xyz'[dim]})"

    def kernel(self, name: str, params: list[Param], block: tuple[int, ...],
               local: list[tuple[str, DType, int]], body: list[str], comment: str,
               sizes: Sequence[str] = ()) -> str:
        """The module: helpers, storage bindings in parameter order, then (dynamic sizes)
        the uniform `nx_sizes` of every symbol's value, read into `let`s at the top."""
        flat = _flat_prelude(body)
        lines = [f"// {comment}"] + prelude(body + flat) + flat + i64.prelude(body + flat)
        for i, p in enumerate(params):
            access = "read_write" if p.writable or p.shared else "read"
            lines.append(f"@group(0) @binding({i}) var<storage, {access}> {p.ident}: "
                         f"array<{self.storage(p.dtype)}>;")
        if sizes:
            fields = ", ".join(f"{s}: i32" for s in sizes)
            lines += [f"struct {SIZES_STRUCT} {{ {fields} }}",
                      f"@group(0) @binding({len(params)}) var<uniform> nx_sizes: "
                      f"{SIZES_STRUCT};"]
        lines += [f"var<workgroup> {n}: array<{self.type(d)}, {count}>;"
                  for n, d, count in local]
        size = ", ".join(str(b) for b in (tuple(block) + (1, 1, 1))[:3])
        groups = ", @builtin(num_workgroups) nx_groups: vec3<u32>" if any(
            "nx_groups" in line for line in body) else ""
        lines += ["", f"@compute @workgroup_size({size})",
                  f"fn {name}(@builtin(workgroup_id) nx_wid: vec3<u32>, "
                  f"@builtin(local_invocation_id) nx_lid: vec3<u32>{groups}) {{"]
        lines += [f"  _ = &{p.ident};" for p in params]  # every binding in the auto layout
        lines += [f"  let {s}: i32 = nx_sizes.{s};" for s in sizes]
        return "\n".join(lines + body + ["}"])

    def check(self, kernel: Kernel, kernels: KernelGraph) -> None:
        _check(kernel)

    def metadata(self, kernels: KernelGraph, scheduled: list[Kernel]) -> dict:
        return {"storage": {"bool": "uint32"},
                "required_limits": _required_limits(scheduled)}


def _check(kernel: Kernel) -> None:
    """Refuse float64 (WGSL has no 64-bit floats)."""
    values = [s.value for s in kernel.stores]
    values += [kernel.reduce_value] if kernel.reduce_value is not None else []
    every = postorder(values + [s.index for s in kernel.stores])
    if any(b.dtype == float64 for b in kernel.buffers()) or any(
            dtype_of(e, kernel.acc_dtype) == float64 for e in every):
        raise GridCodegenError(FLOAT64)


def _required_limits(scheduled: list[Kernel]) -> dict:
    """What the program needs of the device's limits (a runtime checks or requests them):
    storage buffers per kernel, invocations per work-group, work-group memory (4-byte words:
    tiles of a contraction, partials and their indices of a work-group reduction)."""
    def local_bytes(k: Kernel) -> int:
        plan = k.schedule
        if isinstance(plan, TiledContraction):
            return plan.local_elements * 4
        if isinstance(plan, GroupReduction):
            value = dtype_of(k.reduce_value, k.acc_dtype)
            size = 8 if value == int64 else 4
            return plan.block[0] * (size + (4 if k.reduce_op in ("argmax", "argmin") else 0))
        return 0
    return {"max_storage_buffers_per_shader_stage":
            max((len(k.buffers()) for k in scheduled), default=0),
            "max_compute_invocations_per_workgroup":
            max((int(np.prod(k.schedule.block)) for k in scheduled), default=1),
            "max_compute_workgroup_storage_size": max(map(local_bytes, scheduled), default=0)}


@functools.cache
def _adapter_limits() -> dict | None:
    try:
        import wgpu
        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        return None if adapter is None else dict(adapter.limits)
    except Exception:
        return None


WEB_LIMITS = {"max-storage-buffers-per-shader-stage": 8,
              "max-compute-invocations-per-workgroup": 256,
              "max-compute-workgroup-size-x": 256,
              "max-compute-workgroups-per-dimension": 65535,
              "max-compute-workgroup-storage-size": 16384}
"""WebGPU's default limits: what every adapter grants without asking (the W3C spec's
table), so what a program for any browser may use."""


def web_capabilities() -> Capabilities:
    """WebGPU at its default limits (`WEB_LIMITS`): the capabilities of an exported
    artifact, which runs on adapters this machine has never seen."""
    return capabilities(WEB_LIMITS)


def capabilities(limits: dict | None = None) -> Capabilities:
    """The WebGPU adapter's limits (wgpu), else WebGPU's defaults; never raises."""
    limits = (_adapter_limits() or {}) if limits is None else limits
    buffers = int(limits.get("max-storage-buffers-per-shader-stage", 8))
    invocations = int(min(limits.get("max-compute-invocations-per-workgroup", 256),
                          limits.get("max-compute-workgroup-size-x", 256)))
    return Capabilities(threads="grid", index_bits=(32, 64), preferred_index_bits=32,
                        alignment=256, float64=False, int64=False, bool_bytes=4,
                        max_kernel_buffers=buffers,
                        max_grid=int(limits.get("max-compute-workgroups-per-dimension", 65535)),
                        local_memory_bytes=int(limits.get("max-compute-workgroup-storage-size",
                                                          16384)),
                        max_workgroup_size=invocations, native_ops=NATIVE_OPS,
                        dynamic_shapes=True)


def generate(kernels: KernelGraph, plan: MemoryPlan | None = None,
             target: Target | None = None) -> Program:
    """The WebGPU `Program` of `kernels` (docs/targets/gpu-programs.md)."""
    target = get_target("webgpu") if target is None else target
    return generate_program(kernels, plan, target, WGSL())
