"""Memory planning over symbolic sizes (compiler/kernel/memory.py, dynamic shapes).

One symbolic plan must be sound at every value of its symbols: each random kernel graph is
planned once, then specialised at many sizes (`specialize_graph`, the plan's offsets
evaluated with `size_value`) and checked exhaustively there: aligned offsets, every
temporary inside the arena, no two live temporaries overlapping except an in-place pair
where one dies and the other is born (which the static analysis must accept too).
"""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_helpers import schedule
from neurenix.compiler.kernel.ir import (
    Acc,
    Binary,
    BufferArg,
    Const,
    Kernel,
    Load,
    Store,
    Sym,
    Unary,
    Var,
)
from neurenix.compiler.kernel.memory import (
    ALIGN,
    MemoryPlan,
    _place,
    _place_symbolic,
    _Ranges,
    _same,
    aligned,
    inplace_candidates,
    plan_memory,
)
from neurenix.compiler.kernel.specialize import specialize_graph
from neurenix.compiler.symbolic import DynamicSizeError, ShapeEnv, shape_env
from neurenix.compiler.types import float32, int64
from neurenix.runtime.sizes import Poly, size_value

F = float32
SIZES = [2, 3, 7, 64, 100, 1000, 4097]


def c64(v: int) -> Const:
    return Const(v, int64)


def ew(name, reads, out, size, dtype=F):
    """out[i] = reads[0][i] + reads[1][i] + ... over `size` elements (size may be a Dim)."""
    value = None
    for r in reads:
        load = Load(r, Var(0), dtype)
        value = load if value is None else Binary("add", value, load)
    if len(reads) == 1:
        value = Unary("neg", value)
    return Kernel(name, tuple(BufferArg(r, dtype, size) for r in reads),
                  (BufferArg(out, dtype, size),), (size,), (Store(out, Var(0), value),))


def copy(name, src, src_size, out, out_size, more=()):
    """A kernel writing `out` from `src` (and the (name, size) buffers `more`) at another
    size: never in place."""
    index = Binary("mod", Var(0), c64(1))
    value = Load(src, index, F)
    for other, _ in more:
        value = Binary("add", value, Load(other, index, F))
    inputs = (BufferArg(src, F, src_size),) + tuple(BufferArg(o, F, z) for o, z in more)
    return Kernel(name, inputs, (BufferArg(out, F, out_size),), (out_size,),
                  (Store(out, Var(0), value),))


def make_env(m_hi=40):
    env = ShapeEnv()
    n = env.symbol("n", hint=8)
    m = env.symbol("m", hint=min(5, m_hi), lo=3, hi=m_hi)
    return env, n, m


def graph(kernels, x_size, y_size):
    kg = schedule(kernels, {"x": np.zeros(1, np.float32)}, {"y": ((y_size,), F)})
    kg.buffers["x"] = BufferArg("x", F, x_size)
    kg.shapes["x"] = (x_size,)
    return kg


def random_graph(rng: random.Random, n, m):
    """A random DAG of kernels over temporaries of symbolic and static sizes: elementwise
    kernels (in-place candidates) among buffers of one size, copies between sizes."""
    choices = [n, 3 * n, n * m, 512 * n + 7, n * n + 1, 5, 100, 4096, m + 1, 2 * n - 3]
    size = rng.choice(choices)
    available = [("x", size)]
    kernels = []
    for k in range(rng.randint(1, 14)):
        out = f"t{k}"
        if rng.random() < 0.3:
            new = rng.choice(choices)
            src, src_size = rng.choice(available)
            kernels.append(copy(f"k{k}", src, src_size, out, new))
            available.append((out, new))
            continue
        same = [a for a in available if _same_size(a[1], size)] or available[:1]
        reads = rng.sample(same, min(len(same), rng.randint(1, 2)))
        width = reads[0][1]
        kernels.append(ew(f"k{k}", [r for r, _ in reads], out, width))
        available.append((out, width))
    last, width = available[-1]
    kernels.append(ew("final", [last], "y", width) if last != "x" else
                   ew("final", ["x"], "y", width))
    return graph(kernels, size, width)


