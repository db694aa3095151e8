"""PyTorch's device habits: `neurenix.device(...)`, `.cuda()` and `.cpu()` on tensors and
modules, and the messages for bad or absent devices."""
from __future__ import annotations

import numpy as np
import pytest
from devices import needs_device

import neurenix as nx
from neurenix import device as device_module
from neurenix import nn
from neurenix.device import Device, DeviceType, install_device_methods


@pytest.fixture
def cuda_methods():
    """Tensor.cuda and Module.cuda (installed by the package; installed here if missing)."""
    for cls in (nx.Tensor, nn.Module):
        if getattr(cls, "cuda", None) is not device_module._cuda:
            install_device_methods(cls)


def test_the_package_installs_cuda_methods():
    assert getattr(nx.Tensor, "cuda", None) is device_module._cuda
    assert getattr(nn.Module, "cuda", None) is device_module._cuda


@pytest.mark.parametrize("args,name", [
    (("cpu",), "cpu"), (("opencl",), "opencl:0"), (("cuda", 0), "cuda:0"),
    (("cuda:0",), "cuda:0"), (("webgpu",), "webgpu:0"), ((DeviceType.ROCM,), "rocm:0"),
    ((Device("opencl"),), "opencl:0"),
])
def test_device_is_callable_like_torch_device(args, name):
    dev = nx.device(*args)
    assert isinstance(dev, Device) and dev.name == name
    assert dev == name


@pytest.mark.parametrize("args,error,match", [
    (("gpu",), ValueError, "unknown device type 'gpu'"),
    (("cuda:x",), ValueError, "index after ':'"),
    (("cuda:0", 1), ValueError, "already names an index"),
    ((3,), TypeError, "device string"),
    (("",), ValueError, "invalid device string"),
    (("cuda", -1), ValueError, "non-negative"),
])
def test_bad_device_input_is_explained(args, error, match):
    with pytest.raises(error, match=match):
        nx.device(*args)


def test_cuda_without_cuda_names_what_is_available(cuda_methods):
    if Device("cuda").is_available():
        pytest.skip("CUDA is available here")
    t = nx.Tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"cuda:0 is not available.*available devices: cpu"):
        t.cuda()
    with pytest.raises(RuntimeError, match="not available"):
        nn.Linear(2, 2).cuda()
    with pytest.raises(ValueError, match="expected a CUDA device"):
        t.cuda("opencl")


def test_cuda_moves_tensors_and_modules_when_available(cuda_methods):
    needs_device("cuda")
    t = nx.Tensor([1.0, 2.0], requires_grad=True)
    moved = t.cuda()
    assert moved.device == nx.device("cuda:0")
    assert moved.cpu().device == nx.device("cpu")
    model = nn.Linear(2, 2)
    assert model.cuda() is model
    assert all(p.device == nx.device("cuda") for p in model.parameters())
    assert model.cpu() is model


def test_cpu_and_to_with_a_device_object_on_opencl():
    needs_device("opencl")
    dev = nx.device("opencl")
    t = nx.Tensor(np.arange(4, dtype=np.float32), requires_grad=True)
    moved = t.to(dev)
    assert moved.device == dev and t.device == nx.device("cpu")
    assert moved.cpu().device == nx.device("cpu")
    (moved * moved).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), 2 * np.arange(4))
    model = nn.Linear(3, 2)
    weight = model.weight
    assert model.to(dev) is model and model.weight is weight
    assert model.weight.device == dev
    assert model.cpu() is model and model.weight.device == nx.device("cpu")
