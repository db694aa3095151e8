"""Lowering of shape-polymorphic graphs (docs/compiler/dynamic-shapes.md).

Each graph is built once with a dynamic batch `n` (and the type rules' output types hold
`Dim`s), lowered once to a symbolic kernel graph, and that one kernel graph is run by the
reference evaluator (which specialises it to its inputs' sizes) at several batch sizes; the
result must equal the NumPy reference of the same graph built statically at that size.
Lowering must record no guard: none of these graphs means something different at any size.
"""
from __future__ import annotations

import numpy as np
import pytest
from neurenix.compiler import GraphBuilder, evaluate
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.kernel.ir import Sym
from neurenix.compiler.kernel.specialize import is_symbolic
from neurenix.compiler.lowering.lower import lower, walk
from neurenix.compiler.passes.autodiff import grad_graph
from neurenix.compiler.pipeline import differentiate, optimize
from neurenix.compiler.symbolic import Dim, DynamicSizeError, ShapeEnv, shape_env
from neurenix.compiler.types import TensorType, float32, int64

SIZES = (2, 3, 7, 64, 100)


def f32(n_or_shape) -> TensorType:
    return TensorType(tuple(n_or_shape), float32)


def lower_symbolic(build, fuse: bool = True):
    """Build and lower the graph with a dynamic `n` (hint 8); no guard may be recorded."""
    env = ShapeEnv()
    n = env.symbol("n", hint=8)
    with shape_env(env):
        graph = build(n)
        kg = lower(graph, fuse=fuse)
    assert env.guards == []
    assert is_symbolic(kg)
    return graph, kg


def make_inputs(graph, rng):
    out = []
    for node in graph.inputs:
        t = node.type
        if t.dtype == int64:
            hi = node.attr.get("classes", 4)
            out.append(rng.integers(0, hi, size=t.shape).astype(np.int64))
        else:
            out.append(rng.uniform(-2.0, 2.0, size=t.shape).astype(t.dtype.np_type))
    return out


def assert_same(got, want, what: str, atol: float = 2e-5) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, what
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=atol, err_msg=what)
        else:
            np.testing.assert_array_equal(g, w, err_msg=what)


def check(build, sizes=SIZES, fuse: bool = True):
    """One symbolic kernel graph equals, at every size, the static graph's lowering and (up
    to summation order) its NumPy reference."""
    _, kg = lower_symbolic(build, fuse)
    rng = np.random.default_rng(0)
    for v in sizes:
        static = build(v)
        inputs = make_inputs(static, rng)
        got = run_schedule(kg, inputs)
        assert_same(got, run_schedule(lower(static, fuse=fuse), inputs), f"n={v}, lowered")
        assert_same(got, evaluate(static, inputs), f"n={v}, reference", atol=1e-4)
    return kg


def check_sizes(build, values):
    """`check` with two symbols, n and m: `values` lists (n, m) pairs."""
    env = ShapeEnv()
    dims = (env.symbol("n", hint=4), env.symbol("m", hint=6))
    with shape_env(env):
        kg = lower(build(*dims))
    assert env.guards == []
    rng = np.random.default_rng(1)
    for v in values:
        static = build(*v)
        inputs = make_inputs(static, rng)
        got = run_schedule(kg, inputs)
        assert_same(got, run_schedule(lower(static), inputs), f"{v}, lowered")
        assert_same(got, evaluate(static, inputs), f"{v}, reference", atol=1e-4)


def uses_sym(kg) -> bool:
    exprs = [e for k in kg.kernels for s in k.stores for e in (s.index, s.value)]
    return any(isinstance(e, Sym) for e in walk(exprs))


# ---- type rules ---------------------------------------------------------------------------


def test_types_hold_dims():
    env = ShapeEnv()
    n = env.symbol("n", hint=8)
    with shape_env(env):
        b = GraphBuilder()
        x = b.input("x", f32((n, 1, 28, 28)))
        flat = b.reshape(x, shape=(n, 784))
        s = b.reduce_sum(flat, axes=(0,))
    assert str(flat.type) == "f32[n,784]"
    assert isinstance(flat.type.numel, Dim) and flat.type.numel == 784 * n
    assert flat.type.nbytes == 4 * 784 * n
    assert s.type.shape == (784,)
    assert env.guards == []


