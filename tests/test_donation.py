"""Donated inputs: a program writes an updated tensor's new value into the tensor's own memory.

The compiler keeps only the offered (output, input) pairs it can prove safe on the kernel
schedule (`memory.donations`): the output stored by one kernel elementwise over the input,
no later kernel reading the input, nothing reading the output.  The CPU runtime returns the
input's array as the output, or a copy when that array overlaps another input or is
read-only.  The frontend offers the updated tensors of a function compiled without a backward
(with value checks, each update keeps its old value when a check fails): a fused optimizer
step and a whole training step keep every parameter's array, as eager in-place updates do,
with no fresh array and no copy per step.
"""
from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import c64, schedule
from neurenix.compiler import GraphBuilder, pipeline
from neurenix.compiler.kernel.ir import Acc, Binary, BufferArg, Kernel, Load, Store, Var
from neurenix.compiler.kernel.memory import donations, inplace_candidates, plan_memory
from neurenix.compiler.types import TensorType, float32
from neurenix.runtime.cpu import CpuExecutable

import neurenix
from neurenix import nn, optim

F = float32


def _update(name: str, reads: list[str], out: str, size: int, index=None) -> Kernel:
    """out[i] = reads[0][index] - reads[1][i] - ... over `size` elements."""
    value = Load(reads[0], Var(0) if index is None else index, F)
    for r in reads[1:]:
        value = Binary("sub", value, Load(r, Var(0), F))
    return Kernel(name, tuple(BufferArg(r, F, size) for r in reads), (BufferArg(out, F, size),),
                  (size,), (Store(out, Var(0), value),))


def _graph(kernels: list[Kernel], inputs: list[str], outputs: list[str], size: int = 8):
    return schedule(kernels, {n: np.zeros(size, np.float32) for n in inputs},
                    {n: ((size,), F) for n in outputs})


def test_a_safe_pair_is_donated_and_planned_in_place():
    s = _graph([_update("k0", ["p", "g"], "out0", 8)], ["p", "g"], ["out0"])
    assert donations(s, {"out0": "p"}) == {"out0": "p"}
    plan = plan_memory(s, donate={"out0": "p", "missing": "g"})
    assert plan.donated == {"out0": "p"} and plan.inplace["out0"] == "p"
    plan.check(s)


@pytest.mark.parametrize("case", ["read later", "output read", "shifted read", "not read",
                                  "written twice"])
def test_unsafe_pairs_are_refused(case):
    size = 8
    if case == "read later":  # the old value is needed after the update
        kernels = [_update("k0", ["p", "g"], "out0", size), _update("k1", ["p", "g"], "out1",
                                                                     size)]
        outputs = ["out0", "out1"]
    elif case == "output read":  # another kernel reads the new value through its own name
        kernels = [_update("k0", ["p", "g"], "out0", size), _update("k1", ["out0", "g"],
                                                                     "out1", size)]
        outputs = ["out0", "out1"]
    elif case == "shifted read":  # iteration i reads p[i + 1], which iteration i + 1 overwrites
        shifted = Binary("mod", Binary("add", Var(0), c64(1)), c64(size))
        kernels = [_update("k0", ["p", "g"], "out0", size, index=shifted)]
        outputs = ["out0"]
    elif case == "not read":  # nothing to overwrite in step with
        kernels = [_update("k0", ["g", "g"], "out0", size)]
        outputs = ["out0"]
    else:
        kernels = [_update("k0", ["p", "g"], "out0", size), _update("k1", ["g", "g"], "out0",
                                                                     size)]
        outputs = ["out0"]
    s = _graph(kernels, ["p", "g"], outputs, size)
    assert donations(s, {"out0": "p"}) == {}


