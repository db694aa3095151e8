"""Splitting kernel ranges across threads, inside the generated module.

Every kernel function runs a [start, end) part of its range, so parallelism needs no change to
kernels: the entry function calls

    void <kernel>_parallel(ptr params, i64 count, i64 threads)

which cuts [0, count) into `threads` contiguous chunks, starts `threads - 1` POSIX threads on
the kernel's task trampoline (`void *task(ctx)`, ctx = {ptr params, i64 start, i64 end}), runs
the first chunk itself and joins the others.  A thread that cannot be created has its chunk run
inline, so the result never depends on thread creation.  `threads` is the module global
`neurenix_num_threads` (the runtime sets it to the cores it may use; an exported library's
caller may set it too), used only for kernels marked parallel, without accumulating stores, with
at least `PARALLEL_MIN_WORK` element operations; smaller kernels run inline.  Threads are
created per kernel call (tens of microseconds), not pooled.
"""
from __future__ import annotations

from llvmlite import ir

from ..kernel import Kernel
from .llvm_loops import FunctionBuilder
from .llvm_math import I32, I64, PTR

PARALLEL_MIN_WORK = 1 << 20
MAX_THREADS = 64
NUM_THREADS = "neurenix_num_threads"
CONTEXT = ir.LiteralStructType([PTR, I64, I64])


def worth_splitting(kernel: Kernel) -> bool:
    """Whether a kernel is safe to split across threads and big enough to gain from it."""
    if not kernel.parallel or any(s.accumulate for s in kernel.stores):
        return False
    work = 1
    for d in kernel.domain + kernel.reduce:
        work *= d
    return work >= PARALLEL_MIN_WORK


class Threading:
    """The module's thread-count global, `neurenix_parallel_for` and per-kernel tasks."""

    def __init__(self, module: ir.Module) -> None:
        self.module = module
        self.num_threads = ir.GlobalVariable(module, I32, NUM_THREADS)
        self.num_threads.initializer = ir.Constant(I32, 1)
        self._create = ir.Function(module, ir.FunctionType(I32, [PTR, PTR, PTR, PTR]),
                                   "pthread_create")
        self._join = ir.Function(module, ir.FunctionType(I32, [I64, PTR]), "pthread_join")

    def splitter(self, kernel_fn: ir.Function, n_params: int) -> ir.Function:
        """`void <kernel>_parallel(ptr params, i64 count, i64 threads)` for one kernel."""
        return self._define_parallel_for(kernel_fn.name, self._task(kernel_fn, n_params))

    def _task(self, kernel_fn: ir.Function, n_params: int) -> ir.Function:
        """`void *<kernel>_task(ctx)`: unpack a context and run the kernel on its chunk."""
        fn = ir.Function(self.module, ir.FunctionType(PTR, [PTR]), f"{kernel_fn.name}_task")
        fn.linkage = "internal"
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        (ctx,) = fn.args
        params = b.load(self._field(b, ctx, 0), typ=PTR)
        args = []
        for j in range(n_params):
            slot = b.gep(params, [ir.Constant(I64, j)], inbounds=True, source_etype=PTR)
            args.append(b.load(slot, typ=PTR))
        args.append(b.load(self._field(b, ctx, 1), typ=I64))
        args.append(b.load(self._field(b, ctx, 2), typ=I64))
        b.call(kernel_fn, args)
        b.ret(ir.Constant(PTR, None))
        return fn

    def call(self, b: ir.IRBuilder, splitter: ir.Function, params: list[ir.Value],
             count: int) -> None:
        """Emit, into the entry, a parallel run of a kernel over [0, count)."""
        array = b.alloca(PTR, size=ir.Constant(I64, len(params)), name="params")
        array.type = PTR  # opaque, as every pointer here
        for j, p in enumerate(params):
            b.store(p, b.gep(array, [ir.Constant(I64, j)], inbounds=True, source_etype=PTR))
        threads = b.zext(b.load(self.num_threads, typ=I32), I64)
        b.call(splitter, [array, ir.Constant(I64, count), threads])

    @staticmethod
    def _field(b: ir.IRBuilder, ctx: ir.Value, j: int) -> ir.Value:
        return b.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, j)], inbounds=True,
                     source_etype=CONTEXT)

    def _define_parallel_for(self, name: str, task: ir.Function) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, I64, I64]),
                         f"{name}_parallel")
        fn.linkage = "internal"
        params, count, threads = fn.args
        fb = FunctionBuilder(fn)
        b = fb.b
        ctxs = fb.alloca(CONTEXT, count=MAX_THREADS, name="ctx")
        tids = fb.alloca(I64, count=MAX_THREADS, name="tid")
        started = fb.alloca(ir.IntType(8), count=MAX_THREADS, name="started")
        n = fb.min(threads, MAX_THREADS)
        n = fb.min(n, count)
        n = b.select(b.icmp_signed("<", n, ir.Constant(I64, 1)), ir.Constant(I64, 1), n)

        def context(t: ir.Value) -> ir.Value:
            ctx = b.gep(ctxs, [t], inbounds=True, source_etype=CONTEXT)
            b.store(params, self._field(b, ctx, 0))
            b.store(b.sdiv(b.mul(count, t), n), self._field(b, ctx, 1))
            b.store(b.sdiv(b.mul(count, b.add(t, ir.Constant(I64, 1))), n), self._field(b, ctx, 2))
            return ctx

        with fb.loop(1, n, "spawn") as t:
            ctx = context(t)
            tid = b.gep(tids, [t], inbounds=True, source_etype=I64)
            rc = b.call(self._create, [tid, ir.Constant(PTR, None), task, ctx])
            ok = b.icmp_signed("==", rc, ir.Constant(I32, 0))
            b.store(b.zext(ok, ir.IntType(8)), b.gep(started, [t], inbounds=True,
                                                     source_etype=ir.IntType(8)))
            with b.if_then(b.not_(ok)):
                b.call(task, [ctx])
        b.call(task, [context(ir.Constant(I64, 0))])
        with fb.loop(1, n, "join") as t:
            flag = b.load(b.gep(started, [t], inbounds=True, source_etype=ir.IntType(8)),
                          typ=ir.IntType(8))
            with b.if_then(b.icmp_unsigned("!=", flag, ir.Constant(ir.IntType(8), 0))):
                tid = b.load(b.gep(tids, [t], inbounds=True, source_etype=I64), typ=I64)
                b.call(self._join, [tid, ir.Constant(PTR, None)])
        b.ret_void()
        return fn
