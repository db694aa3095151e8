"""The process's thread pool: one small native library that every compiled CPU program shares.

A compiled program splits a large kernel's range into chunks and hands them to the pool through
its entry's third argument, a pointer to

    struct neurenix_pool {                          /* POOL_ABI = 1 */
        int64_t abi;                                /* POOL_ABI */
        void (*run)(const struct neurenix_pool *pool,
                    void (*fn)(void *ctx, int64_t start, int64_t end),
                    void *ctx, int64_t count);     /* fn over [0, count), all done on return */
    };

(`neurenix_entry(void **args, void *arena, const struct neurenix_pool *pool)`; a NULL pool runs
every kernel on the calling thread, so an exported library works without this one).  The pool
is built as LLVM IR (`cpu_pool_ir.pool_source`), compiled and loaded once per process by
`runtime.cpu.process_pool` (or loaded from bytes a program's library carries), and never
unloaded, so programs can be unloaded freely: no thread ever runs a program's code
between two of its calls.

The library (`neurenix_pool_*`, state in its globals):

- workers start lazily, on the first `run` that can use them: `threads - 1` POSIX threads
  (`NEURENIX_NUM_THREADS`, else the cores this process may use; the caller is the last), each
  with an explicit `STACK_BYTES` stack.  `set_threads(n)` joins them; the next `run` starts `n - 1`.
- `run` claims the pool with an atomic compare-and-swap of `busy`; a caller that finds it taken
  (another Python thread running another program at the same time) runs its own chunks
  serially, never waits.  The owner posts a job on its stack — {fn, ctx, count, chunks, next,
  done, active, waiting} — under the mutex, with a store-release of `generation`, and claims
  chunks itself: everybody takes the next chunk with an atomic increment of `next`, so a worker
  the OS wakes late costs nothing.
- Waking a sleeping thread costs a system call and tens of microseconds, as much as a small
  kernel; so a worker that finishes a job spins (`pause`) on `generation` for `SPIN_ROUNDS`
  rounds before it sleeps on a condition variable, and a post broadcasts only when one sleeps.
- The caller, its chunks done, spins as long on `done` and then sleeps on a second condition
  variable that the worker finishing the last chunk signals (a `waiting` flag against `done`,
  both sequentially consistent, so neither side misses the other).  Then it withdraws the job
  under the mutex and waits for the workers that picked it up (`active`) to leave it.
- `after_fork` (registered with `os.register_at_fork`) re-initialises the state in a child,
  which has none of the workers: the child's pool starts afresh on its first parallel run.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable

POOL_ABI = 1
# Worker stacks, set explicitly rather than inherited from `ulimit -s`: generated kernels keep
# at most ~16 KiB on the stack (larger GEMM scratch is on the heap), so this is a wide margin;
# reserved address space, of which only the touched pages cost memory.
STACK_BYTES = 4 << 20
SPIN_ROUNDS = 1 << 12  # about a hundred microseconds of `pause` before a thread sleeps
YIELD_AFTER = 1 << 12  # rounds of `pause` before waiting for `active` yields the CPU instead
MAX_THREADS = 256
CHUNKS_PER_THREAD = 4
PTHREAD_BYTES = 128  # room for a pthread_mutex_t, pthread_cond_t or pthread_attr_t on any libc
POOL = "neurenix_pool"  # the struct neurenix_pool a program's entry receives


class Pool:
    """The loaded pool library: the address programs receive, and its controls.

    `symbol(name)` gives the address of one of the library's functions or globals; `keep` is
    what keeps the library loaded (it never is unloaded: threads run its code); `library`, the
    shared library's bytes when it was loaded from them (for a cache to store).
    """

    def __init__(self, symbol: Callable[[str], int], keep: object,
                 library: bytes | None = None) -> None:
        self._keep = keep
        self.library = library
        self.address = symbol(POOL)
        if not self.address or ctypes.c_int64.from_address(self.address).value != POOL_ABI:
            raise RuntimeError("neurenix thread pool: the library has no usable "
                               f"{POOL!r} (ABI {POOL_ABI})")
        i64 = ctypes.c_int64
        self._init = ctypes.CFUNCTYPE(None, i64)(symbol("neurenix_pool_init"))
        self._set = ctypes.CFUNCTYPE(None, i64)(symbol("neurenix_pool_set_threads"))
        self._threads = ctypes.CFUNCTYPE(i64)(symbol("neurenix_pool_threads"))
        self._workers = ctypes.CFUNCTYPE(i64)(symbol("neurenix_pool_workers"))

    def init(self, threads: int) -> None:
        """Set the state up for `threads` threads (no worker runs yet)."""
        self._init(int(threads))

    @property
    def threads(self) -> int:
        """Threads a parallel kernel runs on: the caller and the workers (started or not)."""
        return int(self._threads())

    @threads.setter
    def threads(self, n: int) -> None:
        """Join the workers (after the job in flight); the next parallel run starts n - 1."""
        self._set(max(1, int(n)))

    @property
    def workers(self) -> int:
        """Worker threads running now (0 until the first parallel run)."""
        return int(self._workers())

    def after_fork(self) -> None:
        """In a forked child, which has none of the workers: start afresh, lazily."""
        self._init(self.threads)
