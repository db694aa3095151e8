"""Random numbers: the global state (`manual_seed`) and the draws the creation functions make.

Every tensor-valued draw (`uniform`, `normal`, `integers`, behind `rand`, `randn`, `randint`
and dropout) takes one fresh int64 seed from `seed_tensor()` and expands it with the
counter-based `rng_uniform` primitive (a hash of (seed, element index), identical on every
backend); the distributions are compositions of primitives on those uniform words.  So the
same code runs eagerly and traced: a compiled program gets a fresh seed per call (it draws new
numbers every call), and after `manual_seed(k)` eager and compiled consume the same seeds in the
same order and draw the same numbers.

Each `rng_uniform` word is a multiple of 2**-24 in [0, 1).  The limits that follow from it:

- float32 `uniform`: one word, 2**24 equally likely values in [0, 1) (as PyTorch's float32).
- float64 `uniform`: two words, 2**48 equally likely values in [0, 1).
- `normal` (Box-Muller on 1 - u in (0, 1], so no log(0)): samples are bounded by
  |z| <= sqrt(48 ln 2) = 5.77 in float32 (probability beyond it: 8e-9) and 8.16 in float64.
- `integers(low, high)`: floor(u * (high - low)) with a 48-bit u, clamped to high - low - 1,
  computed in float64.  Every value of a range up to 2**48 is drawn, each with probability
  within a relative 2**-48 * (high - low) of uniform (exactly uniform for powers of two up to
  2**48); wider ranges draw from 2**48 evenly spaced values only.

Eager and compiled values agree bit for bit where only exactly rounded operations are involved
(`uniform`, `integers`: the words are bit-exact and the transforms are +, *, floor); `normal`
also uses log, whose float32 code on the LLVM backend is a polynomial within 2 ulp of NumPy's,
so there they agree to float rounding (a few ulp), and bit for bit on the reference backend.

On a device (`device=` of the draws) the same primitives run there, one program each, from
an uploaded seed: a draw on a device consumes the seeds a CPU draw would and gives the same
numbers (to float rounding where `normal`'s log is involved).  `integers` computes in float64;
on a device without float64 (WebGPU) it is drawn on the host and uploaded.  A seed drawn
without a device is a `HostConstant`, so a mask made from it (dropout's) joins a device
operation as a constant would.

`generator()` (a NumPy generator seeded by `manual_seed`) remains for host-side draws that are
never traced: parameter initialisation, `randperm`, estimator shuffling.
"""
from __future__ import annotations

import math

import numpy as np

from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.targets import get_target, target_for_device
from neurenix.compiler.types import DType, dtype_from_numpy, float32, float64, int64

from . import elementwise as ew
from .device import Device
from .dispatch import apply
from .shapes import unbind
from .state import current_trace, is_tracing
from .tensor import HostConstant, Tensor, storage_on

_STATE = {"rng": np.random.default_rng()}

WORD = 2.0 ** -24  # the spacing of rng_uniform's values
# sin(x) = x * sum_k (-1)^k x^(2k) / (2k+1)!, to x^13 (float32) or x^21 (float64) on [-pi/2,
# pi/2]: the first dropped term is below 7e-10 and 1.2e-18 respectively
_SIN_TERMS = {float32: 7, float64: 11}


def manual_seed(seed: int) -> None:
    """Seed every random draw Neurenix makes (initialisation, dropout, randn, ...)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"manual_seed: expected an int, got {type(seed).__name__}")
    _STATE["rng"] = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF)


def generator() -> np.random.Generator:
    """The NumPy generator behind Neurenix's random state (and its host-side draws)."""
    return _STATE["rng"]


def next_seed() -> int:
    """A fresh 63-bit seed for a counter-based random primitive (one per tensor draw)."""
    return int(_STATE["rng"].integers(0, 2**63 - 1))


def seed_tensor(device: Device | None = None) -> Tensor:
    """An int64 seed for a random primitive: fresh eagerly (on `device`; without one a host
    constant), a per-call graph input traced."""
    trace = current_trace()
    if trace is None:
        seed = np.asarray(next_seed(), dtype=np.int64)
        if device is None:
            return Tensor._wrap(seed.view(HostConstant), int64)
        return Tensor._wrap(storage_on(seed, device), int64, device)
    return trace.seed()


class _Tensors:
    """The draws as tensor operations: what a trace records (one node per primitive), and
    what runs on a device (`device`: where the seed is uploaded)."""

    def __init__(self, device: Device | None = None) -> None:
        self.device = device

    def words(self, count: int, shape: tuple[int, ...], dtype: DType) -> tuple[Tensor, ...]:
        """`count` independent tensors of uniform words of `shape`, all from one fresh seed."""
        draw = apply("rng_uniform", seed_tensor(self.device), shape=(count, *shape),
                     dtype=dtype.name)
        return unbind(draw, 0)

    add, sub, mul, minimum = (staticmethod(f) for f in (ew.add, ew.sub, ew.mul, ew.minimum))
    log, sqrt, floor, cast = (staticmethod(f) for f in (ew.log, ew.sqrt, ew.floor, ew.cast))

    def tensor(self, value: Tensor) -> Tensor:
        return value