def _same_size(a, b):
    if isinstance(a, Poly) or isinstance(b, Poly):
        return isinstance(a, Poly) and isinstance(b, Poly) and a.terms == b.terms
    return a == b


def check_at(kg, plan: MemoryPlan, env: dict, alignment=ALIGN):
    """The plan specialised to `env` is sound for the kernel graph specialised to `env`."""
    s = specialize_graph(kg, env)
    offsets = {t: size_value(o, env) for t, o in plan.offsets.items()}
    arena = size_value(plan.arena_bytes, env)
    temps = s.temporaries()
    nbytes = {t: s.buffers[t].size * s.buffers[t].dtype.itemsize for t in temps}
    assert set(offsets) == set(temps)
    assert all(o % alignment == 0 and o >= 0 for o in offsets.values()), env
    assert all(offsets[t] + nbytes[t] <= arena for t in temps), env
    for k in range(len(s.kernels)):
        live = [t for t in temps if plan.intervals[t][0] <= k <= plan.intervals[t][1]]
        for a, b in itertools.combinations(live, 2):
            lo_a, lo_b = offsets[a], offsets[b]
            if not (lo_a < lo_b + nbytes[b] and lo_b < lo_a + nbytes[a]):
                continue
            out, inp = (a, b) if plan.inplace.get(a) == b else (b, a)
            assert plan.inplace.get(out) == inp, f"{a} and {b} overlap at kernel {k}, {env}"
            assert plan.intervals[inp][1] == k == plan.intervals[out][0]
            assert lo_a == lo_b
    for out, inp in plan.inplace.items():  # the static analysis agrees at these sizes
        (writer,) = [kn for kn in s.kernels if out in {b.name for b in kn.outputs}]
        assert (out, inp) in inplace_candidates(writer)
    plan.specialize(env).check(s, alignment)


def envs(m_hi=40):
    return [{"n": n, "m": m} for n in SIZES for m in (3, 4, 17, m_hi)]


@pytest.mark.parametrize("seed", range(40))
def test_random_symbolic_graphs_are_planned_soundly_at_every_size(seed):
    env, n, m = make_env()
    kg = random_graph(random.Random(seed), n, m)
    with shape_env(env):
        plan = plan_memory(kg)
        plan.check(kg)
    assert env.guards == []  # planning decides for every size: it records no guard
    for values in envs():
        check_at(kg, plan, values)


@pytest.mark.parametrize("seed", range(8))
def test_the_target_alignment_holds_symbolically(seed):
    env, n, m = make_env()
    kg = random_graph(random.Random(seed), n, m)
    with shape_env(env):
        plan = plan_memory(kg, alignment=256)
        plan.check(kg, alignment=256)
    for values in envs()[::3]:
        check_at(kg, plan, values, alignment=256)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), m_hi=st.integers(3, 200),
       n=st.integers(2, 5000), m=st.integers(3, 200))
def test_property_any_size_in_range(seed, m_hi, n, m):
    env, dn, dm = make_env(m_hi)
    kg = random_graph(random.Random(seed), dn, dm)
    with shape_env(env):
        plan = plan_memory(kg)
    check_at(kg, plan, {"n": n, "m": min(m, m_hi)})


def test_a_symbolic_chain_runs_in_place_in_one_buffer():
    env, n, _ = make_env()
    size = 256 * n
    names = ["x"] + [f"t{i}" for i in range(5)] + ["y"]
    kg = graph([ew(f"k{i}", [a], b, size) for i, (a, b) in enumerate(zip(names, names[1:]))],
               size, size)
    with shape_env(env):
        plan = plan_memory(kg)
    assert plan.inplace == {f"t{i}": f"t{i - 1}" for i in range(1, 5)}
    assert plan.arena_bytes == 1024 * n and set(plan.offsets.values()) == {0}
    assert plan.naive_bytes == 5 * 1024 * 8 and plan.lower_bound_bytes == 1024 * 8


