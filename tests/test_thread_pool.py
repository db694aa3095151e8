"""One thread pool per process: programs borrow it, never own threads, and unload when dropped.

The pool (runtime/cpu_pool.py) is driven here both through compiled programs and directly,
through its `run` with Python callbacks, which makes chunking, concurrency and the caller's
sleep observable.  Thread counts are read from /proc/self/task in fresh interpreters, so that
nothing else in the test session changes them.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import os
import pathlib
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from kernel_helpers import c64, schedule
from neurenix.compiler.codegen import generate, llvm_parallel
from neurenix.compiler.kernel.ir import (
    Acc,
    Binary,
    BufferArg,
    Const,
    Kernel,
    Load,
    Store,
    Unary,
    Var,
)
from neurenix.compiler.types import float32, int64
from neurenix.runtime import cpu, cpu_pool
from neurenix.runtime.cpu import CpuExecutable

TESTS = pathlib.Path(__file__).resolve().parent
LINUX = sys.platform.startswith("linux")
RANGE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
RUN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, RANGE, ctypes.c_void_p, ctypes.c_int64)


def scale_program(n: int, factor: float = 2.0):
    """y = x * factor + 1 over n float32 elements (threaded from 2^17 elements on)."""
    x = Load("x", Var(0), float32)
    k = Kernel("scale", (BufferArg("x", float32, n),), (BufferArg("y", float32, n),), (n,),
               (Store("y", Var(0), Binary("add", Binary("mul", x, Const(factor, float32)),
                                          Const(1.0, float32))),))
    return generate(schedule([k], {"x": np.zeros(n, np.float32)}, {"y": ((n,), float32)}))


def mixed_program(n: int = 1 << 20, rows: int = 512):
    """An elementwise tanh, a row max, and full sum / argmax reductions split in parts."""
    x = Load("x", Var(0), float32)
    ew = Kernel("ew", (BufferArg("x", float32, n),), (BufferArg("t", float32, n),), (n,),
                (Store("t", Var(0), Unary("tanh", x)),))
    red = Kernel("rows", (BufferArg("x", float32, n),), (BufferArg("r", float32, rows),),
                 (rows,), (Store("r", Var(0), Acc()),), reduce=(n // rows,), reduce_op="max",
                 reduce_value=Load("x", Binary("add", Binary("mul", Var(0), c64(n // rows)),
                                               Var(1)), float32))
    total = Kernel("total", (BufferArg("x", float32, n),), (BufferArg("s", float32, 1),), (),
                   (Store("s", c64(0), Acc()),), reduce=(n,), reduce_op="sum",
                   reduce_value=Load("x", Var(0), float32))
    arg = Kernel("arg", (BufferArg("x", float32, n),), (BufferArg("a", int64, 1),), (),
                 (Store("a", c64(0), Acc()),), reduce=(n,), reduce_op="argmax",
                 reduce_value=Load("x", Var(0), float32))
    s = schedule([ew, red, total, arg], {"x": np.zeros(n, np.float32)},
                 {"t": ((n,), float32), "r": ((rows,), float32), "s": ((1,), float32),
                  "a": ((1,), int64)})
    return generate(s)


@pytest.fixture(scope="module")
def mixed():
    program = mixed_program()
    x = np.random.default_rng(1).standard_normal(1 << 20).astype(np.float32)
    return CpuExecutable(program), x


@pytest.fixture
def threads():
    """Restore the process's pool size after a test that changes it."""
    before = cpu.num_threads()
    yield
    cpu.set_num_threads(before)


def run_on_pool(fn, count: int) -> None:
    """The pool's `run` called directly with a Python callback `fn(start, end)`."""
    pool = cpu.process_pool()
    run = RUN(ctypes.c_void_p.from_address(pool.address + 8).value)
    callback = RANGE(lambda ctx, start, end: fn(start, end))
    run(pool.address, callback, None, count)