def _bias_update(reads_p_in_sum: bool) -> Kernel:
    """out[i] = p[i] - sum_r g[i, r] (a bias update fused behind its gradient's sum); with
    `reads_p_in_sum` the sum reads p too."""
    rows, cols = 4, 6
    index = Binary("add", Binary("mul", Var(0), c64(cols)), Var(1))
    summed = Load("g", index, F)
    if reads_p_in_sum:
        summed = Binary("add", summed, Load("p", Var(1), F))
    inputs = (BufferArg("p", F, rows), BufferArg("g", F, rows * cols))
    if reads_p_in_sum:
        inputs = (BufferArg("p", F, max(rows, cols)), inputs[1])
    return Kernel("k0", inputs, (BufferArg("out0", F, rows),), (rows,),
                  (Store("out0", Var(0), Binary("sub", Load("p", Var(0), F), Acc())),),
                  reduce=(cols,), reduce_op="sum", reduce_value=summed)


@pytest.mark.parametrize("reads_p_in_sum", [False, True])
def test_an_update_behind_a_reduction_is_donated_unless_the_sum_reads_it(reads_p_in_sum):
    kernel = _bias_update(reads_p_in_sum)
    s = schedule([kernel], {"p": np.zeros(kernel.inputs[0].size, np.float32),
                            "g": np.zeros(24, np.float32)}, {"out0": ((4,), F)})
    assert inplace_candidates(kernel) == []  # the shared planner stays conservative
    want = {} if reads_p_in_sum else {"out0": "p"}
    assert donations(s, {"out0": "p"}) == want


def _sgd_program(donate):
    b = GraphBuilder("sgd")
    p = b.input("p", TensorType((1000,), F))
    g = b.input("g", TensorType((1000,), F))
    lr = b.full(shape=(1000,), value=0.5, dtype="float32")
    graph = b.build([b.sub(p, b.mul(g, lr)), b.mul(g, g)])
    program, _ = pipeline.build(graph, "llvm", donate)
    return program


def test_the_runtime_returns_the_donated_input_updated_in_place():
    program = _sgd_program({0: 0})
    assert program.metadata["donated"] == [[0, 0]]
    exe = CpuExecutable(program)
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(
        np.float32)
    want = p - g * np.float32(0.5)
    new_p, g2 = exe.run([p, g])
    assert new_p is p  # the same array, written in place
    np.testing.assert_array_equal(new_p, want)
    np.testing.assert_array_equal(g2, g * g)
    assert "donated" not in _sgd_program(None).metadata


def test_a_view_is_updated_through_to_its_base():
    exe = CpuExecutable(_sgd_program({0: 0}))
    base = np.arange(2000, dtype=np.float32)
    p, g = base[500:1500], np.ones(1000, np.float32)
    new_p, _ = exe.run([p, g])
    assert new_p is p
    np.testing.assert_array_equal(base[500:1500], np.arange(500, 1500) - 0.5)
    np.testing.assert_array_equal(base[:500], np.arange(500))


@pytest.mark.parametrize("kind", ["read-only", "passed twice", "overlapping"])
def test_an_array_that_cannot_be_given_away_is_copied(kind):
    exe = CpuExecutable(_sgd_program({0: 0}))
    base = np.arange(2000, dtype=np.float32)
    if kind == "read-only":
        p = base[:1000].copy()
        p.flags.writeable = False
        g = np.ones(1000, np.float32)
    elif kind == "passed twice":
        p = base[:1000].copy()
        g = p
    else:  # g's bytes are p's second half and more
        p, g = base[:1000], base[500:1500]
    before, g_before = p.copy(), g.copy()
    new_p, _ = exe.run([p, g])
    assert new_p is not p
    np.testing.assert_array_equal(p, before)  # the caller's array is untouched
    np.testing.assert_array_equal(new_p, before - g_before * np.float32(0.5))


def test_profile_leaves_donated_inputs_as_they_were():
    exe = CpuExecutable(_sgd_program({0: 0}))
    p, g = np.ones(1000, np.float32), np.ones(1000, np.float32)
    exe.profile([p, g], repeat=1)
    np.testing.assert_array_equal(p, 1.0)


