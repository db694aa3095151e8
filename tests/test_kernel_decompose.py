"""Decompositions (compiler/kernel/decompose.py): rewritten kernels compute what the originals
compute, through the kernel evaluator and through the LLVM backend; random numbers bit for bit."""
from __future__ import annotations

import math

import numpy as np
import pytest
from kernel_helpers import c64, compile_schedule, merge, schedule
from neurenix.compiler.kernel.decompose import DecompositionError, decompose
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.kernel.ir import (
    BufferArg,
    Kernel,
    Load,
    RandomUniform,
    Store,
    Unary,
    Var,
)
from neurenix.compiler.kernel.ops import OP_NAMES, RNG
from neurenix.compiler.lowering.lower import walk
from neurenix.compiler.ops.source import _rng_impl
from neurenix.compiler.types import dtype_from_numpy, float32, float64, int64

ALL = OP_NAMES | {RNG}
SEEDS = (0, 1, 42, -1, -(2 ** 63), 2 ** 63 - 1, 0x9E3779B97F4A7C15 - 2 ** 64, 123456789012345)


def rng_program(n: int, dtype) -> object:
    seed = Load("seed", c64(0), int64)
    k = Kernel("k0_rng", (BufferArg("seed", int64, 1),), (BufferArg("u", dtype, n),), (n,),
               (Store("u", Var(0), RandomUniform(seed, Var(0), dtype)),))
    return schedule([k], {"seed": np.zeros((), np.int64)}, {"u": ((n,), dtype)})


def unary_program(op: str, x: np.ndarray) -> object:
    d = dtype_from_numpy(x.dtype)
    n = x.size
    k = Kernel(f"k0_{op}", (BufferArg("x", d, n),), (BufferArg("y", d, n),), (n,),
               (Store("y", Var(0), Unary(op, Load("x", Var(0), d))),))
    return schedule([k], {"x": x}, {"y": ((n,), d)})


def ops_of(s) -> set[str]:
    exprs = [e for k in s.kernels for st in k.stores for e in (st.index, st.value)]
    found = set()
    for e in walk(exprs):
        if isinstance(e, RandomUniform):
            found.add(RNG)
        elif hasattr(e, "op"):
            found.add(e.op)
    return found


def test_nothing_to_do_returns_the_same_object():
    s = rng_program(8, float32)
    assert decompose(s, None) is s
    assert decompose(s, ALL) is s
    assert decompose(s, frozenset({RNG})) is s  # the kernel uses nothing else


@pytest.mark.parametrize("dtype", [float32, float64], ids=lambda d: d.name)
def test_random_uniform_becomes_bit_operations_with_identical_bits(dtype):
    n = 1000
    s = rng_program(n, dtype)
    d = decompose(s, OP_NAMES)
    assert d is not s and RNG not in ops_of(d)
    assert {"xor", "shr", "mul", "add"} <= ops_of(d)
    exe = compile_schedule(d)
    for seed in SEEDS:
        inputs = [np.array(seed, np.int64)]
        want = _rng_impl(seed, shape=(n,), dtype=dtype.name)
        (native,) = run_schedule(s, inputs)
        (got_eval,) = run_schedule(d, inputs)
        (got_llvm,) = exe.run(inputs)
        np.testing.assert_array_equal(native, want)
        np.testing.assert_array_equal(got_eval, want)
        np.testing.assert_array_equal(got_llvm, want)


def _float_grid(dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    tiny = np.finfo(dtype).tiny
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, tiny, -tiny, tiny / 8, 1e-30, -1e-30, 1.0,
               -1.0, 0.999999, 1.000001, 3.99, 4.0, 4.01, 10.0, -10.0, 100.0, 1e30, -1e30,
               88.0, -88.0, 89.0, -104.0]
    dense = np.linspace(-6, 6, 24001)
    logs = np.concatenate([10.0 ** np.linspace(-38, 1, 4001), -(10.0 ** np.linspace(-38, 1, 400))])
    return np.concatenate([special, dense, logs, rng.standard_normal(2000) * 3]).astype(dtype)


def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    spacing = np.spacing(np.abs(want).astype(got.dtype)).astype(np.float64)
    return np.where(same, 0.0, np.abs(got.astype(np.float64) - want.astype(np.float64)) / spacing)


def _exact_erf(x: np.ndarray) -> np.ndarray:
    return np.array([math.erf(float(v)) for v in x.astype(np.float64)]).astype(x.dtype)


def test_erf_float32_polynomial_within_two_ulp_of_the_correctly_rounded_erf():
    x = _float_grid(np.float32)
    s = unary_program("erf", x)
    d = decompose(s, OP_NAMES - {"erf"})
    assert "erf" not in ops_of(d) and "exp" in ops_of(d)
    want = _exact_erf(x)
    (native_eval,) = run_schedule(s, [x])
    np.testing.assert_array_equal(native_eval, want)
    (got_eval,) = run_schedule(d, [x])
    got_llvm, native_llvm = compile_schedule(merge([d, s])).run([x, x])
    for got in (got_eval, got_llvm):
        assert _ulps(got, want).max() <= 2.0
        assert np.array_equal(np.signbit(got[got == 0]), np.signbit(want[want == 0]))
    assert _ulps(got_llvm, native_llvm).max() <= 2.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_decomposes_into_the_operations_llvm_emits_for_it(dtype):
    x = _float_grid(dtype)
    s = unary_program("sigmoid", x)
    d = decompose(s, OP_NAMES - {"sigmoid"})
    assert "sigmoid" not in ops_of(d)
    (native_eval,) = run_schedule(s, [x])
    (got_eval,) = run_schedule(d, [x])
    assert _ulps(got_eval, native_eval).max() <= 1.0  # e * (1/(1+e)) vs e/(1+e) below 0
    got_llvm, native_llvm = compile_schedule(merge([d, s])).run([x, x])
    np.testing.assert_array_equal(got_llvm, native_llvm)


def test_missing_op_without_a_decomposition_is_named():
    x = np.linspace(-1, 1, 5)
    with pytest.raises(DecompositionError, match=r"k0_erf: .*'erf' on float64"):
        decompose(unary_program("erf", x), OP_NAMES - {"erf"})
    with pytest.raises(DecompositionError, match=r"k0_tanh: .*'tanh' on float64"):
        decompose(unary_program("tanh", x), OP_NAMES - {"tanh"})
    with pytest.raises(DecompositionError, match="'exp' on float32"):
        decompose(unary_program("sigmoid", x.astype(np.float32)), OP_NAMES - {"sigmoid", "exp"})
    with pytest.raises(DecompositionError, match="'xor' on uint32"):
        decompose(rng_program(4, float32), OP_NAMES - {"xor"})
