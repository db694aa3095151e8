"""The LLVM backend: a `KernelGraph` and its `MemoryPlan` become one LLVM module (a `Program`).

The module holds one function per distinct kernel and an entry function:

    void neurenix_<kernel>(ptr buf0, ptr buf1, ..., i64 start, i64 end)
    void neurenix_entry(ptr *args, ptr arena, ptr pool)

A kernel function runs the part [start, end) of its *range*: the flattened leading domain axes
(as few as give `MIN_RANGE` rows, at most all but the innermost; the only axis of a 1-D domain:
the other outer axes are counted loops inside), (batch, row block, column tile) triples
on the tiled contraction path, (batch, column block) pairs on the dot-product path.  Splitting
the range among threads needs nothing else: the entry runs small kernels whole and splits
large parallel ones across the process's thread pool, which the runtime passes as `pool`
(llvm_parallel.py: the ABI; NULL runs everything on the calling thread).  The innermost domain
loop is contiguous in the usual row-major case, walks a simple induction variable and, when it
is a plain elementwise loop, carries `llvm.loop.vectorize.enable` (tail-folded when short);
reductions are emitted by llvm_reduce.py, strided pooling windows by llvm_window.py.
Contractions take the dot-product path of llvm_dot.py (both operands contiguous along k) or the
tiled path of llvm_matmul.py; `Program.metadata["paths"]` says which kernel took which.

`neurenix_entry` takes the pointers of the inputs, outputs and constants (in
`Program.entry_args()` order), the arena and the pool, computes each temporary's pointer as
arena + its planned offset, and calls every kernel in launch order: a compiled call is one
foreign call.
Buffers that share storage inside a kernel (in-place reuse, or a buffer both read and written)
become one parameter, so that every pointer parameter can be `noalias`.
"""
from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass, fields, is_dataclass, replace

import numpy as np
from llvmlite import ir

from ...runtime.program import BufferSpec, KernelInfo, Program, TensorSpec
from ..kernel.ir import BufferArg, Kernel, KernelGraph, Load, Store, format_kernel
from ..kernel.memory import MemoryPlan, plan_memory
from .llvm_dot import emit_dot, match_dot, prefers_tiled
from .llvm_loops import FunctionBuilder
from .llvm_math import I64, PTR, MathLib
from .llvm_matmul import emit_contraction, host_vector_bits, match_contraction
from .llvm_ops import emit_stores
from .llvm_parallel import POOL_ABI, Threading, splits_reduction, worth_splitting
from .llvm_reduce import (
    PARTIALS_BYTES,
    across_columns,
    finish_parts,
    is_small,
    part_count,
    reduce_at_point,
    reduce_columns,
    reduce_parts,
)
from .llvm_window import emit_window, match_window

ENTRY = "neurenix_entry"
ENTRY_SIGNATURE = ("void neurenix_entry(void **args, void *arena, "
                   "const struct neurenix_pool *pool)")  # pool: llvm_parallel.py, or NULL
MIN_FORCED_TRIP = 16  # shorter inner loops are left to LLVM's cost model (often fully unrolled)
MIN_RANGE = 256  # outer axes flattened into a kernel's range: enough chunks for any pool
MIN_MASKED_TRIP = 8  # inner loops from here up to a few vectors long run tail-masked


