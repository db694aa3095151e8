"""The time of one `optimizer.step()`: Neurenix eager and fused against PyTorch's paths.

    python benchmarks/optim_step.py [--seconds 1.0] [--threads 2] [--smoke]

For an MLP 784-512-512-10 and a small CNN, with fixed random gradients, it times the step of
SGD (momentum 0.9), Adam and AdamW: Neurenix unfused (`fused=False`, one eager op at a time),
Neurenix fused (one compiled program per parameter group), PyTorch's default (`foreach`) and
PyTorch `fused=True`.  The median over at least `--seconds` of timing per cell, after a warm-up
(the fused program's compile is not timed); one run, a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

import neurenix as nx
from neurenix import nn, optim

OPTIMIZERS = {"SGD": {"lr": 0.01, "momentum": 0.9}, "Adam": {"lr": 1e-3},
              "AdamW": {"lr": 1e-3}}


def mlp_nx() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


def mlp_torch() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 10))


def cnn_nx() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def cnn_torch() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 32, 3, padding=1),
                               torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(32 * 7 * 7, 10))


MODELS = {"MLP 784-512-512-10": (mlp_nx, mlp_torch), "CNN (2 conv + linear)": (cnn_nx, cnn_torch)}
COLUMNS = ["Neurenix unfused", "Neurenix fused", "PyTorch foreach (default)",
           "PyTorch fused=True"]


def median_seconds(step: Callable[[], None], seconds: float) -> float:
    """The median seconds per call over at least `seconds` of timing (5 warm-up calls)."""
    for _ in range(5):
        step()
    samples: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(samples) < 10:
        t0 = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def neurenix_step(build: Callable[[], nn.Module], name: str, fused: bool) -> Callable[[], None]:
    model = build()
    params = list(model.parameters())
    rng = np.random.default_rng(0)
    for p in params:
        p.grad = nx.tensor(rng.standard_normal(p.shape).astype(np.float32) * 1e-3)
    return getattr(optim, name)(params, fused=fused, **OPTIMIZERS[name]).step


def torch_step(build: Callable[[], torch.nn.Module], name: str,
               fused: bool) -> Callable[[], None]:
    model = build()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    options = {"fused": True} if fused else {}
    return getattr(torch.optim, name)(params, **OPTIMIZERS[name], **options).step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per cell")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's intra-op threads")
    parser.add_argument("--smoke", action="store_true", help="a quick run (0.05 s per cell)")
    args = parser.parse_args()
    seconds = 0.05 if args.smoke else args.seconds
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; median ms per optimizer.step()")
    print()
    print("| model | optimizer | parameters | " + " | ".join(COLUMNS) + " | fused speed-up |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in COLUMNS) + " | ---: |")
    for label, (build_nx, build_torch) in MODELS.items():
        count = sum(p.numel() for p in build_torch().parameters())
        for name in OPTIMIZERS:
            times = [median_seconds(neurenix_step(build_nx, name, False), seconds),
                     median_seconds(neurenix_step(build_nx, name, True), seconds),
                     median_seconds(torch_step(build_torch, name, False), seconds),
                     median_seconds(torch_step(build_torch, name, True), seconds)]
            cells = " | ".join(f"{t * 1e3:.3f}" for t in times)
            print(f"| {label} | {name} | {count:,} | {cells} | {times[0] / times[1]:.1f}x |")


if __name__ == "__main__":
    main()
