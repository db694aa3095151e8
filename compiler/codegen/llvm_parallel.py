"""Splitting kernel ranges across a thread pool that lives in the generated module.

Every kernel function runs a [start, end) part of its range, so parallelism needs no change to
kernels.  The module carries a small pool of POSIX worker threads:

    void neurenix_pool_start(i64 threads)   start threads - 1 workers (the caller is the last)
    void neurenix_pool_stop()               stop and join them (before the code is unloaded)

and, for each large kernel, `void <kernel>_parallel(ptr params, i64 count)`, which the entry
calls instead of the kernel.  It posts a job on the caller's stack — {params, count, chunks,
next, done, active, kernel} — under the pool's mutex, and runs chunks itself: everyone claims the
next chunk with an atomic increment of `next` until none is left.  The caller waits until `done`
counts every chunk, withdraws the job under the mutex, then waits for the workers that picked it
up (`active`) to leave it.  Chunks are claimed, not assigned, so a worker the OS wakes late — on
a busy machine — costs nothing: the caller never waits for a thread that has not started on the
job.  Without workers (pool not started, thread creation refused, a forked child) the caller
simply runs every chunk.

Waking a sleeping thread costs a system call and tens of microseconds, as much as a small
kernel's whole run; so a worker that finishes a job spins (with `pause`) on the job counter for
`SPIN_ROUNDS` rounds before it sleeps on the condition variable, and a post only broadcasts when
some worker sleeps.  Kernels of one call, and calls in a loop, then find the workers awake.

Only kernels marked parallel, without accumulating stores and with at least
`PARALLEL_MIN_WORK` element operations are split; the rest run on the calling thread.

A full reduction (a kernel with no domain axes: `x.sum()`, `x.mean()`, `x.argmax()`) has a
range of one point, so it is split in its reduction instead (`splits_reduction`): a part
function `<kernel>_part(bufs..., ptr partials, i64 start, i64 end)` reduces parts [start, end)
of the reduction — a fixed number of runs of whole blocks, `llvm_reduce.part_count`, however
many threads there are — each into its own slot of `partials` (a buffer on the entry's stack),
through an ordinary splitter; then `<kernel>_finish(bufs..., ptr partials)` combines the slots
in part order on the calling thread and runs the stores.  Combining in a fixed order makes the
result the same for any number of threads (and for any claiming order), and a float sum's
partials are float64 (see llvm_reduce.py), so splitting costs no accuracy.  The kernel function
itself runs every part and the finish on the calling thread (what `CpuExecutable.profile`
calls).
"""
from __future__ import annotations

from llvmlite import ir

from ..kernel import Kernel
from .llvm_loops import FunctionBuilder
from .llvm_math import I32, I64, PTR

PARALLEL_MIN_WORK = 1 << 17
SPIN_ROUNDS = 1 << 12  # about a hundred microseconds of `pause` before a worker sleeps
MAX_THREADS = 64
CHUNKS_PER_THREAD = 4
POOL_START = "neurenix_pool_start"
POOL_STOP = "neurenix_pool_stop"
POOL_SIZE = "neurenix_pool_size"
PTHREAD_BYTES = 128  # room for a pthread_mutex_t / pthread_cond_t on any libc
# a job: {ptr params, i64 count, i64 chunks, i64 next, i64 done, i64 active, i64 kernel}
JOB = ir.LiteralStructType([PTR, I64, I64, I64, I64, I64, I64])
PARAMS, COUNT, CHUNKS, NEXT, DONE, ACTIVE, KERNEL = range(7)


def worth_splitting(kernel: Kernel) -> bool:
    """Whether a kernel is safe to split across threads and big enough to gain from it."""
    if not kernel.parallel or any(s.accumulate for s in kernel.stores):
        return False
    work = 1
    for d in kernel.domain + kernel.reduce:
        work *= d
    return work >= PARALLEL_MIN_WORK


def splits_reduction(kernel: Kernel) -> bool:
    """Whether a kernel is a full reduction big enough to split across threads in parts."""
    if kernel.domain or kernel.reduce_value is None or not kernel.parallel:
        return False
    work = 1
    for d in kernel.reduce:
        work *= d
    return work >= PARALLEL_MIN_WORK


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _global(module: ir.Module, name: str, typ: ir.Type, align: int = 8) -> ir.GlobalVariable:
    g = ir.GlobalVariable(module, typ, name)
    g.initializer = ir.Constant(typ, None)
    g.align = align
    g.linkage = "internal"
    g.type = PTR  # llvmlite types globals as typed pointers; we use opaque ones only
    return g


