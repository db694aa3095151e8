"""A NumPy interpreter of the kernel IR: runs a `KernelGraph` with no code generator.

It is the executable meaning of compiler/kernel/ir.py, so lowering is tested on its own and every
code generator has an oracle at the kernel level.  Each kernel is evaluated vectorised over its
whole iteration space: `Var(i)` is an `arange` broadcast along axis i of the domain (then the
reduction axes), expression trees evaluate bottom-up (shared subtrees once), reductions reduce
the trailing axes, and stores scatter into flat buffers (`np.add.at` when accumulating).

It is strict where generated code must be: an unmasked load or a store outside its buffer, a
masked load whose mask is true out of range, a parallel kernel writing one element twice, a
buffer a kernel touches without declaring it, or a store of the wrong dtype each raise
`KernelEvalError`.  Temporaries start as NaN (or a sentinel integer), so a read of a value no
kernel wrote shows up.  A kernel with `index_bits == 32` raises where its index arithmetic (a
loop bound, a buffer size, a value computed from loop variables and constants) leaves int32.
Ops dispatch by name from `UNARY`/`BINARY`, one entry per op of compiler/kernel/ops.py.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ...runtime.sizes import bind_sizes
from ..ops.elementwise import convert
from ..ops.registry import get as get_primitive
from ..ops.source import SEED_GOLDEN, hash32
from ..types import DType
from .index_bits import index_arithmetic
from .ir import (
    Acc,
    Binary,
    Cast,
    Const,
    Expr,
    Kernel,
    KernelGraph,
    Load,
    RandomUniform,
    Unary,
    Var,
    Where,
    dtype_of,
    format_expr,
)
from .ops import BINARY_OPS, UNARY_OPS, OpSpec
from .specialize import is_symbolic, specialize_graph


class KernelEvalError(RuntimeError):
    """A kernel broke the IR's contract (out-of-bounds access, undeclared buffer, ...)."""


def _unsigned(a: np.ndarray) -> np.dtype:
    return np.dtype(f"u{a.dtype.itemsize}")


