"""Shape-polymorphic kernel graphs through the schedule rules, the LLVM generator and the CPU
runtime: ONE compiled program per graph, run at many sizes of its symbol `n` and compared
with the reference evaluator (`run_schedule`, which specialises the graph to the inputs)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from neurenix.compiler.codegen import generate
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.kernel.ir import (
    Acc,
    Binary,
    BufferArg,
    Cast,
    Const,
    Kernel,
    KernelGraph,
    Load,
    Store,
    Sym,
    Var,
)
from neurenix.compiler.schedule import Choice, Contraction, Dot
from neurenix.compiler.schedule.ranges import PARALLEL_MIN_WORK
from neurenix.compiler.symbolic import ShapeEnv, shape_env
from neurenix.compiler.types import float32, int64
from neurenix.runtime.cpu import CpuExecutable
from neurenix.runtime.program import program_from_json, program_to_json

SIZES = (2, 3, 7, 64, 100)


def c64(v: int) -> Const:
    return Const(v, int64)


def add(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = Binary("add", out, x)
    return out


def mul(a, b):
    return Binary("mul", a, b)


def index(*terms):
    """sum(Var(axis) * stride) for (axis, stride) terms; a stride may be an expression."""
    return add(*(Var(a) if isinstance(s, int) and s == 1 else
                 mul(Var(a), c64(s) if isinstance(s, int) else s) for a, s in terms))


def graph(kernels: list[Kernel], inputs: dict, outputs: dict) -> KernelGraph:
    """A kernel graph over `kernels`; inputs and outputs given as name -> (shape, dtype)."""
    buffers = {}
    for k in kernels:
        for b in k.buffers():
            buffers.setdefault(b.name, b)
    shapes = {n: s for n, (s, _) in {**inputs, **outputs}.items()}
    return KernelGraph(kernels, buffers, list(inputs), list(outputs), shapes)


def buf(name: str, shape, dtype=float32) -> BufferArg:
    return BufferArg(name, dtype, math.prod(shape))


def compile_symbolic(kg: KernelGraph, env: ShapeEnv):
    with shape_env(env):
        program = generate(kg)
    assert not env.guards, env.guards  # scheduling and codegen decided nothing by guarding
    assert program.symbols == tuple(sorted(env.symbols))
    return program, CpuExecutable(program)


def check(kg: KernelGraph, exe: CpuExecutable, make_inputs, sizes=SIZES, rtol=1e-5,
          atol=1e-5) -> None:
    rng = np.random.default_rng(0)
    for n in sizes:
        arrays = make_inputs(rng, n)
        got = exe.run(arrays)
        want = run_schedule(kg, arrays)
        for g, w in zip(got, want):
            assert g.shape == w.shape, (n, g.shape, w.shape)
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"n = {n}")


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---- elementwise ------------------------------------------------------------------------------


def test_elementwise_with_dynamic_leading_extent_and_symbol_in_values():
    env = ShapeEnv()
    n = env.symbol("n", 64)
    x, y = buf("x", (n, 37)), buf("y", (n, 37))
    i = index((0, 37), (1, 1))
    value = add(Load("x", i, float32), Cast(float32, mul(Var(0), Sym("n"))))
    k = Kernel("k0", (x,), (y,), (n, 37), (Store("y", i, value),))
    kg = graph([k], {"x": ((n, 37), float32)}, {"y": ((n, 37), float32)})
    program, exe = compile_symbolic(kg, env)
    check(kg, exe, lambda rng, v: [randn(rng, v, 37)], SIZES + (1000,))


def test_transpose_with_dynamic_strides_and_three_axes():
    """y[j, i, c] = x[i, j, c] with x (n, 5, 3): the stride of y's first axis is 3 * n."""
    env = ShapeEnv()
    n = env.symbol("n", 10)
    x, y = buf("x", (n, 5, 3)), buf("y", (5, n, 3))
    load = Load("x", index((1, 15), (0, 3), (2, 1)), float32)
    store = Store("y", add(mul(Var(0), mul(Sym("n"), c64(3))), mul(Var(1), c64(3)), Var(2)),
                  load)
    k = Kernel("t", (x,), (y,), (5, n, 3), (store,))
    kg = graph([k], {"x": ((n, 5, 3), float32)}, {"y": ((5, n, 3), float32)})
    program, exe = compile_symbolic(kg, env)
    check(kg, exe, lambda rng, v: [randn(rng, v, 5, 3)], SIZES + (300,))