# ---- a) elementwise, broadcasting, reductions, views ----------------------------------------


def _unary_binary(n):
    b = GraphBuilder()
    x = b.input("x", f32((n, 5)))
    y = b.input("y", f32((n, 5)))
    bias = b.input("bias", f32((5,)))
    z = b.add(b.mul(b.tanh(x), y), b.broadcast_to(bias, (n, 5)))
    m = b.where(b.gt(x, y), z, b.neg(z))
    i = b.cast(b.floor(m), dtype="int64")
    return b.build([m, i, b.exp(b.sub(x, y))])


def _reductions(n):
    b = GraphBuilder()
    x = b.input("x", f32((n, 6, 4)))
    count = b.full(shape=(), value=n if isinstance(n, Dim) else n, dtype="float32")
    mean0 = b.div(b.reduce_sum(x, axes=(0,)), b.expand(b.reshape(count, shape=(1, 1)),
                                                       shape=(6, 4)))
    return b.build([b.reduce_sum(x, axes=(0,)), b.reduce_max(x, axes=(0, 2)),
                    b.reduce_sum(x, axes=(1, 2)), b.reduce_min(x, axes=(2,)),
                    b.argmax(x, axis=0), b.argmax(x, axis=1), mean0])


def _views(n):
    b = GraphBuilder()
    x = b.input("x", f32((n, 3, 4, 5)))
    flat = b.reshape(x, shape=(n, 60))
    t = b.permute(x, perm=(2, 0, 3, 1))
    back = b.reshape(b.permute(flat, perm=(1, 0)), shape=(60, n))
    split = b.reshape(x, shape=(n, 12, 5))
    return b.build([b.exp(flat), b.neg(t), b.add(back, back), b.sin(split)])


def _batch_inside(n):
    """The dynamic axis not leading: flat loops would divide by it, so nests are used."""
    b = GraphBuilder()
    x = b.input("x", f32((3, n, 4)))
    y = b.permute(x, perm=(1, 0, 2))
    return b.build([b.exp(x), b.reshape(y, shape=(n, 12)), b.reduce_sum(x, axes=(1,))])


@pytest.mark.parametrize("build", [_unary_binary, _reductions, _views, _batch_inside])
@pytest.mark.parametrize("fuse", [True, False])
def test_elementwise_reductions_views(build, fuse):
    check(build, fuse=fuse)


def test_flat_domain_folds_a_dynamic_leading_axis():
    kg = check(lambda n: _single(n, "exp"))
    (k,) = kg.kernels
    assert len(k.domain) == 1 and isinstance(k.domain[0], Dim)  # one loop over 60*n


def test_a_dynamic_inner_stride_is_a_sym():
    _, kg = lower_symbolic(_batch_inside)
    assert uses_sym(kg)


def _single(n, op):
    b = GraphBuilder()
    x = b.input("x", f32((n, 3, 4, 5)))
    return b.build([b.apply(op, x)])


# ---- b) matmul ------------------------------------------------------------------------------


def _linear(n):
    b = GraphBuilder()
    x = b.input("x", f32((n, 16)))
    w = b.input("w", f32((16, 8)), "param")
    bias = b.input("b", f32((8,)), "param")
    h = b.add(b.matmul(x, w), b.broadcast_to(bias, (n, 8)))
    return b.build([b.maximum(h, b.zeros_like(h))])


def _weight_grad(n):
    b = GraphBuilder()
    x = b.input("x", f32((n, 16)))
    dy = b.input("dy", f32((n, 8)))
    return b.build([b.matmul(b.permute(x, perm=(1, 0)), dy),
                    b.matmul(dy, b.permute(b.input("w", f32((16, 8))), perm=(1, 0)))])


def _batched(n):
    b = GraphBuilder()
    q = b.input("q", f32((n, 4, 8)))
    k = b.input("k", f32((n, 6, 8)))
    w = b.input("w", f32((8, 8)))
    scores = b.matmul(q, b.permute(k, perm=(0, 2, 1)))  # n, 4, 6
    shared = b.matmul(q, b.expand(b.reshape(w, shape=(1, 8, 8)), shape=(n, 8, 8)))
    rows = b.matmul(b.reshape(q, shape=(4 * n, 8)), w)
    return b.build([scores, shared, rows])


