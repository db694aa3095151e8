"""Train a small fully connected network on synthetic regression data (eager mode).

    python examples/train_simple.py [--epochs N]

The built-in default example: a 10-20-5 MLP learns a fixed random linear map with SGD; the
loss falls by well over half, which the script checks before it exits 0.
"""
from __future__ import annotations

import argparse

import neurenix
from neurenix.nn import Linear, MSELoss, ReLU, Sequential
from neurenix.optim import SGD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()

    neurenix.manual_seed(0)
    model = Sequential(Linear(10, 20), ReLU(), Linear(20, 5))
    true_map = neurenix.randn(10, 5)
    inputs = neurenix.randn(256, 10)
    targets = inputs @ true_map

    criterion = MSELoss()
    optimizer = SGD(model.parameters(), lr=args.lr, momentum=0.9)
    model.train()
    first = None
    for epoch in range(args.epochs):
        loss = criterion(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = loss.item() if first is None else first
        if (epoch + 1) % max(1, args.epochs // 10) == 0:
            print(f"epoch {epoch + 1:4d}  loss {loss.item():.5f}")

    model.eval()
    with neurenix.no_grad():
        final = criterion(model(inputs), targets).item()
    print(f"loss {first:.4f} -> {final:.4f}")
    if not final < 0.5 * first:
        raise SystemExit("training did not reduce the loss by half")


if __name__ == "__main__":
    main()
