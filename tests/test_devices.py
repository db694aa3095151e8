"""Eager tensors, autograd, modules and optimizers on the OpenCL and WebGPU devices.

Every test runs on both devices (PoCL and lavapipe in CI, which requires them: see
tests/devices.py) and compares with the same computation on the CPU.  Tolerances are
float32's: elementwise results within rtol 1e-5 / atol 1e-6 (the devices' exp, log and tanh
are not NumPy's, a few ulp apart), reductions, matrix products and gradients within rtol 1e-4
/ atol 1e-5 (another summation order), and 20 training steps' losses within 1e-4.  Shapes
are shared between tests so that the one-op programs each device compiles are few: the
cache (`neurenix.device_ops`) serves every later use.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from devices import GPU_DEVICES, needs_device

import neurenix
from neurenix import Device, DeviceType, device_ops, nn, optim

DEVICE_DTYPES = {
    "opencl": ("float32", "float64", "int32", "int64", "bool"),
    "webgpu": ("float32", "int32", "int64", "bool"),
}
ELEMENTWISE = dict(rtol=1e-5, atol=1e-6)
REDUCED = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(params=GPU_DEVICES)
def device(request) -> str:
    needs_device(request.param)
    return request.param


def _data(seed: int = 0, shape=(4, 3)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _host(t: neurenix.Tensor) -> np.ndarray:
    return t.detach().numpy()


# ---- placement ------------------------------------------------------------------------------

def test_round_trip_of_every_dtype_the_device_holds(device):
    for name in DEVICE_DTYPES[device]:
        values = np.array([[0, 1, -2], [3, -4, 5]]).astype(name)
        t = neurenix.tensor(values).to(device)
        assert t.device == Device(device) and t.device.name == f"{device}:0"
        assert not isinstance(t._data, np.ndarray)
        back = t.cpu()
        assert back.device == Device("cpu") and back.dtype == t.dtype
        np.testing.assert_array_equal(back.numpy(), values)
        np.testing.assert_array_equal(t.numpy(), values)  # a copy at the boundary
        assert t.tolist() == values.tolist()


def test_creation_places_results_on_the_device(device):
    dev = Device(DeviceType(device))
    made = [neurenix.tensor([1.0, 2.0], device=dev), neurenix.zeros(2, 3, device=device),
            neurenix.ones(4, device=device), neurenix.full((2,), 7.0, device=device),
            neurenix.arange(5, device=device), neurenix.eye(3, device=device),
            neurenix.Tensor([[1, 2]], device=device)]
    for t in made:
        assert t.device == dev and not isinstance(t._data, np.ndarray)
    np.testing.assert_array_equal(made[3].numpy(), [7.0, 7.0])
    assert made[0][1].item() == 2.0
    assert f"device='{device}:0'" in repr(made[1])


def test_random_draws_on_the_device_match_the_cpu(device):
    neurenix.manual_seed(3)
    on_device = [neurenix.rand(4, 3, device=device), neurenix.randn(4, 3, device=device)]
    neurenix.manual_seed(3)
    on_cpu = [neurenix.rand(4, 3), neurenix.randn(4, 3)]
    for d, c in zip(on_device, on_cpu):
        assert d.device == Device(device)
        np.testing.assert_allclose(d.numpy(), c.numpy(), **ELEMENTWISE)
    ints = neurenix.randint(0, 5, (8,), device=device)
    assert ints.device == Device(device) and set(ints.tolist()) <= set(range(5))


def test_module_to_moves_parameters_in_place(device):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    before = list(model.parameters())
    values = [p.detach().numpy().copy() for p in before]
    opt = optim.SGD(model.parameters(), lr=0.1)
    model(neurenix.tensor(_data(0))).sum().backward()
    assert model.to(device) is model
    after = list(model.parameters())
    assert all(a is b for a, b in zip(before, after))
    assert all(p.device == Device(device) and p.requires_grad for p in after)
    assert all(p.grad.device == Device(device) for p in after)
    model.zero_grad(set_to_none=False)
    assert all(p.grad.device == Device(device) and not p.grad.numpy().any() for p in after)
    for p, v in zip(after, values):
        np.testing.assert_array_equal(p.detach().numpy(), v)
    assert opt.param_groups[0]["params"][0] is before[0]
    model.cpu()
    assert all(p.device == Device("cpu") and isinstance(p._data, np.ndarray) for p in after)


def test_parameter_to_inplace_keeps_the_object(device):
    p = nn.Parameter(neurenix.tensor([1.0, 2.0]))
    assert p.to(Device(DeviceType(device)), inplace=True) is p
    assert p.device == Device(device) and p.requires_grad


# ---- eager operations -----------------------------------------------------------------------

def _elementwise(x, y):
    return [x + y, x - 2.0, x * y, x / (y.abs() + 1.0), -x, x.exp(), (x.abs() + 0.5).log(),
            x.tanh(), x.sigmoid(), x.relu(), neurenix.maximum(x, y), neurenix.where(x > y, x, y),
            (x < 0.5).float(), x.clamp(-0.5, 0.5), x ** 2, (x.abs() + 1.0).sqrt()]


def _reduced(x, y):
    return [x.sum(), x.sum(1), x.mean(0), x.amax(1), x.argmax(1).float(), x.var(1),
            x.softmax(1), x.log_softmax(0), x @ y.T, y.T @ x, x.T.reshape(2, 6),
            neurenix.cat([x, y], 0)[1:6:2], x.unsqueeze(0).expand(2, 4, 3).sum(0)]


def test_eager_operations_on_the_device_equal_the_cpu(device):
    x, y = _data(0), _data(1)
    cpu = (neurenix.tensor(x), neurenix.tensor(y))
    dev = (cpu[0].to(device), cpu[1].to(device))
    for group, tol in ((_elementwise, ELEMENTWISE), (_reduced, REDUCED)):
        for i, (c, d) in enumerate(zip(group(*cpu), group(*dev))):
            assert d.device == Device(device), i
            assert d.dtype == c.dtype and d.shape == c.shape, i
            np.testing.assert_allclose(d.numpy(), c.numpy(), err_msg=f"{group.__name__} {i}",
                                       **tol)


def test_in_place_updates_stay_on_the_device(device):
    x = neurenix.tensor(_data(0)).to(device)
    alias = x
    x += 1.0
    x.mul_(2.0)
    x.sub_(neurenix.ones(4, 3, device=device), alpha=0.5)
    x.copy_(x * 3.0)
    assert x is alias and x.device == Device(device) and not isinstance(x._data, np.ndarray)
    np.testing.assert_allclose(x.numpy(), ((_data(0) + 1) * 2 - 0.5) * 3, **ELEMENTWISE)
    x.zero_()
    assert not x.numpy().any() and x.device == Device(device)


def test_mixing_devices_raises_naming_both(device):
    x = neurenix.tensor(_data(0)).to(device)
    c = neurenix.tensor(_data(1))
    with pytest.raises(ValueError, match=f"add: expected all tensors on one device, got "
                                         f"{device}:0 and cpu"):
        x + c
    with pytest.raises(ValueError, match=f"matmul: .*got cpu and {device}:0"):
        c @ x.T
    model = nn.Linear(3, 2).to(device)
    with pytest.raises(ValueError, match=f"{device}:0"):
        model(c)
    # a Python scalar and a 0-d CPU tensor are scalars, as in PyTorch
    np.testing.assert_allclose((x * 2 + neurenix.tensor(1.0)).numpy(), _data(0) * 2 + 1,
                               **ELEMENTWISE)


def test_an_operation_the_device_cannot_run_says_so():
    needs_device("webgpu")
    x = neurenix.tensor([1.0, 2.0], dtype=neurenix.float64).to("webgpu")
    with pytest.raises(Exception, match="(?i)float64"):
        (x + x).numpy()


# ---- autograd -------------------------------------------------------------------------------

def _loss(x, w, b):
    h = (x @ w + b).tanh()
    return (h.sigmoid() * h).sum() / 4.0 + (w ** 2).mean() + h.amax(1).sum()


def test_autograd_on_the_device_equals_the_cpu(device):
    values = [_data(0), _data(1, (3, 3)), _data(2, (3,))]
    cpu = [neurenix.tensor(v, requires_grad=True) for v in values]
    dev = [neurenix.tensor(v, device=device, requires_grad=True) for v in values]
    loss_cpu, loss_dev = _loss(*cpu), _loss(*dev)
    loss_cpu.backward()
    loss_dev.backward()
    np.testing.assert_allclose(loss_dev.item(), loss_cpu.item(), **REDUCED)
    for c, d in zip(cpu, dev):
        assert d.grad.device == Device(device)
        np.testing.assert_allclose(d.grad.numpy(), c.grad.numpy(), **REDUCED)
    loss_dev = _loss(*dev)  # a second backward accumulates, on the device
    loss_dev.backward()
    np.testing.assert_allclose(dev[0].grad.numpy(), 2 * cpu[0].grad.numpy(), **REDUCED)


def test_gradients_flow_back_across_to(device):
    x = neurenix.tensor(_data(0), requires_grad=True)
    y = x.to(device)
    assert y.grad_fn == "to_backward"
    (y * y).sum().backward()
    assert x.grad.device == Device("cpu")
    np.testing.assert_allclose(x.grad.numpy(), 2 * _data(0), **ELEMENTWISE)


# ---- training -------------------------------------------------------------------------------

def _train(device: str, make_optimizer) -> list[float]:
    neurenix.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x = neurenix.tensor(_data(0, (16, 3)))
    y = neurenix.tensor(_data(1, (16, 2)))
    if device != "cpu":
        model.to(device)
        x, y = x.to(device), y.to(device)
    opt = make_optimizer(model.parameters())
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.device == Device(device) for p in model.parameters())
    return losses


@pytest.mark.parametrize("make_optimizer", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: optim.Adam(ps, lr=0.01),
], ids=["sgd-momentum", "adam"])
def test_training_on_the_device_gives_the_cpu_losses(device, make_optimizer):
    on_cpu = _train("cpu", make_optimizer)
    on_device = _train(device, make_optimizer)
    assert on_cpu[-1] < on_cpu[0]
    np.testing.assert_allclose(on_device, on_cpu, rtol=1e-4, atol=1e-4)


def test_a_training_step_on_the_device_reads_nothing_back(device, monkeypatch):
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).to(device)
    x = neurenix.tensor(_data(0, (16, 3)), device=device)
    y = neurenix.tensor(_data(1, (16, 2)), device=device)
    opt = optim.Adam(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step()
    buffer = type(x._data)

    def refuse(self):
        raise AssertionError("a value was copied to the host")

    monkeypatch.setattr(buffer, "to_host", refuse)
    loss = step()
    monkeypatch.undo()
    assert loss.device == Device(device) and np.isfinite(loss.item())


# ---- the program cache ----------------------------------------------------------------------

def test_a_repeated_operation_compiles_nothing(device):
    x = neurenix.tensor(_data(0)).to(device)
    (x * x + 3.0).numpy()
    before = device_ops.cache_info()
    (x * x + 4.0).numpy()  # another scalar is another input, not another program
    after = device_ops.cache_info()
    assert after["compiled"] == before["compiled"]
    assert after["hits"] >= before["hits"] + 2


# ---- availability ---------------------------------------------------------------------------

def test_devices_that_work_are_listed(device):
    assert Device(device) in neurenix.get_available_devices()


def test_an_unavailable_device_says_why(monkeypatch):
    from neurenix.runtime import webgpu

    from neurenix import runtime

    monkeypatch.setattr(webgpu, "available", lambda: False)
    monkeypatch.setattr(webgpu, "unavailable_reason", lambda: "no adapter found")
    monkeypatch.setattr(runtime, "is_available", lambda kind: kind == "cpu")
    assert Device("webgpu") not in neurenix.get_available_devices()
    with pytest.raises(ValueError, match="webgpu is not available: no adapter found"):
        neurenix.zeros(2, device="webgpu")
    with pytest.raises(ValueError, match="webgpu is not available: no adapter found"):
        neurenix.tensor([1.0]).to(Device(DeviceType.WEBGPU))


def test_neurenix_imports_without_pyopencl_or_wgpu():
    code = ("import sys; sys.modules['pyopencl'] = None; sys.modules['wgpu'] = None\n"
            "import neurenix\n"
            "print([d.name for d in neurenix.get_available_devices()])\n"
            "try:\n"
            "    neurenix.zeros(1, device='opencl')\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "['cpu']"
    assert lines[1].startswith("opencl is not available: ") and "pyopencl" in lines[1]