def _dynamic_strides(n):
    """The dynamic axis innermost: the contraction's strides are dynamic sizes."""
    b = GraphBuilder()
    a = b.input("a", f32((4, n)))
    y = b.input("y", f32((5, n)))
    return b.build([b.matmul(a, b.permute(y, perm=(1, 0)))])


@pytest.mark.parametrize("build", [_linear, _weight_grad, _batched, _dynamic_strides])
def test_matmul(build):
    kg = check(build)
    records = [k.contraction for k in kg.kernels if k.reduce_op == "sum" and k.contraction]
    assert records
    for k in kg.kernels:
        if k.contraction is not None:
            c = k.contraction
            assert any(isinstance(c[v], Dim) for v in ("batch", "m", "n", "k"))


def test_dynamic_strides_in_the_contraction_record():
    _, kg = lower_symbolic(_dynamic_strides)
    (k,) = kg.kernels
    n = Dim((("n",), 1),)
    assert k.contraction["k"] == n
    assert k.contraction["a_strides"] == (0, n, 1) and k.contraction["b_strides"] == (0, 1, n)


def test_weight_grad_contraction_record():
    _, kg = lower_symbolic(_weight_grad)
    (rec,) = [k.contraction for k in kg.kernels
              if k.contraction and isinstance(k.contraction["k"], Dim)]
    assert rec["m"] == 16 and rec["n"] == 8 and isinstance(rec["k"], Dim)
    assert rec["a_strides"] == (0, 1, 16) and rec["b_strides"] == (0, 8, 1)


# ---- c) an MLP training step ------------------------------------------------------------------


def _mlp_loss(n):
    b = GraphBuilder()
    x = b.input("x", f32((n, 20)))
    target = b.input("target", TensorType((n,), int64))
    w1 = b.input("w1", f32((20, 16)), "param")
    b1 = b.input("b1", f32((16,)), "param")
    w2 = b.input("w2", f32((16, 10)), "param")
    b2 = b.input("b2", f32((10,)), "param")
    h = b.add(b.matmul(x, w1), b.broadcast_to(b1, (n, 16)))
    h = b.maximum(h, b.zeros_like(h))
    logits = b.add(b.matmul(h, w2), b.broadcast_to(b2, (n, 10)))
    shift = b.broadcast_to(b.reshape(b.reduce_max(logits, axes=(1,)), shape=(n, 1)), (n, 10))
    shifted = b.sub(logits, shift)
    lse = b.log(b.reduce_sum(b.exp(shifted), axes=(1,)))
    logp = b.sub(shifted, b.broadcast_to(b.reshape(lse, shape=(n, 1)), (n, 10)))
    ramp = b.iota(shape=(1, 10), axis=1, dtype="int64")
    hit = b.eq(b.broadcast_to(b.reshape(target, shape=(n, 1)), (n, 10)),
               b.broadcast_to(ramp, (n, 10)))
    picked = b.reduce_sum(b.where(hit, logp, b.zeros_like(logp)), axes=(1,))
    count = b.full(shape=(), value=n, dtype="float32")
    loss = b.div(b.neg(b.reduce_sum(picked, axes=(0,))), count)
    return b.build([loss])


def _mlp_step(n):
    joint = grad_graph(_mlp_loss(n), wrt=("w1", "b1", "w2", "b2"))
    return joint.graph


def test_mlp_forward():
    check(_mlp_loss)


def test_mlp_training_step():
    _, kg = lower_symbolic(_mlp_step)
    assert any(isinstance(d, Dim) for k in kg.kernels for d in (*k.domain, *k.reduce))
    check(_mlp_step, sizes=(2, 7, 64))


# ---- d) slices, pads, concats, windows ----------------------------------------------------


def _slice_pad_concat(n):
    b = GraphBuilder()
    x = b.input("x", f32((n, 6)))
    s = b.slice(x, starts=(0, 1), stops=(n, 5), steps=(1, 2))
    p = b.pad(x, lo=(0, 2), hi=(0, 1), interior=(0, 0), value=0.5)
    c = b.concat(x, s, b.exp(s), axis=1)
    return b.build([b.exp(s), b.neg(p), c, b.concat(x, x, axis=1)])