def _mlp(seed=0):
    neurenix.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: optim.Adam(ps, lr=0.01)])
def test_a_fused_step_updates_parameters_in_their_own_arrays(make):
    model, twin = _mlp(), _mlp()
    fused, eager = make(model.parameters()), make(twin.parameters())
    eager.fused = False
    x = neurenix.Tensor(np.random.default_rng(1).standard_normal((5, 12)).astype(np.float32))
    arrays = [p._data for p in model.parameters()]
    views = [p.detach().numpy() for p in model.parameters()]
    for _ in range(3):
        for m, opt in ((model, fused), (twin, eager)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    program = next(iter(fused._fused_steps.values()))._last.forward.program
    assert len(program.metadata["donated"]) == len(program.outputs)
    assert all(p._data is a for p, a in zip(model.parameters(), arrays))
    for view, p, q in zip(views, model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())  # bitwise
        np.testing.assert_array_equal(view, p.detach().numpy())  # views see the update
    def state_arrays() -> list:
        return [t._data for s in fused.state.values() for t in s.values()
                if isinstance(t, neurenix.Tensor)]

    kept = state_arrays()
    for _ in range(2):
        fused.zero_grad()
        model(x).square().mean().backward()
        fused.step()
    assert kept and all(a is b for a, b in zip(kept, state_arrays()))


def _whole_step(model, opt, loss_fn):
    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return neurenix.compile(step)


def test_a_compiled_training_step_without_checks_keeps_the_arrays():
    model, twin = _mlp(), _mlp()
    step = _whole_step(model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                       nn.MSELoss())
    opt = optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    opt.fused = False
    rng = np.random.default_rng(2)
    x = neurenix.Tensor(rng.standard_normal((5, 12)).astype(np.float32))
    y = neurenix.Tensor(rng.standard_normal((5, 3)).astype(np.float32))
    step(x, y)
    arrays = [p._data for p in model.parameters()]
    for _ in range(3):
        step(x, y)
    assert step._last.forward.program.metadata.get("donated")
    assert all(p._data is a for p, a in zip(model.parameters(), arrays))
    for _ in range(4):
        opt.zero_grad()
        nn.MSELoss()(twin(x), y).backward()
        opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_a_step_with_value_checks_writes_back_the_old_values_when_one_fails():
    """A class-index check is computed in the program too: a failing call writes every
    parameter's old value into its own memory, then raises eager's error."""
    model, twin = _mlp(), _mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = _whole_step(model, opt, nn.CrossEntropyLoss())
    x = neurenix.Tensor(np.random.default_rng(3).standard_normal((5, 12)).astype(np.float32))
    good = neurenix.Tensor(np.array([0, 1, 2, 0, 1]))
    step(x, good)
    step(x, good)
    assert step._last.forward.program.metadata.get("donated")
    arrays = [p._data for p in model.parameters()]
    before = [p.detach().numpy().copy() for p in model.parameters()]
    momenta = [s["momentum_buffer"].numpy().copy() for s in opt.state.values()]
    with pytest.raises(ValueError, match="out of range"):
        step(x, neurenix.Tensor(np.array([0, 1, 7, 0, 1])))
    for p, a, b in zip(model.parameters(), arrays, before):
        assert p._data is a
        np.testing.assert_array_equal(p.detach().numpy(), b)
    for s, m in zip(opt.state.values(), momenta):
        np.testing.assert_array_equal(s["momentum_buffer"].numpy(), m)
    with pytest.raises(ValueError, match="out of range"):
        step(x, neurenix.Tensor(np.array([-1, 1, 2, 0, 1])))
    step(x, good)  # and training goes on as eager's would
    eager = optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    eager.fused = False
    for _ in range(3):
        eager.zero_grad()
        nn.CrossEntropyLoss()(twin(x), good).backward()
        eager.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
