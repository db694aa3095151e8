"""The LLVM backend: a `Schedule` and its `MemoryPlan` become one LLVM module (a `Program`).

The module holds one function per kernel and one entry function:

    void neurenix_k<i>_<name>(ptr buf0, ptr buf1, ..., i64 start, i64 end)
    void neurenix_entry(ptr *args, ptr arena)

A kernel function runs the part [start, end) of its *range*: the flattened outer domain axes
(all but the innermost; the only axis of a 1-D domain), or for a tiled contraction the flattened
(batch, column tile) pairs.  Splitting the range among threads needs nothing else, which is how
a thread pool will parallelize kernels; today the entry runs every range whole, serially.  The
innermost domain loop (or reduction loop) is contiguous in the usual row-major case, walks a
simple induction variable and carries `llvm.loop.vectorize.enable`.

`neurenix_entry` takes the pointers of the inputs, outputs and constants (in
`Program.entry_args()` order) and the arena, computes each temporary's pointer as arena + its
planned offset, and calls every kernel in launch order: a compiled call is one foreign call.
Buffers that share storage inside a kernel (in-place reuse, or a buffer both read and written)
become one parameter, so that every pointer parameter can be `noalias`.
"""
from __future__ import annotations

import re

import numpy as np
from llvmlite import ir

from ...runtime.program import BufferSpec, KernelInfo, Program, TensorSpec
from ..kernel import Kernel, Schedule
from ..passes.memory import MemoryPlan, plan_memory
from .llvm_loops import FunctionBuilder
from .llvm_math import I64, PTR, MathLib
from .llvm_matmul import emit_contraction, host_vector_bits, match_contraction
from .llvm_ops import CodegenError, ExprEmitter, combine_sum, const, dclass, emit_stores, value_type

ENTRY = "neurenix_entry"


def generate(schedule: Schedule, plan: MemoryPlan | None = None) -> Program:
    """Generate the LLVM IR `Program` (target "cpu") that runs `schedule` over one arena."""
    plan = plan_memory(schedule) if plan is None else plan
    module = ir.Module(name="neurenix")
    module.triple = _process_triple()
    lib = MathLib(module)
    vector_bits = host_vector_bits()

    infos: list[KernelInfo] = []
    calls: list[tuple[ir.Function, list[str], int]] = []
    tiled: list[str] = []
    for i, kernel in enumerate(schedule.kernels):
        params = _parameters(kernel, plan)
        fname = f"neurenix_k{i}_{re.sub(r'[^0-9A-Za-z_]', '_', kernel.name)}"
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * len(params) + [I64, I64]),
                         fname)
        for arg in fn.args[:len(params)]:
            arg.add_attribute("noalias")
        fb = FunctionBuilder(fn)
        buffers = {}
        for buf in kernel.buffers():
            buffers[buf.name] = (fn.args[params.index(_root(buf.name, params, plan))],
                                 buf.dtype, buf.size)
        match = match_contraction(kernel, vector_bits)
        if match is not None:
            count = emit_contraction(fb, lib, kernel, buffers, match)
            tiled.append(fname)
        else:
            count = _emit_generic(fb, lib, kernel, buffers)
        fb.b.ret_void()
        calls.append((fn, params, count))
        infos.append(KernelInfo(fname, tuple(params), kernel.comment, tuple(kernel.domain)))

    program = Program(
        target="cpu", entry=ENTRY, source="", inputs=_specs(schedule, schedule.inputs),
        outputs=_specs(schedule, schedule.outputs), buffers=_buffer_specs(schedule, plan),
        kernels=infos, arena_bytes=plan.arena_bytes,
        constants={n: np.ascontiguousarray(a, dtype=schedule.buffers[n].dtype.np_type)
                   for n, a in schedule.constants.items()},
        memory={"naive": plan.naive_bytes, "planned": plan.arena_bytes,
                "lower_bound": plan.lower_bound_bytes},
        metadata={"ranges": {fn.name: count for fn, _, count in calls}, "tiled": tiled,
                  "inplace": dict(plan.inplace), "vector_bits": vector_bits,
                  "parallel": "serial: the entry runs each kernel's whole range"},
    )
    _emit_entry(module, program, plan, calls)
    program.source = str(module)
    return program


