"""Shape-polymorphic programs on the GPU targets present here (OpenCL on PoCL, WebGPU on
lavapipe; docs/compiler/dynamic-shapes.md): one program per function runs every batch size,
equal to eager.  Each function is traced once at a large batch (tiled contractions and
work-group reductions, whose counts become symbolic) and once at a small one (grid loops)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from devices import needs_device
from dynamic_cases import ORDERS, WIDTH, programs, rand, same, sgd_step

import neurenix
from neurenix import nn

BACKENDS = ("opencl", "webgpu")
GROUPS_LAUNCHED = {"opencl": "get_num_groups(0)", "webgpu": "nx_groups.x"}
"""How each dialect's grid-stride loops read the work-groups launched."""


@pytest.fixture(params=BACKENDS)
def backend(request):
    needs_device(request.param)
    return request.param


def _check(f, eager, make, order, backend, tol=1e-5):
    compiled = neurenix.compile(f, backend=backend, dynamic=True)
    for n in ORDERS[order]:
        args = make(n)
        same(compiled(*args), eager(*args), tol)
    assert programs(compiled) == 1
    assert compiled.stats()["dynamic"]["sizes"] == {"s0": ORDERS[order][-1]}
    return compiled


@pytest.mark.parametrize("order", ORDERS)
def test_elementwise(order, backend):
    def f(x):
        return (x * 2 - 1).relu() * x.sigmoid()
    _check(f, f, lambda n: (rand(n, 5 + WIDTH[order]),), order, backend)


@pytest.mark.parametrize("order", ORDERS)
def test_reductions_over_the_dynamic_and_a_static_axis(order, backend):
    def f(x):
        return x.sum(0) * 2 + x.amax(1).sum() + x.mean()
    _check(f, f, lambda n: (rand(n, 300 + WIDTH[order]),), order, backend, tol=1e-4)


@pytest.mark.parametrize("order", ORDERS)
def test_mlp_forward(order, backend):
    neurenix.manual_seed(0)
    width = 64 + WIDTH[order]
    mlp = nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, 5))
    device = copy.deepcopy(mlp).to(backend)
    f = _check(lambda x: device(x), mlp, lambda n: (rand(n, 20),), order, backend, tol=1e-4)
    if order == "large":  # traced at 100 rows: the matmul's tiles are counted per call
        source = str(f.source())
        assert "tiled contraction" in source and GROUPS_LAUNCHED[backend] in source


@pytest.mark.parametrize("order", ORDERS)
def test_conv_net_forward(order, backend):
    neurenix.manual_seed(0)
    channels = 8 + WIDTH[order]
    net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(channels * 4 * 4, 4))
    device = copy.deepcopy(net).to(backend)
    _check(lambda x: device(x), net, lambda n: (rand(n, 3, 8, 8),), order, backend, tol=1e-4)


@pytest.mark.parametrize("order", ORDERS)
def test_mlp_training_step(order, backend):
    neurenix.manual_seed(0)
    width = 32 + WIDTH[order]
    mlp = nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, 5))
    device = copy.deepcopy(mlp).to(backend)
    eager = sgd_step(mlp)
    step = neurenix.compile(sgd_step(device), backend=backend, dynamic=True)
    for n in ORDERS[order]:
        x = rand(n, 20)
        y = neurenix.tensor(np.random.default_rng(n).integers(0, 5, n))
        same(step(x, y), eager(x, y), 1e-5)
        for a, b in zip(device.parameters(), mlp.parameters()):
            same(a, b, 1e-5)
    assert programs(step) == 1
    assert step.stats()["dynamic"]["sizes"] == {"s0": ORDERS[order][-1]}
