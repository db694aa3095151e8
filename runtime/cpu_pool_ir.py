"""The LLVM IR of the process's thread pool library (see cpu_pool.py for what it does).

Kept apart from cpu_pool.py so that loading and running programs never imports llvmlite: only
building the pool does (`runtime.cpu` imports this module then).
"""
from __future__ import annotations

import platform
from collections.abc import Callable

from llvmlite import ir

from .cpu_pool import (
    CHUNKS_PER_THREAD,
    MAX_THREADS,
    POOL,
    POOL_ABI,
    PTHREAD_BYTES,
    SPIN_ROUNDS,
    STACK_BYTES,
    YIELD_AFTER,
)

I8, I32, I64, PTR = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.PointerType()
VOID = ir.VoidType()
# a job: {ptr fn, ptr ctx, i64 count, i64 chunks, i64 next, i64 done, i64 active, i32 waiting}
JOB = ir.LiteralStructType([PTR, PTR, I64, I64, I64, I64, I64, I32])
FN, CTX, COUNT, CHUNKS, NEXT, DONE, ACTIVE, WAITING = range(8)
RANGE_FN = ir.FunctionType(VOID, [PTR, I64, I64])  # what `run` calls: fn(ctx, start, end)


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _i32(v: int) -> ir.Constant:
    return ir.Constant(I32, v)


def _store_atomic(b: ir.IRBuilder, value: ir.Value, ptr: ir.Value, ordering: str,
                  align: int) -> None:
    """An atomic store through an opaque pointer (`IRBuilder.store_atomic` wants a typed one)."""
    b._insert(ir.instructions.StoreAtomicInstr(b.block, value, ptr, ordering, align))


