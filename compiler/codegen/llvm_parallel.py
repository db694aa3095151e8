"""Splitting kernel ranges across the process's thread pool, which the runtime provides.

Every kernel function runs a [start, end) part of its range, so parallelism needs no change to
kernels.  Generated code owns no threads: the entry receives the pool as its third argument,

    void neurenix_entry(void **args, void *arena, const struct neurenix_pool *pool)
    struct neurenix_pool {                          /* POOL_ABI = 1 */
        int64_t abi;
        void (*run)(const struct neurenix_pool *pool,
                    void (*fn)(void *ctx, int64_t start, int64_t end),
                    void *ctx, int64_t count);     /* fn over [0, count), done on return */
    };

and `Program.metadata["pool_abi"]` says which ABI the program expects.  For each large kernel
the module has `void <kernel>_range(ptr params, i64 start, i64 end)`, which takes the kernel's
buffers from an array of pointers (`params`, on the entry's stack) and runs the kernel over
[start, end); the entry calls `neurenix_parallel(pool, <kernel>_range, params, count)`, which
hands it to `pool->run` — or, with a NULL pool (an exported library called from C without one),
runs the whole range on the calling thread.  `runtime/cpu_pool.py` implements the pool: one
library per process, workers started lazily, chunks claimed with atomic increments, short
spins before sleeping, concurrent callers, fork; see its docstring.  Programs that own no
threads can be unloaded as soon as nobody references them.

Which kernels are split is their schedule's `threaded` (compiler/schedule/ranges.py: marked
parallel, no accumulating store, at least `PARALLEL_MIN_WORK` element operations); the rest run
on the calling thread.

A full reduction (a kernel with no domain axes: `x.sum()`, `x.mean()`, `x.argmax()`) has a
range of one point, so it is split in its reduction instead (a `SplitReduction`): a part
function `<kernel>_part(bufs..., ptr partials, i64 start, i64 end)` reduces parts [start, end)
of the reduction — a fixed number of runs of whole blocks, `SplitReduction.parts`, however
many threads there are — each into its own slot of `partials` (a buffer on the entry's stack),
through an ordinary range function; then `<kernel>_finish(bufs..., ptr partials)` combines the
slots in part order on the calling thread and runs the stores.  Combining in a fixed order
makes the result the same for any number of threads (and for any claiming order), and a float
sum's partials are float64 (see llvm_reduce.py), so splitting costs no accuracy.  The kernel
function itself runs every part and the finish on the calling thread (what
`CpuExecutable.profile` calls).
"""
from __future__ import annotations

from llvmlite import ir

from .llvm_math import I64, PTR

POOL_ABI = 1  # the `struct neurenix_pool` above; runtime/cpu_pool.py implements the same
PARALLEL = "neurenix_parallel"
RANGE_FN = ir.FunctionType(ir.VoidType(), [PTR, I64, I64])


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


class Threading:
    """The module's side of the pool: per-kernel range functions and the dispatch helper."""

    def __init__(self, module: ir.Module) -> None:
        self.module = module
        self._parallel: ir.Function | None = None

    def splitter(self, kernel_fn: ir.Function, n_params: int) -> ir.Function:
        """`void <kernel>_range(ptr params, i64 start, i64 end)`: the kernel over [start, end),
        its buffers read from an array of pointers (what the pool calls per chunk)."""
        fn = ir.Function(self.module, RANGE_FN, f"{kernel_fn.name}_range")
        fn.linkage = "internal"
        params, start, end = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.call(kernel_fn, _unpack(b, params, n_params) + [start, end])
        b.ret_void()
        return fn

    def call(self, b: ir.IRBuilder, splitter: ir.Function, params: list[ir.Value],
             count: int | ir.Value, pool: ir.Value) -> None:
        """Emit, into the entry, a parallel run of a kernel over [0, count) on `pool` (`count`
        an int, or an i64 computed from a program's dynamic sizes)."""
        array = b.alloca(PTR, size=_i64(len(params)), name="params")
        array.type = PTR  # opaque, as every pointer here
        for j, p in enumerate(params):
            b.store(p, b.gep(array, [_i64(j)], inbounds=True, source_etype=PTR))
        count = _i64(count) if isinstance(count, int) else count
        b.call(self.parallel(), [pool, splitter, array, count])

    def parallel(self) -> ir.Function:
        """`void neurenix_parallel(ptr pool, ptr fn, ptr ctx, i64 count)`: `pool->run(pool,
        fn, ctx, count)`, or `fn(ctx, 0, count)` on this thread when `pool` is NULL."""
        if self._parallel is not None:
            return self._parallel
        fn = ir.Function(self.module, ir.FunctionType(
            ir.VoidType(), [PTR, RANGE_FN.as_pointer(), PTR, I64]), PARALLEL)
        fn.linkage = "internal"
        pool, target, ctx, count = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        with b.if_else(b.icmp_unsigned("==", pool, ir.Constant(PTR, None))) as (alone, shared):
            with alone:
                b.call(target, [ctx, _i64(0), count])
            with shared:
                slot = b.gep(pool, [_i64(1)], inbounds=True, source_etype=I64)
                run = b.load(slot, typ=ir.FunctionType(
                    ir.VoidType(), [PTR, PTR, PTR, I64]).as_pointer())
                b.call(run, [pool, target, ctx, count])
        b.ret_void()
        self._parallel = fn
        return fn


def _unpack(b: ir.IRBuilder, params: ir.Value, n: int) -> list[ir.Value]:
    """The kernel's buffer pointers from an array of pointers."""
    return [b.load(b.gep(params, [_i64(j)], inbounds=True, source_etype=PTR), typ=PTR)
            for j in range(n)]
