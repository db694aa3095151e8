"""Splitting kernel ranges across threads, inside the generated module.

Every kernel function runs a [start, end) part of its range, so parallelism needs no change to
kernels.  For a large kernel the entry function calls

    void <kernel>_parallel(ptr params, i64 count, i64 threads)

which cuts [0, count) into a few chunks per thread and shares them through a heap context
{params, count, chunks, next, done, refs}: `threads - 1` detached POSIX threads and the calling
thread each claim the next chunk with an atomic increment of `next` until none is left, and the
caller then waits (yielding) until `done` counts every chunk.  Chunks are claimed, not assigned,
so a thread that the OS starts late — on a busy machine — finds the work already done and only
drops its reference to the context (the last reference frees it); the caller never waits for a
thread that has not started.  A thread that cannot be created costs nothing but its share.

`threads` is the module global `neurenix_num_threads` (the runtime sets it to the cores it may
use; an exported library's caller may set it too).  Only kernels marked parallel, without
accumulating stores and with at least `PARALLEL_MIN_WORK` element operations are split; the rest
run on the calling thread.  Threads are created per kernel call (some tens of microseconds), not
pooled.
"""
from __future__ import annotations

from llvmlite import ir

from ..kernel import Kernel
from .llvm_loops import FunctionBuilder
from .llvm_math import I32, I64, PTR

PARALLEL_MIN_WORK = 1 << 20
MAX_THREADS = 64
CHUNKS_PER_THREAD = 4
NUM_THREADS = "neurenix_num_threads"
# {ptr params, i64 count, i64 chunks, i64 next, i64 done, i64 refs}
CONTEXT = ir.LiteralStructType([PTR, I64, I64, I64, I64, I64])
PARAMS, COUNT, CHUNKS, NEXT, DONE, REFS = range(6)
CONTEXT_BYTES = 48


def worth_splitting(kernel: Kernel) -> bool:
    """Whether a kernel is safe to split across threads and big enough to gain from it."""
    if not kernel.parallel or any(s.accumulate for s in kernel.stores):
        return False
    work = 1
    for d in kernel.domain + kernel.reduce:
        work *= d
    return work >= PARALLEL_MIN_WORK


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


