"""The closed set of kernel-IR ops (compiler/kernel/ops.py): one table that lowering, the
evaluator and the LLVM generator all implement in full, the integer bit operations and uint32
with wrapping semantics checked against Python integers, and the construction-time check."""
from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import assert_outputs_match, compile_schedule, schedule
from neurenix.compiler.codegen.llvm_ops import BINARY as LLVM_BINARY
from neurenix.compiler.codegen.llvm_ops import UNARY as LLVM_UNARY
from neurenix.compiler.codegen.llvm_ops import dclass
from neurenix.compiler.kernel import eval as kernel_eval
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.kernel.ir import (
    Binary,
    BufferArg,
    Cast,
    Const,
    Kernel,
    Load,
    Store,
    Unary,
    Var,
    dtype_of,
)
from neurenix.compiler.kernel.ops import (
    BINARY_OPS,
    BINARY_PRIMITIVES,
    UNARY_OPS,
    UNARY_PRIMITIVES,
    check_operands,
)
from neurenix.compiler.ops.registry import REGISTRY
from neurenix.compiler.types import (
    ALL_DTYPES,
    KERNEL_DTYPES,
    bool_,
    dtype_from_name,
    dtype_from_numpy,
    float32,
    int32,
    int64,
    uint32,
)
from test_codegen_cstyle import gpu_program

N = 67
BIT_OPS = ("bitand", "bitor", "xor", "shl", "shr")
INTS = (int32, int64, uint32)


def test_every_op_is_implemented_by_the_evaluator_and_the_llvm_generator():
    assert set(kernel_eval.UNARY) == set(UNARY_OPS)
    assert set(kernel_eval.BINARY) == set(BINARY_OPS)
    for table, ops in ((LLVM_UNARY, UNARY_OPS), (LLVM_BINARY, BINARY_OPS)):
        assert {op for op, _ in table} == set(ops)
        for spec in ops.values():
            for d in spec.dtypes:
                assert (spec.name, dclass(d)) in table, (spec.name, d.name)


@pytest.mark.parametrize("target", ["opencl", "webgpu"])
def test_every_op_is_rendered_or_decomposed_by_the_gpu_generators(target):
    """Source generation (no device) for every (op, dtype) and uint32 cast; WebGPU refuses
    float64 and int64 arithmetic on data, naming itself."""
    s, _ = _op_program()
    for kernel in s.kernels:
        try:
            program = gpu_program(s.with_kernels([kernel]), target)
        except ValueError as e:  # float64 erf fails to decompose before WGSL refuses it
            assert target == "webgpu" and ("float64" in str(e) or (
                str(e).startswith("webgpu: ") and "int64" in str(e))), (kernel.name, e)
            continue
        assert len(program.kernels) == 1 and program.kernels[0].source


def test_lowering_maps_primitives_onto_the_set():
    for prim, op in {**UNARY_PRIMITIVES, **BINARY_PRIMITIVES}.items():
        assert prim in REGISTRY, prim
        assert op in UNARY_OPS or op in BINARY_OPS


def test_unknown_op_names_are_refused_at_construction():
    x = Const(1, int64)
    with pytest.raises(ValueError, match="'bogus' is not a unary kernel op"):
        Unary("bogus", x)
    with pytest.raises(ValueError, match="'exp' is not a binary kernel op"):
        Binary("exp", x, x)
    with pytest.raises(ValueError, match="'logical_and' is not a binary"):
        Binary("logical_and", x, x)


def test_result_dtype_rules():
    assert check_operands("lt", (uint32, uint32)) == bool_
    assert check_operands("xor", (int32, int32)) == int32
    assert dtype_of(Binary("shr", Const(8, uint32), Const(1, uint32))) == uint32
    assert dtype_of(Unary("not", Const(True, bool_))) == bool_
    with pytest.raises(ValueError, match="xor: does not accept float32"):
        check_operands("xor", (float32, float32))
    with pytest.raises(ValueError, match="different dtypes int32, int64"):
        check_operands("add", (int32, int64))


# ---- every (op, dtype) of the set, LLVM against the evaluator -------------------------------


def _sample(d, rng) -> np.ndarray:
    if d.is_floating:
        special = [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, np.inf, -np.inf, np.nan, 1e30, -7.25]
        rest = rng.standard_normal(N) * 4
    elif d == bool_:
        special, rest = [True, False], rng.integers(0, 2, N)
    else:
        info = np.iinfo(d.np_type)
        special = [0, 1, 2, 7, 31, 32, 33, 63, 64, info.max, info.min, info.max - 1]
        if d.is_signed:
            special += [-1, -2, -31, -32, -33, info.min + 1]
        rest = rng.integers(info.min, int(info.max) + 1, N, dtype=np.int64 if d != uint32
                            else np.uint64)
    return np.array((special + list(rest))[:N]).astype(d.np_type)