def test_chain_without_temporaries_and_two_symbols():
    env = ShapeEnv()
    n, m = env.symbol("n", 8), env.symbol("m", 4)
    x, y, z = buf("x", (n, m)), buf("y", (m,)), buf("z", (n, m))
    i = index((0, Sym("m")), (1, 1))
    k = Kernel("k", (x, y), (z,), (n, m),
               (Store("z", i, mul(Load("x", i, float32), Load("y", Var(1), float32))),))
    kg = graph([k], {"x": ((n, m), float32), "y": ((m,), float32)}, {"z": ((n, m), float32)})
    program, exe = compile_symbolic(kg, env)
    assert program.symbols == ("m", "n")
    rng = np.random.default_rng(1)
    for a, b in ((2, 2), (3, 7), (64, 5), (5, 100)):
        arrays = [randn(rng, a, b), randn(rng, b)]
        np.testing.assert_allclose(exe.run(arrays)[0], run_schedule(kg, arrays)[0])


# ---- reductions ---------------------------------------------------------------------------------


def row_reduction(op: str, width: int):
    """out[i] = op over j of x[i, j] (x: (n, width)), then + 1."""
    env = ShapeEnv()
    n = env.symbol("n", 64)
    x = buf("x", (n, width))
    out_dtype = int64 if op in ("argmax", "argmin") else float32
    y = buf("y", (n,), out_dtype)
    value = Load("x", index((0, width), (1, 1)), float32)
    store = Acc() if out_dtype == int64 else add(Acc(), Const(1.0, float32))
    k = Kernel("r", (x,), (y,), (n,), (Store("y", Var(0), store),), reduce=(width,),
               reduce_op=op, reduce_value=value)
    kg = graph([k], {"x": ((n, width), float32)}, {"y": ((n,), out_dtype)})
    return kg, env


@pytest.mark.parametrize("op,width", [("sum", 37), ("sum", 3000), ("max", 100),
                                      ("argmax", 50), ("sum", 8)])
def test_row_reductions_over_a_static_axis(op, width):
    kg, env = row_reduction(op, width)
    program, exe = compile_symbolic(kg, env)
    check(kg, exe, lambda rng, v: [randn(rng, v, width)], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["sum", "max", "argmin"])
def test_column_reductions_over_the_dynamic_axis(op):
    """A bias gradient: out[j] = op over i < n of dy[i, j]."""
    env = ShapeEnv()
    n = env.symbol("n", 64)
    m = 70
    dy = buf("dy", (n, m))
    out_dtype = int64 if op.startswith("arg") else float32
    y = buf("y", (m,), out_dtype)
    value = Load("dy", index((1, m), (0, 1)), float32)
    k = Kernel("bias_grad", (dy,), (y,), (m,), (Store("y", Var(0), Acc()),), reduce=(n,),
               reduce_op=op, reduce_value=value)
    kg = graph([k], {"dy": ((n, m), float32)}, {"y": ((m,), out_dtype)})
    program, exe = compile_symbolic(kg, env)
    assert "columns" in program.source
    check(kg, exe, lambda rng, v: [randn(rng, v, m)], SIZES + (129, 257, 1000, 5000),
          rtol=1e-4, atol=1e-4)


