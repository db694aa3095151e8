"""The spec's training workloads as whole training steps, for the export tests.

`training_step(kind)` builds the workload's model, loss and optimizer (tiny sizes; MLP: SGD
with momentum and CrossEntropyLoss, CNN: Adam and CrossEntropyLoss, LSTM: Adam and MSELoss)
and returns a `TrainingCase`: the step function (zero_grad, forward, loss, backward, step;
returns the loss), its example inputs, and `eager_losses(n)`, the losses of n eager steps on
an identical twin built from the same seed (the step function's own model is never trained by
it).  Benchmarks' workloads.py defines the models.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import neurenix

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from workloads import WORKLOADS, make_inputs, neurenix_model  # noqa: E402

TRAINING = {"mlp": "mlp_train_b64", "cnn": "cnn_train", "lstm": "lstm_train"}
LEARNING_RATE = {"sgd": 0.05, "adam": 0.002}


@dataclass
class TrainingCase:
    """A training step, its example inputs (arrays) and its eager reference."""

    step: Callable[..., neurenix.Tensor]
    inputs: list[np.ndarray]
    model: neurenix.nn.Module
    optimizer: neurenix.optim.Optimizer
    eager_losses: Callable[[int], np.ndarray]
    """Losses of n eager steps on the example inputs, on a fresh twin (float32 array)."""
    eager_state: Callable[[int], dict[str, np.ndarray]]
    """The twin's parameters (by name) after n eager steps."""


def _build(kind: str) -> tuple:
    workload = WORKLOADS[TRAINING[kind]]
    model = neurenix_model(workload, tiny=True)
    model.train()
    criterion = (neurenix.nn.CrossEntropyLoss() if workload.loss == "cross_entropy"
                 else neurenix.nn.MSELoss())
    lr = LEARNING_RATE[workload.optimizer]
    if workload.optimizer == "sgd":
        opt = neurenix.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        opt = neurenix.optim.Adam(model.parameters(), lr=lr)

    def step(*args: neurenix.Tensor) -> neurenix.Tensor:
        opt.zero_grad()
        loss = criterion(model(*args[:-1]), args[-1])
        loss.backward()
        opt.step()
        return loss

    return step, model, opt


def training_step(kind: str) -> TrainingCase:
    """The training case of spec model `kind` ("mlp", "cnn" or "lstm")."""
    x, target = make_inputs(WORKLOADS[TRAINING[kind]], tiny=True)
    inputs = [*x, target]
    step, model, opt = _build(kind)

    def run_twin(n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        twin_step, twin, _ = _build(kind)
        tensors = [neurenix.Tensor(a) for a in inputs]
        losses = [twin_step(*tensors).item() for _ in range(n)]
        state = {name: p.detach().numpy().copy() for name, p in twin.named_parameters()}
        return np.asarray(losses, dtype=np.float32), state

    return TrainingCase(step, inputs, model, opt, lambda n: run_twin(n)[0],
                        lambda n: run_twin(n)[1])


def dropout_step(lr: float) -> tuple[Callable[..., neurenix.Tensor], np.ndarray]:
    """A training step that draws dropout masks (an MLP with Dropout(0.5), MSE against zero,
    SGD with `lr`; seed 3) and its example input (16, 8): the seed binding's test case."""
    neurenix.manual_seed(3)
    net = neurenix.nn.Sequential(neurenix.nn.Linear(8, 32), neurenix.nn.ReLU(),
                                 neurenix.nn.Dropout(0.5), neurenix.nn.Linear(32, 1))
    opt = neurenix.optim.SGD(net.parameters(), lr=lr)

    def step(x: neurenix.Tensor) -> neurenix.Tensor:
        opt.zero_grad()
        loss = net(x).square().mean()
        loss.backward()
        opt.step()
        return loss

    return step, np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