def fresh_python(script: str, **env: str) -> str:
    """Run `script` in a new interpreter (the tests folder importable); its stdout."""
    environment = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}"
                       f"{os.environ.get('PYTHONPATH', '')}", OPENBLAS_NUM_THREADS="1",
                       OMP_NUM_THREADS="1", **env)
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---- the ABI --------------------------------------------------------------------------------


def test_programs_say_which_pool_they_expect_and_own_no_threads():
    program = scale_program(1 << 17)
    assert llvm_parallel.POOL_ABI == cpu_pool.POOL_ABI == program.metadata["pool_abi"]
    assert "pool" in program.metadata["entry_signature"]
    assert program.metadata["threaded"] == ["neurenix_scale"]
    assert "pthread" not in program.source and "neurenix_pool_" not in program.source
    with pytest.raises(ValueError, match="expects thread pool ABI 99"):
        CpuExecutable(replace(program, metadata=dict(program.metadata, pool_abi=99)))


def test_the_entry_runs_serially_without_a_pool():
    """What an exported library does when its C caller passes NULL for the pool."""
    n = 1 << 18
    exe = CpuExecutable(scale_program(n))
    x = np.arange(n, dtype=np.float32)
    y = np.empty(n, np.float32)
    args = (ctypes.c_void_p * 2)(x.ctypes.data, y.ctypes.data)
    exe._entry(args, exe.arena.ctypes.data, None)
    np.testing.assert_array_equal(y, x * 2 + 1)


