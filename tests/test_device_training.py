"""The spec's MLP, CNN and LSTM (../shared/spec/neurenix-nn.md, benchmarks/workloads.py) trained
20 steps on the OpenCL and WebGPU devices give the CPU's losses and parameters.

Two ways on each device: the whole training step compiled (forward, loss, backward and the
optimizer's update in one program), and the compiled model inside an eager loop (loss,
`backward()` and the optimizer's step as eager device operations).  The CPU run is eager.
Sizes are small (CI builds every kernel once per device) but the layers are the spec's.  The
eager loop runs the MLP only: eager device operations build one program per operation and
shape, which for the CNN's and the LSTM's Adam steps costs PoCL a minute of builds without
testing more of the compiled code.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from devices import GPU_DEVICES, needs_device

import neurenix as nx
from neurenix import nn, optim

STEPS = 20
# losses agree to float32 rounding accumulated over 20 updates; parameters likewise
LOSS_TOL = dict(rtol=1e-4, atol=1e-5)
PARAM_TOL = dict(rtol=1e-3, atol=1e-4)


class CNN(nn.Module):
    """The spec's CNN: two 3x3 convolutions with max-pooling, then two linear layers (for
    `size` x `size` images: the spec's are 28 x 28)."""

    def __init__(self, size: int = 12) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 32, kernel_size=3, stride=1, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2))
        self.classifier = nn.Sequential(nn.Linear(32 * (size // 4) ** 2, 128), nn.ReLU(),
                                        nn.Linear(128, 10))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.shape[0], -1))


class LSTMRegressor(nn.Module):
    """The spec's sequence model: a 2-layer LSTM and a linear layer on the last step."""

    def __init__(self, inputs: int = 10, hidden: int = 4, outputs: int = 5) -> None:
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, outputs)

    def forward(self, x):
        output, _ = self.lstm(x)
        return self.fc(output[:, -1, :])


@dataclass(frozen=True)
class Workload:
    """A model, its loss and optimizer (as benchmarks/workloads.py trains them), and data."""

    build: Callable[[], nn.Module]
    loss: Callable[[], nn.Module]
    optimizer: Callable[[list], optim.Optimizer]
    batches: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


WORKLOADS = {
    "mlp": Workload(_mlp, nn.CrossEntropyLoss,
                    lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9),
                    lambda rng: (rng.standard_normal((8, 16), dtype=np.float32),
                                 rng.integers(0, 4, 8))),
    "cnn": Workload(CNN, nn.CrossEntropyLoss, lambda ps: optim.Adam(ps, lr=1e-3),
                    lambda rng: (rng.standard_normal((2, 3, 12, 12), dtype=np.float32),
                                 rng.integers(0, 10, 2))),
    "lstm": Workload(LSTMRegressor, nn.MSELoss, lambda ps: optim.Adam(ps, lr=1e-3),
                     lambda rng: (rng.standard_normal((4, 3, 10), dtype=np.float32),
                                  rng.standard_normal((4, 5), dtype=np.float32))),
}


def _data(name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two batches, taken in turn: the loss goes down within 20 steps."""
    rng = np.random.default_rng(3)
    batches = [WORKLOADS[name].batches(rng) for _ in range(2)]
    return [batches[i % 2] for i in range(STEPS)]


def _model(name: str) -> nn.Module:
    nx.manual_seed(0)
    return WORKLOADS[name].build()


@functools.cache
def _cpu_run(name: str) -> tuple[list[float], dict[str, np.ndarray]]:
    """The losses of eager training on the CPU, and the parameters after it."""
    w = WORKLOADS[name]
    model = _model(name)
    opt, crit = w.optimizer(list(model.parameters())), w.loss()
    losses = []
    for x, y in _data(name):
        opt.zero_grad()
        loss = crit(model(nx.tensor(x)), nx.tensor(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def _train(name: str, device: str, whole_step: bool) -> tuple[list[float], nn.Module]:
    """Train on `device`: the whole step compiled, or the compiled model in an eager loop."""
    w = WORKLOADS[name]
    model = _model(name).to(device)
    opt, crit = w.optimizer(list(model.parameters())), w.loss()
    forward = model if whole_step else nx.compile(model)

    def step(x, y):
        opt.zero_grad()
        loss = crit(forward(x), y)
        loss.backward()
        opt.step()
        return loss

    run = nx.compile(step) if whole_step else step
    losses = []
    for x, y in _data(name):
        loss = run(nx.tensor(x, device=device), nx.tensor(y, device=device))
        assert loss.device == device
        losses.append(loss.item())
    assert (run if whole_step else forward).cache_size == 1
    return losses, model


@pytest.mark.parametrize("name, whole_step", [(n, True) for n in WORKLOADS] + [("mlp", False)],
                         ids=[f"{n}-whole-step" for n in WORKLOADS] + ["mlp-eager-loop"])
@pytest.mark.parametrize("device", GPU_DEVICES)
def test_training_on_the_device_gives_the_cpu_losses(device, name, whole_step):
    needs_device(device)
    want_losses, want_params = _cpu_run(name)
    losses, model = _train(name, device, whole_step)
    np.testing.assert_allclose(losses, want_losses, **LOSS_TOL)
    assert losses[-1] < losses[0]  # it learns
    for n, p in model.named_parameters():
        assert p.device == device and p.grad.device == device, n
        np.testing.assert_allclose(p.detach().numpy(), want_params[n], **PARAM_TOL, err_msg=n)
