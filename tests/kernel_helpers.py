"""Helpers for tests that build kernels by hand and run them through the LLVM backend."""
from __future__ import annotations

import ctypes
import mmap
from dataclasses import fields, is_dataclass, replace

import numpy as np
from neurenix.compiler.codegen import generate
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.kernel.ir import (
    Binary,
    BufferArg,
    Const,
    Kernel,
    KernelGraph,
    Load,
    Store,
    Var,
)
from neurenix.compiler.types import dtype_from_numpy, int64
from neurenix.runtime.cpu import CpuExecutable


def c64(v: int) -> Const:
    return Const(v, int64)


def flat(*terms) -> object:
    """sum(coefficient * Var(axis)) for (axis, coefficient) terms, as lowering writes indices."""
    out = None
    for axis, coeff in terms:
        t = Var(axis) if coeff == 1 else Binary("mul", Var(axis), c64(coeff))
        out = t if out is None else Binary("add", out, t)
    return out if out is not None else c64(0)


def schedule(kernels: list[Kernel], inputs: dict[str, np.ndarray],
             outputs: dict[str, tuple[tuple[int, ...], object]]) -> KernelGraph:
    """A schedule over `kernels`: inputs by example array, outputs by (shape, dtype); every
    other buffer a kernel names is a temporary."""
    buffers: dict[str, BufferArg] = {}
    for k in kernels:
        for b in k.buffers():
            buffers.setdefault(b.name, b)
    shapes = {n: a.shape for n, a in inputs.items()}
    shapes.update({n: s for n, (s, _) in outputs.items()})
    for n, a in inputs.items():
        if n not in buffers:
            buffers[n] = BufferArg(n, dtype_from_numpy(a.dtype), a.size)
    return KernelGraph(kernels, buffers, list(inputs), list(outputs), shapes)


def rename(e, f):
    """Expression/kernel `e` with every buffer name mapped through `f`."""
    if isinstance(e, (Load, Store, BufferArg)):
        key = "buffer" if not isinstance(e, BufferArg) else "name"
        e = replace(e, **{key: f(getattr(e, key))})
    if not is_dataclass(e) or isinstance(e, BufferArg):
        return e
    changes = {}
    for fld in fields(e):
        v = getattr(e, fld.name)
        if isinstance(v, tuple):
            changes[fld.name] = tuple(rename(x, f) for x in v)
        elif is_dataclass(v):
            changes[fld.name] = rename(v, f)
    return replace(e, **changes)


def merge(schedules: list[KernelGraph]) -> KernelGraph:
    """One schedule running all of `schedules` side by side (buffers prefixed g<i>_), so that
    many small programs share one LLVM compile."""
    kernels, buffers, inputs, outputs, shapes, constants = [], {}, [], [], {}, {}
    for i, s in enumerate(schedules):
        f = lambda n, i=i: f"g{i}_{n}"
        kernels += [replace(rename(k, f), name=f"g{i}_{k.name}") for k in s.kernels]
        buffers.update({f(n): rename(b, f) for n, b in s.buffers.items()})
        inputs += [f(n) for n in s.inputs]
        outputs += [f(n) for n in s.outputs]
        shapes.update({f(n): v for n, v in s.shapes.items()})
        constants.update({f(n): v for n, v in s.constants.items()})
    return KernelGraph(kernels, buffers, inputs, outputs, shapes, constants)


def compile_schedule(s: KernelGraph) -> CpuExecutable:
    return CpuExecutable(generate(s))


def run_both(s: KernelGraph, inputs: list[np.ndarray], exe: CpuExecutable | None = None):
    """(compiled outputs, kernel_eval outputs) for one schedule."""
    exe = exe or compile_schedule(s)
    return exe.run(inputs), run_schedule(s, inputs)


PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)


def guarded(array: np.ndarray, after: bool = True) -> np.ndarray:
    """A copy of `array` placed against an inaccessible page (just after its last byte, or
    just before its first), so that any out-of-bounds access by generated code crashes."""
    nbytes = array.nbytes
    pages = (nbytes + PAGE - 1) // PAGE + 2
    mem = mmap.mmap(-1, pages * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    guard = base + (pages - 1) * PAGE if after else base
    if _libc.mprotect(ctypes.c_void_p(guard), PAGE, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    offset = (pages - 1) * PAGE - nbytes if after else PAGE
    out = np.frombuffer(mem, dtype=array.dtype, count=array.size, offset=offset)
    out = out.reshape(array.shape)
    out[...] = array
    return out


def assert_same_guarded(exe: CpuExecutable, inputs: list[np.ndarray],
                        want: list[np.ndarray]) -> None:
    """The program gives `want` again with every input against a guard page (both sides)."""
    for after in (True, False):
        for got, expected in zip(exe.run([guarded(x, after) for x in inputs]), want):
            np.testing.assert_array_equal(got, expected)


def assert_same_across_threads(exe: CpuExecutable, inputs: list[np.ndarray],
                               threads: tuple[int, ...]) -> None:
    """The program gives bit-identical results on one thread and on each count in `threads`."""
    exe.num_threads = 1
    serial = exe.run(inputs)
    for n in threads:
        exe.num_threads = n
        for a, b in zip(serial, exe.run(inputs)):
            np.testing.assert_array_equal(a, b)


def assert_outputs_match(names, got, want, rtol: float, atol: float) -> None:
    """Each compiled output equals the evaluator's: same dtype; floats within rtol/atol (NaN
    where NaN), everything else exactly."""
    for name, g, w in zip(names, got, want):
        assert g.dtype == w.dtype, name
        if g.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)