def test_two_live_symbolic_buffers_stack_and_a_dead_one_is_reused():
    env, n, _ = make_env()
    size = 16 * n  # 64*n bytes: aligned for every n
    kernels = [ew("k0", ["x"], "a", size), ew("k1", ["a"], "b", size),
               ew("k2", ["a", "b"], "c", size), ew("k3", ["c"], "y", size)]
    with shape_env(env):
        plan = plan_memory(graph(kernels, size, size))
    assert plan.offsets["a"] == 0 and _same(plan.offsets["b"], 64 * n)
    assert plan.inplace == {"c": "a"} and _same(plan.arena_bytes, 128 * n)


def test_static_and_symbolic_buffers_share_the_arena():
    env, n, _ = make_env()
    kernels = [copy("k0", "x", n, "s", 1000), copy("k1", "s", 1000, "y0", n),
               copy("k2", "x", n, "d", 32 * n), copy("k3", "d", 32 * n, "y", n)]
    kg = graph(kernels, n, n)
    kg.outputs.insert(0, "y0")
    kg.shapes["y0"] = (n,)
    with shape_env(env):
        plan = plan_memory(kg)
        plan.check(kg)
    # s (4032 B aligned) and d (128*n B) are never live together: both at 0, the arena
    # their upper bound over n >= 2, 4032 + 128*(n - 2)
    assert plan.offsets == {"s": 0, "d": 0}
    assert _same(plan.arena_bytes, 128 * n + 3776)
    for values in envs():
        check_at(kg, plan, values)


@pytest.mark.parametrize("hi, offset", [(None, 3072), (32, 0)])
def test_a_gap_that_fits_only_at_the_hint_is_not_reused(hi, offset):
    """d (64*n bytes) may go below y1 (at 2048, where x1 was) only if it fits there for
    every n: with n unbounded it goes above y1, with n <= 32 it takes the gap."""
    env = ShapeEnv()
    n = env.symbol("n", hint=4, hi=hi)
    kernels = [copy("k0", "x", n, "y1", 256), copy("k1", "x", n, "x1", 512),
               copy("k2", "x1", 512, "w", 16), copy("k3", "w", 16, "d", 16 * n),
               copy("k4", "d", 16 * n, "y", n, more=[("y1", 256)])]
    kg = graph(kernels, n, n)
    with shape_env(env):
        plan = plan_memory(kg)
        plan.check(kg)
    assert plan.offsets["x1"] == 0 and plan.offsets["y1"] == 2048
    assert plan.offsets["d"] == offset
    for v in [2, 3, 4, 31, 32] + ([33, 100, 4097] if hi is None else []):
        check_at(kg, plan, {"n": v})


def test_symbolic_two_dimensional_domains_are_row_major_with_sym_strides():
    env, n, _ = make_env()
    # domain (7, n): index i0*n + i1 over Sym(n) is row-major for every n
    index = Binary("add", Binary("mul", Var(0), Sym("n")), Var(1))
    ok = Kernel("k", (BufferArg("a", F, 7 * n),), (BufferArg("b", F, 7 * n),), (7, n),
                (Store("b", index, Unary("neg", Load("a", index, F))),))
    assert inplace_candidates(ok) == [("b", "a")]
    # domain (n, 7) with the same index: strides 7 and 1 are needed, not n
    bad = Kernel("k", (BufferArg("a", F, 7 * n),), (BufferArg("b", F, 7 * n),), (n, 7),
                 (Store("b", index, Unary("neg", Load("a", index, F))),))
    assert inplace_candidates(bad) == []
    # a reduction over a symbolic axis is never in place
    red = Kernel("r", (BufferArg("a", F, 7 * n),), (BufferArg("b", F, 7),), (7,),
                 (Store("b", Var(0), Acc()),), reduce=(n,), reduce_op="sum",
                 reduce_value=Load("a", index, F))
    assert inplace_candidates(red) == []
    assert env.guards == []


