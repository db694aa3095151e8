"""Products and convolutions whose every size varies: one automatic-dynamic program against
static per-shape ones.

    python benchmarks/dynamic_products.py [--rounds 5] [--seconds 0.1] [--threads 2]
                                          [--json out.json] [--markdown] [--quick]

`dynamic_shapes.py` varies the batch of the spec models; here the rows, columns and k of a
product vary together (`a @ b`, `a.T @ b`, `a @ b.T`, `(a.T @ b).T`: the layouts a forward
pass and its gradients use), and the height and width of a convolution's images (whose
output pixels are its product's columns).  Each case compiles one function
`neurenix.compile(f)` (automatic dynamic: the second shape makes the varying sizes dynamic)
and calls it at every shape, against a fresh `neurenix.compile(f, dynamic=False)` per shape;
outputs are checked against eager.  Timing per shape: `--rounds` rounds, each timing the
dynamic and the static program for `--seconds` (`bench.sample`), alternating which goes
first; "dynamic / static" is the median over rounds of the ratio of the two medians of a
round.  The first two shapes of a case are where the trace happened (the hint), the others
are reported only: a program tuned at its hint must not fall off past it.  The target, as
for the batch: dynamic / static <= 1.10.  Runs in this process with `--threads` threads
(`NEURENIX_NUM_THREADS` set before import), compile cache off; about 3 minutes.  `--quick`
(the test suite's mode): small shapes, one short round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

TARGET = 1.10
PRODUCTS = {"a@b": lambda a, b: a @ b, "a.T@b": lambda a, b: a.T @ b,
            "a@b.T": lambda a, b: a @ b.T, "(a.T@b).T": lambda a, b: (a.T @ b).T}
SHAPES = [(256, 512, 384), (512, 256, 640), (1000, 1000, 200), (96, 3000, 700),
          (2048, 100, 64), (333, 777, 555)]
"""(m, n, k) of each product call: the first two trace it, the rest are off its hint."""
IMAGES = [32, 40, 28, 57, 64, 17]
CONV = (16, 32, 64, 3)  # batch, in channels, out channels, kernel size (padding 1)
QUICK_SHAPES = [(32, 48, 40), (20, 70, 33), (65, 33, 17)]
QUICK_IMAGES = [8, 6, 11]


def _operands(form: str, m: int, n: int, k: int, rng: Any) -> list[np.ndarray]:
    a = (k, m) if form.startswith(("a.T", "(a.T")) else (m, k)
    b = (n, k) if form.endswith("b.T") else (k, n)
    return [rng.standard_normal(s).astype(np.float32) for s in (a, b)]


def _ratio(dynamic: Any, static: Any, args: list, opts: argparse.Namespace) -> dict:
    from bench import sample
    ratios, dyn, sta = [], [], []
    for r in range(opts.rounds):
        order = [(dynamic, dyn), (static, sta)]
        for fn, into in (order if r % 2 == 0 else order[::-1]):
            into.append(statistics.median(sample(lambda fn=fn: fn(*args), opts.seconds)))
        ratios.append(dyn[-1] / sta[-1])
    return {"dynamic_ms": statistics.median(dyn) * 1e3,
            "static_ms": statistics.median(sta) * 1e3, "ratio": statistics.median(ratios)}


def _case(name: str, fn: Any, calls: list[tuple[str, list[np.ndarray]]],
          opts: argparse.Namespace) -> list[dict]:
    import neurenix
    dynamic = neurenix.compile(fn)
    rows = []
    for label, arrays in calls:
        args = [neurenix.Tensor(x) for x in arrays]
        with neurenix.no_grad():
            want = fn(*args).numpy()
            got = dynamic(*args).numpy()
            static = neurenix.compile(fn, dynamic=False)
            other = static(*args).numpy()
        scale = float(np.abs(want).max()) or 1.0
        error = max(float(np.abs(got - want).max()), float(np.abs(other - want).max())) / scale
        with neurenix.no_grad():
            row = _ratio(dynamic, static, args, opts)
        row.update(case=name, shape=label, error=error,
                   dynamic=bool(dynamic.stats().get("dynamic")))
        rows.append(row)
        print(f"{name:12s} {label:18s} dynamic {row['dynamic_ms']:8.3f} ms  static "
              f"{row['static_ms']:8.3f} ms  ratio {row['ratio']:.2f}  err {error:.1e}",
              file=sys.stderr, flush=True)
    return rows


def run(opts: argparse.Namespace) -> list[dict]:
    from neurenix import nn
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    shapes, images = (QUICK_SHAPES, QUICK_IMAGES) if opts.quick else (SHAPES, IMAGES)
    for form, fn in PRODUCTS.items():
        calls = [(f"{m}x{n}x{k}", _operands(form, m, n, k, rng)) for m, n, k in shapes]
        rows += _case(form, fn, calls, opts)
    batch, cin, cout, size = CONV
    conv = nn.Conv2d(cin, cout, size, padding=1)
    calls = [(f"{batch}x{cin}x{s}x{s}",
              [rng.standard_normal((batch, cin, s, s)).astype(np.float32)]) for s in images]
    rows += _case("conv3x3", conv, calls, opts)
    return rows


def table(rows: list[dict], markdown: bool) -> str:
    head = ["case", "shape", "dynamic ms", "static ms", f"dynamic / static (<= {TARGET})"]
    lines = []
    for r in rows:
        flag = "" if r["ratio"] <= TARGET else " MISS"
        lines.append([r["case"], r["shape"], f"{r['dynamic_ms']:.3f}", f"{r['static_ms']:.3f}",
                      f"{r['ratio']:.2f}{flag}"])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    return "\n".join("  ".join(f"{c:>18s}" for c in line) for line in [head] + lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.seconds = 1, 0.01
    if opts.rounds < 1 or opts.seconds <= 0 or opts.threads < 1:
        parser.error("--rounds and --threads must be at least 1, --seconds positive")
    os.environ["NEURENIX_NUM_THREADS"] = str(opts.threads)
    os.environ["NEURENIX_CACHE_DIR"] = "off"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    start = time.perf_counter()
    rows = run(opts)
    print(table(rows, opts.markdown))
    worst = max(r["error"] for r in rows)
    print(f"\n{len(rows)} shapes in {time.perf_counter() - start:.0f} s; largest relative "
          f"error against eager {worst:.1e}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