# ---- results --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 17])
def test_results_match_numpy_on_1_2_and_many_threads(mixed, threads, n):
    exe, x = mixed
    cpu.set_num_threads(n)
    t, r, s, a = exe.run([x])
    np.testing.assert_allclose(t, np.tanh(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(r, x.reshape(512, -1).max(axis=1))
    np.testing.assert_allclose(s[0], x.astype(np.float64).sum(), rtol=1e-6, atol=1e-3)
    assert a[0] == np.argmax(x)
    assert exe.num_threads == cpu.num_threads() == n
    assert cpu.process_pool().workers == n - 1


def test_thread_counts_are_clamped(threads):
    cpu.set_num_threads(0)
    assert cpu.num_threads() == 1
    cpu.set_num_threads(10**6)
    assert cpu.num_threads() == cpu_pool.MAX_THREADS


def test_full_reductions_give_the_same_bits_on_any_thread_count(mixed, threads):
    exe, x = mixed
    cpu.set_num_threads(1)
    serial = exe.run([x])
    for n in (2, 3, 16):
        cpu.set_num_threads(n)
        for a, b in zip(serial, exe.run([x])):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n, count", [(1, 1000), (2, 1), (2, 2), (3, 7), (5, 10**6)])
def test_every_index_is_run_exactly_once(threads, n, count):
    cpu.set_num_threads(n)
    parts: list[tuple[int, int]] = []
    lock = threading.Lock()

    def record(start: int, end: int) -> None:
        with lock:
            parts.append((start, end))

    run_on_pool(record, count)
    parts.sort()
    assert parts[0][0] == 0 and parts[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert len(parts) <= max(1, n * cpu_pool.CHUNKS_PER_THREAD)


# ---- threads --------------------------------------------------------------------------------


def test_programs_share_the_process_pool(threads):
    cpu.set_num_threads(3)
    exes = [CpuExecutable(scale_program(1 << 17, float(k))) for k in range(3)]
    x = np.ones(1 << 17, np.float32)
    for k, exe in enumerate(exes):
        np.testing.assert_array_equal(exe.run([x])[0], x * k + 1)
    assert cpu.process_pool().workers == 2  # one pool, however many programs
    exes[0].num_threads = 2  # through any executable: the process's pool
    assert [e.num_threads for e in exes] == [2, 2, 2]
    exes[0].run([x])
    assert cpu.process_pool().workers == 1


def test_concurrent_calls_from_several_python_threads(mixed, threads):
    """A caller that finds the pool taken runs its own chunks: no wait, no wrong result."""
    cpu.set_num_threads(3)
    exe, x = mixed
    other = CpuExecutable(scale_program(1 << 18))
    y = np.random.default_rng(2).standard_normal(1 << 18).astype(np.float32)
    want, want_other = exe.run([x]), other.run([y])[0]
    errors: list[str] = []

    def hammer(k: int) -> None:
        for _ in range(8):
            if k % 2:
                if not np.array_equal(other.run([y])[0], want_other):
                    errors.append("scale")
            elif not all(np.array_equal(a, b) for a, b in zip(exe.run([x]), want)):
                errors.append("mixed")

    workers = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors


def test_a_waiting_caller_sleeps_instead_of_spinning(threads):
    """While a worker runs a long chunk, the caller (its chunk done) uses almost no CPU."""
    cpu.set_num_threads(2)
    run_on_pool(lambda s, e: None, 2)  # the worker is started and awake
    caller = threading.get_ident()
    spent: list[float] = []

    def chunk(start: int, end: int) -> None:
        if threading.get_ident() != caller:
            time.sleep(0.3)

    def timed() -> None:
        start = time.thread_time()
        run_on_pool(chunk, 2)
        spent.append(time.thread_time() - start)

    started = time.perf_counter()
    timed()
    assert spent[0] < 0.1, f"the caller spent {spent[0]:.3f} s of CPU waiting"
    assert time.perf_counter() - started < 5


def test_resizing_waits_for_the_job_in_flight(threads):
    cpu.set_num_threads(2)
    running = threading.Event()

    def slow(start: int, end: int) -> None:
        running.set()
        time.sleep(0.05)

    job = threading.Thread(target=run_on_pool, args=(slow, 2))
    job.start()
    running.wait(5)
    cpu.set_num_threads(3)  # joins the workers once the job is over
    job.join()
    assert cpu.num_threads() == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_runs_and_starts_its_own_pool(mixed, threads):
    cpu.set_num_threads(2)
    exe, x = mixed
    want = exe.run([x])
    assert cpu.process_pool().workers == 1
    pid = os.fork()
    if pid == 0:  # the parent's worker does not exist here: a new one starts on first use
        try:
            ok = all(np.array_equal(a, b) for a, b in zip(exe.run([x]), want))
            ok = ok and cpu.process_pool().workers == 1 and exe.num_threads == 2
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert all(np.array_equal(a, b) for a, b in zip(exe.run([x]), want))


THREAD_COUNT = """
import os, numpy as np
from test_thread_pool import scale_program
from neurenix.runtime import cpu
from neurenix.runtime.cpu import CpuExecutable

def run_all():
    for exe in exes:
        x = np.ones(exe.program.inputs[0].shape, np.float32)
        np.testing.assert_array_equal(exe.run([x])[0], 3)
    return len(os.listdir("/proc/self/task")) - base

base = len(os.listdir("/proc/self/task"))
exes = []
for k in range(200):
    if k < 10:
        exes.append(CpuExecutable(scale_program((1 << 17) + 64 * k)))
    else:
        exes.append(CpuExecutable(exes[k % 10].program, library=exes[k % 10].library))
counts = [run_all()]
cpu.set_num_threads(16)
counts.append(run_all())
cpu.set_num_threads(2)
counts.append(run_all())
print(*counts)
"""


@pytest.mark.skipif(not LINUX or cpu.linker() is None,
                    reason="counts threads in /proc/self/task; loads libraries again (ld)")
def test_thread_count_stays_one_pool_however_many_programs():
    """Before, each program started its own workers: 200 programs made 202 threads, and 1502
    for 100 with 16 threads.  Now 200 programs (ten shapes compiled, the others further loads
    of their libraries, each a private copy, which used to start a pool each too) share one
    pool of NEURENIX_NUM_THREADS - 1 workers, resized for all of them at once."""
    counts = fresh_python(THREAD_COUNT, NEURENIX_NUM_THREADS="4").split()
    assert [int(c) for c in counts] == [3, 15, 1]


FROM_BYTES = """
import sys, numpy as np
from neurenix.runtime import cpu
with open(sys.argv[1], "rb") as f:
    pool = cpu.process_pool(library=f.read())
print(pool.library is not None, pool.workers, "llvmlite.binding" in sys.modules)
"""


@pytest.mark.skipif(cpu.linker() is None, reason="no system linker (ld) here")
def test_the_pool_loads_from_its_library_bytes_without_llvm(tmp_path):
    """What a compile cache hit does in a new process: the pool from its stored bytes."""
    CpuExecutable(scale_program(1 << 17)).run([np.ones(1 << 17, np.float32)])
    library = cpu.process_pool().library
    assert library.startswith(b"\x7fELF")
    path = tmp_path / "pool.so"
    path.write_bytes(library)
    script = FROM_BYTES.replace("sys.argv[1]", repr(str(path)))
    assert fresh_python(script, NEURENIX_NUM_THREADS="2").split() == ["True", "0", "False"]


WITHOUT_LINKER = """
import numpy as np
from test_thread_pool import scale_program
from neurenix.runtime import cpu
cpu.linker = lambda: None
exe = cpu.CpuExecutable(scale_program(1 << 17))
x = np.ones(1 << 17, np.float32)
np.testing.assert_array_equal(exe.run([x])[0], 3)
pool = cpu.process_pool()
print(exe.loader, pool.library is None, pool.workers)
"""


def test_without_a_linker_the_pool_loads_with_mcjit():
    assert fresh_python(WITHOUT_LINKER, NEURENIX_NUM_THREADS="2").split() == \
        ["mcjit", "True", "1"]


# ---- unloading ------------------------------------------------------------------------------


def _mapped_programs() -> int:
    """Mappings of loaded program libraries (the pool's own library excluded)."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "/neurenix-" in line and ".so" in line
                   and "/neurenix-pool-" not in line)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not LINUX or cpu.linker() is None,
                    reason="needs /proc/self/maps and a system linker (ld)")
def test_dropped_programs_are_unloaded():
    program = scale_program(1 << 17)
    library = CpuExecutable(program).library
    x = np.ones(1 << 17, np.float32)
    gc.collect()
    before = _mapped_programs()
    for _ in range(50):
        CpuExecutable(program, library=library).run([x])
    gc.collect()
    rss = _rss_bytes()
    for _ in range(300):
        CpuExecutable(program, library=library).run([x])
    gc.collect()
    assert _mapped_programs() <= before + 8  # without dlclose: 300 libraries, ~5 maps each
    assert _rss_bytes() - rss < 16 << 20


@pytest.mark.skipif(not LINUX or cpu.linker() is None,
                    reason="needs /proc/self/maps and a system linker (ld)")
def test_a_referenced_program_stays_loaded_and_a_closed_one_refuses_to_run():
    program = scale_program(1 << 17)
    x = np.ones(1 << 17, np.float32)
    gc.collect()
    before = _mapped_programs()
    pending = functools.partial(CpuExecutable(program).run, [x])  # as a backward closure
    gc.collect()
    assert _mapped_programs() > before
    np.testing.assert_array_equal(pending()[0], x * 2 + 1)
    exe = pending.func.__self__
    exe.close()
    assert exe.closed and _mapped_programs() == before
    with pytest.raises(RuntimeError, match="after close"):
        exe.run([x])
    with pytest.raises(RuntimeError, match="closed"):
        exe.profile([x])
    exe.close()  # twice is harmless


def test_mcjit_engines_are_freed(monkeypatch):
    monkeypatch.setattr(cpu, "linker", lambda: None)
    exe = CpuExecutable(scale_program(1 << 17))
    assert exe.loader == "mcjit"
    engine = exe._engine
    x = np.ones(1 << 17, np.float32)
    np.testing.assert_array_equal(exe.run([x])[0], x * 2 + 1)
    del exe
    gc.collect()
    assert engine.closed
