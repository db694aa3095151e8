"""The LLVM backend: a `KernelGraph` and its `MemoryPlan` become one LLVM module (a `Program`).

The generator carries out each kernel's schedule (`Kernel.schedule`, compiler/schedule/: tiles,
vector widths, the range and its threads) and decides nothing about a kernel's shape; a kernel
not scheduled yet is scheduled here with the target's rules and capability record.

The module holds one function per distinct kernel and an entry function:

    void neurenix_<kernel>(ptr buf0, ptr buf1, ..., i64 start, i64 end)
    void neurenix_entry(ptr *args, ptr arena, ptr pool)

A kernel function runs the part [start, end) of its *range*: the flattened leading domain axes
(as few as give `schedule.ranges.MIN_RANGE` rows, at most all but the innermost; the only axis
of a 1-D domain: the other outer axes are counted loops inside), (batch, row block, column tile)
triples on the tiled contraction path, (batch, column block) pairs on the dot-product path.
Splitting the range among threads needs nothing else: the entry runs small kernels whole and
splits those whose schedule says `threaded` across the process's thread pool, which the runtime
passes as `pool` (llvm_parallel.py: the ABI; NULL runs everything on the calling thread).  The
innermost domain loop is contiguous in the usual row-major case, walks a simple induction
variable and, when its schedule says so (a plain elementwise loop), carries
`llvm.loop.vectorize.enable` (tail-folded when short); reductions are emitted by
llvm_reduce.py, strided pooling windows by llvm_window.py.
Contractions take the dot-product path of llvm_dot.py (both operands contiguous along k) or the
tiled path of llvm_matmul.py; `Program.metadata["paths"]` says which kernel took which.

`neurenix_entry` takes the pointers of the inputs, outputs and constants (in
`Program.entry_args()` order), the arena and the pool, computes each temporary's pointer as
arena + its planned offset, and calls every kernel in launch order: a compiled call is one
foreign call.
Buffers that share storage inside a kernel (in-place reuse, or a buffer both read and written)
become one parameter, so that every pointer parameter can be `noalias`.

Dynamic sizes (docs/compiler/dynamic-shapes.md).  A kernel graph whose sizes are polynomials
of symbols (a batch `n`) gives a program with `Program.symbols` (their names, sorted) and

    void neurenix_entry(ptr *args, ptr arena, ptr pool, const int64_t *sizes)

`sizes[i]` being the value of `symbols[i]` for the call.  The entry loads them once, computes
the temporaries' arena offsets (polynomials) and each kernel's range size (a polynomial or a
`Ceil`: schedule/sizes.py) from them.  A kernel that reads a symbol (a dynamic extent, buffer
size or `Sym` leaf) takes the same pointer after its buffers,

    void neurenix_<kernel>(ptr buf..., ptr sizes, i64 start, i64 end)

and loads the symbols in its entry block (`FunctionBuilder.value` turns a size into an i64
there; `ExprEmitter` reads `Sym` leaves from them); its range function for the pool unpacks
the pointer like a buffer.  Loop bounds, clamps, row and K blocks (a tiled contraction's row
blocks and their length: `schedule.sizes.Blocks`), divisions of the flat range are then
computed per call; every tile and vector width stays a constant chosen from the symbols'
hints.  A row index divided by a dynamic size (`r // n`, `r % n`: a permute + reshape over a
dynamic batch) is not divided per row: the quotient and remainder are counters, divided once
at the start of the part and stepped with the row (`_DivisionCounters`).  A `Choice`
schedule (dot products for few rows, tiles for many) emits both kernel functions
(`<kernel>_upto<limit>` and `<kernel>`) and the entry calls one per call.
Static programs keep the three-argument entry and unchanged code.
"""
from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass, replace

from llvmlite import ir

