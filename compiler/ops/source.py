"""Source primitives, which make values from attributes: `full`, `iota`, `rng_uniform`."""
from __future__ import annotations

import numpy as np

from ...runtime.sizes import Poly
from ..types import TensorType, dtype_from_name, int64
from .registry import SOURCE, OpError, non_differentiable, register


def _shape_ok(name, shape):
    """Sizes are non-negative ints or dynamic sizes (`compiler.symbolic.Dim`)."""
    if any(not isinstance(d, (int, Poly)) or isinstance(d, bool) or d < 0 for d in shape):
        raise OpError(f"{name}: expected a shape of non-negative sizes, got {shape}")


def _full_rule(*, shape, value, dtype) -> TensorType:
    _shape_ok("full", shape)
    return TensorType(tuple(shape), dtype_from_name(dtype))


register("full", SOURCE, 0, _full_rule,
         lambda *, shape, value, dtype: np.full(shape, value, dtype_from_name(dtype).np_type),
         non_differentiable, "a tensor of attrs.shape filled with attrs.value")


def _iota_rule(*, shape, axis, dtype) -> TensorType:
    _shape_ok("iota", shape)
    if not 0 <= axis < len(shape):
        raise OpError(f"iota: axis {axis} out of range for shape {shape}")
    return TensorType(tuple(shape), dtype_from_name(dtype))


def _iota_impl(*, shape, axis, dtype):
    ramp = np.arange(shape[axis], dtype=dtype_from_name(dtype).np_type)
    ramp = ramp.reshape(tuple(-1 if i == axis else 1 for i in range(len(shape))))
    return np.ascontiguousarray(np.broadcast_to(ramp, shape))


register("iota", SOURCE, 0, _iota_rule, _iota_impl, non_differentiable,
         "0, 1, 2, ... along attrs.axis, broadcast to attrs.shape")

_MASK32 = np.uint64(0xFFFFFFFF)
HASH_MUL1 = 0x7FEB352D
HASH_MUL2 = 0x846CA68B
SEED_GOLDEN = 0x9E3779B9
"""The constants of the generator below, which every backend (and the kernel-IR
decomposition of `rng_uniform`) repeats bit for bit."""


def hash32(x: np.ndarray) -> np.ndarray:
    """A 32-bit integer mixer (lowbias32); every backend implements the same few lines."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(HASH_MUL1)
    x ^= x >> np.uint32(15)
    x *= np.uint32(HASH_MUL2)
    x ^= x >> np.uint32(16)
    return x


def uniform_bits(seed: int, n: int) -> np.ndarray:
    """n counter-based random uint32 words for a 64-bit seed: hash(i ^ key(seed))."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    lo = np.array([seed & 0xFFFFFFFF], dtype=np.uint32)
    hi = np.array([seed >> 32], dtype=np.uint32)
    key = hash32(lo ^ hash32(hi + np.uint32(SEED_GOLDEN)))
    counter = np.arange(n, dtype=np.uint32)
    return hash32(hash32(counter ^ key) + key)


def _rng_rule(seed: TensorType, *, shape, dtype) -> TensorType:
    _shape_ok("rng_uniform", shape)
    if seed.shape != () or seed.dtype != int64:
        raise OpError(f"rng_uniform: expected an int64 scalar seed, got {seed}")
    out = dtype_from_name(dtype)
    if not out.is_floating:
        raise OpError(f"rng_uniform: expected a floating dtype, got {dtype}")
    return TensorType(tuple(shape), out)


def _rng_impl(seed, *, shape, dtype):
    n = int(np.prod(shape, dtype=np.int64))
    bits = uniform_bits(int(seed), n)
    u = (bits >> np.uint32(8)).astype(np.float64) * (1.0 / (1 << 24))
    return u.astype(dtype_from_name(dtype).np_type).reshape(shape)


register("rng_uniform", SOURCE, 1, _rng_rule, _rng_impl, non_differentiable,
         "uniform [0, 1) numbers of attrs.shape from an int64 seed (counter-based, portable)")