def generate(schedule: KernelGraph, plan: MemoryPlan | None = None) -> Program:
    """Generate the LLVM IR `Program` (target "cpu") that runs `schedule` over one arena.

    Kernels that are identical up to their buffer names (the steps of an unrolled RNN) share
    one function, which keeps compile time proportional to the distinct kernels.
    """
    plan = plan_memory(schedule) if plan is None else plan
    module = ir.Module(name="neurenix")
    module.triple = _process_triple()
    emitter = _KernelEmitter(module, plan)
    infos: list[KernelInfo] = []
    calls: list[tuple[_Emitted, list[str]]] = []
    for kernel in schedule.kernels:
        params = _parameters(kernel, plan)
        emitted = emitter.function(kernel, params)
        calls.append((emitted, params))
        infos.append(KernelInfo(emitted.fn.name, tuple(params), kernel.comment,
                                tuple(kernel.domain)))
    functions = {e.fn.name: e for e, _ in calls}
    program = Program(
        target="cpu", entry=ENTRY, source="", inputs=_specs(schedule, schedule.inputs),
        outputs=_specs(schedule, schedule.outputs), buffers=_buffer_specs(schedule, plan),
        kernels=infos, arena_bytes=plan.arena_bytes,
        constants={n: np.ascontiguousarray(a, dtype=schedule.buffers[n].dtype.np_type)
                   for n, a in schedule.constants.items()},
        memory={"naive": plan.naive_bytes, "planned": plan.arena_bytes,
                "lower_bound": plan.lower_bound_bytes},
        metadata={"ranges": {n: e.count for n, e in functions.items()},
                  "paths": {n: e.path for n, e in functions.items()},
                  "threaded": [n for n, e in functions.items() if e.splitter is not None],
                  "inplace": dict(plan.inplace), "vector_bits": emitter.vector_bits,
                  "pool_abi": POOL_ABI, "entry_signature": ENTRY_SIGNATURE},
    )
    _emit_entry(module, program, plan, calls, emitter.threading)
    program.source = _with_comments(str(module), schedule.kernels, infos)
    return program


@dataclass
class _Emitted:
    """A kernel function: its range size, the path it took, its range function for the pool
    (`splitter`) if it is split across threads; for a full reduction split in parts, the
    splitter runs the parts and `finish` combines them."""

    fn: ir.Function
    count: int
    path: str
    splitter: ir.Function | None
    finish: ir.Function | None = None
    parts: int = 0


class _KernelEmitter:
    """Emits one function per distinct kernel of a module."""

    def __init__(self, module: ir.Module, plan: MemoryPlan) -> None:
        self.module = module
        self.plan = plan
        self.lib = MathLib(module)
        self.threading = Threading(module)
        self.vector_bits = host_vector_bits()
        self._seen: dict[Kernel, _Emitted] = {}
        self._names: set[str] = set()

    def function(self, kernel: Kernel, params: list[str]) -> _Emitted:
        """The function computing `kernel` with one pointer per entry of `params`."""
        slot = {p: f"p{j}" for j, p in enumerate(params)}
        key = _renamed(replace(kernel, name="", comment=""),
                       lambda n: slot[_root(n, params, self.plan)])
        if key not in self._seen:
            self._seen[key] = self._emit(kernel, params)
        return self._seen[key]

    def _emit(self, kernel: Kernel, params: list[str]) -> _Emitted:
        name = f"neurenix_{re.sub(r'[^0-9A-Za-z_]', '_', kernel.name)}"
        name = name if name not in self._names else f"{name}_{len(self._names)}"
        self._names.add(name)
        fn = self._function(name, len(params), [I64, I64])
        fn.attributes.add("noinline")  # one copy: callable per range, not inlined in the entry
        fb = FunctionBuilder(fn, masked_vectors=self.vector_bits >= 256)
        buffers = self._buffers(kernel, params, fn)
        dot = match_dot(kernel, self.vector_bits)
        tiles = None
        if dot is None or prefers_tiled(kernel, dot):
            tiles = match_contraction(kernel, self.vector_bits)
        if tiles is not None:
            count, path = emit_contraction(fb, self.lib, kernel, buffers, tiles), "tiled"
        elif dot is not None:
            count, path = emit_dot(fb, self.lib, kernel, buffers, dot), "dot"
        elif splits_reduction(kernel):
            return self._emit_parts(kernel, params, fb)
        else:
            count, path = _emit_generic(fb, self.lib, kernel, buffers), "generic"
        fb.b.ret_void()
        splitter = None
        if worth_splitting(kernel):
            splitter = self.threading.splitter(fn, len(params))
        return _Emitted(fn, count, path, splitter)

    def _function(self, name: str, n: int, extra: list[ir.Type]) -> ir.Function:
        """`void name(ptr x n (noalias), extra...)`."""
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR] * n + extra), name)
        for arg in fn.args[:n]:
            arg.add_attribute("noalias")
        return fn

    def _buffers(self, kernel: Kernel, params: list[str], fn: ir.Function) -> dict:
        return {buf.name: (fn.args[params.index(_root(buf.name, params, self.plan))],
                           buf.dtype, buf.size) for buf in kernel.buffers()}

    def _emit_parts(self, kernel: Kernel, params: list[str], fb: FunctionBuilder) -> _Emitted:
        """A full reduction split in parts (llvm_parallel.py): `<kernel>_part` reduces parts
        [start, end) into a partials buffer (its last pointer), `<kernel>_finish` combines
        them and stores; the kernel function runs both on the calling thread."""
        n, parts, fn = len(params), part_count(kernel), fb.fn
        masked = self.vector_bits >= 256
        part = self._function(f"{fn.name}_part", n + 1, [I64, I64])
        part.linkage = "internal"
        part.attributes.add("noinline")
        pb = FunctionBuilder(part, masked_vectors=masked)
        reduce_parts(pb, self.lib, kernel, self._buffers(kernel, params, part), part.args[n],
                     *part.args[-2:])
        pb.b.ret_void()
        finish = self._function(f"{fn.name}_finish", n + 1, [])
        finish.linkage = "internal"
        finish.attributes.add("noinline")
        eb = FunctionBuilder(finish, masked_vectors=masked)
        finish_parts(eb, self.lib, kernel, self._buffers(kernel, params, finish),
                     finish.args[n])
        eb.b.ret_void()
        b = fb.b
        start, end = fn.args[-2:]
        partials = fb.alloca(ir.IntType(8), count=PARTIALS_BYTES, align=64, name="partials")
        with b.if_then(b.icmp_signed("<", start, end)):
            args = list(fn.args[:n]) + [partials]
            b.call(part, args + [ir.Constant(I64, 0), ir.Constant(I64, parts)])
            b.call(finish, args)
        b.ret_void()
        return _Emitted(fn, 1, "generic", self.threading.splitter(part, n + 1), finish, parts)