from ...runtime.program import KernelInfo, Program
from ...runtime.sizes import size_to_json
from ..kernel.ir import (
    Binary,
    BufferArg,
    Const,
    Kernel,
    KernelGraph,
    Load,
    Store,
    Sym,
    Var,
    dtype_of,
    format_kernel,
    rebuild,
)
from ..kernel.memory import MemoryPlan, plan_memory
from ..schedule import (
    Choice,
    ColumnReduction,
    Contraction,
    Dot,
    Elementwise,
    Nest,
    PerPoint,
    SplitReduction,
    Window,
    schedule_kernel,
    target_rules,
)
from ..schedule.sizes import Blocks, Ceil, kernel_symbols
from ..targets import Capabilities, Target, get_target
from ..types import int64
from .llvm_dot import emit_dot
from .llvm_loops import FunctionBuilder, size_value
from .llvm_math import I64, PTR, MathLib
from .llvm_matmul import emit_contraction
from .llvm_ops import CodegenError, ExprEmitter, emit_stores
from .llvm_parallel import POOL_ABI, Threading
from .llvm_reduce import (
    PARTIALS_BYTES,
    finish_parts,
    reduce_at_point,
    reduce_columns,
    reduce_parts,
)
from .llvm_window import emit_window
from .program_specs import (
    buffer_specs,
    constant_arrays,
    parameters,
    program_symbols,
    storage_root,
    tensor_specs,
)
from .rebase import rebased

ENTRY = "neurenix_entry"
ENTRY_SIGNATURE = ("void neurenix_entry(void **args, void *arena, "
                   "const struct neurenix_pool *pool)")  # pool: llvm_parallel.py, or NULL
ENTRY_SIGNATURE_SIZES = ("void neurenix_entry(void **args, void *arena, "
                         "const struct neurenix_pool *pool, const int64_t *sizes)")


def generate(kernels: KernelGraph, plan: MemoryPlan | None = None,
             target: Target | None = None) -> Program:
    """Generate the LLVM IR `Program` (target "cpu") that runs `kernels` over one arena.

    Each kernel is carried out as its `Kernel.schedule` says; a kernel without one is
    scheduled here with `target`'s rules and capabilities (default: the "llvm" target's).
    Kernels that are identical up to their buffer names (the steps of an unrolled RNN) share
    one function, which keeps compile time proportional to the distinct kernels.
    """
    target = get_target("llvm") if target is None else target
    caps, rules = target.capabilities, target_rules(target)
    plan = plan_memory(kernels) if plan is None else plan
    module = ir.Module(name="neurenix")
    module.triple = _process_triple()
    symbols = program_symbols(kernels)
    emitter = _KernelEmitter(module, plan, caps, symbols)
    infos: list[KernelInfo] = []
    calls: list[tuple[_Emitted, list[str], dict[str, int]]] = []
    offsets: list[dict[str, int]] = []
    scheduled = [replace(k, schedule=schedule_kernel(k, caps, rules)) if k.schedule is None
                 else k for k in kernels.kernels]
    for kernel in scheduled:
        params = parameters(kernel, plan)
        kernel, moved = rebased(kernel, params, plan)
        emitted = emitter.function(kernel, params)
        byte_offsets = {p: c * _itemsize(kernel, p, params, plan) for p, c in moved.items()}
        calls.append((emitted, params, byte_offsets))
        offsets.append({p: size_to_json(c) for p, c in byte_offsets.items()})
        infos.append(KernelInfo(emitted.fn.name, tuple(params), kernel.comment,
                                tuple(kernel.domain)))
    functions = {e.fn.name: e for e, _, _ in calls}
    program = Program(
        target="cpu", entry=ENTRY, source="", inputs=tensor_specs(kernels, kernels.inputs),
        outputs=tensor_specs(kernels, kernels.outputs), buffers=buffer_specs(kernels, plan),
        kernels=infos, arena_bytes=plan.arena_bytes, constants=constant_arrays(kernels),
        memory={"naive": plan.naive_bytes, "planned": plan.arena_bytes,
                "lower_bound": plan.lower_bound_bytes},
        metadata={"ranges": {n: size_to_json(e.count) for n, e in functions.items()
                             if not isinstance(e.count, (Ceil, Blocks))},
                  "paths": {n: e.path for n, e in functions.items()},
                  "threaded": [v.fn.name for e in functions.values() for v in _variants(e)
                               if v.splitter is not None],
                  "inplace": dict(plan.inplace), "vector_bits": caps.vector_bits,
                  "arg_offsets": offsets,
                  "pool_abi": POOL_ABI,
                  "entry_signature": ENTRY_SIGNATURE_SIZES if symbols else ENTRY_SIGNATURE},
        symbols=symbols,
    )
    if symbols:  # ranges that are no polynomial (a Ceil, Blocks) are only described, as text
        program.metadata["sized_kernels"] = [n for n, e in functions.items() if e.sized]
        program.metadata["range_text"] = {n: str(e.count) for n, e in functions.items()
                                          if not isinstance(e.count, int)}
        program.metadata["choices"] = {n: _choice_tree(e) for n, e in functions.items()
                                       if e.choice is not None}
    _emit_entry(module, program, plan, calls, emitter.threading, symbols)
    program.source = _with_comments(str(module), scheduled, infos)
    return program


