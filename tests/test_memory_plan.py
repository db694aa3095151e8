"""Memory planning: liveness, in-place reuse and arena packing, checked exhaustively.

Random schedules (chains and diamonds of elementwise kernels, reductions, shifted reads) are
planned, then every kernel of the order is visited: the storages live there must not overlap,
except an output computed in place over the input that dies at that very kernel.  Sizes must
satisfy lower bound <= arena <= naive, and programs that reuse memory must still compute what
the kernel IR's interpreter computes.
"""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from kernel_helpers import c64, run_both, schedule
from neurenix.compiler.kernel.ir import Acc, Binary, BufferArg, Kernel, Load, Store, Unary, Var
from neurenix.compiler.kernel.memory import ALIGN, aligned, inplace_candidates, plan_memory
from neurenix.compiler.types import float32, float64, int32

F = float32


def ew(name, reads, out, size, op="add", index=None, dtype=F):
    """out[i] = op(reads[0][index], reads[1][index], ...) over size elements."""
    index = Var(0) if index is None else index
    value = None
    for r in reads:
        load = Load(r, index if r != reads[0] else Var(0), dtype)
        value = load if value is None else Binary(op, value, load)
    if len(reads) == 1:
        value = Unary("neg", value)
    return Kernel(name, tuple(BufferArg(r, dtype, size) for r in reads),
                  (BufferArg(out, dtype, size),), (size,), (Store(out, Var(0), value),))


def row_sum(name, src, out, rows, cols):
    index = Binary("add", Binary("mul", Var(0), c64(cols)), Var(1))
    return Kernel(name, (BufferArg(src, F, rows * cols),), (BufferArg(out, F, rows),), (rows,),
                  (Store(out, Var(0), Acc()),), reduce=(cols,), reduce_op="sum",
                  reduce_value=Load(src, index, F))