def _with_comments(source: str, kernels: list[Kernel], infos: list[KernelInfo]) -> str:
    """The module text with each kernel function preceded by what it computes (the kernel's
    pseudo-code, whose first line names the fused ops and their source lines), as LLVM
    comments; a function shared by identical kernels lists each of them."""
    notes: dict[str, str] = {}
    for kernel, info in zip(kernels, infos):
        text = "".join(f"; {line}\n" for line in format_kernel(kernel).splitlines())
        notes[info.name] = notes.get(info.name, "") + text
    return re.sub(r'^define void @"([^"]+)"\(',
                  lambda m: notes.get(m.group(1), "") + m.group(0), source, flags=re.M)


def _renamed(e, f, memo: dict | None = None):
    """Kernel or expression `e` with every buffer name mapped through `f` (shared subtrees are
    renamed once, so the result shares them too)."""
    memo = {} if memo is None else memo
    if id(e) in memo:
        return memo[id(e)][1]
    out = e
    if isinstance(e, BufferArg):
        out = replace(e, name=f(e.name))
    elif is_dataclass(e):
        changes = {}
        if isinstance(e, (Load, Store)):
            changes["buffer"] = f(e.buffer)
        for fld in fields(e):
            v = getattr(e, fld.name)
            if isinstance(v, tuple):
                changes[fld.name] = tuple(_renamed(x, f, memo) for x in v)
            elif is_dataclass(v):
                changes[fld.name] = _renamed(v, f, memo)
        out = replace(e, **changes)
    memo[id(e)] = (e, out)
    return out


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


def _specs(schedule: KernelGraph, names: list[str]) -> list[TensorSpec]:
    return [TensorSpec(n, tuple(schedule.shapes[n]), schedule.buffers[n].dtype.name)
            for n in names]


def _buffer_specs(schedule: KernelGraph, plan: MemoryPlan) -> list[BufferSpec]:
    kinds = {n: "temp" for n in schedule.buffers}
    kinds.update({n: "constant" for n in schedule.constants})
    kinds.update({n: "input" for n in schedule.inputs})
    kinds.update({n: "output" for n in schedule.outputs})
    return [BufferSpec(n, b.dtype.name, b.size, kinds[n], plan.offsets.get(n, -1))
            for n, b in schedule.buffers.items()]