def _conv_pool_body(b, n, x, w):
    """conv 3x3 (pad 1, as unfold + matmul) of 2 -> 4 channels, then 2x2 max pooling."""
    p = b.pad(x, lo=(0, 0, 1, 1), hi=(0, 0, 1, 1), interior=(0, 0, 0, 0), value=0.0)
    cols = b.unfold(p, kernel=(3, 3), stride=(1, 1), dilation=(1, 1))  # n,2,3,3,6,6
    cols = b.reshape(b.permute(cols, perm=(0, 4, 5, 1, 2, 3)), shape=(n * 36, 18))
    y = b.matmul(cols, b.permute(w, perm=(1, 0)))  # n*36, 4
    y = b.permute(b.reshape(y, shape=(n, 6, 6, 4)), perm=(0, 3, 1, 2))
    win = b.unfold(y, kernel=(2, 2), stride=(2, 2), dilation=(1, 1))  # n,4,2,2,3,3
    return b.reduce_max(win, axes=(2, 3)), win


def _conv_pool(n):
    b = GraphBuilder()
    x = b.input("x", f32((n, 2, 6, 6)))
    w = b.input("w", f32((4, 18)), "param")
    pooled, win = _conv_pool_body(b, n, x, w)
    folded = b.fold(win, spatial=(6, 6), kernel=(2, 2), stride=(2, 2), dilation=(1, 1))
    return b.build([pooled, folded])


@pytest.mark.parametrize("build", [_slice_pad_concat, _conv_pool])
def test_slices_pads_windows(build):
    check(build, sizes=(2, 3, 7, 33))


def _conv_step(n):
    b = GraphBuilder()
    x = b.input("x", f32((n, 2, 6, 6)))
    w = b.input("w", f32((4, 18)), "param")
    pooled, _ = _conv_pool_body(b, n, x, w)
    loss = b.reduce_sum(b.mul(pooled, pooled), axes=(0, 1, 2, 3))
    return grad_graph(b.build([loss]), wrt=("w",)).graph


def test_conv_training_step():
    check(_conv_step, sizes=(2, 5))


# ---- what is refused --------------------------------------------------------------------------


def test_strided_slice_of_a_dynamic_axis_is_refused():
    env = ShapeEnv()
    n = env.symbol("n", hint=8)
    with shape_env(env), pytest.raises(DynamicSizeError):
        b = GraphBuilder()
        x = b.input("x", f32((n, 4)))
        b.slice(x, starts=(0, 0), stops=(n, 4), steps=(2, 1))


# ---- more views, indexing and sources ------------------------------------------------------


def _gather_scatter(n):
    b = GraphBuilder()
    table = b.input("table", f32((7, 5)))
    ids = b.input("ids", TensorType((n, 3), int64))
    rows = b.gather(table, ids, axis=0)  # n, 3, 5
    grad = b.scatter_add(b.zeros_like(table), ids, b.exp(rows), axis=0)
    x = b.input("x", f32((n, 4)))
    picked = b.gather(x, b.input("j", TensorType((2,), int64)), axis=1)
    rows_of_x = b.gather(x, b.input("r", TensorType((5,), int64)), axis=0)  # some past n
    into_x = b.scatter_add(x, b.input("s", TensorType((5,), int64)), b.input("u", f32((5, 4))),
                           axis=0)
    return b.build([b.neg(rows), grad, picked, rows_of_x, into_x])


def _dynamic_axis_views(n):
    b = GraphBuilder()
    x = b.input("x", f32((n, 6)))
    y = b.input("y", f32((n, 6)))
    both = b.concat(x, y, axis=0)  # 2n, 6
    three = b.concat(x, b.exp(y), x, axis=0)  # 3n, 6: stored piece by piece
    flat = b.reshape(x, shape=(6 * n,))
    regroup = b.reshape(x, shape=(3, 2 * n))
    tail = b.slice(x, starts=(1, 0), stops=(n, 6), steps=(1, 1))  # n - 1, 6
    padded = b.pad(x, lo=(1, 0), hi=(2, 0), interior=(0, 0), value=-1.0)  # n + 3, 6
    ramp = b.iota(shape=(n, 6), axis=0, dtype="int64")
    noise = b.rng_uniform(b.full(shape=(), value=5, dtype="int64"), shape=(n, 6),
                          dtype="float32")
    return b.build([b.exp(both), b.neg(flat), b.sin(regroup), b.exp(tail), b.neg(padded),
                    ramp, noise, b.reduce_sum(both, axes=(0,)), three])


