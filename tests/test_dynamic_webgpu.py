"""Shape-polymorphic programs on the WebGPU target (docs/compiler/dynamic-shapes.md,
docs/targets/webgpu.md): one program runs every batch size, equal to eager; the symbols'
values reach the kernels in a uniform buffer, launches are capped at 65,535 work-groups with
grid-stride loops doing the rest, and loops that could pass lavapipe's loop limit are guarded.
Each function is traced once at a large batch and once at a small one, as the OpenCL tests."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from devices import needs_device
from neurenix.compiler import GraphBuilder, pipeline
from neurenix.compiler.symbolic import ShapeEnv, shape_env
from neurenix.compiler.types import TensorType, float32
from neurenix.runtime import webgpu
from neurenix.runtime.program import program_from_json, program_to_json
from neurenix.runtime.sizes import Groups, extent_from_json

import neurenix
from neurenix import nn

SIZES = (2, 3, 7, 64, 100)
ORDERS = {"small": SIZES, "large": (100, 2, 3, 7, 64)}
"""The call orders: the first size is the one traced (the symbols' hint)."""
WIDTH = {"small": 0, "large": 1}
"""Added to a static size per order: programs are cached by graph, whatever the hint."""


@pytest.fixture(autouse=True)
def _webgpu():
    needs_device("webgpu")


def _x(*shape, seed=0):
    return neurenix.tensor(np.random.default_rng(seed + shape[0]).standard_normal(shape)
                           .astype(np.float32))


def _programs(f):
    return sum(len(v) for v in f._cache.values())


def _same(got, want, tol=1e-5):
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=tol, atol=tol)


def _check(f, eager, make, order, tol=1e-5):
    compiled = neurenix.compile(f, backend="webgpu", dynamic=True)
    for n in ORDERS[order]:
        args = make(n)
        _same(compiled(*args), eager(*args), tol)
    assert _programs(compiled) == 1
    assert compiled.stats()["dynamic"]["sizes"] == {"s0": ORDERS[order][-1]}
    return compiled


@pytest.mark.parametrize("order", ORDERS)
def test_elementwise(order):
    def f(x):
        return (x * 2 - 1).relu() * x.sigmoid()
    _check(f, f, lambda n: (_x(n, 5 + WIDTH[order]),), order)


@pytest.mark.parametrize("order", ORDERS)
def test_reductions_over_the_dynamic_and_a_static_axis(order):
    def f(x):
        return x.sum(0) * 2 + x.amax(1).sum() + x.mean()
    _check(f, f, lambda n: (_x(n, 300 + WIDTH[order]),), order, tol=1e-4)


@pytest.mark.parametrize("order", ORDERS)
def test_mlp_forward(order):
    neurenix.manual_seed(0)
    width = 64 + WIDTH[order]
    mlp = nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, 5))
    device = copy.deepcopy(mlp).to("webgpu")
    f = _check(lambda x: device(x), mlp, lambda n: (_x(n, 20),), order, tol=1e-4)
    if order == "large":  # traced at 100 rows: the matmul's tiles are counted per call
        source = str(f.source())
        assert "tiled contraction" in source and "nx_groups.x" in source


@pytest.mark.parametrize("order", ORDERS)
def test_conv_net_forward(order):
    neurenix.manual_seed(0)
    channels = 8 + WIDTH[order]
    net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(channels * 4 * 4, 4))
    device = copy.deepcopy(net).to("webgpu")
    _check(lambda x: device(x), net, lambda n: (_x(n, 3, 8, 8),), order, tol=1e-4)


def _step(model):
    opt = neurenix.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


@pytest.mark.parametrize("order", ORDERS)
def test_mlp_training_step(order):
    neurenix.manual_seed(0)
    width = 32 + WIDTH[order]
    mlp = nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, 5))
    device = copy.deepcopy(mlp).to("webgpu")
    eager, step = _step(mlp), neurenix.compile(_step(device), backend="webgpu", dynamic=True)
    for n in ORDERS[order]:
        x = _x(n, 20)
        y = neurenix.tensor(np.random.default_rng(n).integers(0, 5, n))
        _same(step(x, y), eager(x, y), 1e-5)
        for a, b in zip(device.parameters(), mlp.parameters()):
            _same(a, b, 1e-5)
    assert _programs(step) == 1
    assert step.stats()["dynamic"]["sizes"] == {"s0": ORDERS[order][-1]}


def _symbolic_program(build, hint: int = 4):
    """The webgpu program of the graph `build(builder, n)` for a symbol s0 (hint `hint`),
    and the environment's guards."""
    env = ShapeEnv()
    n = env.symbol("s0", hint)
    with shape_env(env):
        b = GraphBuilder("g")
        graph = b.build(build(b, n))
        program, _ = pipeline.build(graph, "webgpu")
    return program, env.guards