@dataclass
class _Emitted:
    """A kernel function: its range size, the path it took, its range function for the pool
    (`splitter`) if it is split across threads; for a full reduction split in parts, the
    splitter runs the parts and `finish` combines them."""

    fn: ir.Function
    count: object  # an int, or a size of the symbols (schedule/sizes.py: Count)
    path: str
    splitter: ir.Function | None
    finish: ir.Function | None = None
    parts: int = 0
    sized: bool = False  # takes the `sizes` pointer after its buffers
    choice: tuple | None = None  # (size, limit, small, large): run small while size <= limit


def _choice_tree(emitted: _Emitted) -> dict | str:
    """The variants of a `Choice` as plain data (`Program.metadata["choices"]`): {"size",
    "limit", "small", "large"}, down to each variant's code path and whether it is split
    across threads (what `stats()` names)."""
    if emitted.choice is None:
        return emitted.path + (", threaded" if emitted.splitter is not None else "")
    size, limit, small, large = emitted.choice
    return {"size": size_to_json(size), "limit": limit, "small": _choice_tree(small),
            "large": _choice_tree(large)}


def _variants(emitted: _Emitted) -> list[_Emitted]:
    """The kernel functions a call may run: itself, or every variant of a `Choice`."""
    if emitted.choice is None:
        return [emitted]
    return _variants(emitted.choice[2]) + _variants(emitted.choice[3])