def _count(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The shift count: b modulo a's bit width (its low bits), as a's type."""
    return (b & (8 * a.dtype.itemsize - 1)).astype(a.dtype)


def _shl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a << b wrapping, done on the unsigned bits (NumPy's shift of a negative is C's)."""
    u = _unsigned(a)
    return np.left_shift(a.astype(u), _count(a, b).astype(u)).astype(a.dtype)


def _shr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a >> b: arithmetic on signed, logical on unsigned integers (NumPy's right_shift)."""
    return np.right_shift(a, _count(a, b))


KERNEL_ONLY = {"bitand": np.bitwise_and, "bitor": np.bitwise_or, "xor": np.bitwise_xor,
               "shl": _shl, "shr": _shr}


def _impl(spec: OpSpec):
    """What the evaluator computes for a kernel op: its graph primitive's NumPy reference,
    or the kernel-only implementation."""
    return get_primitive(spec.primitive).impl if spec.primitive else KERNEL_ONLY[spec.name]


UNARY = {name: _impl(spec) for name, spec in UNARY_OPS.items()}
BINARY = {name: _impl(spec) for name, spec in BINARY_OPS.items()}


def cast(x: np.ndarray, dtype: DType) -> np.ndarray:
    """The kernel IR's `Cast`: the `cast` primitive's conversion (`convert`); a float becomes
    an unsigned integer through int64 (x86's rule), then wraps."""
    if x.dtype.kind == "f" and dtype.is_integer and not dtype.is_signed:
        return convert(x, np.int64).astype(dtype.np_type)
    return convert(x, dtype.np_type)


def random_uniform(seed: np.ndarray, counter: np.ndarray, np_type) -> np.ndarray:
    """Elementwise the generator of compiler/ops/source.py: uniform [0, 1) from seed, counter."""
    seed, counter = np.broadcast_arrays(np.asarray(seed, np.int64),
                                        np.asarray(counter, np.int64))
    s = seed.astype(np.uint64).ravel()
    lo = (s & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (s >> np.uint64(32)).astype(np.uint32)
    key = hash32(lo ^ hash32(hi + np.uint32(SEED_GOLDEN)))
    c = counter.ravel().astype(np.uint32)
    bits = hash32(hash32(c ^ key) + key)
    u = (bits >> np.uint32(8)).astype(np.float64) * (1.0 / (1 << 24))
    return u.astype(np_type).reshape(seed.shape)


def _fresh(size: int, np_type) -> np.ndarray:
    """An uninitialised-looking buffer: NaN for floats, a sentinel for ints, True for bools."""
    dt = np.dtype(np_type)
    if dt.kind == "f":
        return np.full(size, np.nan, dt)
    if dt.kind == "b":
        return np.ones(size, dt)
    return np.full(size, -0x5A5A5A5A, np.int64).astype(dt)


def run_schedule(schedule: KernelGraph,
                 inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run every kernel in order; return the outputs shaped as `schedule.shapes` says.

    `inputs` lists arrays in `schedule.inputs` order, or maps those buffer names to arrays.
    A shape-polymorphic schedule runs at the sizes its inputs' shapes give.
    """
    if not isinstance(inputs, Mapping):
        if len(inputs) != len(schedule.inputs):
            raise ValueError(f"run_schedule: expected {len(schedule.inputs)} inputs, got "
                             f"{len(inputs)}")
        inputs = dict(zip(schedule.inputs, inputs))
    if is_symbolic(schedule):  # shape-polymorphic: specialised to the inputs' sizes
        names = list(schedule.inputs)
        env = bind_sizes([schedule.shapes[n] for n in names],
                         [np.shape(inputs[n]) for n in names])
        schedule = specialize_graph(schedule, env)
    buffers: dict[str, np.ndarray] = {}
    for name, arg in schedule.buffers.items():
        if name in schedule.inputs:
            arr = np.asarray(inputs[name])
            if arr.dtype != np.dtype(arg.dtype.np_type) or arr.size != arg.size:
                raise ValueError(f"run_schedule: input {name!r} expects {arg.size} elements "
                                 f"of {arg.dtype.name}, got {arr.dtype}{list(arr.shape)}")
            buffers[name] = np.ascontiguousarray(arr).reshape(-1).copy()
        elif name in schedule.constants:
            buffers[name] = np.ascontiguousarray(schedule.constants[name]).reshape(-1).copy()
        else:
            buffers[name] = _fresh(arg.size, arg.dtype.np_type)
    for kernel in schedule.kernels:
        run_kernel(kernel, buffers)
    return [buffers[o].reshape(schedule.shapes[o]) for o in schedule.outputs]


def run_kernel(kernel: Kernel, buffers: dict[str, np.ndarray]) -> None:
    """Execute one kernel over `buffers` (flat arrays by name), in place."""
    for arg in kernel.buffers():
        buf = buffers.get(arg.name)
        if buf is None or buf.size != arg.size or buf.dtype != np.dtype(arg.dtype.np_type):
            raise KernelEvalError(f"{kernel.name}: argument {arg.name} ({arg.size} x "
                                  f"{arg.dtype.name}) does not match the buffer")
    _check_index_width(kernel)
    nd = len(kernel.domain)
    with np.errstate(all="ignore"):
        acc = None
        if kernel.reduce_value is not None:
            full = tuple(kernel.domain) + tuple(kernel.reduce)
            ev = _Evaluator(kernel, buffers, full, None)
            value = np.broadcast_to(ev(kernel.reduce_value), full)
            acc = _reduce(kernel.reduce_op, value, nd)
        ev = _Evaluator(kernel, buffers, tuple(kernel.domain), acc)
        for store in kernel.stores:
            _store(kernel, buffers, ev, store)


def _reduce(op: str, value: np.ndarray, nd: int) -> np.ndarray:
    axes = tuple(range(nd, value.ndim))
    if op == "sum":
        return np.sum(value, axis=axes, dtype=value.dtype)
    if op == "prod":
        return np.prod(value, axis=axes, dtype=value.dtype)
    if op == "max":
        return np.max(value, axis=axes)
    if op == "min":
        return np.min(value, axis=axes)
    if op in ("argmax", "argmin"):
        if len(axes) != 1:
            raise KernelEvalError(f"{op} reduces exactly one axis, got {len(axes)}")
        fn = np.argmax if op == "argmax" else np.argmin
        return fn(value, axis=nd).astype(np.int64)
    raise KernelEvalError(f"unknown reduce_op {op!r}")


def _store(kernel: Kernel, buffers: dict[str, np.ndarray], ev: _Evaluator, store) -> None:
    if store.buffer not in {b.name for b in kernel.outputs}:
        raise KernelEvalError(f"{kernel.name}: stores to {store.buffer}, not an output")
    buf = buffers[store.buffer]
    want = np.dtype(dtype_of(store.value, kernel.acc_dtype).np_type)
    if want != buf.dtype:
        raise KernelEvalError(f"{kernel.name}: stores {want} into {store.buffer} of "
                              f"{buf.dtype}")
    shape = tuple(kernel.domain)
    index = np.broadcast_to(ev(store.index), shape).reshape(-1)
    value = np.broadcast_to(ev(store.value), shape).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= buf.size):
        raise KernelEvalError(f"{kernel.name}: store to {store.buffer} out of bounds "
                              f"(index {index.min()}..{index.max()}, size {buf.size})")
    if store.accumulate:
        np.add.at(buf, index, value)
        return
    if kernel.parallel and np.unique(index).size != index.size:
        raise KernelEvalError(f"{kernel.name}: parallel store writes an element of "
                              f"{store.buffer} twice")
    buf[index] = value


INT32_MAX = (1 << 31) - 1


def _check_index_width(kernel: Kernel) -> None:
    """index_bits is 32 or 64; at 32 the loop bounds and buffer sizes fit an int32."""
    if kernel.index_bits not in (32, 64):
        raise KernelEvalError(f"{kernel.name}: index_bits {kernel.index_bits} is not 32 or 64")
    if kernel.index_bits == 32:
        sizes = [b.size for b in kernel.buffers()]
        sizes.append(math.prod(kernel.domain) * math.prod(kernel.reduce))
        if max(sizes) > INT32_MAX:
            raise KernelEvalError(f"{kernel.name}: index_bits 32, but it reaches "
                                  f"{max(sizes)} elements (int32 overflows)")


class _Evaluator:
    """Evaluates expressions over one iteration space, each shared subtree once.

    Under `index_bits == 32` every signed integer value computed from loop variables and
    constants alone (the index arithmetic a 32-bit kernel does in int32) must fit an int32: the
    evaluator raises where generated code would overflow."""

    def __init__(self, kernel: Kernel, buffers: dict[str, np.ndarray], shape: tuple[int, ...],
                 acc: np.ndarray | None) -> None:
        self.kernel = kernel
        self.buffers = buffers
        self.shape = shape
        self.acc = acc
        self.inputs = {b.name for b in kernel.inputs}
        self.memo: dict[int, tuple[Expr, np.ndarray]] = {}
        self.narrow = kernel.index_bits == 32
        self.index = {id(x) for x in index_arithmetic(kernel)} if self.narrow else set()

    def __call__(self, e: Expr) -> np.ndarray:
        hit = self.memo.get(id(e))
        if hit is not None and hit[0] is e:
            return hit[1]
        out = np.asarray(self._eval(e))
        if id(e) in self.index and out.size:
            lo, hi = int(out.min()), int(out.max())
            if lo < -INT32_MAX - 1 or hi > INT32_MAX:
                raise KernelEvalError(f"{self.kernel.name}: index arithmetic overflows int32 "
                                      f"(index_bits 32): {format_expr(e)} reaches {lo}..{hi}")
        self.memo[id(e)] = (e, out)
        return out

    def _eval(self, e: Expr) -> np.ndarray:
        if isinstance(e, Var):
            if e.axis >= len(self.shape):
                raise KernelEvalError(f"{self.kernel.name}: Var({e.axis}) outside the loop "
                                      f"nest of {len(self.shape)} axes")
            view = [1] * len(self.shape)
            view[e.axis] = self.shape[e.axis]
            return np.arange(self.shape[e.axis], dtype=np.int64).reshape(view)
        if isinstance(e, Const):
            return np.asarray(e.value, dtype=e.dtype.np_type)
        if isinstance(e, Load):
            return self._load(e)
        if isinstance(e, Unary):
            x = self(e.x)
            return np.asarray(UNARY[e.op](x)).astype(dtype_of(e, self._acc_dtype).np_type)
        if isinstance(e, Binary):
            a, b = self(e.a), self(e.b)
            out = BINARY[e.op](a, b)
            return np.asarray(out).astype(dtype_of(e, self._acc_dtype).np_type)
        if isinstance(e, Where):
            return np.where(self(e.cond), self(e.a), self(e.b))
        if isinstance(e, Cast):
            return cast(self(e.x), e.dtype)
        if isinstance(e, RandomUniform):
            return random_uniform(self(e.seed), self(e.counter), e.dtype.np_type)
        if isinstance(e, Acc):
            if self.acc is None:
                raise KernelEvalError(f"{self.kernel.name}: Acc() outside a reduction's "
                                      "stores")
            return self.acc
        raise KernelEvalError(f"not a kernel expression: {e!r}")

    @property
    def _acc_dtype(self):
        return self.kernel.acc_dtype

    def _load(self, e: Load) -> np.ndarray:
        if e.buffer not in self.inputs:
            raise KernelEvalError(f"{self.kernel.name}: loads {e.buffer}, which is not one of "
                                  "its inputs")
        buf = self.buffers[e.buffer]
        index = self(e.index)
        other = np.asarray(e.other).astype(buf.dtype)
        if e.mask is None:
            mask = np.ones((), bool)
        else:
            mask = self(e.mask)
        index, mask = np.broadcast_arrays(index, mask)
        hit = index[mask]
        if hit.size and (hit.min() < 0 or hit.max() >= buf.size):
            raise KernelEvalError(f"{self.kernel.name}: load of {e.buffer} out of bounds "
                                  f"(index {hit.min()}..{hit.max()}, size {buf.size})")
        out = np.empty(index.shape, buf.dtype)
        out[...] = other
        out[mask] = buf[hit]
        return out