def _process_triple() -> str:
    import llvmlite.binding as llvm
    return llvm.get_process_triple()


def _root(name: str, params: list[str], plan: MemoryPlan) -> str:
    """The parameter standing for `name` (itself, or the buffer whose storage it reuses)."""
    while name not in params and name in plan.inplace:
        name = plan.inplace[name]
    return name


def _parameters(kernel: Kernel, plan: MemoryPlan) -> list[str]:
    """One parameter per distinct storage among the kernel's buffers, in argument order."""
    names = [b.name for b in kernel.buffers()]
    params: list[str] = []
    for name in names:
        root = name
        while root in plan.inplace and plan.inplace[root] in names:
            root = plan.inplace[root]
        if root not in params:
            params.append(root)
    return params


def _specs(schedule: Schedule, names: list[str]) -> list[TensorSpec]:
    return [TensorSpec(n, tuple(schedule.shapes[n]), schedule.buffers[n].dtype.name)
            for n in names]


def _buffer_specs(schedule: Schedule, plan: MemoryPlan) -> list[BufferSpec]:
    kinds = {n: "temp" for n in schedule.buffers}
    kinds.update({n: "constant" for n in schedule.constants})
    kinds.update({n: "input" for n in schedule.inputs})
    kinds.update({n: "output" for n in schedule.outputs})
    return [BufferSpec(n, b.dtype.name, b.size, kinds[n], plan.offsets.get(n, -1))
            for n, b in schedule.buffers.items()]


def _emit_entry(module: ir.Module, program: Program, plan: MemoryPlan, calls) -> None:
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR]), ENTRY)
    args, arena = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    pointers: dict[str, ir.Value] = {}
    for k, name in enumerate(program.entry_args()):
        if name not in pointers:
            slot = b.gep(args, [ir.Constant(I64, k)], inbounds=True, source_etype=PTR)
            pointers[name] = b.load(slot, typ=PTR, name=name)
    for name, offset in plan.offsets.items():
        pointers[name] = b.gep(arena, [ir.Constant(I64, offset)], inbounds=True,
                               source_etype=ir.IntType(8), name=name)
    for kernel_fn, params, count in calls:
        b.call(kernel_fn, [pointers[p] for p in params] +
               [ir.Constant(I64, 0), ir.Constant(I64, count)])
    b.ret_void()


# ---- the generic loop nest ------------------------------------------------------------------

_IDENTITY = {"sum": 0, "prod": 1}


def _identity(op: str, dtype) -> ir.Constant:
    """The starting value of a reduction accumulator."""
    if op in _IDENTITY:
        return const(dtype, _IDENTITY[op])
    low = op in ("max", "argmax")
    if dtype.is_floating:
        return const(dtype, float("-inf") if low else float("inf"))
    info = np.iinfo(dtype.np_type)
    return const(dtype, info.min if low else info.max)


def _emit_generic(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict) -> int:
    """The loop nest of the module docstring; returns the size of the kernel's range."""
    start, end = fb.fn.args[-2:]
    domain = kernel.domain
    if len(domain) <= 1:
        count = domain[0] if domain else 1
        with fb.loop(start, end, "i0", vectorize=bool(domain)) as i:
            _point(fb, lib, kernel, buffers, {0: i} if domain else {})
        return count
    count = int(np.prod(domain[:-1], dtype=np.int64))
    b = fb.b
    with fb.loop(start, end, "outer") as flat:
        vars = {}
        rest = flat
        for axis in reversed(range(len(domain) - 1)):
            size = ir.Constant(I64, domain[axis])
            vars[axis] = b.urem(rest, size) if axis else rest
            rest = b.udiv(rest, size)
        last = len(domain) - 1
        with fb.loop(0, domain[last], f"i{last}", vectorize=True) as i:
            vars[last] = i
            _point(fb, lib, kernel, buffers, vars)
    return count