def test_a_symbolic_program_round_trips_and_sizes_its_launches():
    f = neurenix.compile(lambda x: (x * 2).sum(1), backend="webgpu", dynamic=True)
    f(_x(300, 4))
    program = next(iter(f._cache.values()))[0].forward.program
    assert program.symbols == ("s0",)
    assert program.metadata["sized_kernels"] and program.metadata["size_checks"]
    grids = [g for k in program.kernels for g in k.grid if isinstance(g, Groups)]
    assert grids and all(g.most == 65535 for g in grids)
    assert grids[0].evaluate({"s0": 1000}) == -(-1000 // program.kernels[0].block[0])
    back = program_from_json(*program_to_json(program))
    assert back.kernels == program.kernels and back.symbols == program.symbols
    assert back.metadata["size_checks"] == program.metadata["size_checks"]
    assert extent_from_json(grids[0].to_json()) == grids[0]
    exe = webgpu.Executable(back)
    for n in (3, 1000):
        a = np.arange(4 * n, dtype=np.float32).reshape(n, 4)
        (y,) = exe.run([a])
        np.testing.assert_allclose(y, (a * 2).sum(1), rtol=1e-6)
        assert exe.last_sizes == {"s0": n}


def test_the_sizes_reach_kernels_in_a_uniform_written_per_call():
    """One uniform binding after the storage buffers, its i32 values written per call: runs
    in either order of sizes share the program and keep their own values."""
    program, _ = _symbolic_program(lambda b, n: [b.apply(
        "reduce_sum", b.input("x", TensorType((n, 3), float32)), axes=(0,))])
    (kernel,) = program.kernels
    assert "var<uniform> nx_sizes: NxSizes;" in kernel.source
    assert f"@binding({len(kernel.args)}) var<uniform>" in kernel.source
    assert webgpu.uniform_binding(kernel.source) == len(kernel.args)
    exe = webgpu.Executable(program)
    xs = [np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32)
          for n in (2, 50, 9)]
    outs = [exe.run_device([webgpu.Buffer.from_host(x)])[0] for x in xs]  # in flight
    for x, out in zip(xs, outs):
        np.testing.assert_allclose(out.to_host(), x.sum(0), rtol=1e-5)
    with pytest.raises(ValueError, match=r"expects float32\[s0, 3\]"):
        exe.run([np.zeros((4, 2), np.float32)])


def test_a_grid_past_65535_work_groups_strides():
    """70,000 x 300 elements need 82,032 work-groups of 256: the launch is capped at 65,535
    and the kernel's grid-stride loop steps by the groups launched."""
    program, _ = _symbolic_program(lambda b, n: [b.apply(
        "mul", b.input("x", TensorType((n, 300), float32)),
        b.input("y", TensorType((n, 300), float32)))], hint=70_000)
    (kernel,) = program.kernels
    (grid,) = kernel.grid
    assert grid.most == 65535 and grid.evaluate({"s0": 70_000}) == 65535
    assert "nx_groups.x" in kernel.source
    n = 70_000
    x = np.random.default_rng(0).standard_normal((n, 300)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((n, 300)).astype(np.float32)
    (z,) = webgpu.Executable(program).run([x, y])
    np.testing.assert_array_equal(z, x * y)


def test_loops_that_could_pass_the_loop_limit_are_guarded_and_checked():
    """A sum over the dynamic axis loops s0 times per work-item: a guard keeps s0 under
    half of lavapipe's 65,535 iterations (a call past it compiles another program), the
    program's size checks refuse it at run time, and a trace at such a size schedules a
    work-group per column instead."""
    def column_sum(b, n):
        return [b.apply("reduce_sum", b.input("x", TensorType((n, 3), float32)), axes=(0,))]
    program, guards = _symbolic_program(column_sum)
    assert [str(g) for g in guards] == ["-32764 + s0 <= 0"]
    checks = [c for c in program.metadata["size_checks"] if "loop limit" in c["what"]]
    assert len(checks) == 1
    with pytest.raises(ValueError, match="loop limit"):
        webgpu.Executable(program).run([np.zeros((40_000, 3), np.float32)])
    program, guards = _symbolic_program(column_sum, hint=40_000)  # a work-group per column
    assert "group reduction" in program.kernels[0].comment + str(program.metadata)
    (y,) = webgpu.Executable(program).run([np.ones((40_000, 3), np.float32)])
    np.testing.assert_array_equal(y, [40_000] * 3)
    f = neurenix.compile(lambda x: x.sum(0), backend="webgpu", dynamic=True)
    for n in (5, 40_000):  # the second call fails the guard: a program of its own
        a = np.ones((n, 3), np.float32)
        np.testing.assert_array_equal(f(neurenix.tensor(a)).numpy(), a.sum(0))
    assert _programs(f) == 2


def test_sizes_past_32_bits_are_refused_when_bound():
    program, _ = _symbolic_program(lambda b, n: [b.apply(
        "exp", b.input("x", TensorType((n, 3), float32)))])
    exe = webgpu.Executable(program)
    layout = exe._layout  # the bind step, without allocating 2**31 elements
    with pytest.raises(ValueError, match="32-bit size limit"):
        layout([(1 << 29, 3)])