def _two_symbols(n, m):
    b = GraphBuilder()
    x = b.input("x", f32((n, m, 3)))
    y = b.input("y", f32((m, 3)))
    s = b.add(x, b.broadcast_to(y, (n, m, 3)))
    return b.build([s, b.reduce_sum(s, axes=(0, 1)), b.reshape(s, shape=(n * m * 3,)),
                    b.permute(s, perm=(1, 2, 0))])


@pytest.mark.parametrize("build", [_gather_scatter, _dynamic_axis_views])
def test_indexing_and_dynamic_axis_views(build):
    check(build, fuse=True)
    check(build, sizes=(2, 5), fuse=False)


def test_two_symbols():
    check_sizes(_two_symbols, [(2, 3), (5, 2), (3, 9)])


def test_bounded_symbol_uses_its_range():
    """A symbol with a finite range: still one program, correct at its ends."""
    env = ShapeEnv()
    n = env.symbol("n", hint=4, lo=2, hi=9)
    with shape_env(env):
        kg = lower(_views(n))
    assert env.guards == []
    rng = np.random.default_rng(2)
    for v in (2, 9):
        static = _views(v)
        inputs = make_inputs(static, rng)
        for g, w in zip(run_schedule(kg, inputs), evaluate(static, inputs)):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


# ---- the compiler's graph pipeline ------------------------------------------------------------


def _split(n):
    split, _ = differentiate(_mlp_loss(n), ["w1", "b1", "w2", "b2"], 1)
    return split


def _backward_inputs(split, inputs, forward_out):
    """The backward graph's inputs, from the forward's inputs and outputs (cotangent 1)."""
    saved = forward_out[len(forward_out) - split.num_saved:]
    out = []
    for kind, i in split.backward_inputs:
        out.append(saved[i] if kind == "saved" else inputs[i] if kind == "input"
                   else np.ones((), np.float32))
    return out


def test_optimized_and_partitioned_training_step():
    """optimize, autodiff and partition (compiler.pipeline.differentiate), then lowering of
    the forward and backward programs: no guard, and the static results at each size."""
    env = ShapeEnv()
    n = env.symbol("n", hint=8)
    with shape_env(env):
        split = _split(n)
        kf, kb = lower(split.forward), lower(split.backward)
    assert env.guards == []
    rng = np.random.default_rng(3)
    for v in (2, 7, 64):
        static = _split(v)
        inputs = make_inputs(static.forward, rng)
        want_f = evaluate(static.forward, inputs)
        got_f = run_schedule(kf, inputs)
        for g, w in zip(got_f, want_f):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)
        back = _backward_inputs(static, inputs, want_f)
        for g, w in zip(run_schedule(kb, back), evaluate(static.backward, back)):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


# ---- random view chains ---------------------------------------------------------------------