class Threading:
    """The module's pool (its globals, start, stop and worker) and the per-kernel splitters."""

    def __init__(self, module: ir.Module) -> None:
        self.module = module
        blob = ir.ArrayType(ir.IntType(8), PTHREAD_BYTES)
        self.mutex = _global(module, "neurenix_pool_mutex", blob, 16)
        self.cond = _global(module, "neurenix_pool_cond", blob, 16)
        self.job = _global(module, "neurenix_pool_job", PTR)
        self.generation = _global(module, "neurenix_pool_generation", I64)
        self.stop = _global(module, "neurenix_pool_stopping", I32)
        self.sleepers = _global(module, "neurenix_pool_sleepers", I64)
        self.ready = _global(module, "neurenix_pool_ready", I32)
        self.tids = _global(module, "neurenix_pool_tids", ir.ArrayType(I64, MAX_THREADS))
        self.size = _global(module, POOL_SIZE, I64)  # workers running; read by the runtime
        self.size.linkage = ""
        self._works: list[ir.Function] = []
        declare = lambda name, ret, args: ir.Function(module, ir.FunctionType(ret, args), name)
        self._create = declare("pthread_create", I32, [PTR, PTR, PTR, PTR])
        self._join = declare("pthread_join", I32, [I64, PTR])
        self._mutex_init = declare("pthread_mutex_init", I32, [PTR, PTR])
        self._lock = declare("pthread_mutex_lock", I32, [PTR])
        self._unlock = declare("pthread_mutex_unlock", I32, [PTR])
        self._cond_init = declare("pthread_cond_init", I32, [PTR, PTR])
        self._wait = declare("pthread_cond_wait", I32, [PTR, PTR])
        self._broadcast = declare("pthread_cond_broadcast", I32, [PTR])
        self._yield = declare("sched_yield", I32, [])
        triple = module.triple or ""
        self._pause = declare("llvm.x86.sse2.pause", ir.VoidType(), []) \
            if triple.startswith(("x86_64", "i686", "i386")) else None

    # ---- per kernel -------------------------------------------------------------------------

    def call(self, b: ir.IRBuilder, splitter: ir.Function, params: list[ir.Value],
             count: int) -> None:
        """Emit, into the entry, a parallel run of a kernel over [0, count)."""
        array = b.alloca(PTR, size=ir.Constant(I64, len(params)), name="params")
        array.type = PTR  # opaque, as every pointer here
        for j, p in enumerate(params):
            b.store(p, b.gep(array, [_i64(j)], inbounds=True, source_etype=PTR))
        b.call(splitter, [array, _i64(count)])

    def splitter(self, kernel_fn: ir.Function, n_params: int) -> ir.Function:
        """`void <kernel>_parallel(ptr params, i64 count)`: run the kernel on the pool."""
        work = self._work(kernel_fn, n_params)
        self._works.append(work)
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, I64]),
                         f"{kernel_fn.name}_parallel")
        fn.linkage = "internal"
        params, count = fn.args
        fb = FunctionBuilder(fn)
        b = fb.b
        workers = b.load(self.size, typ=I64)
        with b.if_then(b.icmp_signed("==", workers, _i64(0))):
            b.call(kernel_fn, _unpack(b, params, n_params) + [_i64(0), count])
            b.ret_void()
        chunks = fb.min(b.mul(b.add(workers, _i64(1)), _i64(CHUNKS_PER_THREAD)), count)
        job = fb.alloca(JOB, name="job")
        for field, value in ((PARAMS, params), (COUNT, count), (CHUNKS, chunks), (NEXT, _i64(0)),
                             (DONE, _i64(0)), (ACTIVE, _i64(0)),
                             (KERNEL, _i64(len(self._works) - 1))):
            b.store(value, _field(b, job, field))
        self._post(b, job)
        b.call(work, [job])
        self._spin(fb, lambda: b.icmp_signed(
            "<", b.load_atomic(_field(b, job, DONE), "acquire", 8, typ=I64), chunks))
        self._withdraw(b)
        self._spin(fb, lambda: b.icmp_signed(
            "!=", b.load_atomic(_field(b, job, ACTIVE), "acquire", 8, typ=I64), _i64(0)))
        b.ret_void()
        return fn

    def _post(self, b: ir.IRBuilder, job: ir.Value) -> None:
        """Publish `job`; wake the workers only if one sleeps (spinning ones see the count)."""
        b.call(self._lock, [self.mutex])
        b.store(job, self.job)
        b.store(b.add(b.load(self.generation, typ=I64), _i64(1)), self.generation)
        with b.if_then(b.icmp_signed("!=", b.load(self.sleepers, typ=I64), _i64(0))):
            b.call(self._broadcast, [self.cond])
        b.call(self._unlock, [self.mutex])

    def _withdraw(self, b: ir.IRBuilder) -> None:
        """Take the finished job down: a worker arriving later finds none (nobody is woken)."""
        b.call(self._lock, [self.mutex])
        b.store(ir.Constant(PTR, None), self.job)
        b.call(self._unlock, [self.mutex])

    def _relax(self, b: ir.IRBuilder) -> None:
        if self._pause is not None:
            b.call(self._pause, [])

    def _spin(self, fb: FunctionBuilder, waiting) -> None:
        """Wait while `waiting()` (a condition built fresh each round) holds: `pause` for a
        while (the other chunks are short), then yield the CPU each round."""
        b = fb.b
        rounds = fb.alloca(I64, name="rounds")
        b.store(_i64(0), rounds)
        check = fb.fn.append_basic_block("check")
        spin = fb.fn.append_basic_block("spin")
        pause = fb.fn.append_basic_block("pause")
        give = fb.fn.append_basic_block("yield")
        after = fb.fn.append_basic_block("after")
        b.branch(check)
        b.position_at_end(check)
        b.cbranch(waiting(), spin, after)
        b.position_at_end(spin)
        n = b.add(b.load(rounds, typ=I64), _i64(1))
        b.store(n, rounds)
        b.cbranch(b.icmp_signed("<", n, _i64(SPIN_ROUNDS)), pause, give)
        b.position_at_end(pause)
        self._relax(b)
        b.branch(check)
        b.position_at_end(give)
        b.call(self._yield, [])
        b.branch(check)
        b.position_at_end(after)

    def _work(self, kernel_fn: ir.Function, n_params: int) -> ir.Function:
        """`void <kernel>_work(job)`: claim and run chunks until none is left."""
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR]),
                         f"{kernel_fn.name}_work")
        fn.linkage = "internal"
        (job,) = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        claim = fn.append_basic_block("claim")
        run = fn.append_basic_block("run")
        done = fn.append_basic_block("done")
        count = b.load(_field(b, job, COUNT), typ=I64)
        chunks = b.load(_field(b, job, CHUNKS), typ=I64)
        b.branch(claim)
        b.position_at_end(claim)
        c = b.atomic_rmw("add", _field(b, job, NEXT), _i64(1), "seq_cst")
        b.cbranch(b.icmp_signed("<", c, chunks), run, done)
        b.position_at_end(run)
        args = _unpack(b, b.load(_field(b, job, PARAMS), typ=PTR), n_params)
        start = b.sdiv(b.mul(count, c), chunks)
        end = b.sdiv(b.mul(count, b.add(c, _i64(1))), chunks)
        b.call(kernel_fn, args + [start, end])
        b.atomic_rmw("add", _field(b, job, DONE), _i64(1), "release")
        b.branch(claim)
        b.position_at_end(done)
        b.ret_void()
        return fn

    # ---- the pool ---------------------------------------------------------------------------

    def finish(self) -> None:
        """Emit the worker, `neurenix_pool_start` and `neurenix_pool_stop` (after the kernels,
        since the worker dispatches to every kernel's work function)."""
        worker = self._worker()
        self._start(worker)
        self._stop()

    def _worker(self) -> ir.Function:
        """`void *neurenix_pool_worker(ptr)`: wait for a new job, help with it, repeat."""
        fn = ir.Function(self.module, ir.FunctionType(PTR, [PTR]), "neurenix_pool_worker")
        fn.linkage = "internal"
        fb = FunctionBuilder(fn)
        b = fb.b
        seen = fb.alloca(I64, name="seen")
        rounds = fb.alloca(I64, name="rounds")
        b.call(self._lock, [self.mutex])
        b.store(b.load(self.generation, typ=I64), seen)
        b.call(self._unlock, [self.mutex])
        # spin: watch the job counter without the mutex for SPIN_ROUNDS rounds
        spin = fn.append_basic_block("spin")
        relax = fn.append_basic_block("relax")
        lock = fn.append_basic_block("lock")
        wait = fn.append_basic_block("wait")
        sleep = fn.append_basic_block("sleep")
        woken = fn.append_basic_block("woken")
        b.store(_i64(0), rounds)
        b.branch(spin)
        b.position_at_end(spin)
        fresh = b.icmp_signed("!=", b.load_atomic(self.generation, "acquire", 8, typ=I64),
                              b.load(seen, typ=I64))
        halt = b.icmp_signed("!=", b.load_atomic(self.stop, "acquire", 4, typ=I32),
                             ir.Constant(I32, 0))
        n = b.add(b.load(rounds, typ=I64), _i64(1))
        b.store(n, rounds)
        more = b.icmp_signed("<", n, _i64(SPIN_ROUNDS))
        b.cbranch(b.or_(b.or_(fresh, halt), b.not_(more)), lock, relax)
        b.position_at_end(relax)
        self._relax(b)
        b.branch(spin)
        # then sleep on the condition variable until a new job or stop
        b.position_at_end(lock)
        b.call(self._lock, [self.mutex])
        b.branch(wait)
        b.position_at_end(wait)
        stopping = b.icmp_signed("!=", b.load(self.stop, typ=I32), ir.Constant(I32, 0))
        same = b.icmp_signed("==", b.load(self.generation, typ=I64), b.load(seen, typ=I64))
        b.cbranch(b.and_(b.not_(stopping), same), sleep, woken)
        b.position_at_end(sleep)
        b.store(b.add(b.load(self.sleepers, typ=I64), _i64(1)), self.sleepers)
        b.call(self._wait, [self.cond, self.mutex])
        b.store(b.sub(b.load(self.sleepers, typ=I64), _i64(1)), self.sleepers)
        b.branch(wait)
        b.position_at_end(woken)
        with b.if_then(stopping):
            b.call(self._unlock, [self.mutex])
            b.ret(ir.Constant(PTR, None))
        b.store(b.load(self.generation, typ=I64), seen)
        job = b.load(self.job, typ=PTR)
        has_job = b.icmp_unsigned("!=", job, ir.Constant(PTR, None))
        with b.if_then(has_job):
            b.atomic_rmw("add", _field(b, job, ACTIVE), _i64(1), "seq_cst")
        b.call(self._unlock, [self.mutex])
        with b.if_then(has_job):
            kernel = b.load(_field(b, job, KERNEL), typ=I64)
            after = fn.append_basic_block("dispatched")
            switch = b.switch(kernel, after)
            for k, work in enumerate(self._works):
                case = fn.append_basic_block(f"kernel{k}")
                switch.add_case(_i64(k), case)
                b.position_at_end(case)
                b.call(work, [job])
                b.branch(after)
            b.position_at_end(after)
            b.atomic_rmw("sub", _field(b, job, ACTIVE), _i64(1), "release")
        b.store(_i64(0), rounds)
        b.branch(spin)
        return fn

    def _start(self, worker: ir.Function) -> None:
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I64]), POOL_START)
        (threads,) = fn.args
        fb = FunctionBuilder(fn)
        b = fb.b
        with b.if_then(b.icmp_signed("==", b.load(self.ready, typ=I32), ir.Constant(I32, 0))):
            b.call(self._mutex_init, [self.mutex, ir.Constant(PTR, None)])
            b.call(self._cond_init, [self.cond, ir.Constant(PTR, None)])
            b.store(ir.Constant(I32, 1), self.ready)
        with b.if_then(b.icmp_signed("!=", b.load(self.size, typ=I64), _i64(0))):
            b.ret_void()  # already running
        with fb.loop(1, fb.min(threads, MAX_THREADS), "spawn"):
            size = b.load(self.size, typ=I64)
            tid = b.gep(self.tids, [_i64(0), size], inbounds=True,
                        source_etype=self.tids.value_type)
            null = ir.Constant(PTR, None)
            rc = b.call(self._create, [tid, null, worker, null])
            with b.if_then(b.icmp_signed("==", rc, ir.Constant(I32, 0))):
                b.store(b.add(size, _i64(1)), self.size)
        b.ret_void()

    def _stop(self) -> None:
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), []), POOL_STOP)
        fb = FunctionBuilder(fn)
        b = fb.b
        size = b.load(self.size, typ=I64)
        with b.if_then(b.icmp_signed("==", size, _i64(0))):
            b.ret_void()
        b.call(self._lock, [self.mutex])
        b.store(ir.Constant(I32, 1), self.stop)
        b.call(self._broadcast, [self.cond])
        b.call(self._unlock, [self.mutex])
        with fb.loop(0, size, "join") as t:
            tid = b.gep(self.tids, [_i64(0), t], inbounds=True, source_etype=self.tids.value_type)
            b.call(self._join, [b.load(tid, typ=I64), ir.Constant(PTR, None)])
        b.store(_i64(0), self.size)
        b.store(ir.Constant(I32, 0), self.stop)
        b.ret_void()


def _field(b: ir.IRBuilder, job: ir.Value, j: int) -> ir.Value:
    return b.gep(job, [ir.Constant(I32, 0), ir.Constant(I32, j)], inbounds=True,
                 source_etype=JOB)


def _unpack(b: ir.IRBuilder, params: ir.Value, n: int) -> list[ir.Value]:
    """The kernel's buffer pointers from an array of pointers."""
    return [b.load(b.gep(params, [_i64(j)], inbounds=True, source_etype=PTR), typ=PTR)
            for j in range(n)]