def test_per_point_reduction_over_the_dynamic_axis():
    """out[j] = sum over i < n of x[j, i] (reduced axis contiguous and dynamic)."""
    env = ShapeEnv()
    n = env.symbol("n", 64)
    x, y = buf("x", (9, n)), buf("y", (9,))
    value = Load("x", add(mul(Var(0), Sym("n")), Var(1)), float32)
    k = Kernel("s", (x,), (y,), (9,), (Store("y", Var(0), Acc()),), reduce=(n,),
               reduce_op="sum", reduce_value=value)
    kg = graph([k], {"x": ((9, n), float32)}, {"y": ((9,), float32)})
    program, exe = compile_symbolic(kg, env)
    check(kg, exe, lambda rng, v: [randn(rng, 9, v)], SIZES + (1023, 1025, 5000),
          rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op,hint", [("sum", 1 << 18), ("argmax", 1 << 18), ("sum", 10),
                                     ("max", 1 << 18)])
def test_full_reduction_over_a_dynamic_length(op, hint):
    """Split in parts over threads (a big hint) or in one piece."""
    env = ShapeEnv()
    n = env.symbol("n", hint)
    out = int64 if op == "argmax" else float32
    shape = (n,) if op == "argmax" else (n, 3)  # argmax reduces one axis
    x, y = buf("x", shape), buf("y", (1,), out)
    value = Load("x", index((0, 1)) if op == "argmax" else index((0, 3), (1, 1)), float32)
    k = Kernel("total", (x,), (y,), (), (Store("y", c64(0), Acc()),), reduce=shape,
               reduce_op=op, reduce_value=value)
    kg = graph([k], {"x": (shape, float32)}, {"y": ((), out)})
    program, exe = compile_symbolic(kg, env)
    assert ("split reduction" in program.source) == (hint > 1000)
    check(kg, exe, lambda rng, v: [randn(rng, v, *shape[1:])], SIZES + (400, 100_000),
          rtol=1e-4, atol=1e-3)


# ---- contractions -------------------------------------------------------------------------------


def matmul_graph(k: int, m: int, *, transposed_w: bool = False, bias: bool = False,
                 hint: int = 64):
    """y[i, j] = sum_l x[i, l] w[l, j] (+ bias[j], relu) with x (n, k): dynamic rows.  With
    `transposed_w`, w is stored (m, k) (`x @ w.T`, the dot-product layout)."""
    env = ShapeEnv()
    n = env.symbol("n", hint)
    x, w, y = buf("x", (n, k)), buf("w", (k, m)), buf("y", (n, m))
    w_index = index((1, k), (2, 1)) if transposed_w else index((2, m), (1, 1))
    product = mul(Load("x", index((0, k), (2, 1)), float32), Load("w", w_index, float32))
    inputs = [x, w]
    value = Acc()
    if bias:
        inputs.append(buf("bias", (m,)))
        value = Binary("max", add(Acc(), Load("bias", Var(1), float32)), Const(0.0, float32))
    kern = Kernel("mm", tuple(inputs), (y,), (n, m), (Store("y", index((0, m), (1, 1)), value),),
                  reduce=(k,), reduce_op="sum", reduce_value=product)
    shapes = {"x": ((n, k), float32), "w": (((m, k) if transposed_w else (k, m)), float32)}
    if bias:
        shapes["bias"] = ((m,), float32)
    return graph([kern], shapes, {"y": ((n, m), float32)}), env


def weight_grad_graph(k: int, m: int, hint: int = 64):
    """dw[a, b] = sum_i x[i, a] dy[i, b] over the batch (x.T @ dy): a dynamic k = n."""
    env = ShapeEnv()
    n = env.symbol("n", hint)
    x, dy, dw = buf("x", (n, k)), buf("dy", (n, m)), buf("dw", (k, m))
    product = mul(Load("x", index((2, k), (0, 1)), float32),
                  Load("dy", index((2, m), (1, 1)), float32))
    kern = Kernel("dw", (x, dy), (dw,), (k, m), (Store("dw", index((0, m), (1, 1)), Acc()),),
                  reduce=(n,), reduce_op="sum", reduce_value=product)
    return graph([kern], {"x": ((n, k), float32), "dy": ((n, m), float32)},
                 {"dw": ((k, m), float32)}), env