class _PoolModule:
    """Builds the pool library's module: state globals, the worker and the exported calls."""

    def __init__(self, x86: bool) -> None:
        self.module = ir.Module(name="neurenix_pool")
        blob = ir.ArrayType(I8, PTHREAD_BYTES)
        self.mutex = self._global("mutex", blob, 16)
        self.cond = self._global("cond", blob, 16)  # workers wait here for a job
        self.done_cond = self._global("done_cond", blob, 16)  # a caller waits here for its job
        self.job = self._global("job", PTR)
        self.generation = self._global("generation", I64)
        self.stop = self._global("stopping", I32)
        self.sleepers = self._global("sleepers", I64)
        self.busy = self._global("busy", I32)  # a caller owns the pool (CAS 0 -> 1)
        self.started = self._global("started", I32)
        self.size = self._global("size", I64)  # workers running
        self.target = self._global("target", I64)  # threads wanted, the caller included
        self.tids = self._global("tids", ir.ArrayType(I64, MAX_THREADS))
        declare = self._declare
        self._create = declare("pthread_create", I32, [PTR, PTR, PTR, PTR])
        self._join = declare("pthread_join", I32, [I64, PTR])
        self._attr_init = declare("pthread_attr_init", I32, [PTR])
        self._attr_stack = declare("pthread_attr_setstacksize", I32, [PTR, I64])
        self._attr_destroy = declare("pthread_attr_destroy", I32, [PTR])
        self._mutex_init = declare("pthread_mutex_init", I32, [PTR, PTR])
        self._lock = declare("pthread_mutex_lock", I32, [PTR])
        self._unlock = declare("pthread_mutex_unlock", I32, [PTR])
        self._cond_init = declare("pthread_cond_init", I32, [PTR, PTR])
        self._wait = declare("pthread_cond_wait", I32, [PTR, PTR])
        self._broadcast = declare("pthread_cond_broadcast", I32, [PTR])
        self._yield = declare("sched_yield", I32, [])
        self._pause = declare("llvm.x86.sse2.pause", VOID, []) \
            if x86 else None

    def _global(self, name: str, typ: ir.Type, align: int = 8) -> ir.GlobalVariable:
        g = ir.GlobalVariable(self.module, typ, f"neurenix_pool_{name}")
        g.initializer = ir.Constant(typ, None)
        g.align = align
        g.linkage = "internal"
        g.type = PTR  # opaque pointers only
        return g

    def _declare(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        return ir.Function(self.module, ir.FunctionType(ret, args), name)

    def _function(self, name: str, ret: ir.Type, args: list[ir.Type],
                  internal: bool = False) -> tuple[ir.Function, ir.IRBuilder]:
        fn = ir.Function(self.module, ir.FunctionType(ret, args), name)
        if internal:
            fn.linkage = "internal"
        entry, body = fn.append_basic_block("entry"), fn.append_basic_block("body")
        ir.IRBuilder(entry).branch(body)  # the entry block holds the stack slots only
        return fn, ir.IRBuilder(body)

    # ---- small pieces -----------------------------------------------------------------------

    def _relax(self, b: ir.IRBuilder) -> None:
        if self._pause is not None:
            b.call(self._pause, [])

    def _spin(self, b: ir.IRBuilder, waiting: Callable[[], ir.Value]) -> None:
        """Wait while `waiting()` (built fresh each round) holds: `pause` for `YIELD_AFTER`
        rounds, then yield the CPU each round (for waits that end within a chunk or two)."""
        fn = b.function
        rounds = self._alloca_entry(fn, I64)
        b.store(_i64(0), rounds)
        check, spin, pause, give, after = (fn.append_basic_block(n) for n in
                                           ("check", "spin", "pause", "yield", "after"))
        b.branch(check)
        b.position_at_end(check)
        b.cbranch(waiting(), spin, after)
        b.position_at_end(spin)
        n = b.add(b.load(rounds, typ=I64), _i64(1))
        b.store(n, rounds)
        b.cbranch(b.icmp_signed("<", n, _i64(YIELD_AFTER)), pause, give)
        b.position_at_end(pause)
        self._relax(b)
        b.branch(check)
        b.position_at_end(give)
        b.call(self._yield, [])
        b.branch(check)
        b.position_at_end(after)

    @staticmethod
    def _alloca_entry(fn: ir.Function, typ: ir.Type, size: int | None = None) -> ir.Value:
        """A stack slot allocated in the function's entry block (so mem2reg can lift it)."""
        entry = fn.entry_basic_block
        b = ir.IRBuilder(entry)
        b.position_before(entry.terminator)
        slot = b.alloca(typ, size=None if size is None else _i64(size))
        slot.type = PTR
        return slot

    def _loop(self, b: ir.IRBuilder, n: ir.Value, body: Callable[[ir.Value], None]) -> None:
        """for (i = 0; i < n; i++) body(i)."""
        fn = b.function
        i = self._alloca_entry(fn, I64)
        b.store(_i64(0), i)
        check, run, after = (fn.append_basic_block(s) for s in ("loop", "body", "after"))
        b.branch(check)
        b.position_at_end(check)
        value = b.load(i, typ=I64)
        b.cbranch(b.icmp_signed("<", value, n), run, after)
        b.position_at_end(run)
        body(value)
        b.store(b.add(value, _i64(1)), i)
        b.branch(check)
        b.position_at_end(after)

    def _tid(self, b: ir.IRBuilder, k: ir.Value) -> ir.Value:
        return b.gep(self.tids, [_i64(0), k], inbounds=True, source_etype=self.tids.value_type)

    def _clamp(self, b: ir.IRBuilder, n: ir.Value) -> ir.Value:
        low = b.select(b.icmp_signed("<", n, _i64(1)), _i64(1), n)
        return b.select(b.icmp_signed(">", low, _i64(MAX_THREADS)), _i64(MAX_THREADS), low)

    # ---- the module -------------------------------------------------------------------------

    def build(self) -> str:
        """The library's LLVM IR text."""
        self.work = self._work()
        worker = self._worker()
        start = self._start_workers(worker)
        stop = self._stop_workers()
        run = self._run(start)
        self._exports(run, stop)
        return str(self.module)

    def _field(self, b: ir.IRBuilder, job: ir.Value, j: int) -> ir.Value:
        return b.gep(job, [_i32(0), _i32(j)], inbounds=True, source_etype=JOB)


    def _work(self) -> ir.Function:
        """`void work(job)`: claim and run chunks until none is left; the thread finishing the
        last chunk wakes the caller if it sleeps."""
        fn, b = self._function("neurenix_pool_work", VOID, [PTR], internal=True)
        (job,) = fn.args
        claim, run, last, wake, done = (fn.append_basic_block(n) for n in
                                        ("claim", "run", "last", "wake", "done"))
        target = b.load(self._field(b, job, FN), typ=RANGE_FN.as_pointer())
        ctx = b.load(self._field(b, job, CTX), typ=PTR)
        count = b.load(self._field(b, job, COUNT), typ=I64)
        chunks = b.load(self._field(b, job, CHUNKS), typ=I64)
        b.branch(claim)
        b.position_at_end(claim)
        c = b.atomic_rmw("add", self._field(b, job, NEXT), _i64(1), "monotonic")
        b.cbranch(b.icmp_signed("<", c, chunks), run, done)
        b.position_at_end(run)
        start = b.sdiv(b.mul(count, c), chunks)
        end = b.sdiv(b.mul(count, b.add(c, _i64(1))), chunks)
        b.call(target, [ctx, start, end])
        finished = b.atomic_rmw("add", self._field(b, job, DONE), _i64(1), "seq_cst")
        b.cbranch(b.icmp_signed("==", b.add(finished, _i64(1)), chunks), last, claim)
        b.position_at_end(last)  # seq_cst against the caller's store of `waiting`
        waiting = b.load_atomic(self._field(b, job, WAITING), "seq_cst", 4, typ=I32)
        b.cbranch(b.icmp_signed("!=", waiting, _i32(0)), wake, done)
        b.position_at_end(wake)
        b.call(self._lock, [self.mutex])
        b.call(self._broadcast, [self.done_cond])
        b.call(self._unlock, [self.mutex])
        b.branch(done)
        b.position_at_end(done)
        b.ret_void()
        return fn

    def _worker(self) -> ir.Function:
        """`void *worker(generation)`: wait for a job newer than the one seen, help with it,
        repeat until stopped.  Its argument is the generation when it was started, so a job
        posted before it runs is not missed."""
        fn, b = self._function("neurenix_pool_worker", PTR, [PTR], internal=True)
        seen = self._alloca_entry(fn, I64)
        rounds = self._alloca_entry(fn, I64)
        b.store(b.ptrtoint(fn.args[0], I64), seen)
        top, spin, relax, lock, wait, sleep, woken, stopped, take, help_, again = (
            fn.append_basic_block(n) for n in ("top", "spin", "relax", "lock", "wait", "sleep",
                                               "woken", "stopped", "take", "help", "again"))
        b.branch(top)
        b.position_at_end(top)
        b.store(_i64(0), rounds)
        b.branch(spin)
        # spin: watch `generation` and `stopping` without the mutex for SPIN_ROUNDS rounds
        b.position_at_end(spin)
        fresh = b.icmp_signed("!=", b.load_atomic(self.generation, "acquire", 8, typ=I64),
                              b.load(seen, typ=I64))
        halt = b.icmp_signed("!=", b.load_atomic(self.stop, "acquire", 4, typ=I32), _i32(0))
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
        stopping = b.icmp_signed("!=", b.load_atomic(self.stop, "monotonic", 4, typ=I32),
                                 _i32(0))
        generation = b.load_atomic(self.generation, "monotonic", 8, typ=I64)
        same = b.icmp_signed("==", generation, b.load(seen, typ=I64))
        b.cbranch(b.and_(b.not_(stopping), same), sleep, woken)
        b.position_at_end(sleep)
        b.store(b.add(b.load(self.sleepers, typ=I64), _i64(1)), self.sleepers)
        b.call(self._wait, [self.cond, self.mutex])
        b.store(b.sub(b.load(self.sleepers, typ=I64), _i64(1)), self.sleepers)
        b.branch(wait)
        b.position_at_end(woken)
        b.cbranch(stopping, stopped, take)
        b.position_at_end(stopped)
        b.call(self._unlock, [self.mutex])
        b.ret(ir.Constant(PTR, None))
        b.position_at_end(take)  # under the mutex: a job not yet withdrawn, joined
        b.store(generation, seen)
        job = b.load(self.job, typ=PTR)
        has_job = b.icmp_unsigned("!=", job, ir.Constant(PTR, None))
        with b.if_then(has_job):
            b.atomic_rmw("add", self._field(b, job, ACTIVE), _i64(1), "seq_cst")
        b.call(self._unlock, [self.mutex])
        b.cbranch(has_job, help_, again)
        b.position_at_end(help_)
        b.call(self.work, [job])
        b.atomic_rmw("sub", self._field(b, job, ACTIVE), _i64(1), "release")
        b.branch(again)
        b.position_at_end(again)
        b.branch(top)
        return fn

    def _start_workers(self, worker: ir.Function) -> ir.Function:
        """`void start()`, with the pool owned: start `target - 1` workers of `STACK_BYTES`
        stack each (fewer if the OS refuses some)."""
        fn, b = self._function("neurenix_pool_start_workers", VOID, [], internal=True)
        attr = self._alloca_entry(fn, ir.ArrayType(I8, PTHREAD_BYTES))
        attr.align = 16
        b.call(self._attr_init, [attr])
        b.call(self._attr_stack, [attr, _i64(STACK_BYTES)])
        generation = b.inttoptr(b.load_atomic(self.generation, "monotonic", 8, typ=I64), PTR)
        _store_atomic(b, _i64(0), self.size, "monotonic", 8)
        wanted = b.sub(b.load(self.target, typ=I64), _i64(1))

        def spawn(_: ir.Value) -> None:
            size = b.load(self.size, typ=I64)
            rc = b.call(self._create, [self._tid(b, size), attr, worker, generation])
            with b.if_then(b.icmp_signed("==", rc, _i32(0))):
                _store_atomic(b, b.add(size, _i64(1)), self.size, "monotonic", 8)

        self._loop(b, wanted, spawn)
        b.call(self._attr_destroy, [attr])
        b.store(_i32(1), self.started)
        b.ret_void()
        return fn

    def _stop_workers(self) -> ir.Function:
        """`void stop()`, with the pool owned: stop and join the workers; the next run starts
        them again."""
        fn, b = self._function("neurenix_pool_stop_workers", VOID, [], internal=True)
        size = b.load(self.size, typ=I64)
        with b.if_then(b.icmp_signed("!=", size, _i64(0))):
            b.call(self._lock, [self.mutex])
            _store_atomic(b, _i32(1), self.stop, "release", 4)
            b.call(self._broadcast, [self.cond])
            b.call(self._unlock, [self.mutex])
            self._loop(b, size, lambda t: b.call(
                self._join, [b.load(self._tid(b, t), typ=I64), ir.Constant(PTR, None)]))
            _store_atomic(b, _i64(0), self.size, "monotonic", 8)
            _store_atomic(b, _i32(0), self.stop, "release", 4)
        b.store(_i32(0), self.started)
        b.ret_void()
        return fn

    def _own(self, b: ir.IRBuilder) -> ir.Value:
        """Try to take the pool (i1: taken): a compare-and-swap of `busy` from 0 to 1."""
        pair = b.cmpxchg(self.busy, _i32(0), _i32(1), "acquire", "monotonic")
        return b.extract_value(pair, 1)

    def _release(self, b: ir.IRBuilder) -> None:
        _store_atomic(b, _i32(0), self.busy, "release", 4)

    def _run(self, start: ir.Function) -> ir.Function:
        """`void neurenix_pool_run(pool, fn, ctx, count)`: fn(ctx, start, end) over chunks
        of [0, count) on the pool, all done on return (serially when the pool is taken)."""
        fn, b = self._function("neurenix_pool_run", VOID,
                               [PTR, RANGE_FN.as_pointer(), PTR, I64])
        _, target, ctx, count = fn.args
        many, serial, owned, alone, parallel, sleep, wait, asleep, slept, finished = (
            fn.append_basic_block(n) for n in ("many", "serial", "owned", "alone", "parallel",
                                               "sleep", "wait", "asleep", "slept", "finished"))
        b.cbranch(b.icmp_signed("<", count, _i64(2)), serial, many)
        b.position_at_end(many)
        b.cbranch(self._own(b), owned, serial)
        b.position_at_end(serial)
        b.call(target, [ctx, _i64(0), count])
        b.ret_void()
        b.position_at_end(owned)
        with b.if_then(b.icmp_signed("==", b.load(self.started, typ=I32), _i32(0))):
            b.call(start, [])
        workers = b.load(self.size, typ=I64)
        b.cbranch(b.icmp_signed("==", workers, _i64(0)), alone, parallel)
        b.position_at_end(alone)
        self._release(b)
        b.branch(serial)
        b.position_at_end(parallel)
        share = b.mul(b.add(workers, _i64(1)), _i64(CHUNKS_PER_THREAD))
        chunks = b.select(b.icmp_signed("<", share, count), share, count)
        job = self._alloca_entry(fn, JOB)
        for field, value in ((FN, target), (CTX, ctx), (COUNT, count), (CHUNKS, chunks),
                             (NEXT, _i64(0)), (DONE, _i64(0)), (ACTIVE, _i64(0)),
                             (WAITING, _i32(0))):
            b.store(value, self._field(b, job, field))
        # post: publish the job, a new generation (release), wake sleeping workers
        b.call(self._lock, [self.mutex])
        b.store(job, self.job)
        generation = b.load_atomic(self.generation, "monotonic", 8, typ=I64)
        _store_atomic(b, b.add(generation, _i64(1)), self.generation, "release", 8)
        with b.if_then(b.icmp_signed("!=", b.load(self.sleepers, typ=I64), _i64(0))):
            b.call(self._broadcast, [self.cond])
        b.call(self._unlock, [self.mutex])
        b.call(self.work, [job])
        # the caller's chunks are done: spin a while on `done`, then sleep until it is full
        rounds = self._alloca_entry(fn, I64)
        b.store(_i64(0), rounds)
        check, relax = fn.append_basic_block("check"), fn.append_basic_block("relax")
        b.branch(check)
        b.position_at_end(check)
        done = b.load_atomic(self._field(b, job, DONE), "acquire", 8, typ=I64)
        n = b.add(b.load(rounds, typ=I64), _i64(1))
        b.store(n, rounds)
        spun = b.icmp_signed(">=", n, _i64(SPIN_ROUNDS))
        b.cbranch(b.icmp_signed(">=", done, chunks), finished, relax)
        b.position_at_end(relax)
        self._relax(b)
        b.cbranch(spun, sleep, check)
        b.position_at_end(sleep)
        b.call(self._lock, [self.mutex])
        _store_atomic(b, _i32(1), self._field(b, job, WAITING), "seq_cst", 4)
        b.branch(wait)
        b.position_at_end(wait)
        done = b.load_atomic(self._field(b, job, DONE), "seq_cst", 8, typ=I64)
        b.cbranch(b.icmp_signed(">=", done, chunks), slept, asleep)
        b.position_at_end(asleep)
        b.call(self._wait, [self.done_cond, self.mutex])
        b.branch(wait)
        b.position_at_end(slept)
        b.call(self._unlock, [self.mutex])
        b.branch(finished)
        # withdraw the job (no worker joins it from now on), wait for those in it to leave
        b.position_at_end(finished)
        b.call(self._lock, [self.mutex])
        b.store(ir.Constant(PTR, None), self.job)
        b.call(self._unlock, [self.mutex])
        self._spin(b, lambda: b.icmp_signed(
            "!=", b.load_atomic(self._field(b, job, ACTIVE), "acquire", 8, typ=I64), _i64(0)))
        self._release(b)
        b.ret_void()
        return fn

    def _exports(self, run: ir.Function, stop: ir.Function) -> None:
        """The struct programs receive and the calls the runtime makes."""
        struct = ir.LiteralStructType([I64, PTR])
        pool = ir.GlobalVariable(self.module, struct, POOL)
        pool.initializer = ir.Constant(struct, [_i64(POOL_ABI), run])
        pool.global_constant = True
        pool.align = 16

        fn, b = self._function("neurenix_pool_init", VOID, [I64])
        b.call(self._mutex_init, [self.mutex, ir.Constant(PTR, None)])
        b.call(self._cond_init, [self.cond, ir.Constant(PTR, None)])
        b.call(self._cond_init, [self.done_cond, ir.Constant(PTR, None)])
        for g, typ in ((self.job, PTR), (self.sleepers, I64),
                       (self.busy, I32), (self.started, I32), (self.stop, I32)):
            b.store(ir.Constant(typ, None), g)
        _store_atomic(b, _i64(0), self.size, "monotonic", 8)
        _store_atomic(b, self._clamp(b, fn.args[0]), self.target, "monotonic", 8)
        b.fence("seq_cst")
        b.ret_void()

        fn, b = self._function("neurenix_pool_set_threads", VOID, [I64])
        loop, wait, got = (fn.append_basic_block(n) for n in ("loop", "wait", "got"))
        b.branch(loop)
        b.position_at_end(loop)
        b.cbranch(self._own(b), got, wait)
        b.position_at_end(wait)  # a job in flight: it ends within a call
        b.call(self._yield, [])
        b.branch(loop)
        b.position_at_end(got)
        b.call(stop, [])
        _store_atomic(b, self._clamp(b, fn.args[0]), self.target, "monotonic", 8)
        self._release(b)
        b.ret_void()

        fn, b = self._function("neurenix_pool_threads", I64, [])
        b.ret(b.load_atomic(self.target, "monotonic", 8, typ=I64))
        fn, b = self._function("neurenix_pool_workers", I64, [])
        b.ret(b.load_atomic(self.size, "monotonic", 8, typ=I64))


def build(x86: bool) -> str:
    """The pool library's module as LLVM IR text (`pause` in spin loops on x86)."""
    return _PoolModule(x86).build()


def pool_source(machine: str | None = None) -> str:
    """The pool library's LLVM IR for this machine (`platform.machine()`; compiled for the host
    and loaded by `runtime.cpu`)."""
    machine = (machine or platform.machine()).lower()
    return build(machine in ("x86_64", "amd64", "i386", "i686"))