def _emit_entry(module: ir.Module, program: Program, plan: MemoryPlan, calls,
                threading: Threading) -> None:
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR]), ENTRY)
    args, arena, pool = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    pointers: dict[str, ir.Value] = {}
    for k, name in enumerate(program.entry_args()):
        if name not in pointers:
            slot = b.gep(args, [ir.Constant(I64, k)], inbounds=True, source_etype=PTR)
            pointers[name] = b.load(slot, typ=PTR, name=name)
    for name, offset in plan.offsets.items():
        pointers[name] = b.gep(arena, [ir.Constant(I64, offset)], inbounds=True,
                               source_etype=ir.IntType(8), name=name)
    partials = None  # one buffer for every full reduction split in parts (they run in turn)
    if any(emitted.finish is not None for emitted, _ in calls):
        partials = b.alloca(ir.IntType(8), size=ir.Constant(I64, PARTIALS_BYTES),
                            name="partials")
        partials.align = 64
        partials.type = PTR
    for emitted, params in calls:
        args = [pointers[p] for p in params]
        if emitted.finish is not None:
            threading.call(b, emitted.splitter, args + [partials], emitted.parts, pool)
            b.call(emitted.finish, args + [partials])
        elif emitted.splitter is None:
            b.call(emitted.fn, args + [ir.Constant(I64, 0), ir.Constant(I64, emitted.count)])
        else:
            threading.call(b, emitted.splitter, args, emitted.count, pool)
    b.ret_void()


# ---- the generic loop nest ------------------------------------------------------------------


def _emit_generic(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict) -> int:
    """The loop nest of the module docstring; returns the size of the kernel's range."""
    start, end = fb.fn.args[-2:]
    domain = kernel.domain
    columns = across_columns(kernel)
    if len(domain) <= 1:
        count = domain[0] if domain else 1
        if columns:
            reduce_columns(fb, lib, kernel, buffers, {}, start, end)
            return count
        with fb.loop(start, end, "i0", vectorize=bool(domain) and _flat(kernel)) as i:
            _point(fb, lib, kernel, buffers, {0: i} if domain else {})
        return count
    last = len(domain) - 1
    ranged = next((p for p in range(1, last) if np.prod(domain[:p]) >= MIN_RANGE), last)
    count = int(np.prod(domain[:ranged], dtype=np.int64))
    window = match_window(kernel, host_vector_bits()) if fb.masked_vectors else None
    b = fb.b
    with fb.loop(start, end, "outer") as flat, ExitStack() as nest:
        vars = {}
        rest = flat
        for axis in reversed(range(ranged)):
            size = ir.Constant(I64, domain[axis])
            vars[axis] = b.urem(rest, size) if axis else rest
            rest = b.udiv(rest, size)
        for axis in range(ranged, last):  # counted, not divided out of the range per row
            vars[axis] = nest.enter_context(fb.loop(0, domain[axis], f"i{axis}"))
        if columns:
            reduce_columns(fb, lib, kernel, buffers, vars, ir.Constant(I64, 0),
                           ir.Constant(I64, domain[last]))
        elif window is not None:
            emit_window(fb, lib, kernel, buffers, vars, window)
        else:
            n = domain[last]
            lanes = host_vector_bits() // 32
            # a short row (14 or 28 wide) that no vector divides: one masked vector
            # iteration for the tail beats a scalar remainder loop
            fold = (fb.masked_vectors and MIN_MASKED_TRIP <= n < 4 * lanes and n % lanes != 0)
            force = _flat(kernel) and (n >= MIN_FORCED_TRIP or fold)
            with fb.loop(0, n, f"i{last}", vectorize=force, fold_tail=fold) as i:
                vars[last] = i
                _point(fb, lib, kernel, buffers, vars)
    return count


def _flat(kernel: Kernel) -> bool:
    """Whether the innermost domain loop is a plain loop LLVM can vectorize (no nested
    reduction loop, no scatter)."""
    if any(s.accumulate for s in kernel.stores):
        return False
    return kernel.reduce_value is None or is_small(kernel)


def _point(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict, vars: dict) -> None:
    """The work at one domain point: the reduction, if any, then the stores."""
    acc = None
    if kernel.reduce_value is not None:
        acc = reduce_at_point(fb, lib, kernel, buffers, vars)
    emit_stores(fb.b, lib, kernel, buffers, vars, acc)