class _KernelEmitter:
    """Emits one function per distinct kernel of a module."""

    def __init__(self, module: ir.Module, plan: MemoryPlan, caps: Capabilities,
                 symbols: tuple[str, ...] = ()) -> None:
        self.module = module
        self.plan = plan
        self.caps = caps
        self.symbols = symbols
        self.lib = MathLib(module)
        self.threading = Threading(module)
        self._seen: dict[Kernel, _Emitted] = {}
        self._names: set[str] = set()

    def function(self, kernel: Kernel, params: list[str]) -> _Emitted:
        """The function computing `kernel` with one pointer per entry of `params`."""
        slot = {p: f"p{j}" for j, p in enumerate(params)}
        key = (_renamed(replace(kernel, name="", comment="", schedule=None),
                        lambda n: slot[storage_root(n, params, self.plan)]),
               repr(kernel.schedule))
        if key not in self._seen:
            self._seen[key] = self._emit(kernel, params)
        return self._seen[key]

    def _emit(self, kernel: Kernel, params: list[str], suffix: str = "") -> _Emitted:
        plan = kernel.schedule
        if isinstance(plan, Choice):  # both variants; the entry picks one per call
            large = self._emit(replace(kernel, schedule=plan.large), params, suffix)
            if large.finish is None and plan.small == replace(plan.large, threaded=False):
                # threading alone differs: one function, called directly or split
                return replace(large, choice=(plan.size, plan.limit,
                                              replace(large, splitter=None), large))
            small = self._emit(replace(kernel, schedule=plan.small), params,
                               f"{suffix}_upto{plan.limit}")
            return replace(large, path=f"{small.path}|{large.path}",
                           choice=(plan.size, plan.limit, small, large))
        name = f"neurenix_{re.sub(r'[^0-9A-Za-z_]', '_', kernel.name)}{suffix}"
        name = name if name not in self._names else f"{name}_{len(self._names)}"
        self._names.add(name)
        sized = bool(kernel_symbols(kernel))
        n = len(params) + sized  # the sizes pointer follows the buffers
        fn = self._function(name, n, [I64, I64])
        fn.attributes.add("noinline")  # one copy: callable per range, not inlined in the entry
        sizes = fn.args[len(params)] if sized else None
        fb = FunctionBuilder(fn, masked_vectors=self.caps.masked_loads, sizes=sizes,
                             symbols=self.symbols)
        buffers = self._buffers(kernel, params, fn)
        plan = kernel.schedule
        if isinstance(plan, SplitReduction):
            return self._emit_parts(kernel, params, fb, plan, sized)
        if isinstance(plan, Contraction):
            emit_contraction(fb, self.lib, kernel, buffers, plan)
            path = "tiled"
        elif isinstance(plan, Dot):
            emit_dot(fb, self.lib, kernel, buffers, plan)
            path = "dot"
        elif isinstance(plan, Nest):
            _emit_nest(fb, self.lib, kernel, buffers, plan)
            path = "generic"
        else:
            raise CodegenError(f"llvm codegen: kernel {kernel.name}: no emitter for schedule "
                               f"{type(plan).__name__}")
        fb.b.ret_void()
        splitter = None
        if plan.threaded:
            splitter = self.threading.splitter(fn, n)
        return _Emitted(fn, plan.count, path, splitter, sized=sized)

    def _function(self, name: str, n: int, extra: list[ir.Type]) -> ir.Function:
        """`void name(ptr x n (noalias), extra...)`."""
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR] * n + extra), name)
        for arg in fn.args[:n]:
            arg.add_attribute("noalias")
        return fn

    def _buffers(self, kernel: Kernel, params: list[str], fn: ir.Function) -> dict:
        return {buf.name: (fn.args[params.index(storage_root(buf.name, params, self.plan))],
                           buf.dtype, buf.size) for buf in kernel.buffers()}

    def _emit_parts(self, kernel: Kernel, params: list[str], fb: FunctionBuilder,
                    plan: SplitReduction, sized: bool = False) -> _Emitted:
        """A full reduction split in parts (llvm_parallel.py): `<kernel>_part` reduces parts
        [start, end) into a partials buffer (its last pointer, after the buffers and, with
        dynamic sizes, `sizes`), `<kernel>_finish` combines them and stores; the kernel
        function runs both on the calling thread."""
        n, parts, fn = len(params) + sized, plan.parts, fb.fn
        masked = self.caps.masked_loads

        def builder(f: ir.Function) -> FunctionBuilder:
            sizes = f.args[len(params)] if sized else None
            return FunctionBuilder(f, masked_vectors=masked, sizes=sizes, symbols=self.symbols)

        part = self._function(f"{fn.name}_part", n + 1, [I64, I64])
        part.linkage = "internal"
        part.attributes.add("noinline")
        pb = builder(part)
        reduce_parts(pb, self.lib, kernel, self._buffers(kernel, params, part), part.args[n],
                     *part.args[-2:], parts)
        pb.b.ret_void()
        finish = self._function(f"{fn.name}_finish", n + 1, [])
        finish.linkage = "internal"
        finish.attributes.add("noinline")
        eb = builder(finish)
        finish_parts(eb, self.lib, kernel, self._buffers(kernel, params, finish),
                     finish.args[n], parts)
        eb.b.ret_void()
        b = fb.b
        start, end = fn.args[-2:]
        partials = fb.alloca(ir.IntType(8), count=PARTIALS_BYTES, align=64, name="partials")
        with b.if_then(b.icmp_signed("<", start, end)):
            args = list(fn.args[:n]) + [partials]
            b.call(part, args + [ir.Constant(I64, 0), ir.Constant(I64, parts)])
            b.call(finish, args)
        b.ret_void()
        return _Emitted(fn, 1, "generic", self.threading.splitter(part, n + 1), finish, parts,
                        sized)