def random_schedule(rng: random.Random):
    """A random DAG of kernels over temporaries t<k>, ending in one output."""
    size = rng.choice([1, 5, 16, 100])
    available = ["x"]
    kernels = []
    for k in range(rng.randint(1, 12)):
        out = f"t{k}"
        kind = rng.random()
        if kind < 0.15 and size % 5 == 0:
            kernels.append(row_sum(f"k{k}", rng.choice(available), out, size // 5, 5))
            kernels.append(ew(f"k{k}b", [out], f"t{k}x", size // 5))
            continue  # the small results stay out of `available`: later kernels read size
        reads = rng.sample(available, min(len(available), rng.randint(1, 2)))
        shifted = Binary("mod", Binary("add", Var(0), c64(1)), c64(size)) \
            if rng.random() < 0.2 else None
        kernels.append(ew(f"k{k}", reads, out, size, index=shifted))
        available.append(out)
    last = kernels[-1].outputs[0]
    kernels.append(ew("final", [last.name], "y", last.size))
    return schedule(kernels, {"x": np.zeros(size, np.float32)}, {"y": ((last.size,), F)})


def check_plan(s, plan, alignment=ALIGN):
    temps = s.temporaries()
    nbytes = {t: s.buffers[t].size * s.buffers[t].dtype.itemsize for t in temps}
    assert set(plan.offsets) == set(temps)
    assert all(o % alignment == 0 for o in plan.offsets.values())
    assert all(plan.offsets[t] + nbytes[t] <= plan.arena_bytes for t in temps)
    assert plan.naive_bytes == sum(aligned(n, alignment) for n in nbytes.values())
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.naive_bytes
    for k in range(len(s.kernels)):
        live = [t for t in temps if plan.intervals[t][0] <= k <= plan.intervals[t][1]]
        for a, b in itertools.combinations(live, 2):
            lo_a, lo_b = plan.offsets[a], plan.offsets[b]
            overlap = lo_a < lo_b + nbytes[b] and lo_b < lo_a + nbytes[a]
            if not overlap or not nbytes[a] or not nbytes[b]:
                continue
            # only an in-place pair may share memory, and only where one dies, the other is born
            out, inp = (a, b) if plan.inplace.get(a) == b else (b, a)
            assert plan.inplace.get(out) == inp, f"{a} and {b} overlap at kernel {k}"
            assert plan.intervals[inp][1] == k == plan.intervals[out][0]
            assert lo_a == lo_b
    # the lower bound is the peak of what must coexist (in-place pairs are one storage)
    peak = 0
    for k in range(len(s.kernels)):
        live = {t for t in temps if plan.intervals[t][0] <= k <= plan.intervals[t][1]}
        merged = {t for t in live if plan.inplace.get(t) in live}
        peak = max(peak, sum(aligned(nbytes[t], alignment) for t in live - merged))
    assert plan.lower_bound_bytes == peak


@pytest.mark.parametrize("seed", range(60))
def test_random_schedules_never_overlap_live_buffers(seed):
    s = random_schedule(random.Random(seed))
    check_plan(s, plan_memory(s))


@pytest.mark.parametrize("seed", range(10))
def test_the_target_alignment_places_every_buffer(seed):
    """WebGPU binds storage buffers at 256-byte offsets."""
    s = random_schedule(random.Random(seed))
    plan = plan_memory(s, alignment=256)
    check_plan(s, plan, alignment=256)
    assert plan.arena_bytes >= plan_memory(s).arena_bytes


def test_alignment_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="alignment must be a positive power of two, got 48"):
        plan_memory(chain(), alignment=48)


def chain(n=6, size=1000):
    """x -> t0 -> t1 -> ... -> y, each kernel elementwise over the same index."""
    names = ["x"] + [f"t{i}" for i in range(n)] + ["y"]
    kernels = [ew(f"k{i}", [a], b, size) for i, (a, b) in enumerate(zip(names, names[1:]))]
    return schedule(kernels, {"x": np.zeros(size, np.float32)}, {"y": ((size,), F)})


def test_elementwise_chain_runs_in_place_in_one_buffer():
    s = chain()
    plan = plan_memory(s)
    check_plan(s, plan)
    assert plan.inplace == {f"t{i}": f"t{i - 1}" for i in range(1, 6)}
    assert plan.arena_bytes == aligned(4000) == plan.lower_bound_bytes
    assert plan.naive_bytes == 6 * aligned(4000)


def test_without_in_place_the_chain_needs_two_buffers():
    # each kernel also reads its input at a shifted index: nothing may be overwritten early
    size = 64
    shifted = Binary("mod", Binary("add", Var(0), c64(3)), c64(size))
    kernels = [ew("k0", ["x"], "t0", size)]
    for i in range(1, 5):
        src = f"t{i - 1}"
        value = Binary("add", Load(src, Var(0), F), Load(src, shifted, F))
        kernels.append(Kernel(f"k{i}", (BufferArg(src, F, size),),
                              (BufferArg(f"t{i}", F, size),), (size,),
                              (Store(f"t{i}", Var(0), value),)))
    kernels.append(ew("k5", ["t4"], "y", size))
    s = schedule(kernels, {"x": np.zeros(size, np.float32)}, {"y": ((size,), F)})
    plan = plan_memory(s)
    check_plan(s, plan)
    assert plan.inplace == {}
    assert plan.arena_bytes == 2 * aligned(size * 4)


@pytest.mark.parametrize("kernel, pairs", [
    (ew("same", ["a"], "b", 8), [("b", "a")]),
    (ew("two_inputs", ["a", "c"], "b", 8), [("b", "a"), ("b", "c")]),
    (ew("shifted", ["a", "c"], "b", 8, index=Binary("add", Var(0), c64(0))), [("b", "a")]),
    (ew("wider", ["a"], "b", 8, dtype=float64), [("b", "a")]),
    (row_sum("reduction", "a", "b", 2, 4), []),
    (Kernel("broadcast", (BufferArg("a", F, 1),), (BufferArg("b", F, 8),), (8,),
            (Store("b", Var(0), Load("a", c64(0), F)),)), []),
    (Kernel("masked", (BufferArg("a", F, 8),), (BufferArg("b", F, 8),), (8,),
            (Store("b", Var(0), Load("a", Var(0), F, Binary("lt", Var(0), c64(4)))),)), []),
    (Kernel("cast_narrow", (BufferArg("a", float64, 8),), (BufferArg("b", int32, 8),), (8,),
            (Store("b", Var(0), Load("a", Var(0), float64)),)), []),
    (Kernel("accumulate", (BufferArg("a", F, 8),), (BufferArg("b", F, 8),), (8,),
            (Store("b", Var(0), Load("a", Var(0), F), accumulate=True),)), []),
    (Kernel("reversed", (BufferArg("a", F, 8),), (BufferArg("b", F, 8),), (8,),
            (Store("b", Binary("sub", c64(7), Var(0)), Load("a", Var(0), F)),)), []),
])
def test_in_place_candidates_are_conservative(kernel, pairs):
    # "shifted" adds 0 to the index of `c`: not the store's index expression, so c is refused
    assert inplace_candidates(kernel) == pairs


def test_an_input_read_later_is_not_overwritten():
    size = 32
    kernels = [ew("k0", ["x"], "t0", size), ew("k1", ["t0"], "t1", size),
               ew("k2", ["t1", "t0"], "y", size)]
    s = schedule(kernels, {"x": np.zeros(size, np.float32)}, {"y": ((size,), F)})
    plan = plan_memory(s)
    check_plan(s, plan)
    assert "t1" not in plan.inplace


def test_in_place_programs_compute_what_the_interpreter_computes():
    s = chain(n=8, size=1037)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1037).astype(np.float32)
    got, want = run_both(s, [x])
    np.testing.assert_array_equal(got[0], want[0])


def test_diamond_with_reuse_computes_correctly():
    size = 300
    kernels = [ew("k0", ["x"], "a", size), ew("k1", ["a"], "b", size),
               ew("k2", ["a", "b"], "c", size, op="mul"), ew("k3", ["c"], "d", size),
               ew("k4", ["d", "x"], "e", size, op="sub"), ew("k5", ["e"], "y", size)]
    s = schedule(kernels, {"x": np.zeros(size, np.float32)}, {"y": ((size,), F)})
    plan = plan_memory(s)
    check_plan(s, plan)
    assert plan.arena_bytes < plan.naive_bytes
    x = np.random.default_rng(1).standard_normal(size).astype(np.float32)
    got, want = run_both(s, [x])
    np.testing.assert_array_equal(got[0], want[0])


def test_a_schedule_without_temporaries_needs_no_arena():
    s = schedule([ew("k0", ["x"], "y", 4)], {"x": np.zeros(4, np.float32)}, {"y": ((4,), F)})
    plan = plan_memory(s)
    assert (plan.arena_bytes, plan.naive_bytes, plan.lower_bound_bytes) == (0, 0, 0)
    assert "arena 0 B" in plan.summary()
