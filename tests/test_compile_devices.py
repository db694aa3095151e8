"""`neurenix.compile` on the OpenCL and WebGPU devices: which device a call runs on, device
tensors in and out without copies, the errors of mixing devices, compiled backward and whole
training steps updating parameters on the device, and the caches keyed on the target.

Each test runs on both devices (`tests/devices.py`: skipped where a device is absent, failed
in CI, which installs both); values are compared with the same calls on the CPU.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
from devices import GPU_DEVICES, needs_device
from neurenix.runtime import backend_module

import neurenix as nx
from neurenix import nn, optim

RNG = np.random.default_rng(11)


@pytest.fixture(params=GPU_DEVICES)
def device(request) -> str:
    needs_device(request.param)
    return request.param


class Transfers:
    """Counts uploads and downloads of a device's buffers while active."""

    def __init__(self, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.uploads = self.downloads = 0
        buffer = backend_module(kind).Buffer
        from_host, to_host = buffer.from_host.__func__, buffer.to_host

        def counted_from_host(cls, array, *args, **kwargs):
            self.uploads += 1
            return from_host(cls, array, *args, **kwargs)

        def counted_to_host(buf):
            self.downloads += 1
            return to_host(buf)

        monkeypatch.setattr(buffer, "from_host", classmethod(counted_from_host))
        monkeypatch.setattr(buffer, "to_host", counted_to_host)

    def reset(self) -> None:
        self.uploads = self.downloads = 0


def _floats(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _mlp(seed: int = 0) -> nn.Module:
    nx.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _on_device(t: nx.Tensor, kind: str) -> None:
    assert t.device == kind, f"{t.device} is not {kind}"
    assert type(t._data) is backend_module(kind).Buffer


def test_a_module_moved_to_the_device_compiles_for_it(device):
    x = _floats(4, 6)
    model = _mlp()
    with nx.no_grad():
        want = model(nx.tensor(x)).numpy()
    model.to(device)
    compiled = nx.compile(model)
    with nx.no_grad():
        got = compiled(nx.tensor(x, device=device))
    _on_device(got, device)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert compiled.device == device and compiled.backend == device
    for p in model.parameters():
        _on_device(p, device)


def test_device_inputs_and_parameters_are_read_without_copies(device, monkeypatch):
    model = _mlp().to(device)
    compiled = nx.compile(model)
    x = nx.tensor(_floats(4, 6), device=device)
    with nx.no_grad():
        compiled(x)  # compiles (constants are uploaded once)
        transfers = Transfers(device, monkeypatch)
        y = compiled(x)
    assert (transfers.uploads, transfers.downloads) == (0, 0)
    _on_device(y, device)


def test_explicit_device_and_backend_must_agree(device):
    with pytest.raises(ValueError, match=f"backend 'llvm' generates code for cpu, not for "
                                         f"device {device}:0"):
        nx.compile(_mlp(), device=device, backend="llvm")
    with pytest.raises(ValueError, match=f"backend '{device}' generates code for {device}, "
                                         f"not for device cpu"):
        nx.compile(_mlp(), device="cpu", backend=device)
    compiled = nx.compile(_mlp(), device=device, backend=device)
    assert compiled.device == device and compiled.backend == device


def test_mixing_devices_raises_naming_both(device):
    model = _mlp().to(device)
    compiled = nx.compile(model)
    with pytest.raises(ValueError, match=f"argument 'x' is on cpu.*{device}:0 and cpu"):
        compiled(nx.tensor(_floats(4, 6)))
    captured = nx.compile(lambda x: model(x))  # runs where its argument is: the CPU
    with pytest.raises(ValueError, match=f"runs on cpu, but tensor .* is on {device}:0"):
        captured(nx.tensor(_floats(4, 6)))


def test_an_explicit_device_takes_host_arguments(device):
    """Compiled for an explicit device, a function uploads CPU arguments (and returns
    device tensors)."""
    a, b = _floats(3, 4), _floats(3, 4)
    fn = nx.compile(lambda x, y: (x * y).exp(), device=device)
    got = fn(nx.tensor(a), nx.tensor(b, device=device))
    _on_device(got, device)
    np.testing.assert_allclose(got.numpy(), np.exp(a * b), rtol=1e-5, atol=1e-6)


def test_a_function_runs_where_its_arguments_are(device, caplog):
    fn = nx.compile(lambda x: x.tanh() * 2)
    x = _floats(5)
    host = fn(nx.tensor(x))
    assert host.device == "cpu"
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        on_device = fn(nx.tensor(x, device=device))
    _on_device(on_device, device)
    assert f"device changed cpu -> {device}:0" in caplog.text
    np.testing.assert_allclose(on_device.numpy(), host.numpy(), rtol=1e-5, atol=1e-6)
    assert fn.cache_size == 2


def test_compiled_backward_leaves_gradients_on_the_device(device):
    x, up = _floats(4, 6), _floats(4, 3)
    eager = _mlp()
    (eager(nx.tensor(x)) * nx.tensor(up)).sum().backward()
    model = _mlp().to(device)
    compiled = nx.compile(model)
    out = compiled(nx.tensor(x, device=device))
    _on_device(out, device)
    (out * nx.tensor(up, device=device)).sum().backward()
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        _on_device(p.grad, device)
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def test_a_whole_training_step_updates_parameters_on_the_device(device, monkeypatch):
    """Forward, MSE loss, backward and Adam's update in one program: the parameters, their
    gradients and Adam's moments stay device buffers, nothing is downloaded per step, and
    every step gives the CPU's numbers."""
    models = [_mlp(), _mlp().to(device)]
    opts = [optim.Adam(m.parameters(), lr=0.01) for m in models]
    crit = nn.MSELoss()

    def make_step(model, opt):
        def step(x, y):
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return step

    steps = [nx.compile(make_step(m, o)) for m, o in zip(models, opts)]
    transfers = None
    for i in range(3):
        x, y = _floats(5, 6), _floats(5, 3)
        want = steps[0](nx.tensor(x), nx.tensor(y))
        xd, yd = nx.tensor(x, device=device), nx.tensor(y, device=device)
        if i == 2:
            transfers = Transfers(device, monkeypatch)
        got = steps[1](xd, yd)
        if transfers is not None:
            # of the step's host values only those that changed (Adam's bias corrections)
            # are uploaded; nothing comes back
            assert transfers.downloads == 0
            assert transfers.uploads <= 3
        _on_device(got, device)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    assert steps[1].cache_size == 1
    for (name, p), q in zip(models[1].named_parameters(), models[0].parameters()):
        _on_device(p, device)
        _on_device(p.grad, device)
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
        for key, value in opts[1].state[p].items():
            if isinstance(value, nx.Tensor):
                _on_device(value, device)
                np.testing.assert_allclose(value.numpy(), opts[0].state[q][key].numpy(),
                                           rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")


def test_value_checks_raise_before_anything_is_written(device):
    """A class target outside [0, C) raises eager's error; the parameters stay as they were."""
    model = _mlp().to(device)
    opt = optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()

    @nx.compile
    def step(x, y):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss

    x = nx.tensor(_floats(4, 6), device=device)
    step(x, nx.tensor(np.array([0, 1, 2, 1]), device=device))
    before = [p.detach().numpy().copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="target 7 is out of range"):
        step(x, nx.tensor(np.array([0, 1, 7, 1]), device=device))
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.detach().numpy(), b)


def test_programs_are_cached_on_disk_per_target(device, tmp_path, monkeypatch):
    """A second compile of the same model loads the device program from the disk cache (the
    runtime rebuilds it from its source: a device program may have no object code)."""
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path / "cache"))
    x = _floats(2, 6)
    outs = []
    for expected in ("miss", "hit"):
        compiled = nx.compile(_mlp().to(device))
        with nx.no_grad():
            outs.append(compiled(nx.tensor(x, device=device)).numpy())
        assert compiled.stats()["cache"] == expected
    cpu = nx.compile(_mlp())
    with nx.no_grad():
        cpu(nx.tensor(x))
    assert cpu.stats()["cache"] == "miss"  # another target: another key
    np.testing.assert_array_equal(outs[0], outs[1])