class Threading:
    """The module's thread-count global and, per large kernel, its `_parallel` splitter."""

    def __init__(self, module: ir.Module) -> None:
        self.module = module
        self.num_threads = ir.GlobalVariable(module, I32, NUM_THREADS)
        self.num_threads.initializer = ir.Constant(I32, 1)
        declare = lambda name, ret, args: ir.Function(module, ir.FunctionType(ret, args), name)
        self._create = declare("pthread_create", I32, [PTR, PTR, PTR, PTR])
        self._detach = declare("pthread_detach", I32, [I64])
        self._yield = declare("sched_yield", I32, [])
        self._malloc = declare("malloc", PTR, [I64])
        self._free = declare("free", ir.VoidType(), [PTR])

    def call(self, b: ir.IRBuilder, splitter: ir.Function, params: list[ir.Value],
             count: int) -> None:
        """Emit, into the entry, a parallel run of a kernel over [0, count)."""
        array = b.alloca(PTR, size=ir.Constant(I64, len(params)), name="params")
        array.type = PTR  # opaque, as every pointer here
        for j, p in enumerate(params):
            b.store(p, b.gep(array, [_i64(j)], inbounds=True, source_etype=PTR))
        threads = b.zext(b.load(self.num_threads, typ=I32), I64)
        b.call(splitter, [array, _i64(count), threads])

    def splitter(self, kernel_fn: ir.Function, n_params: int) -> ir.Function:
        """`void <kernel>_parallel(ptr params, i64 count, i64 threads)` for one kernel."""
        work = self._work(kernel_fn, n_params)
        task = self._task(kernel_fn.name, work)
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, I64, I64]),
                         f"{kernel_fn.name}_parallel")
        fn.linkage = "internal"
        params, count, threads = fn.args
        fb = FunctionBuilder(fn)
        b = fb.b
        n = fb.min(fb.min(threads, MAX_THREADS), count)
        serial = b.icmp_signed("<=", n, _i64(1))
        with b.if_then(serial):
            b.call(kernel_fn, _unpack(b, params, n_params) + [_i64(0), count])
            b.ret_void()
        ctx = b.call(self._malloc, [_i64(CONTEXT_BYTES)])
        with b.if_then(b.icmp_unsigned("==", ctx, ir.Constant(PTR, None))):
            b.call(kernel_fn, _unpack(b, params, n_params) + [_i64(0), count])
            b.ret_void()
        chunks = fb.min(b.mul(n, _i64(CHUNKS_PER_THREAD)), count)
        for field, value in ((PARAMS, params), (COUNT, count), (CHUNKS, chunks),
                             (NEXT, _i64(0)), (DONE, _i64(0)), (REFS, n)):
            b.store(value, _field(b, ctx, field))
        tid = fb.alloca(I64, name="tid")
        with fb.loop(1, n, "spawn"):
            rc = b.call(self._create, [tid, ir.Constant(PTR, None), task, ctx])
            with b.if_else(b.icmp_signed("==", rc, ir.Constant(I32, 0))) as (started, failed):
                with started:
                    b.call(self._detach, [b.load(tid, typ=I64)])
                with failed:
                    b.atomic_rmw("sub", _field(b, ctx, REFS), _i64(1), "seq_cst")
        b.call(work, [ctx])
        wait = fn.append_basic_block("wait")
        spin = fn.append_basic_block("spin")
        finished = fn.append_basic_block("finished")
        b.branch(wait)
        b.position_at_end(wait)
        done = b.load_atomic(_field(b, ctx, DONE), "acquire", 8, typ=I64)
        b.cbranch(b.icmp_signed("<", done, chunks), spin, finished)
        b.position_at_end(spin)
        b.call(self._yield, [])
        b.branch(wait)
        b.position_at_end(finished)
        self._release(b, ctx)
        b.ret_void()
        return fn

    def _work(self, kernel_fn: ir.Function, n_params: int) -> ir.Function:
        """`void <kernel>_work(ctx)`: claim and run chunks until none is left."""
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR]),
                         f"{kernel_fn.name}_work")
        fn.linkage = "internal"
        (ctx,) = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        claim = fn.append_basic_block("claim")
        run = fn.append_basic_block("run")
        done = fn.append_basic_block("done")
        count = b.load(_field(b, ctx, COUNT), typ=I64)
        chunks = b.load(_field(b, ctx, CHUNKS), typ=I64)
        args = _unpack(b, b.load(_field(b, ctx, PARAMS), typ=PTR), n_params)
        b.branch(claim)
        b.position_at_end(claim)
        c = b.atomic_rmw("add", _field(b, ctx, NEXT), _i64(1), "seq_cst")
        b.cbranch(b.icmp_signed("<", c, chunks), run, done)
        b.position_at_end(run)
        start = b.sdiv(b.mul(count, c), chunks)
        end = b.sdiv(b.mul(count, b.add(c, _i64(1))), chunks)
        b.call(kernel_fn, args + [start, end])
        b.atomic_rmw("add", _field(b, ctx, DONE), _i64(1), "seq_cst")
        b.branch(claim)
        b.position_at_end(done)
        b.ret_void()
        return fn

    def _task(self, name: str, work: ir.Function) -> ir.Function:
        """`void *<kernel>_task(ctx)`: a thread's body: work, then drop its reference."""
        fn = ir.Function(self.module, ir.FunctionType(PTR, [PTR]), f"{name}_task")
        fn.linkage = "internal"
        (ctx,) = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.call(work, [ctx])
        self._release(b, ctx)
        b.ret(ir.Constant(PTR, None))
        return fn

    def _release(self, b: ir.IRBuilder, ctx: ir.Value) -> None:
        """Drop one reference to the context; the last one frees it."""
        before = b.atomic_rmw("sub", _field(b, ctx, REFS), _i64(1), "acq_rel")
        with b.if_then(b.icmp_signed("==", before, _i64(1))):
            b.call(self._free, [ctx])


def _field(b: ir.IRBuilder, ctx: ir.Value, j: int) -> ir.Value:
    return b.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, j)], inbounds=True,
                 source_etype=CONTEXT)


def _unpack(b: ir.IRBuilder, params: ir.Value, n: int) -> list[ir.Value]:
    """The kernel's buffer pointers from an array of pointers."""
    return [b.load(b.gep(params, [_i64(j)], inbounds=True, source_etype=PTR), typ=PTR)
            for j in range(n)]