def _array_op(op: str):
    """Primitive `op` on arrays, a Python scalar operand taken as the array's dtype (as
    `neurenix.elementwise` promotes a Python scalar against a tensor)."""
    impl = REGISTRY[op].impl

    def run(*args):
        dtype = next(a.dtype for a in args if isinstance(a, np.ndarray))
        return np.asarray(impl(*(np.asarray(a, dtype) for a in args)), dtype)
    return run


class _Arrays:
    """The same draws on NumPy arrays through the primitives' reference implementations:
    exactly what eager dispatch computes on the CPU, without its per-operation overhead."""

    def words(self, count: int, shape: tuple[int, ...], dtype: DType) -> tuple[np.ndarray, ...]:
        seed = seed_tensor()._host()
        draw = REGISTRY["rng_uniform"].impl(seed, shape=(count, *shape), dtype=dtype.name)
        return tuple(np.asarray(w) for w in draw)

    add, sub, mul, minimum, log, sqrt, floor = (
        staticmethod(_array_op(op)) for op in ("add", "sub", "mul", "minimum", "log", "sqrt",
                                                "floor"))

    def cast(self, x: np.ndarray, dtype: DType) -> np.ndarray:
        return np.asarray(REGISTRY["cast"].impl(x, dtype=dtype.name))

    def tensor(self, value: np.ndarray) -> Tensor:
        # asarray, not ascontiguousarray: the latter turns a 0-d array into shape (1,)
        return Tensor._wrap(np.asarray(value, order="C"), dtype_from_numpy(value.dtype))


def _ops(device: Device | None) -> _Tensors | _Arrays:
    if is_tracing():
        return _TENSORS
    return _ARRAYS if device is None else _Tensors(device)


_TENSORS, _ARRAYS = _Tensors(), _Arrays()


def _fine(ops, hi, lo):
    """A 48-bit float64 uniform in [0, 1) from two words (exact: hi + lo * 2**-24)."""
    return ops.add(hi, ops.mul(lo, WORD))


def uniform(shape: tuple[int, ...], dtype: DType = float32,
            device: Device | None = None) -> Tensor:
    """Uniform samples in [0, 1) of a floating `dtype` (24 bits for float32, 48 for float64),
    drawn on `device` (None: the CPU)."""
    ops = _ops(device)
    if dtype == float64:
        return ops.tensor(_fine(ops, *ops.words(2, shape, float64)))
    return ops.tensor(ops.words(1, shape, dtype)[0])


def _sin(ops, x, dtype: DType):
    """sin(x) for |x| <= pi/2 as a Taylor polynomial (no trigonometric primitive exists)."""
    x2 = ops.mul(x, x)
    terms = _SIN_TERMS[dtype]
    acc = ops.mul(x2, (-1) ** (terms - 1) / math.factorial(2 * terms - 1))
    for k in range(terms - 2, 0, -1):
        acc = ops.mul(x2, ops.add(acc, (-1) ** k / math.factorial(2 * k + 1)))
    return ops.mul(x, ops.add(acc, 1.0))


def normal(shape: tuple[int, ...], dtype: DType = float32,
           device: Device | None = None) -> Tensor:
    """Standard normal samples (Box-Muller: sqrt(-2 log v) * cos(pi u), v = 1 - u1 in (0, 1]).

    cos of an angle uniform on [0, pi) has the distribution of cos on [0, 2 pi), and cos(pi u) =
    -sin(pi (u - 1/2)) with the sign immaterial, so one odd polynomial on [-pi/2, pi/2) serves.
    Drawn on `device` (None: the CPU).
    """
    ops = _ops(device)
    if dtype == float64:
        w = ops.words(4, shape, float64)
        u1, u2 = _fine(ops, w[0], w[1]), _fine(ops, w[2], w[3])
    else:
        u1, u2 = ops.words(2, shape, dtype)
    radius = ops.sqrt(ops.mul(ops.log(ops.sub(1.0, u1)), -2.0))
    return ops.tensor(ops.mul(radius, _sin(ops, ops.mul(ops.sub(u2, 0.5), math.pi), dtype)))


def integers(low: int, high: int, shape: tuple[int, ...],
             device: Device | None = None) -> Tensor:
    """int64 samples uniform on [low, high), low < high (see the module docstring's limits),
    drawn on `device` (None: the CPU; on a device without float64, drawn on the host)."""
    if device is not None and not is_tracing() and not _has_float64(device):
        drawn = integers(low, high, shape)
        return Tensor._wrap(storage_on(drawn._data, device), int64, device)
    ops = _ops(device)
    span = high - low
    u = _fine(ops, *ops.words(2, shape, float64))
    drawn = ops.cast(ops.floor(ops.mul(u, float(span))), int64)
    # float(span) rounds up for some spans beyond 2**53; the clamp keeps every draw below high
    return ops.tensor(ops.add(ops.minimum(drawn, span - 1), low))


def _has_float64(device: Device) -> bool:
    """Whether code for `device` computes float64."""
    return get_target(target_for_device(device.type.value)).capabilities.float64