EDGE_ROWS = (2, 3, 5, 6, 7, 11, 12, 13, 47, 48, 49, 64, 100, 257, 1000)


def _rows_plan(plan):
    """`plan` without its threading variants (a `Choice` on the work at the threshold from
    which a static program splits a kernel across threads)."""
    while isinstance(plan, Choice) and plan.limit == PARALLEL_MIN_WORK - 1:
        plan = plan.large
    return plan


@pytest.mark.parametrize("k,m,bias,hint", [(64, 96, True, 64), (784, 100, False, 64),
                                           (13, 37, True, 1000), (300, 40, False, 3)])
def test_tiled_matmul_with_dynamic_rows(k, m, bias, hint):
    kg, env = matmul_graph(k, m, bias=bias, hint=hint)
    program, exe = compile_symbolic(kg, env)
    plan = program_schedule(kg, env)  # one row tile of 2, 4, 8 rows, or row blocks past them
    limits = []
    while isinstance(plan, Choice):
        small = _rows_plan(plan.small)
        assert isinstance(small, Contraction) and small.blocking.row_blocks == 1
        limits.append(plan.limit)
        plan = _rows_plan(plan.large)
    assert limits == [2, 4, 8] and isinstance(plan, Contraction)
    assert set(program.metadata["paths"]["neurenix_mm"].split("|")) == {"tiled"}
    shapes = [(m,)] if bias else []
    check(kg, exe, lambda rng, v: [randn(rng, v, k), randn(rng, k, m)]
          + [randn(rng, *s) for s in shapes], EDGE_ROWS, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("k,m", [(64, 48), (200, 7), (300, 40), (20, 30)])
def test_dot_or_tiled_matmul_with_dynamic_rows_picked_per_call(k, m):
    """x @ w.T: dot products up to the rows where the static rules tile, tiles past them
    (fewer than half a tile of columns: the dynamic rows are the tiles' columns, as the static
    rules lay out that many static rows)."""
    kg, env = matmul_graph(k, m, transposed_w=True, bias=True)
    program, exe = compile_symbolic(kg, env)
    plan = program_schedule(kg, env)
    assert isinstance(plan, Choice) and isinstance(plan.small, Dot)
    limits, last = variants(plan)
    assert isinstance(last, Contraction)
    if m < 16:
        assert not isinstance(last.blocking.col_tiles, int)  # the rows, per call
    path = program.metadata["paths"]["neurenix_mm"]
    assert path.startswith("dot|") and path.endswith("|tiled")
    sizes = sorted({*EDGE_ROWS, *limits, *(v + 1 for v in limits), plan.limit + 7})
    check(kg, exe, lambda rng, v: [randn(rng, v, k), randn(rng, m, k), randn(rng, m)],
          sizes, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("hint", [2, 3])
def test_x_w_t_traced_at_few_rows_still_tiles_many(hint):
    """Traced at fewer rows than a packed `b` pays for, x @ w.T still runs tiles past the dot
    products' rows: the large variant runs for at least that many rows, whatever the trace
    saw (it kept unthreaded dot products for every size: 126 against 80 ms at 8192 rows)."""
    kg, env = matmul_graph(512, 1024, transposed_w=True, hint=hint)
    program, exe = compile_symbolic(kg, env)
    plan = program_schedule(kg, env)
    assert isinstance(plan, Choice) and isinstance(plan.small, Dot)
    _, last = variants(plan)
    assert isinstance(last, Contraction) and last.k_major and last.threaded
    assert program.metadata["paths"]["neurenix_mm"] == "dot|tiled"
    check(kg, exe, lambda rng, v: [randn(rng, v, 512), randn(rng, 1024, 512)],
          (2, 3, plan.limit, plan.limit + 1, 700), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("k,m", [(64, 96), (20, 512), (7, 33)])
def test_weight_gradient_with_a_dynamic_k(k, m):
    kg, env = weight_grad_graph(k, m)
    program, exe = compile_symbolic(kg, env)
    plan = program_schedule(kg, env)  # one K block up to 128 steps, K blocks past it
    assert isinstance(plan, Choice) and plan.limit == 128
    assert plan.small.blocking.k_blocks == 1 and not isinstance(plan.large.blocking.k_blocks, int)
    sizes = SIZES + (127, 128, 129, 255, 256, 257, 1000)
    check(kg, exe, lambda rng, v: [randn(rng, v, k), randn(rng, v, m)], sizes, rtol=1e-4,
          atol=1e-3)


def test_batched_matmul_with_a_dynamic_batch():
    env = ShapeEnv()
    n = env.symbol("n", 8)
    a, w, y = buf("a", (n, 17, 33)), buf("w", (33, 45)), buf("y", (n, 17, 45))
    product = mul(Load("a", index((0, 17 * 33), (1, 33), (3, 1)), float32),
                  Load("w", index((3, 45), (2, 1)), float32))
    kern = Kernel("bmm", (a, w), (y,), (n, 17, 45),
                  (Store("y", index((0, 17 * 45), (1, 45), (2, 1)), Acc()),), reduce=(33,),
                  reduce_op="sum", reduce_value=product)
    kg = graph([kern], {"a": ((n, 17, 33), float32), "w": ((33, 45), float32)},
               {"y": ((n, 17, 45), float32)})
    program, exe = compile_symbolic(kg, env)
    assert set(program.metadata["paths"]["neurenix_bmm"].split("|")) == {"tiled"}
    check(kg, exe, lambda rng, v: [randn(rng, v, 17, 33), randn(rng, 33, 45)], rtol=1e-4,
          atol=1e-4)


def variants(plan) -> tuple[list[int], object]:
    """The limits of a chain of `Choice`s (each one's `large` the next) and the last plan."""
    limits = []
    while isinstance(plan, Choice):
        limits.append(plan.limit)
        plan = plan.large
    return limits, plan


def program_schedule(kg: KernelGraph, env: ShapeEnv):
    """The first kernel's schedule as the rules choose sizes and paths, without the threading
    variants (`test_threading_is_picked_per_call` covers those)."""
    from neurenix.compiler.schedule import schedule_kernel
    from neurenix.compiler.targets import get_target
    with shape_env(env):
        return _unthreaded(schedule_kernel(kg.kernels[0], get_target("llvm").capabilities))


def _unthreaded(plan):
    plan = _rows_plan(plan)
    if isinstance(plan, Choice):
        small, large = _unthreaded(plan.small), _unthreaded(plan.large)
        return replace(plan, small=small, large=large, count=large.count,
                       threaded=large.threaded)
    return plan


# ---- windows ------------------------------------------------------------------------------------


@pytest.mark.parametrize("op,window,stride", [("max", 2, 2), ("sum", 3, 3), ("max", 3, 1)])
def test_pooling_with_a_dynamic_batch(op, window, stride):
    """y[b, c, i, j] = op over (r, t) of x[b, c, i * stride + r, j * stride + t]."""
    env = ShapeEnv()
    n = env.symbol("n", 8)
    c, h, w = 3, 14, 13
    ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
    x, y = buf("x", (n, c, h, w)), buf("y", (n, c, ho, wo))
    load = Load("x", index((0, c * h * w), (1, h * w), (2, stride * w), (4, w), (3, stride),
                           (5, 1)), float32)
    kern = Kernel("pool", (x,), (y,), (n, c, ho, wo),
                  (Store("y", index((0, c * ho * wo), (1, ho * wo), (2, wo), (3, 1)), Acc()),),
                  reduce=(window, window), reduce_op=op, reduce_value=load)
    kg = graph([kern], {"x": ((n, c, h, w), float32)}, {"y": ((n, c, ho, wo), float32)})
    program, exe = compile_symbolic(kg, env)
    check(kg, exe, lambda rng, v: [randn(rng, v, c, h, w)], SIZES, rtol=1e-5, atol=1e-5)


def test_convolution_with_masked_window_operand_and_a_dynamic_batch():
    """A padded 1-D convolution as a contraction of a masked window gather: y[b, o, l] =
    sum over r < C * 3 of w[o, r] * x[b, r // 3, l + r % 3 - 1] (zero outside)."""
    env = ShapeEnv()
    n = env.symbol("n", 16)
    c, length, o = 4, 50, 24
    x, w, y = buf("x", (n, c, length)), buf("w", (o, c * 3)), buf("y", (n, o, length))
    r = Var(3)
    pos = add(Var(2), Binary("mod", r, c64(3)), c64(-1))
    inside = Binary("and", Binary("ge", pos, c64(0)), Binary("lt", pos, c64(length)))
    gather = Load("x", add(mul(Var(0), c64(c * length)),
                           mul(Binary("idiv", r, c64(3)), c64(length)), pos), float32,
                  mask=inside, other=0.0)
    product = mul(Load("w", index((1, c * 3), (3, 1)), float32), gather)
    kern = Kernel("conv", (x, w), (y,), (n, o, length),
                  (Store("y", index((0, o * length), (1, length), (2, 1)), Acc()),),
                  reduce=(c * 3,), reduce_op="sum", reduce_value=product)
    kg = graph([kern], {"x": ((n, c, length), float32), "w": ((o, c * 3), float32)},
               {"y": ((n, o, length), float32)})
    program, exe = compile_symbolic(kg, env)
    assert set(program.metadata["paths"]["neurenix_conv"].split("|")) == {"tiled"}
    check(kg, exe, lambda rng, v: [randn(rng, v, c, length), randn(rng, o, c * 3)], SIZES,
          rtol=1e-4, atol=1e-4)


# ---- temporaries in the arena, the entry, the runtime -----------------------------------------


def temporaries_graph():
    """x (n, 37) -> t = x * 2 -> s[i] = sum_j t[i, j] -> y = t + s[i]; z[j] = max_i t[i, j]
    (t and s temporaries: arena offsets that are polynomials of n)."""
    env = ShapeEnv()
    n = env.symbol("n", 64)
    x, t, s, y, z = (buf("x", (n, 37)), buf("t", (n, 37)), buf("s", (n,)), buf("y", (n, 37)),
                     buf("z", (37,)))
    i2 = index((0, 37), (1, 1))
    k1 = Kernel("double", (x,), (t,), (n, 37),
                (Store("t", i2, mul(Load("x", i2, float32), Const(2.0, float32))),))
    k2 = Kernel("rows", (t,), (s,), (n,), (Store("s", Var(0), Acc()),), reduce=(37,),
                reduce_op="sum", reduce_value=Load("t", i2, float32))
    k3 = Kernel("plus", (t, s), (y,), (n, 37),
                (Store("y", i2, add(Load("t", i2, float32), Load("s", Var(0), float32))),))
    k4 = Kernel("cols", (t,), (z,), (37,), (Store("z", Var(0), Acc()),), reduce=(n,),
                reduce_op="max", reduce_value=Load("t", index((1, 37), (0, 1)), float32))
    kg = graph([k1, k2, k3, k4], {"x": ((n, 37), float32)},
               {"y": ((n, 37), float32), "z": ((37,), float32)})
    return kg, env


def test_temporaries_at_dynamic_arena_offsets_and_a_growing_arena():
    kg, env = temporaries_graph()
    program, exe = compile_symbolic(kg, env)
    assert program.metadata["entry_signature"].endswith("const int64_t *sizes)")
    assert set(program.metadata["sized_kernels"]) == {f"neurenix_{k.name}" for k in kg.kernels}
    # small first, then larger: the arena grows; then small again
    check(kg, exe, lambda rng, v: [randn(rng, v, 37)], (2, 3, 7, 64, 100, 5000, 3),
          rtol=1e-5, atol=1e-4)
    data, arrays = program_to_json(program)  # and the same through the program's JSON
    again = CpuExecutable(program_from_json(json.loads(json.dumps(data)), arrays))
    check(kg, again, lambda rng, v: [randn(rng, v, 37)], (3, 70), rtol=1e-5, atol=1e-4)


def test_inputs_are_checked_against_the_dynamic_shapes():
    kg, env = temporaries_graph()
    _, exe = compile_symbolic(kg, env)
    with pytest.raises(ValueError, match="37"):
        exe.run([np.zeros((5, 36), np.float32)])
    with pytest.raises(ValueError, match="float32"):
        exe.run([np.zeros((5, 37), np.float64)])
    with pytest.raises(ValueError, match="expected 1 inputs"):
        exe.run([])
    strided = np.arange(10 * 74, dtype=np.float32).reshape(10, 74)[:, ::2]
    np.testing.assert_allclose(exe.run([strided])[0], run_schedule(kg, [strided])[0])


def test_static_programs_keep_the_three_pointer_entry():
    kg, env = temporaries_graph()
    from neurenix.compiler.kernel.specialize import specialize_graph
    program = generate(specialize_graph(kg, {"n": 5}))
    assert program.symbols == ()
    assert "const int64_t *sizes" not in program.metadata["entry_signature"]
    assert "sized_kernels" not in program.metadata


# ---- verifier and index widths ------------------------------------------------------------------


def test_verifier_accepts_valid_dynamic_kernels_and_rejects_out_of_bounds_ones():
    from neurenix.compiler.kernel.verify import KernelIRError, verify_kernels
    kg, env = temporaries_graph()
    with shape_env(env):
        verify_kernels(kg)
        for make in (lambda: matmul_graph(64, 96, bias=True), lambda: weight_grad_graph(7, 33)):
            other, other_env = make()
            with shape_env(other_env):
                verify_kernels(other)
    assert not env.guards
    n = kg.shapes["x"][0]
    x, y = buf("x", (n, 37)), buf("y", (n, 37))
    i = index((0, 38), (1, 1))  # a row stride one too long: out of bounds for every n
    bad = Kernel("bad", (x,), (y,), (n, 37), (Store("y", index((0, 37), (1, 1)),
                                                     Load("x", i, float32)),))
    with shape_env(env), pytest.raises(KernelIRError, match="outside"):
        verify_kernels(graph([bad], {"x": ((n, 37), float32)}, {"y": ((n, 37), float32)}))
    assert not env.guards


def test_index_widths_of_dynamic_kernels_follow_the_symbols_bounds():
    from neurenix.compiler.kernel.index_bits import choose_index_bits
    from neurenix.compiler.symbolic import DynamicSizeError
    kg, env = temporaries_graph()  # n unbounded: 64-bit indices
    with shape_env(env):
        assert {k.index_bits for k in choose_index_bits(kg, (32, 64), 32).kernels} == {64}
        with pytest.raises(DynamicSizeError):
            choose_index_bits(kg, (32,), 32)
    bounded = ShapeEnv()
    n = bounded.symbol("n", 64, hi=1 << 16)
    x, y = buf("x", (n, 37)), buf("y", (n, 37))
    i = index((0, 37), (1, 1))
    k = Kernel("k", (x,), (y,), (n, 37), (Store("y", i, Load("x", i, float32)),))
    small = graph([k], {"x": ((n, 37), float32)}, {"y": ((n, 37), float32)})
    with shape_env(bounded):
        assert choose_index_bits(small, (32, 64), 32).kernels[0].index_bits == 32
    assert not bounded.guards


# ---- a lowered graph end to end -----------------------------------------------------------------


def _mlp_step(n):
    """The gradients of mean((relu(x @ w1 + b1) @ w2 - y)^2) with a batch of n."""
    from neurenix.compiler import GraphBuilder
    from neurenix.compiler.passes.autodiff import grad_graph
    from neurenix.compiler.types import TensorType
    b = GraphBuilder()
    x = b.input("x", TensorType((n, 20), float32))
    y = b.input("y", TensorType((n, 10), float32))
    w1 = b.input("w1", TensorType((20, 48), float32), "param")
    b1 = b.input("b1", TensorType((48,), float32), "param")
    w2 = b.input("w2", TensorType((48, 10), float32), "param")
    h = b.add(b.matmul(x, w1), b.broadcast_to(b1, (n, 48)))
    h = b.maximum(h, b.zeros_like(h))
    d = b.sub(b.matmul(h, w2), y)
    count = b.full(shape=(), value=n * 10, dtype="float32")
    loss = b.div(b.reduce_sum(b.mul(d, d), axes=(0, 1)), count)
    return grad_graph(b.build([loss]), wrt=("w1", "b1", "w2")).graph


def test_lowered_training_step_through_one_program():
    from neurenix.compiler.kernel.memory import plan_memory
    from neurenix.compiler.lowering.lower import lower
    env = ShapeEnv()
    n = env.symbol("n", 32)
    with shape_env(env):
        kg = lower(_mlp_step(n))
        program = generate(kg, plan_memory(kg))
    assert not env.guards and program.symbols == ("n",)
    exe = CpuExecutable(program)
    rng = np.random.default_rng(3)
    for v in SIZES + (257,):
        arrays = [randn(rng, *(d if isinstance(d, int) else v for d in kg.shapes[name]))
                  for name in kg.inputs]  # x, y, the weights, the loss's seed gradient
        for got, want in zip(exe.run(arrays), run_schedule(kg, arrays)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"n = {v}")


def test_dynamic_strides_are_verified_and_scheduled_without_guards():
    """y[j, i] = x[i, j] for x (n, 40) and y (40, n): y's row stride is n (a `Sym`)."""
    from neurenix.compiler.kernel.verify import verify_kernels
    env = ShapeEnv()
    n = env.symbol("n", 64, lo=1)  # lo 1: comparing a stride with 1 would have to guard
    x, y = buf("x", (n, 40)), buf("y", (40, n))
    load = Load("x", index((1, 40), (0, 1)), float32)
    store = Store("y", add(mul(Var(0), Sym("n")), Var(1)), load)
    sums = Kernel("colsum", (y,), (buf("s", (40,)),), (40,), (Store("s", Var(0), Acc()),),
                  reduce=(n,), reduce_op="sum",
                  reduce_value=Load("y", add(mul(Var(0), Sym("n")), Var(1)), float32))
    k = Kernel("t", (x,), (y,), (40, n), (store,))
    kg = graph([k, sums], {"x": ((n, 40), float32)}, {"y": ((40, n), float32),
                                                       "s": ((40,), float32)})
    with shape_env(env):
        verify_kernels(kg)
    program, exe = compile_symbolic(kg, env)
    check(kg, exe, lambda rng, v: [randn(rng, v, 40)], (1,) + SIZES + (3000,), rtol=1e-4,
          atol=1e-4)


def test_threading_is_picked_per_call():
    """A kernel whose work crosses the threshold from which static programs split it across
    threads gets both variants, and each call runs what a static program of its sizes would."""
    kg, env = matmul_graph(64, 10, transposed_w=True, bias=True, hint=7)  # work: 640 n
    program, exe = compile_symbolic(kg, env)
    with shape_env(env):
        from neurenix.compiler.schedule import schedule_kernel
        from neurenix.compiler.targets import get_target
        plan = schedule_kernel(kg.kernels[0], get_target("llvm").capabilities)
    threads = []

    def walk(p):
        if isinstance(p, Choice):
            if p.limit == PARALLEL_MIN_WORK - 1:
                threads.append((p.small.threaded, p.large.threaded))
            walk(p.small)
            walk(p.large)

    walk(plan)
    assert (False, True) in threads
    check(kg, exe, lambda rng, v: [randn(rng, v, 64), randn(rng, 10, 64), randn(rng, 10)],
          (2, 7, 204, 205, 1000), rtol=1e-4, atol=1e-3)
