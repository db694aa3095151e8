"""The CPU runtime: loading a Program, checking inputs, the arena, threads, object code.

The process-wide thread pool and unloading have their own tests in test_thread_pool.py.
"""
from __future__ import annotations

import ctypes
import pathlib
from dataclasses import replace

import numpy as np
import pytest
from kernel_helpers import schedule
from neurenix.compiler.codegen import generate
from neurenix.compiler.kernel.ir import Binary, BufferArg, Const, Kernel, Load, Store, Var
from neurenix.compiler.types import float32, int64
from neurenix.runtime import cpu
from neurenix.runtime.cpu import CpuExecutable, compile_object

ROOT = pathlib.Path(__file__).resolve().parents[1]


def axpy_program(n=1000):
    """y = x * 2 + z (through a temporary), also returned a second time; u = iota."""
    t = Kernel("scale", (BufferArg("x", float32, n),), (BufferArg("t", float32, n),), (n,),
               (Store("t", Var(0), Binary("mul", Load("x", Var(0), float32),
                                          Const(2.0, float32))),))
    y = Kernel("add", (BufferArg("t", float32, n), BufferArg("z", float32, n)),
               (BufferArg("y", float32, n),), (n,),
               (Store("y", Var(0), Binary("add", Load("t", Var(0), float32),
                                          Load("z", Var(0), float32))),))
    u = Kernel("iota", (), (BufferArg("u", int64, 3),), (3,), (Store("u", Var(0), Var(0)),))
    s = schedule([t, y, u], {"x": np.zeros((n // 10, 10), np.float32),
                             "z": np.zeros((n // 10, 10), np.float32)},
                 {"y": ((n // 10, 10), float32), "u": ((3,), int64)})
    s.outputs.append("y")
    return generate(s)


@pytest.fixture(scope="module")
def exe():
    return CpuExecutable(axpy_program())


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((100, 10)).astype(np.float32) for _ in range(2)]


def test_run_computes_every_output(exe, data):
    x, z = data
    y, u, y_again = exe.run(data)
    np.testing.assert_array_equal(y, x * 2 + z)
    np.testing.assert_array_equal(u, [0, 1, 2])
    np.testing.assert_array_equal(y_again, y)
    assert y.shape == (100, 10) and y.dtype == np.float32 and u.dtype == np.int64
    assert y_again is not y  # a repeated output is its own array


def test_outputs_are_fresh_arrays_and_the_arena_is_reused(exe, data):
    arena = exe.arena.ctypes.data
    first = exe.run(data)[0]
    second = exe.run([data[0] + 1, data[1]])[0]
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(second, (data[0] + 1) * 2 + data[1])
    assert exe.arena.ctypes.data == arena and arena % 64 == 0
    assert exe.arena.nbytes == exe.program.arena_bytes >= 4000


def test_non_contiguous_inputs_are_accepted(exe, data):
    x = np.asfortranarray(data[0])
    z = np.broadcast_to(data[1][:1], (100, 10))  # read-only and strided
    y = exe.run([x, z])[0]
    np.testing.assert_array_equal(y, data[0] * 2 + data[1][:1])


@pytest.mark.parametrize("bad, message", [
    (lambda d: d[:1], "expected 2 inputs .x, z., got 1"),
    (lambda d: [d[0], d[1][:50]], r"input 'z' expects float32\[100, 10\], got float32\[50, 10\]"),
    (lambda d: [d[0].astype(np.float64), d[1]], r"input 'x' expects float32\[100, 10\], got "
                                                r"float64\[100, 10\]"),
    (lambda d: [d[0].reshape(1000), d[1]], "input 'x' expects"),
    (lambda d: [d[0].tolist(), d[1]], "input 'x' expects float32"),
])
def test_bad_inputs_raise_before_anything_runs(exe, data, bad, message):
    with pytest.raises(ValueError, match=message):
        exe.run(bad(data))


def test_a_program_for_another_target_or_without_its_entry_is_refused():
    program = axpy_program(10)
    with pytest.raises(ValueError, match="expected a 'cpu' program, got target 'cuda'"):
        CpuExecutable(replace(program, target="cuda"))
    with pytest.raises(ValueError, match="no entry function 'missing'"):
        CpuExecutable(replace(program, entry="missing"))


def test_thread_count_is_the_process_pools(exe, data, monkeypatch):
    before = exe.num_threads
    assert before == cpu.num_threads()
    try:
        exe.num_threads = 3
        assert exe.num_threads == cpu.num_threads() == 3
        exe.num_threads = 0
        assert exe.num_threads == 1
    finally:
        cpu.set_num_threads(before)
    monkeypatch.setenv("NEURENIX_NUM_THREADS", "5")
    assert cpu.default_threads() == 5
    monkeypatch.setenv("NEURENIX_NUM_THREADS", "zero")
    assert cpu.default_threads() == cpu.core_count()


def test_entry_is_one_foreign_call_taking_args_arena_and_pool(exe, data):
    """Calling the entry by hand with the documented argument order gives the same result,
    with the process's pool or without one (NULL: every kernel on the calling thread)."""
    x, z = data
    assert exe.program.entry_args() == ["x", "z", "y", "u", "y"]
    assert exe.program.metadata["entry_signature"].startswith(
        "void neurenix_entry(void **args, void *arena, const struct neurenix_pool *pool)")
    for pool in (None, cpu.process_pool().address):
        y = np.empty((100, 10), np.float32)
        u = np.empty(3, np.int64)
        args = (ctypes.c_void_p * 4)(x.ctypes.data, z.ctypes.data, y.ctypes.data,
                                     u.ctypes.data)
        exe._entry(args, exe.arena.ctypes.data, pool)
        np.testing.assert_array_equal(y, x * 2 + z)


def test_an_executable_loads_from_its_code_without_compiling(exe, data, monkeypatch):
    from neurenix.runtime import compile_worker

    def refuse(*args, **kwargs):
        raise AssertionError("the executable compiled LLVM IR")

    monkeypatch.setattr(compile_worker, "compile_ir", refuse)  # in-process or in the worker
    monkeypatch.setattr(compile_worker, "build", refuse)
    again = CpuExecutable(exe.program, exe.object_code, exe.library)
    for a, b in zip(again.run(data), exe.run(data)):
        np.testing.assert_array_equal(a, b)
    assert again.num_threads == cpu.num_threads()


def test_compile_object_gives_host_object_code():
    obj = compile_object(axpy_program(10))
    assert isinstance(obj, bytes) and len(obj) > 100
    assert obj[:4] in (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\x64\x86")


def test_optimized_ir_and_assembly_are_available():
    program = axpy_program(64)
    assert "neurenix_entry" in cpu.optimized_ir(program)
    assert "neurenix_entry" in cpu.assembly(program)


def test_executables_own_no_threads_and_close_unloads_them(data):
    import threading

    before = threading.active_count()
    exe = CpuExecutable(axpy_program())
    assert threading.active_count() == before
    np.testing.assert_array_equal(exe.run(data)[0], data[0] * 2 + data[1])
    exe.close()
    assert exe.closed
    with pytest.raises(RuntimeError, match=r"run\(\) after close\(\)"):
        exe.run(data)
    assert exe.num_threads == cpu.num_threads()  # the process's pool lives on


def test_repeated_inputs_reuse_their_address_but_see_new_values(exe, data):
    """The runtime skips checks for the arrays of the previous call (weights), by identity."""
    x, z = (a.copy() for a in data)
    exe.run([x, z])
    x += 1  # the same array, new values
    np.testing.assert_array_equal(exe.run([x, z])[0], x * 2 + z)
    other = x + 5  # a different array in the same place
    np.testing.assert_array_equal(exe.run([other, z])[0], other * 2 + z)
    np.testing.assert_array_equal(exe.run([x, z])[0], x * 2 + z)
    del other  # a freed array is not kept alive, and a new one is checked again
    with pytest.raises(ValueError, match="input 'x' expects"):
        exe.run([np.zeros((3, 3), np.float32), z])


@pytest.mark.skipif(cpu.linker() is None, reason="no system linker (ld) here")
def test_programs_load_as_shared_libraries_and_from_their_bytes(data):
    program = axpy_program()
    exe = CpuExecutable(program)
    assert exe.loader == "shared library" and exe.library.startswith(b"\x7fELF")
    again = CpuExecutable(program, library=exe.library)  # what a cache hit does: no LLVM
    assert again.loader == "shared library"
    for a, b in zip(exe.run(data), again.run(data)):
        np.testing.assert_array_equal(a, b)


def test_without_a_linker_programs_load_with_mcjit(data, monkeypatch):
    monkeypatch.setattr(cpu, "linker", lambda: None)
    exe = CpuExecutable(axpy_program())
    assert exe.loader == "mcjit" and exe.library is None and exe.object_code
    x, z = data
    np.testing.assert_array_equal(exe.run(data)[0], x * 2 + z)
    assert CpuExecutable(exe.program, object_code=exe.object_code).loader == "mcjit"