def _op_program():
    rng = np.random.default_rng(1)
    data = {f"x_{d.short}": _sample(d, rng) for d in KERNEL_DTYPES}
    data.update({f"y_{d.short}": np.roll(_sample(d, rng), 3) for d in KERNEL_DTYPES})
    kernels = []
    for ops in (UNARY_OPS, BINARY_OPS):
        for spec in ops.values():
            for d in sorted(spec.dtypes, key=lambda d: d.name):
                args = [Load(f"{v}_{d.short}", Var(0), d) for v in "xy"[:spec.arity]]
                expr = Unary(spec.name, *args) if spec.arity == 1 else Binary(spec.name, *args)
                name = f"op_{spec.name}_{d.short}"
                ins = tuple(BufferArg(a.buffer, d, N) for a in args)
                kernels.append(Kernel(name, ins, (BufferArg(name, spec.result(d), N),), (N,),
                                      (Store(name, Var(0), expr),)))
    for s in KERNEL_DTYPES:
        for d in KERNEL_DTYPES:
            if uint32 in (s, d) and s != d:
                name = f"cast_{s.short}_{d.short}"
                kernels.append(Kernel(name, (BufferArg(f"x_{s.short}", s, N),),
                                      (BufferArg(name, d, N),), (N,),
                                      (Store(name, Var(0), Cast(d, Load(f"x_{s.short}",
                                                                        Var(0), s))),)))
    outputs = {k.name: ((N,), k.outputs[0].dtype) for k in kernels}
    return schedule(kernels, data, outputs), data


@pytest.fixture(scope="module")
def op_program():
    s, data = _op_program()
    inputs = [data[n] for n in s.inputs]
    with np.errstate(all="ignore"):
        want = run_schedule(s, inputs)
    return s, data, compile_schedule(s).run(inputs), want


def test_every_op_and_uint32_cast_runs_the_same_compiled(op_program):
    s, _, got, want = op_program
    assert_outputs_match(s.outputs, got, want, rtol=2e-6, atol=1e-30)


def _wrap(values: list[int], d) -> np.ndarray:
    bits = 8 * d.itemsize
    out = [v % (1 << bits) for v in values]
    if d.is_signed:
        out = [v - (1 << bits) if v >= 1 << (bits - 1) else v for v in out]
    return np.array(out, dtype=d.np_type)


def _oracle(op: str, a: int, b: int, d) -> int:
    """The op on Python integers (unbounded), before wrapping to d."""
    bits = 8 * d.itemsize
    k = b % bits
    return {"bitand": a & b, "bitor": a | b, "xor": a ^ b, "shl": a << k, "shr": a >> k,
            "add": a + b, "sub": a - b, "mul": a * b}[op]


@pytest.mark.parametrize("d", INTS, ids=lambda d: d.name)
@pytest.mark.parametrize("op", BIT_OPS + ("add", "sub", "mul"))
def test_integer_ops_wrap_as_python_integers_say(op_program, op, d):
    """Two's complement wrapping; shifts by the count modulo the width, `shr` arithmetic on
    signed and logical on unsigned integers (an unsigned value is non-negative, so Python's
    >> is logical on it)."""
    s, data, got, want = op_program
    x = [int(v) for v in data[f"x_{d.short}"]]
    y = [int(v) for v in data[f"y_{d.short}"]]
    expected = _wrap([_oracle(op, a, b, d) for a, b in zip(x, y)], d)
    k = s.outputs.index(f"op_{op}_{d.short}")
    np.testing.assert_array_equal(want[k], expected, err_msg="evaluator")
    np.testing.assert_array_equal(got[k], expected, err_msg="llvm")


def test_uint32_compares_and_extremes_are_unsigned(op_program):
    s, data, got, _ = op_program
    x, y = data["x_u32"].astype(np.int64), data["y_u32"].astype(np.int64)
    for op, fn in (("lt", np.less), ("ge", np.greater_equal), ("max", np.maximum),
                   ("min", np.minimum)):
        k = s.outputs.index(f"op_{op}_u32")
        np.testing.assert_array_equal(got[k].astype(np.int64), fn(x, y).astype(np.int64))


def test_uint32_casts(op_program):
    s, data, got, _ = op_program
    out = dict(zip(s.outputs, got))
    u = data["x_u32"]
    np.testing.assert_array_equal(out["cast_u32_i64"], u.astype(np.int64))  # zero-extends
    i64 = data["x_i64"]
    np.testing.assert_array_equal(out["cast_i64_u32"], _wrap([int(v) for v in i64], uint32))
    np.testing.assert_array_equal(out["cast_u32_f64"], u.astype(np.float64))
    f = data["x_f64"]
    finite = np.isfinite(f) & (np.abs(f) < 2.0 ** 63)
    want = _wrap([int(v) for v in f[finite]], uint32)  # int() truncates toward zero
    np.testing.assert_array_equal(out["cast_f64_u32"][finite], want)
    np.testing.assert_array_equal(out["cast_f64_u32"][~finite], 0)  # INT64_MIN wraps to 0


def test_uint32_stays_a_kernel_only_dtype():
    """The frontend and the op registry accept the tensor dtypes only."""
    assert uint32 in KERNEL_DTYPES and uint32 not in ALL_DTYPES
    with pytest.raises(TypeError, match="unsupported dtype uint32"):
        dtype_from_numpy(np.uint32)
    with pytest.raises(ValueError, match="unknown dtype 'uint32'"):
        dtype_from_name("uint32")