def _with_comments(source: str, kernels: list[Kernel], infos: list[KernelInfo]) -> str:
    """The module text with each kernel function preceded by what it computes (the kernel's
    pseudo-code, whose first line names the fused ops and their source lines) and its
    schedule, as LLVM comments; a function shared by identical kernels lists each of them."""
    notes: dict[str, str] = {}
    for kernel, info in zip(kernels, infos):
        lines = format_kernel(kernel).splitlines() + [f"schedule: {kernel.schedule}"]
        text = "".join(f"; {line}\n" for line in lines)
        notes[info.name] = notes.get(info.name, "") + text
    return re.sub(r'^define void @"([^"]+)"\(',
                  lambda m: notes.get(m.group(1), "") + m.group(0), source, flags=re.M)


def _renamed(e, f):
    """Kernel or expression `e` with every buffer name mapped through `f` (shared subtrees are
    renamed once, so the result shares them too)."""
    def rename(n):
        if isinstance(n, BufferArg):
            return replace(n, name=f(n.name))
        return replace(n, buffer=f(n.buffer)) if isinstance(n, (Load, Store)) else n

    return rebuild(e, rename)


def _itemsize(kernel: Kernel, param: str, params: list[str], plan: MemoryPlan) -> int:
    """Bytes per element of the buffer that parameter `param` stands for in `kernel`."""
    for buf in kernel.buffers():
        if storage_root(buf.name, params, plan) == param:
            return buf.dtype.itemsize
    raise CodegenError(f"kernel {kernel.name}: no buffer for parameter {param!r}")


def _process_triple() -> str:
    import llvmlite.binding as llvm
    return llvm.get_process_triple()


def _emit_entry(module: ir.Module, program: Program, plan: MemoryPlan, calls,
                threading: Threading, symbols: tuple[str, ...] = ()) -> None:
    """The entry function (module docstring); with symbols it takes `sizes` too, computes the
    dynamic arena offsets and range sizes from them and passes it to the kernels that use
    them."""
    extra = [PTR] if symbols else []
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR] + extra), ENTRY)
    args, arena, pool = fn.args[:3]
    sizes = fn.args[3] if symbols else None
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    values: dict[str, ir.Value] = {}
    for j, name in enumerate(symbols):
        slot = b.gep(sizes, [ir.Constant(I64, j)], inbounds=True, source_etype=I64)
        values[name] = b.load(slot, typ=I64, name=name, align=8)
    pointers: dict[str, ir.Value] = {}
    for k, name in enumerate(program.entry_args()):
        if name not in pointers:
            slot = b.gep(args, [ir.Constant(I64, k)], inbounds=True, source_etype=PTR)
            pointers[name] = b.load(slot, typ=PTR, name=name)
    for name, offset in plan.offsets.items():
        pointers[name] = b.gep(arena, [size_value(b, values, offset)], inbounds=True,
                               source_etype=ir.IntType(8), name=name)
    partials = None  # one buffer for every full reduction split in parts (they run in turn)
    if any(emitted.finish is not None for emitted, _, _ in calls):
        partials = b.alloca(ir.IntType(8), size=ir.Constant(I64, PARTIALS_BYTES),
                            name="partials")
        partials.align = 64
        partials.type = PTR
    for emitted, params, moved in calls:
        args = [b.gep(pointers[p], [size_value(b, values, moved[p])], inbounds=True,
                      source_etype=ir.IntType(8)) if p in moved else pointers[p]
                for p in params] + ([sizes] if emitted.sized else [])
        _call(b, emitted, args, values, partials, pool, threading)
    b.ret_void()


