"""The LLVM backend on hand-built kernels, against the kernel IR's NumPy interpreter.

Every op-table entry runs on every dtype it accepts, over special values (NaN, infinities,
signed zeros, subnormals, integer extremes, zero divisors); masked loads, reductions,
accumulating stores, the random-number hash and the tiled contraction path each get their own
kernels.  Programs are merged into few compiles (LLVM takes ~0.1 s per module).
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from kernel_helpers import (
    assert_outputs_match,
    assert_same_guarded,
    c64,
    compile_schedule,
    flat,
    guarded,
    run_both,
    schedule,
)
from neurenix.compiler.codegen import CodegenError, generate
from neurenix.compiler.codegen.llvm_ops import BINARY, UNARY
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.kernel.ir import (
    Acc,
    Binary,
    BufferArg,
    Cast,
    Const,
    Kernel,
    Load,
    RandomUniform,
    Store,
    Unary,
    Var,
    Where,
)
from neurenix.compiler.ops.source import _rng_impl
from neurenix.compiler.schedule import (
    ColumnReduction,
    Elementwise,
    schedule_kernel,
    schedule_kernels,
)
from neurenix.compiler.schedule.ranges import PARALLEL_MIN_WORK
from neurenix.compiler.targets import get_target
from neurenix.compiler.types import ALL_DTYPES, bool_, float32, float64, int32, int64
from neurenix.runtime.cpu import optimized_ir

CAPS = get_target("llvm").capabilities  # the host's, or what a test plugin forces
N = 67  # no multiple of a vector width: every loop has a remainder
CLASSES = {"f": (float32, float64), "i": (int32, int64), "b": (bool_,)}
# float32 routines written as polynomials (see llvm_math.py) are within 4 ulp; sinf/cosf
# of the C library and NumPy's float32 sin/cos may differ in the last bit
LOOSE = {"exp", "log", "tanh", "sigmoid", "erf", "pow", "sin", "cos"}


def sample(dtype, rng, seed_values=True):
    """N values of `dtype`, the special ones first."""
    if dtype.is_floating:
        tiny = np.finfo(dtype.np_type).tiny
        special = [0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 1e-3, -1e-3, tiny / 4, -tiny / 4,
                   87.0, 89.0, -104.0, -90.0, 1e30, -1e30, np.inf, -np.inf, np.nan, 0.54,
                   0.56, -0.549, 10.0, -10.0, 7.0, -7.0, 2.0]
        rest = rng.standard_normal(N) * rng.choice([0.1, 1.0, 20.0], N)
    elif dtype.is_integer:
        info = np.iinfo(dtype.np_type)
        special = [0, 1, -1, 2, -2, 7, -7, info.min, info.max, info.min + 1, 3, -3]
        rest = rng.integers(-20, 20, N)
    else:
        special = [True, False]
        rest = rng.integers(0, 2, N)
    values = (special if seed_values else []) + list(rest)
    return np.array(values[:N]).astype(dtype.np_type)


def elementwise(name: str, inputs: dict, value, out_dtype) -> Kernel:
    args = tuple(BufferArg(n, d, N) for n, d in inputs.items())
    return Kernel(name, args, (BufferArg(name, out_dtype, N),), (N,),
                  (Store(name, Var(0), value),))


def op_kernels():
    """One kernel per (op, dtype) of the op table and per cast, and the data they read."""
    rng = np.random.default_rng(0)
    data, kernels = {}, []
    for d in ALL_DTYPES:
        data[f"x_{d.short}"] = sample(d, rng)
        other = sample(d, rng, seed_values=False)
        data[f"y_{d.short}"] = np.roll(data[f"x_{d.short}"], 5) if d == bool_ else other
        if d.is_integer:
            data[f"y_{d.short}"][:6] = [0, -1, 3, 0, 1, -1]  # zero and -1 divisors
    ld = lambda n, d: Load(f"{n}_{d.short}", Var(0), d)
    for (op, cls), _ in UNARY.items():
        for d in CLASSES[cls]:
            out = bool_ if op == "not" else d
            kernels.append(elementwise(f"u_{op}_{d.short}", {f"x_{d.short}": d},
                                       Unary(op, ld("x", d)), out))
    for (op, cls), _ in BINARY.items():
        for d in CLASSES[cls]:
            compare = op in ("eq", "ne", "lt", "le", "gt", "ge", "and", "or")
            kernels.append(elementwise(f"b_{op}_{d.short}",
                                       {f"x_{d.short}": d, f"y_{d.short}": d},
                                       Binary(op, ld("x", d), ld("y", d)),
                                       bool_ if compare else d))
    for s in ALL_DTYPES:
        for d in ALL_DTYPES:
            kernels.append(elementwise(f"c_{s.short}_{d.short}", {f"x_{s.short}": s},
                                       Cast(d, ld("x", s)), d))
    cond = Load("x_i1", Var(0), bool_)
    kernels.append(elementwise("where_f32", {"x_i1": bool_, "x_f32": float32, "y_f32": float32},
                               Where(cond, ld("x", float32), ld("y", float32)), float32))
    return kernels, data


@pytest.fixture(scope="module")
def ops_program():
    kernels, data = op_kernels()
    outputs = {k.name: ((N,), k.outputs[0].dtype) for k in kernels}
    s = schedule(kernels, data, outputs)
    exe = compile_schedule(s)
    inputs = [data[n] for n in s.inputs]
    return s, exe.run(inputs), run_schedule(s, inputs), data


def _cast_out_of_range(name: str, data: dict) -> np.ndarray:
    """Float -> int casts of values the int cannot hold are undefined in NumPy (it warns);
    those lanes are not compared."""
    _, src, dst = name.split("_")
    x = data[f"x_{src}"]
    if src.startswith("f") and dst.startswith("i"):
        info = np.iinfo(np.int32 if dst == "i32" else np.int64)
        return ~np.isfinite(x) | (x < info.min) | (x > info.max)
    return np.zeros(x.shape, bool)


def test_every_op_table_entry_and_cast_matches_numpy(ops_program):
    s, got, want, data = ops_program
    failures = []
    for name, g, w in zip(s.outputs, got, want):
        assert g.dtype == w.dtype, name
        if name.startswith("c_"):
            skip = _cast_out_of_range(name, data)
            g, w = g[~skip], w[~skip]
        op = name.split("_")[1]
        if g.dtype.kind == "f":
            rtol = 1e-6 if op in LOOSE and g.dtype == np.float32 else 1e-15
            if op in LOOSE and g.dtype == np.float64:
                rtol = 1e-14
            ok = np.allclose(g, w, rtol=rtol, atol=1e-44, equal_nan=True)
            ok = ok and np.array_equal(np.signbit(g[g == 0]), np.signbit(w[w == 0])) \
                if op not in LOOSE else ok
        else:
            ok = np.array_equal(g, w)
        if not ok:
            bad = np.flatnonzero(~np.isclose(g, w, equal_nan=True)) if g.dtype.kind == "f" \
                else np.flatnonzero(g != w)
            failures.append(f"{name}: at {bad[:5]} got {g[bad[:5]]} want {w[bad[:5]]}")
    assert not failures, "\n".join(failures)


def test_float32_transcendentals_are_within_a_few_ulp_on_dense_grids():
    x = np.concatenate([np.linspace(-30, 30, 200001), np.geomspace(1e-30, 1, 50000),
                        -np.geomspace(1e-30, 1, 50000), np.linspace(-110, 95, 100000),
                        np.geomspace(1e-38, 3e38, 50000)]).astype(np.float32)
    names = ("exp", "log", "tanh", "sigmoid")
    kernels = [Kernel(op, (BufferArg("x", float32, x.size),), (BufferArg(op, float32, x.size),),
                      (x.size,), (Store(op, Var(0), Unary(op, Load("x", Var(0), float32))),))
               for op in names]
    s = schedule(kernels, {"x": x}, {op: ((x.size,), float32) for op in names})
    got = dict(zip(names, compile_schedule(s).run([x])))
    wide = x.astype(np.float64)
    with np.errstate(all="ignore"):
        exact = {"exp": np.exp(wide), "log": np.log(wide), "tanh": np.tanh(wide),
                 "sigmoid": 1 / (1 + np.exp(-wide))}
        for op in names:
            want = exact[op].astype(np.float32)
            assert np.array_equal(np.isnan(got[op]), np.isnan(want)), op
            assert np.array_equal(np.isinf(got[op]), np.isinf(want)), op
            assert np.array_equal(got[op] == 0, want == 0), op
            finite = np.isfinite(want) & (want != 0)
            ulps = np.abs(got[op][finite] - exact[op][finite]) / np.spacing(np.abs(want[finite]))
            assert ulps.max() <= 3.0, (op, ulps.max(), x[finite][np.argmax(ulps)])


def test_unknown_op_dtype_pair_is_a_clear_error():
    k = elementwise("bad", {"x_i1": bool_}, Unary("exp", Load("x_i1", Var(0), bool_)), bool_)
    s = schedule([k], {"x_i1": np.zeros(N, bool)}, {"bad": ((N,), bool_)})
    with pytest.raises(CodegenError, match="exp.*bool"):
        generate(s)


# ---- masked loads ---------------------------------------------------------------------------


def test_masked_loads_at_both_edges_touch_no_memory_outside():
    n = 13
    shifted = Binary("sub", Var(0), c64(2))
    inside = Binary("and", Binary("ge", shifted, c64(0)), Binary("lt", shifted, c64(n)))
    pad = Kernel("pad", (BufferArg("x", float32, n),), (BufferArg("y", float32, n + 4),),
                 (n + 4,), (Store("y", Var(0), Load("x", shifted, float32, inside, 7.5)),))
    never = Binary("lt", Var(0), c64(0))
    empty = Kernel("empty", (BufferArg("z", float32, 0),), (BufferArg("w", float32, 5),), (5,),
                   (Store("w", Var(0), Load("z", Var(0), float32, never, -1.0)),))
    s = schedule([pad, empty], {"x": np.zeros(n, np.float32), "z": np.zeros(0, np.float32)},
                 {"y": ((n + 4,), float32), "w": ((5,), float32)})
    exe = compile_schedule(s)
    x = np.arange(n, dtype=np.float32) + 1
    for after in (True, False):  # an inaccessible page right after, then right before, x
        got = exe.run([guarded(x, after), np.zeros(0, np.float32)])
        want = run_schedule(s, [x, np.zeros(0, np.float32)])
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[0], np.r_[7.5, 7.5, x, 7.5, 7.5])
        np.testing.assert_array_equal(got[1], np.full(5, -1.0, np.float32))


# ---- random numbers -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [float32, float64])
def test_random_uniform_is_bit_exact_with_the_reference(dtype):
    n = 1000
    seed = Load("seed", c64(0), int64)
    plain = Kernel("u", (BufferArg("seed", int64, 1),), (BufferArg("u", dtype, n),), (n,),
                   (Store("u", Var(0), RandomUniform(seed, Var(0), dtype)),))
    wrap = Binary("add", Var(0), c64(2**32 - 5))  # counters wrap at 32 bits, as the reference
    wrapped = Kernel("v", (BufferArg("seed", int64, 1),), (BufferArg("v", dtype, n),), (n,),
                     (Store("v", Var(0), RandomUniform(seed, wrap, dtype)),))
    s = schedule([plain, wrapped], {"seed": np.zeros(1, np.int64)},
                 {"u": ((n,), dtype), "v": ((n,), dtype)})
    exe = compile_schedule(s)
    for seed_value in (0, 1, 42, -7, 2**63 - 1, -2**63, 1234567890123):
        seed_array = np.array([seed_value], np.int64)
        got = exe.run([seed_array])
        want = _rng_impl(seed_value, shape=(n,), dtype=dtype.name)
        assert np.array_equal(got[0], want), seed_value
        assert np.array_equal(got[1], run_schedule(s, [seed_array])[1]), seed_value


# ---- reductions -----------------------------------------------------------------------------


def reduction(name, op, dtype, domain, reduce, index, out_size=None):
    size = int(np.prod(domain + reduce))
    size_out = out_size if out_size is not None else int(np.prod(domain))
    acc = int64 if op in ("argmax", "argmin") else dtype
    store_index = flat(*[(i, int(np.prod(domain[i + 1:]))) for i in range(len(domain))])
    return Kernel(name, (BufferArg(f"{name}_x", dtype, size),),
                  (BufferArg(name, acc, size_out),), domain, (Store(name, store_index, Acc()),),
                  reduce=reduce, reduce_op=op, reduce_value=Load(f"{name}_x", index, dtype))


def reduction_cases(rng):
    rows, cols = 19, 37  # reducing 19 rows runs across columns, 37 columns along rows
    cases = []
    f = rng.standard_normal((rows, cols)).astype(np.float32)
    f[1, 5] = np.nan  # NaN propagates through max/min/sum, argmax takes its index
    f[2, :] = -np.inf
    f[3, [4, 20]] = 10.0  # a tie: the first index wins
    f[4, [2, 30]] = -10.0
    f[5, [3, 6]] = np.nan
    ints = rng.integers(-4, 4, (rows, cols)).astype(np.int64)
    ints[0, :] = np.iinfo(np.int64).min
    i32s = rng.integers(-3, 3, (rows, cols)).astype(np.int32)
    last = flat((0, cols), (1, 1))  # reduce the contiguous axis
    first = flat((1, cols), (0, 1))  # reduce the outer (strided) axis
    for op in ("sum", "max", "min", "prod", "argmax", "argmin"):
        for dt, x in ((float32, f), (float64, f.astype(np.float64) / 3), (int64, ints),
                      (int32, i32s)):
            if op == "prod" and dt.is_floating:
                x = (1 + x / 10).astype(x.dtype)
            cases.append((reduction(f"{op}_{dt.short}_last", op, dt, (rows,), (cols,), last),
                          x))
            cases.append((reduction(f"{op}_{dt.short}_first", op, dt, (cols,), (rows,), first),
                          x))
    both = flat((0, cols), (1, 1))  # a domain of no axes: the reduction axes are 0 and 1
    cases.append((reduction("sum_all_scalar", "sum", float32, (), (rows, cols), both, 1), f))
    cases.append((reduction("max_two_axes", "max", float64, (2,), (rows // 2, cols),
                            flat((0, rows // 2 * cols), (1, cols), (2, 1))),
                  rng.standard_normal((rows - 1, cols))))
    cases.append((reduction("sum_empty", "sum", float32, (4,), (0,), flat((0, 0), (1, 1))),
                  np.zeros(0, np.float32)))
    wide = rng.integers(-3, 3, (20, 600)).astype(np.float32)  # ties in every column
    for op in ("sum", "argmax", "argmin"):  # several strips of columns, the last one partial
        cases.append((reduction(f"{op}_wide_columns", op, float32, (600,), (20,),
                                flat((1, 600), (0, 1))), wide))
    window = f[:4].copy()  # 4-step reductions (a pooling window) are unrolled
    window[1, 7], window[2, 9], window[:, 11] = np.nan, -np.inf, 3.0
    for op in ("max", "argmax", "argmin", "sum", "prod"):
        cases.append((reduction(f"{op}_window", op, float32, (cols,), (4,),
                                flat((1, cols), (0, 1))), window))
    return cases


@pytest.fixture(scope="module")
def reductions_program():
    cases = reduction_cases(np.random.default_rng(1))
    data = {k.inputs[0].name: x.reshape(-1) for k, x in cases}
    outputs = {k.name: ((k.outputs[0].size,), k.outputs[0].dtype) for k, _ in cases}
    s = schedule([k for k, _ in cases], data, outputs)
    return run_both(s, [data[n] for n in s.inputs]) + (s,)


def test_reductions_with_nan_ties_infinities_and_empty_axes(reductions_program):
    got, want, s = reductions_program
    assert_outputs_match(s.outputs, got, want, rtol=1e-5, atol=1e-6)


def test_reductions_over_outer_axes_run_across_columns(reductions_program):
    *_, s = reductions_program
    plan = {k.name: schedule_kernel(k, CAPS) for k in s.kernels}
    for name in ("sum_f32_first", "argmax_wide_columns"):
        assert isinstance(plan[name], ColumnReduction), (name, plan[name])
    for name in ("sum_f32_last", "max_two_axes"):
        assert isinstance(plan[name], Elementwise) and not plan[name].unroll, plan[name]
    assert isinstance(plan["argmax_window"], Elementwise) and plan["argmax_window"].unroll


def test_reduction_semantics_spelled_out(reductions_program):
    got, _, s = reductions_program
    by = dict(zip(s.outputs, got))
    assert np.isnan(by["max_f32_last"][1]) and np.isnan(by["min_f32_last"][1])
    assert by["argmax_f32_last"][1] == 5 and by["argmax_f32_last"][5] == 3
    assert by["argmax_f32_last"][3] == 4 and by["argmin_f32_last"][4] == 2
    assert by["argmax_f32_last"][2] == 0 and by["max_f32_last"][2] == -np.inf
    assert by["argmax_i64_last"][0] == 0
    assert by["argmax_window"][7] == 1 and by["argmin_window"][9] == 2
    assert by["argmax_window"][11] == 0 and np.isnan(by["max_window"][7])
    np.testing.assert_array_equal(by["sum_empty"], np.zeros(4, np.float32))


# ---- accumulating stores --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [float32, int64])
def test_accumulating_stores_with_colliding_indices(dtype):
    n_src, n_out = 50, 7
    zero = Kernel("init", (), (BufferArg("out", dtype, n_out),), (n_out,),
                  (Store("out", Var(0), Const(0, dtype)),))
    target = Cast(int64, Load("idx", Var(0), int32))
    add = Kernel("scatter", (BufferArg("idx", int32, n_src), BufferArg("src", dtype, n_src)),
                 (BufferArg("out", dtype, n_out),), (n_src,),
                 (Store("out", target, Load("src", Var(0), dtype), accumulate=True),),
                 parallel=False)
    rng = np.random.default_rng(2)
    idx = rng.integers(0, n_out, n_src).astype(np.int32)
    src = rng.integers(-9, 9, n_src).astype(dtype.np_type)
    s = schedule([zero, add], {"idx": idx, "src": src}, {"out": ((n_out,), dtype)})
    got, want = run_both(s, [idx, src])
    expected = np.zeros(n_out, dtype.np_type)
    np.add.at(expected, idx, src)
    np.testing.assert_allclose(got[0], expected, rtol=1e-6)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


# ---- contractions ---------------------------------------------------------------------------


def matmul_kernel(name, batch, m, k, n, dtype=float32, a_t=False, b_t=False, bias=False):
    """y[b, i, j] = sum_k a[b, i, k] b[b, k, j] (+ bias[j], relu), a and/or b stored
    transposed; domain (batch, m, n) or (m, n)."""
    nd = 3 if batch else 2
    bt, mi, ni, ki = (0, 1, 2, 3) if batch else (None, 0, 1, 2)
    a_idx = [(ki, m), (mi, 1)] if a_t else [(mi, k), (ki, 1)]
    b_idx = [(ni, k), (ki, 1)] if b_t else [(ki, n), (ni, 1)]
    y_idx = [(mi, n), (ni, 1)]
    if batch:
        a_idx.append((bt, m * k))
        b_idx.append((bt, k * n))
        y_idx.append((bt, m * n))
    nb = batch or 1
    ins = [BufferArg(f"{name}_a", dtype, nb * m * k), BufferArg(f"{name}_b", dtype, nb * k * n)]
    value = Acc()
    if bias:
        ins.append(BufferArg(f"{name}_bias", dtype, n))
        value = Binary("max", Binary("add", Acc(), Load(f"{name}_bias", Var(ni), dtype)),
                       Const(0.0, dtype))
    product = Binary("mul", Load(f"{name}_a", flat(*a_idx), dtype),
                     Load(f"{name}_b", flat(*b_idx), dtype))
    domain = ((batch,) if batch else ()) + (m, n)
    kernel = Kernel(name, tuple(ins), (BufferArg(name, dtype, nb * m * n),), domain,
                    (Store(name, flat(*y_idx), value),), reduce=(k,), reduce_op="sum",
                    reduce_value=product, contraction={})
    assert len(domain) == nd
    return kernel


MATMULS = [  # (batch, m, k, n, a transposed, b transposed, bias, dtype)
    (0, 1, 1, 1, False, False, False, float32),
    (0, 7, 13, 5, False, False, True, float32),
    (0, 7, 13, 37, False, False, True, float32),
    (0, 64, 784, 512, False, False, True, float32),
    (0, 1, 784, 512, False, True, True, float32),
    (0, 33, 20, 70, True, False, False, float32),
    (0, 45, 31, 16, True, True, False, float64),
    (3, 17, 33, 45, False, False, False, float32),
    (2, 13, 9, 40, False, True, True, float64),
    (0, 100, 3, 2, True, False, False, float32),
    (0, 150, 20, 7, False, False, True, float32),
    (0, 13, 100, 37, False, True, True, float32),
    (2, 6, 40, 9, False, True, False, float32),
    (2, 5, 73, 9, False, True, True, float64),
    (3, 14, 70, 11, False, True, False, float32),
]
# mm12 (n = 9) is too narrow for 16-lane (AVX-512) tiles but fills 8-lane (AVX2) ones
PATHS = ["generic", "generic", "tiled", "tiled", "dot", "tiled", "tiled", "tiled", "tiled",
         "tiled", "tiled", "dot", "dot" if CAPS.vector_bits >= 512 else "tiled", "dot", "dot"]


def build_matmul_program(prefix: str, cases, seed: int, caps=None):
    """One program holding a contraction kernel `<prefix><i>` per case (batch, m, k, n,
    a transposed, b transposed, bias, dtype), on random data, scheduled for `caps` (default:
    the llvm target's): (kernels, program, executable, inputs, data)."""
    rng = np.random.default_rng(seed)
    kernels, data = [], {}
    for i, (batch, m, k, n, a_t, b_t, bias, dt) in enumerate(cases):
        kern = matmul_kernel(f"{prefix}{i}", batch, m, k, n, dt, a_t, b_t, bias)
        kernels.append(kern)
        for arg in kern.inputs:
            data[arg.name] = rng.standard_normal(arg.size).astype(dt.np_type)
    s = schedule(kernels, data, {k.name: ((k.outputs[0].size,), k.outputs[0].dtype)
                                 for k in kernels})
    if caps is not None:
        s = schedule_kernels(s, caps)
    return s, generate(s), compile_schedule(s), [data[n] for n in s.inputs], data


@pytest.fixture(scope="module")
def matmul_program():
    return build_matmul_program("mm", MATMULS, 3)


def reference_matmul(case, data, name):
    batch, m, k, n, a_t, b_t, bias, dt = case
    nb = batch or 1
    a = data[f"{name}_a"].reshape(nb, k, m).transpose(0, 2, 1) if a_t else \
        data[f"{name}_a"].reshape(nb, m, k)
    b = data[f"{name}_b"].reshape(nb, n, k).transpose(0, 2, 1) if b_t else \
        data[f"{name}_b"].reshape(nb, k, n)
    y = np.matmul(a.astype(np.float64), b.astype(np.float64))
    if bias:
        y = np.maximum(y + data[f"{name}_bias"], 0)
    return y.reshape(-1)


def assert_matmuls_match(got, cases, data, prefix: str) -> None:
    """Each output `<prefix><i>` equals NumPy's product in float64, within a tolerance that
    grows with k (sqrt(k) for float32 sums)."""
    for i, case in enumerate(cases):
        k, dtype = case[2], case[7]
        tol = 1e-5 * np.sqrt(k) if dtype == float32 else 1e-12 * k
        np.testing.assert_allclose(got[i], reference_matmul(case[:8], data, f"{prefix}{i}"),
                                   rtol=tol, atol=tol, err_msg=str(case))


def assert_tiled_matmuls_right(built, cases, prefix: str) -> list:
    """A `build_matmul_program` result: every kernel took the tiled path, matches NumPy's
    product and reads nothing out of bounds (guard pages on both sides); its outputs."""
    _, program, exe, inputs, data = built
    paths = kernel_paths(program)
    assert all(paths[f"{prefix}{i}"] == "tiled" for i in range(len(cases))), paths
    got = exe.run(inputs)
    assert_matmuls_match(got, cases, data, prefix)
    assert_same_guarded(exe, inputs, got)
    return got


def kernel_paths(program) -> dict[str, str]:
    """The code path each kernel took, by kernel name without the `k<i>_` prefix."""
    return {name.split("_", 1)[1]: p for name, p in program.metadata["paths"].items()}


def test_contractions_match_np_matmul_across_awkward_shapes(matmul_program):
    s, program, exe, inputs, data = matmul_program
    assert_matmuls_match(exe.run(inputs), MATMULS, data, "mm")


def test_each_contraction_takes_the_path_its_layout_calls_for(matmul_program):
    """generic: too narrow (mm0, mm1); dot: both operands contiguous along k (x @ w.T, with a
    k tail, edges and batches: mm4, mm11, mm13, mm14, and mm12, short k but too narrow to tile
    with 16 lanes);
    tiled: the rest, mm9 and mm10 with their rows as the vector axis (100 x 2 and 150 x 7
    outputs), mm6, mm8 and mm10 packing a k-contiguous operand (mm8: x @ w.T over a k shorter
    than SHORT_K)."""
    _, program, _, _, _ = matmul_program
    paths = kernel_paths(program)
    assert [paths[f"mm{i}"] for i in range(len(MATMULS))] == PATHS


def test_tiled_contraction_edges_read_nothing_out_of_bounds(matmul_program):
    s, _, exe, inputs, data = matmul_program
    want = exe.run(inputs)
    for after in (True, False):
        got = exe.run([guarded(x, after) for x in inputs])
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_threaded_ranges_give_the_same_results(matmul_program):
    """Chunks are claimed dynamically; more threads than cores or than chunks change nothing."""
    s, program, exe, inputs, _ = matmul_program
    threaded = {name.split("_", 1)[1] for name in program.metadata["threaded"]}
    work = {f"mm{i}": max(b, 1) * m * k * n for i, (b, m, k, n, *_) in enumerate(MATMULS)}
    assert threaded == {name for name, w in work.items() if w >= PARALLEL_MIN_WORK}, threaded
    assert {"mm3", "mm4"} <= threaded  # the batch-64 GEMM and the matrix-vector product
    exe.num_threads = 1
    serial = exe.run(inputs)
    for threads in (2, 7, 64):
        exe.num_threads = threads
        for _ in range(3):
            for a, b in zip(serial, exe.run(inputs)):
                np.testing.assert_array_equal(a, b)


def test_threads_split_elementwise_and_reduction_kernels():
    n, rows = 1 << 20, 2048
    x = Load("x", Var(0), float32)
    ew = Kernel("ew", (BufferArg("x", float32, n),), (BufferArg("y", float32, n),), (n,),
                (Store("y", Var(0), Unary("tanh", x)),))
    red = Kernel("rows", (BufferArg("x", float32, n),), (BufferArg("r", float32, rows),), (rows,),
                 (Store("r", Var(0), Acc()),), reduce=(n // rows,), reduce_op="max",
                 reduce_value=Load("x", flat((0, n // rows), (1, 1)), float32))
    s = schedule([ew, red], {"x": np.zeros(n, np.float32)},
                 {"y": ((n,), float32), "r": ((rows,), float32)})
    exe = compile_schedule(s)
    assert len(exe.program.metadata["threaded"]) == 2
    x_data = np.random.default_rng(5).standard_normal(n).astype(np.float32)
    for threads in (1, 2, 5):
        exe.num_threads = threads
        y, r = exe.run([x_data])
        np.testing.assert_allclose(y, np.tanh(x_data), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(r, x_data.reshape(rows, -1).max(axis=1))


def test_contraction_with_computed_and_masked_operands():
    """a is padded (a masked load), b is computed (exp): still a tiled contraction."""
    m, k, n = 9, 11, 40
    kk = Var(2)
    a_val = Load("a", flat((0, k - 1), (2, 1)), float32, Binary("lt", kk, c64(k - 1)), 0.0)
    b_val = Unary("exp", Load("b", flat((2, n), (1, 1)), float32))
    kern = Kernel("mm", (BufferArg("a", float32, m * (k - 1)), BufferArg("b", float32, k * n)),
                  (BufferArg("y", float32, m * n),), (m, n), (Store("y", flat((0, n), (1, 1)),
                                                               Acc()),),
                  reduce=(k,), reduce_op="sum", reduce_value=Binary("mul", a_val, b_val))
    rng = np.random.default_rng(4)
    a = rng.standard_normal(m * (k - 1)).astype(np.float32)
    b = rng.standard_normal(k * n).astype(np.float32)
    s = schedule([kern], {"a": a, "b": b}, {"y": ((m * n,), float32)})
    assert list(generate(s).metadata["paths"].values()) == ["tiled"]
    got, want = run_both(s, [guarded(a), guarded(b)])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


# ---- the generated module -------------------------------------------------------------------


def test_elementwise_kernels_are_vectorised_for_the_host():
    n = 1024
    x = Load("x", Var(0), float32)
    k = Kernel("ew", (BufferArg("x", float32, n),), (BufferArg("y", float32, n),), (n,),
               (Store("y", Var(0), Binary("add", Binary("mul", x, x), Unary("exp", x))),))
    program = generate(schedule([k], {"x": np.zeros(n, np.float32)}, {"y": ((n,), float32)}))
    assert "llvm.loop.vectorize.enable" in program.source
    optimized = optimized_ir(program)
    widths = {int(w) for w in re.findall(r"<(\d+) x float>", optimized)}
    assert widths and max(widths) >= 4, widths


def test_entry_calls_every_kernel_once_in_order(ops_program):
    program = generate(ops_program[0])
    entry = program.source.split('define void @"neurenix_entry"')[1].split("\n}")[0]
    called = re.findall(r'call void @"(neurenix_[^"]*)"', entry)
    assert called == [k.name for k in program.kernels]
    assert program.entry == "neurenix_entry" and program.target == "cpu"


def test_kernels_identical_up_to_buffer_names_share_one_function():
    n = 100

    def step(src, dst, size=n):
        return Kernel(f"step_{dst}", (BufferArg(src, float32, size),),
                      (BufferArg(dst, float32, size),), (size,),
                      (Store(dst, Var(0), Unary("tanh", Load(src, Var(0), float32))),))

    # h1 and h2 are computed in place over h0 and h1 (one pointer each); x -> h0 and h2 -> y
    # read one buffer and write another; x -> z has another size
    kernels = [step("x", "h0"), step("h0", "h1"), step("h1", "h2"), step("h2", "y"),
               step("x", "z", 50)]
    s = schedule(kernels, {"x": np.zeros(n, np.float32)},
                 {"y": ((n,), float32), "z": ((50,), float32)})
    program = generate(s)
    names = [k.name for k in program.kernels]
    assert names[0] == names[3] and names[1] == names[2], names
    assert len({names[0], names[1], names[4]}) == 3, names
    x = np.linspace(-2, 2, n).astype(np.float32)
    y, z = compile_schedule(s).run([x])
    np.testing.assert_allclose(y, np.tanh(np.tanh(np.tanh(np.tanh(x)))), rtol=2e-6)
    np.testing.assert_allclose(z, np.tanh(x[:50]), rtol=2e-6)