def _random_views(seed: int, symbols: int = 1):
    """A graph builder: a random chain of views, elementwise ops and a reduction over a tensor
    with dynamic axes (`symbols` of them, n then m).  Axes are tracked as (coefficient, the
    symbols multiplied in) so the same choices are made whatever the sizes are."""

    def build(*dims):
        rng = np.random.default_rng(seed)
        b = GraphBuilder()
        start = [(1, (0,)), (3, ()), (4, ())] + [(1, (1,))] * (symbols - 1)
        axes = [start[int(i)] for i in rng.permutation(len(start))]

        def size(a):
            out = a[0]
            for s_ in a[1]:
                out = out * dims[s_]
            return out

        shape = lambda: tuple(size(a) for a in axes)  # noqa: E731
        x = b.input("x", f32(shape()))
        v = x
        for _ in range(int(rng.integers(2, 10))):
            kind = rng.choice(["permute", "merge", "split", "expand", "slice", "pad", "concat",
                               "exp"])
            k = len(axes)
            if kind == "permute":
                perm = tuple(int(p) for p in rng.permutation(k))
                axes = [axes[p] for p in perm]
                v = b.permute(v, perm=perm)
            elif kind == "merge" and k > 1:
                i = int(rng.integers(0, k - 1))
                a, c = axes[i], axes[i + 1]
                axes[i:i + 2] = [(a[0] * c[0], tuple(sorted(a[1] + c[1])))]
                v = b.reshape(v, shape=shape())
            elif kind == "split":
                i = int(rng.integers(0, k))
                c, syms = axes[i]
                f = next((f for f in (2, 3) if c % f == 0), None)
                if f is None:
                    continue
                inner = bool(rng.integers(0, 2))  # the dynamic factors go outside or in
                axes[i:i + 1] = [(c // f, () if inner else syms), (f, syms if inner else ())]
                v = b.reshape(v, shape=shape())
            elif kind == "expand" and k < 5:
                i = int(rng.integers(0, k + 1))
                before = shape()
                v = b.reshape(v, shape=before[:i] + (1,) + before[i:])
                axes.insert(i, (2, ()))
                v = b.expand(v, shape=shape())
            elif kind == "slice":
                i = int(rng.integers(0, k))
                c, syms = axes[i]
                if syms or c < 3:
                    continue
                starts = tuple(1 if j == i else 0 for j in range(k))
                steps = tuple(2 if j == i else 1 for j in range(k))
                axes[i] = (c // 2, ())
                v = b.slice(v, starts=starts, stops=tuple(b.type_of(v).shape),
                            steps=steps)
            elif kind == "pad":
                i = int(rng.integers(0, k))
                c, syms = axes[i]
                if syms:
                    continue
                lo = tuple(1 if j == i else 0 for j in range(k))
                hi = tuple(2 if j == i else 0 for j in range(k))
                axes[i] = (c + 3, ())
                v = b.pad(v, lo=lo, hi=hi, interior=(0,) * k, value=0.25)
            elif kind == "concat":
                i = int(rng.integers(0, k))
                c, syms = axes[i]
                axes[i] = (2 * c, syms)
                v = b.concat(v, b.neg(v), axis=i)
            else:
                v = b.exp(b.mul(v, b.full(shape=shape(), value=0.1, dtype="float32")))
        red = tuple(j for j in range(len(axes)) if rng.integers(0, 2))
        return b.build([b.neg(v), b.reduce_sum(v, axes=red)])

    return build


@pytest.mark.parametrize("seed", range(40))
def test_random_view_chains(seed):
    check(_random_views(seed), sizes=(2, 3, 7))


@pytest.mark.parametrize("seed", range(20))
def test_random_view_chains_two_symbols(seed):
    check_sizes(_random_views(seed, symbols=2), [(2, 3), (5, 2), (3, 4)])


def test_mean_count_survives_simplification():
    """A `full` holding a dynamic size (a mean's count) is not folded as a number."""
    env = ShapeEnv()
    n = env.symbol("n", hint=8)
    with shape_env(env):
        b = GraphBuilder()
        x = b.input("x", f32((n, 3)))
        count = b.full(shape=(), value=n, dtype="float32")
        two = b.full(shape=(), value=2.0, dtype="float32")
        scale = b.div(two, count)  # every input is a source: constant folding's case
        total = b.reduce_sum(x, axes=(0, 1))
        graph, _ = optimize(b.build([b.mul(total, scale)]))
        kg = lower(graph)
    assert env.guards == []
    x7 = np.arange(21, dtype=np.float32).reshape(7, 3)
    np.testing.assert_allclose(run_schedule(kg, [x7])[0], x7.sum() * 2 / 7, rtol=1e-6)


def test_a_size_that_may_be_zero_is_refused():
    env = ShapeEnv()
    n = env.symbol("n", hint=8, lo=0)
    with shape_env(env), pytest.raises(DynamicSizeError, match="exp"):
        b = GraphBuilder()
        x = b.input("x", f32((n, 3)))
        lower(b.build([b.exp(x)]))