def _call(b: ir.IRBuilder, emitted: _Emitted, args: list, values: dict, partials, pool,
          threading: Threading) -> None:
    """Emit, into the entry, the run of one kernel function over its whole range (of the
    variant this call's sizes pick, for a `Choice`)."""
    if emitted.choice is not None:
        size, limit, small, large = emitted.choice
        test = b.icmp_signed("<=", size_value(b, values, size), ir.Constant(I64, limit))
        with b.if_else(test) as (few, many):
            with few:
                _call(b, small, args, values, partials, pool, threading)
            with many:
                _call(b, large, args, values, partials, pool, threading)
        return
    count = size_value(b, values, emitted.count)
    if emitted.finish is not None:
        threading.call(b, emitted.splitter, args + [partials], emitted.parts, pool)
        b.call(emitted.finish, args + [partials])
    elif emitted.splitter is None:
        b.call(emitted.fn, args + [ir.Constant(I64, 0), count])
    else:
        threading.call(b, emitted.splitter, args, count, pool)


# ---- the generic loop nest ------------------------------------------------------------------


def _emit_nest(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
               plan: Nest) -> None:
    """The loop nest of the module docstring, as `plan` lays it out (dynamic extents are
    read from the symbols: `fb.value`)."""
    start, end = fb.fn.args[-2:]
    domain = kernel.domain
    columns = isinstance(plan, ColumnReduction)
    vectorize = isinstance(plan, Elementwise) and plan.vectorize
    unroll = isinstance(plan, PerPoint) and plan.unroll
    if len(domain) <= 1:
        if columns:
            reduce_columns(fb, lib, kernel, buffers, {}, start, end, plan.strip)
            return
        with fb.loop(start, end, "i0", vectorize=vectorize) as i:
            _point(fb, lib, kernel, buffers, {0: i} if domain else {}, unroll)
        return
    last = len(domain) - 1
    b = fb.b
    stepped = {}  # the range's floor divisions by dynamic sizes, stepped along with it
    if plan.ranged == 1 and not columns and not isinstance(plan, Window):
        kernel, stepped = _step_divisions(kernel, 0, len(domain) + len(kernel.reduce))
    counters = _DivisionCounters(fb, lib, kernel, buffers, stepped, start)
    with fb.loop(start, end, "outer") as flat:
        vars = counters.current()
        with ExitStack() as nest:
            rest = flat
            for axis in reversed(range(plan.ranged)):
                size = fb.value(domain[axis])
                vars[axis] = b.urem(rest, size) if axis else rest
                rest = b.udiv(rest, size)
            for axis in range(plan.ranged, last):  # counted, not divided out of the range
                vars[axis] = nest.enter_context(fb.loop(0, fb.value(domain[axis]), f"i{axis}"))
            if columns:
                reduce_columns(fb, lib, kernel, buffers, vars, ir.Constant(I64, 0),
                               fb.value(domain[last]), plan.strip)
            elif isinstance(plan, Window):
                emit_window(fb, lib, kernel, buffers, vars, plan)
            else:
                fold = isinstance(plan, Elementwise) and plan.fold_tail
                with fb.loop(0, fb.value(domain[last]), f"i{last}", vectorize=vectorize,
                             fold_tail=fold) as i:
                    vars[last] = i
                    _point(fb, lib, kernel, buffers, vars, unroll)
        counters.step()


