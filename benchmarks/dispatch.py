"""Per-operation eager overhead on small tensors: Neurenix against PyTorch eager (issue 15).

    python benchmarks/dispatch.py [--repeat 7] [--number 2000] [--json out.json]

Each operation runs on 4x4 float32 tensors, where the arithmetic costs next to nothing and
the time is the framework's own: argument checks, type rules, dispatch, wrapping the result
and, with grad, recording the tape.  Every operation is timed `--repeat` times over
`--number` calls (timeit, one thread everywhere); the table shows the best of the repeats,
in microseconds per call, without grad (`no_grad` / `torch.no_grad`) and with an input that
requires grad.  The machine this runs on may be shared: take the numbers as a rough guide
and compare columns of one run rather than runs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import timeit
from collections.abc import Callable
from typing import Any

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

Op = Callable[[Any, Any], Any]

OPS: dict[str, Op] = {
    "x + y": lambda x, y: x + y,
    "x * 2": lambda x, y: x * 2,
    "x - y": lambda x, y: x - y,
    "x / y": lambda x, y: x / y,
    "x.exp()": lambda x, y: x.exp(),
    "x.relu()": lambda x, y: x.relu(),
    "x.sum()": lambda x, y: x.sum(),
    "x.sum(1)": lambda x, y: x.sum(1),
    "x @ y": lambda x, y: x @ y,
    "x.reshape(16)": lambda x, y: x.reshape(16),
    "x.t()": lambda x, y: x.t(),
    "x > y": lambda x, y: x > y,
}


def _time(fn: Callable[[], Any], repeat: int, number: int) -> float:
    """The best of `repeat` timings of `number` calls, in microseconds per call."""
    fn()
    return min(timeit.repeat(fn, repeat=repeat, number=number)) / number * 1e6


def _pair(op: Op, x: Any, y: Any, gx: Any, no_grad: Any, repeat: int,
          number: int) -> tuple[float, float]:
    """op's time without grad (x, y under `no_grad`) and with it (gx requires grad)."""
    with no_grad():
        plain = _time(lambda: op(x, y), repeat, number)
    return plain, _time(lambda: op(gx, y), repeat, number)


def _neurenix(repeat: int, number: int) -> dict[str, tuple[float, float]]:
    import neurenix as nx

    values = np.random.default_rng(0).standard_normal((2, 4, 4)).astype(np.float32)
    return {name: _pair(op, nx.tensor(values[0]), nx.tensor(values[1]),
                        nx.tensor(values[0], requires_grad=True), nx.no_grad, repeat, number)
            for name, op in OPS.items()}


def _torch(repeat: int, number: int) -> dict[str, tuple[float, float]] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    values = np.random.default_rng(0).standard_normal((2, 4, 4)).astype(np.float32)
    return {name: _pair(op, torch.tensor(values[0]), torch.tensor(values[1]),
                        torch.tensor(values[0], requires_grad=True), torch.no_grad, repeat,
                        number)
            for name, op in OPS.items()}


def table(nx_times: dict[str, tuple[float, float]],
          torch_times: dict[str, tuple[float, float]] | None) -> str:
    """The results as a markdown table (µs per call)."""
    head = "| op (4x4 float32) | Neurenix | Neurenix, grad |"
    rule = "|---|---:|---:|"
    if torch_times is not None:
        head += " PyTorch | PyTorch, grad |"
        rule += "---:|---:|"
    lines = [head, rule]
    for name, (plain, grad) in nx_times.items():
        row = f"| `{name}` | {plain:.1f} | {grad:.1f} |"
        if torch_times is not None:
            tp, tg = torch_times[name]
            row += f" {tp:.1f} | {tg:.1f} |"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--json", help="also write the timings to this file")
    args = parser.parse_args(argv)
    nx_times = _neurenix(args.repeat, args.number)
    torch_times = _torch(args.repeat, args.number)
    print(f"{datetime.date.today()}, Python {platform.python_version()}, "
          f"{platform.machine()}, µs per call, best of {args.repeat} x {args.number}\n")
    print(table(nx_times, torch_times))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"neurenix": nx_times, "torch": torch_times}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