def test_in_place_needs_the_same_size_polynomial():
    env, n, _ = make_env()
    k = Kernel("k", (BufferArg("a", F, n + 1),), (BufferArg("b", F, n),), (n,),
               (Store("b", Var(0), Load("a", Var(0), F)),))
    with shape_env(env):
        assert inplace_candidates(k) == []
    assert env.guards == []


def test_aligned_symbolic_sizes_dominate_and_stay_aligned():
    env, n, m = make_env()
    assert aligned(12 * n + 4) == 64 * n + 64
    assert aligned(256 * n - 4) == 256 * n
    assert aligned(4 * n * m + 64, 256) == 256 * n * m + 256
    for v in SIZES:
        assert size_value(aligned(12 * n + 4), {"n": v}) % 64 == 0
        assert size_value(aligned(12 * n + 4), {"n": v}) >= 12 * v + 4


def test_symbolic_placement_on_static_sizes_is_todays_placement():
    rng = random.Random(0)
    for _ in range(300):
        count = rng.randint(1, 12)
        size = {f"r{i}": rng.choice([0, 64, 128, 640, 4096, 192]) for i in range(count)}
        span = {}
        for r in size:
            a, b = rng.randint(0, 8), rng.randint(0, 8)
            span[r] = (min(a, b), max(a, b))
        assert _place_symbolic(size, span, _Ranges([])) == _place(size, span)


def test_static_graphs_plan_the_same_inside_a_shape_environment():
    env, _, _ = make_env()
    size = 100
    kernels = [ew("k0", ["x"], "a", size), ew("k1", ["a"], "b", size),
               ew("k2", ["a", "b"], "c", size), ew("k3", ["c"], "y", size)]
    kg = graph(kernels, size, size)
    outside = plan_memory(kg)
    with shape_env(env):
        inside = plan_memory(kg)
    assert inside == outside and all(isinstance(o, int) for o in inside.offsets.values())


def test_symbolic_planning_needs_a_shape_environment():
    _, n, _ = make_env()
    kg = graph([ew("k0", ["x"], "a", n), copy("k1", "a", n, "y", n)], n, n)
    with pytest.raises(DynamicSizeError, match="shape environment"):
        plan_memory(kg)


def test_the_check_rejects_unsound_symbolic_plans():
    env = ShapeEnv()
    n = env.symbol("n", hint=4)
    kernels = [copy("k0", "x", n, "a", 128 * n), copy("k1", "x", n, "b", 16),
               ew("k2", ["a"], "c", 128 * n), copy("k3", "b", 16, "y", n),
               copy("k4", "c", 128 * n, "y2", n)]
    kg = graph(kernels, n, n)
    kg.outputs.append("y2")
    kg.shapes["y2"] = (n,)
    with shape_env(env):
        good = plan_memory(kg)
        good.check(kg)
        # b placed at 2048: past a (512*n bytes) at the hint n = 4, inside it from n = 5
        bad = MemoryPlan(dict(good.offsets, a=0, b=2048), 512 * n + 2112, 0, 0,
                         dict(good.inplace), dict(good.intervals))
        with pytest.raises(ValueError, match="not provably apart"):
            bad.check(kg)
        small = MemoryPlan(dict(good.offsets), 512 * n, 0, 0, dict(good.inplace),
                           dict(good.intervals))
        with pytest.raises(ValueError, match="inside"):
            small.check(kg)
        odd = MemoryPlan(dict(good.offsets, b=512 * n + 4), 1024 * n + 4096, 0, 0,
                         dict(good.inplace), dict(good.intervals))
        with pytest.raises(ValueError, match="not aligned"):
            odd.check(kg)
