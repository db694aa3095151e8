"""Shape-polymorphic programs on the OpenCL target (docs/compiler/dynamic-shapes.md): one
program runs every batch size, equal to eager; launch geometry, the arena and the outputs are
sized per call by the runtime.  Each function is traced once at a large batch (tiled
contractions and work-group reductions, whose counts become symbolic) and once at a small one
(grid loops)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from devices import needs_device
from neurenix.compiler.codegen import opencl as opencl_codegen
from neurenix.compiler.codegen.cstyle import generate_program
from neurenix.compiler.symbolic import DynamicSizeError, current_env, shape_env
from neurenix.compiler.targets import get_target
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
def _opencl():
    needs_device("opencl")


def _x(*shape, seed=0):
    return neurenix.tensor(np.random.default_rng(seed + shape[0]).standard_normal(shape)
                           .astype(np.float32))


def _programs(f):
    return sum(len(v) for v in f._cache.values())


def _same(got, want, tol=1e-5):
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=tol, atol=tol)


def _check(f, eager, make, order, tol=1e-5):
    compiled = neurenix.compile(f, backend="opencl", dynamic=True)
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
    device = copy.deepcopy(mlp).to("opencl")
    f = _check(lambda x: device(x), mlp, lambda n: (_x(n, 20),), order)
    if order == "large":  # traced at 100 rows: the matmul's tiles are counted per call
        assert "tiled contraction" in str(f.source()) and "get_num_groups(0)" in str(f.source())


@pytest.mark.parametrize("order", ORDERS)
def test_conv_net_forward(order):
    neurenix.manual_seed(0)
    channels = 8 + WIDTH[order]
    net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(channels * 4 * 4, 4))
    device = copy.deepcopy(net).to("opencl")
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
    device = copy.deepcopy(mlp).to("opencl")
    eager, step = _step(mlp), neurenix.compile(_step(device), backend="opencl", dynamic=True)
    for n in ORDERS[order]:
        x = _x(n, 20)
        y = neurenix.tensor(np.random.default_rng(n).integers(0, 5, n))
        _same(step(x, y), eager(x, y), 1e-5)
        for a, b in zip(device.parameters(), mlp.parameters()):
            _same(a, b, 1e-5)
    assert _programs(step) == 1
    assert step.stats()["dynamic"]["sizes"] == {"s0": ORDERS[order][-1]}


def test_a_symbolic_program_round_trips_and_sizes_its_launches():
    f = neurenix.compile(lambda x: (x * 2).sum(1), backend="opencl", dynamic=True)
    f(_x(300, 4))
    program = next(iter(f._cache.values()))[0].forward.program
    assert program.symbols == ("s0",)
    assert program.metadata["sized_kernels"]
    grids = [g for k in program.kernels for g in k.grid if isinstance(g, Groups)]
    assert grids and grids[0].evaluate({"s0": 1000}) == -(-1000 // program.kernels[0].block[0])
    back = program_from_json(*program_to_json(program))
    assert back.kernels == program.kernels and back.symbols == program.symbols
    assert extent_from_json(grids[0].to_json()) == grids[0]


def test_a_dialect_without_dynamic_sizes_refuses_them():
    """A dialect that takes no dynamic sizes raises DynamicSizeError on a symbolic kernel
    graph (the frontend then compiles static programs); every shipped GPU dialect takes them."""
    captured = []
    original = generate_program

    def spy(kernels, plan, target, dialect):
        captured.append((kernels, plan, target, current_env()))
        return original(kernels, plan, target, dialect)
    opencl_codegen.generate_program = spy
    try:
        f = neurenix.compile(lambda x: (x + 1).sum(1), backend="opencl", dynamic=True)
        f(_x(5, 4))
    finally:
        opencl_codegen.generate_program = original
    kernels, plan, target, env = captured[-1]
    assert kernels.kernels[0].schedule is not None

    class Static(opencl_codegen.OpenCL):
        dynamic = False
    with shape_env(env):
        with pytest.raises(DynamicSizeError, match="dynamic sizes are not supported"):
            generate_program(kernels, plan, target, Static())
        for name in ("cuda", "hip", "webgpu"):
            generated = get_target(name).generate()(kernels, plan, get_target(name))
            assert generated is not None


@pytest.mark.parametrize("fn", [lambda x: x.mean(), lambda x: x.view(-1) * 2,
                                lambda x: neurenix.cat([x, x * 2], 0)])
def test_a_backward_whose_inputs_carry_no_symbol_gets_the_forwards_sizes(fn):
    """The backward of a compiled mean reads one scalar: its sizes come from the forward."""
    compiled = neurenix.compile(fn, backend="opencl", dynamic=True)
    for n in (3, 5, 9):
        a = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        x = neurenix.tensor(a, device="opencl", requires_grad=True)
        compiled(x).sum().backward()
        y = neurenix.tensor(a, requires_grad=True)
        fn(y).sum().backward()
        np.testing.assert_allclose(x.grad.to("cpu").numpy(), y.grad.numpy(), rtol=1e-6)
    assert _programs(compiled) == 1 and compiled._dynamic.failed is None