def _point(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict, vars: dict) -> None:
    """The work at one domain point: the reduction, if any, then the stores."""
    acc = None
    if kernel.reduce_value is not None:
        acc = _reduce(fb, lib, kernel, buffers, dict(vars))
    emit_stores(fb.b, lib, kernel, buffers, vars, acc)


def _reduce(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict, vars: dict):
    """Run the reduction loops at one domain point; returns the finished accumulator."""
    op = kernel.reduce_op
    vdtype = ExprEmitter(fb.b, lib, buffers, vars).dtype(kernel.reduce_value)
    if dclass(vdtype) == "b":
        raise CodegenError(f"llvm codegen: kernel {kernel.name}: {op} of bool values")
    slot = fb.alloca(value_type(vdtype), name="acc")
    fb.b.store(_identity(op, vdtype), slot)
    index_slot = None
    if op in ("argmax", "argmin"):
        index_slot = fb.alloca(I64, name="acc_index")
        fb.b.store(ir.Constant(I64, 0), index_slot)
    first = len(kernel.domain)
    _reduce_loops(fb, lib, kernel, buffers, vars, first, 0, slot, index_slot, vdtype)
    if index_slot is not None:
        return fb.b.load(index_slot, typ=I64)
    return fb.b.load(slot, typ=value_type(vdtype))


def _reduce_loops(fb, lib, kernel, buffers, vars, first, depth, slot, index_slot, vdtype):
    sizes = kernel.reduce
    if depth < len(sizes):
        innermost = depth == len(sizes) - 1
        with fb.loop(0, sizes[depth], f"r{depth}", vectorize=innermost) as r:
            vars[first + depth] = r
            _reduce_loops(fb, lib, kernel, buffers, vars, first, depth + 1, slot, index_slot,
                          vdtype)
        return
    b = fb.b
    v = ExprEmitter(b, lib, buffers, vars).emit(kernel.reduce_value)
    acc = b.load(slot, typ=v.type)
    op = kernel.reduce_op
    f = dclass(vdtype) == "f"
    if op == "sum":
        new = combine_sum(b, acc, v, vdtype)
    elif op == "prod":
        new = b.fmul(acc, v, flags=("reassoc", "nsz")) if f else b.mul(acc, v)
    elif op in ("max", "min"):
        name = {("max", True): "llvm.maximum", ("min", True): "llvm.minimum",
                ("max", False): "llvm.smax", ("min", False): "llvm.smin"}[(op, f)]
        new = b.call(lib.intrinsic(name, v.type), [acc, v])
    else:
        better = _arg_better(b, op, acc, v, f)
        linear = _linear(b, kernel.reduce, [vars[first + j] for j in range(len(kernel.reduce))])
        old_index = b.load(index_slot, typ=I64)
        b.store(b.select(better, linear, old_index), index_slot)
        new = b.select(better, v, acc)
    b.store(new, slot)


def _arg_better(b: ir.IRBuilder, op: str, best, v, floating: bool):
    """Whether `v` replaces the running argmax/argmin: strictly better, or the first NaN."""
    sign = ">" if op == "argmax" else "<"
    if not floating:
        return b.icmp_signed(sign, v, best)
    strictly = b.fcmp_ordered(sign, v, best)
    first_nan = b.and_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("ord", best, best))
    return b.or_(strictly, first_nan)


def _linear(b: ir.IRBuilder, sizes: tuple[int, ...], values: list) -> ir.Value:
    """The row-major flat index of a point of the reduction axes."""
    index = values[-1]
    stride = sizes[-1]
    for j in range(len(sizes) - 2, -1, -1):
        index = b.add(index, b.mul(values[j], ir.Constant(I64, stride)))
        stride *= sizes[j]
    return index