class _DivisionCounters:
    """Quotients and remainders of the range's index by dynamic sizes (`_step_divisions`),
    kept as counters: divided once per call of the kernel function, at `start`, then
    stepped with the index (the remainder counts up to the divisor and wraps, carrying into
    the quotient) instead of a 64-bit division per row."""

    def __init__(self, fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict,
                 stepped: dict, start: ir.Value) -> None:
        self.fb, self.slots = fb, []
        b = fb.b
        em = ExprEmitter(b, lib, buffers, {})
        for (divisor, _), (q_axis, r_axis) in stepped.items():
            d = em.index(divisor)
            q, r = fb.alloca(I64, name="quotient"), fb.alloca(I64, name="remainder")
            b.store(b.udiv(start, d), q)
            b.store(b.urem(start, d), r)
            self.slots.append((d, q, r, q_axis, r_axis))

    def current(self) -> dict[int, ir.Value]:
        """The counters' values for this index, as the pseudo axes they stand for."""
        b, vars = self.fb.b, {}
        for _, q, r, q_axis, r_axis in self.slots:
            vars[q_axis] = b.load(q, typ=I64)
            vars[r_axis] = b.load(r, typ=I64)
        return vars

    def step(self) -> None:
        """Advance every counter to the next index."""
        b = self.fb.b
        for d, q, r, _, _ in self.slots:
            nxt = b.add(b.load(r, typ=I64), ir.Constant(I64, 1))
            wrap = b.icmp_signed("==", nxt, d)
            b.store(b.select(wrap, ir.Constant(I64, 0), nxt), r)
            b.store(b.add(b.load(q, typ=I64), b.zext(wrap, I64)), q)


def _positive_size(e) -> bool:
    """Whether `e` is a size that is positive for every call and not a constant: a symbol (a
    dynamic size: never 0 or 1, docs/compiler/dynamic-shapes.md), or sums and products of
    symbols and positive integer constants."""
    if isinstance(e, Sym):
        return True
    if isinstance(e, Binary) and e.op in ("add", "mul"):
        parts = (e.a, e.b)
        return (all(_positive_size(x) or (isinstance(x, Const) and isinstance(x.value, int)
                                          and x.value > 0) for x in parts)
                and any(not isinstance(x, Const) for x in parts))
    return False


def _step_divisions(kernel: Kernel, axis: int, first_free: int) -> tuple[Kernel, dict]:
    """`kernel` with each `Var(axis) // d` and `Var(axis) % d` (int64, `d` a positive dynamic
    size) replaced by a pseudo axis `Var(n)`, n from `first_free` on, and {(d, id): (quotient
    axis, remainder axis)}: what `_DivisionCounters` keeps, as the range steps `axis` by one
    from a non-negative start.  A kernel without such divisions comes back as it was."""
    found: dict = {}

    def count(e):
        if (isinstance(e, Binary) and e.op in ("idiv", "mod") and e.a == Var(axis)
                and dtype_of(e) == int64 and _positive_size(e.b)):
            key = (e.b, None)
            if key not in found:
                found[key] = (first_free + 2 * len(found), first_free + 2 * len(found) + 1)
            return Var(found[key][0] if e.op == "idiv" else found[key][1])
        return e

    memo: dict = {}
    stores = tuple(rebuild(st, count, memo) for st in kernel.stores)
    value = None if kernel.reduce_value is None else rebuild(kernel.reduce_value, count, memo)
    if not found:
        return kernel, {}
    return replace(kernel, stores=stores, reduce_value=value), found


def _point(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict, vars: dict,
           unroll: bool) -> None:
    """The work at one domain point: the reduction (`unroll`: as straight-line code), if any,
    then the stores."""
    acc = None
    if kernel.reduce_value is not None:
        acc = reduce_at_point(fb, lib, kernel, buffers, vars, unroll)
    emit_stores(fb.b, lib, kernel, buffers, vars, acc)
