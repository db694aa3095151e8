"""What the GPU targets' dynamic-shape tests share: the batch sizes and call orders, inputs,
the comparison with eager and a training step (tests/test_dynamic_gpu.py runs them on every
GPU backend present; tests/test_dynamic_cuda_hip.py proves CUDA and HIP without a GPU)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import neurenix
from neurenix import nn

SIZES = (2, 3, 7, 64, 100)
ORDERS = {"small": SIZES, "large": (100, 2, 3, 7, 64)}
"""The call orders: the first size is the one traced (the symbols' hint)."""
WIDTH = {"small": 0, "large": 1}
"""Added to a static size per order: programs are cached by graph, whatever the hint."""


def rand(*shape: int, seed: int = 0) -> neurenix.Tensor:
    """A float32 standard-normal tensor, seeded by its leading size."""
    return neurenix.tensor(np.random.default_rng(seed + shape[0]).standard_normal(shape)
                           .astype(np.float32))


def programs(f: Any) -> int:
    """How many programs the compiled function `f` holds."""
    return sum(len(v) for v in f._cache.values())


def same(got: neurenix.Tensor, want: neurenix.Tensor, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=tol, atol=tol)


def sgd_step(model: nn.Module) -> Callable[[neurenix.Tensor, neurenix.Tensor], neurenix.Tensor]:
    """One SGD training step of `model` on cross entropy, returning the loss."""
    opt = neurenix.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step
