"""How accurate and how fast long float32 reductions are: Neurenix compiled, NumPy, PyTorch.

    python benchmarks/precision.py [--quick] [--only NAME[,NAME]] [--seconds 0.5]
                                   [--frameworks neurenix,numpy,torch] [--json out.json]

For each case (a full sum or mean, long row sums, long column sums, a sum of a broadcast
tensor) it prints, as a markdown table, the relative error of each framework's float32 result
against the same reduction in float64 (the largest over the outputs of |got - exact| / |exact|;
exact values for the broadcast cases) and the median time per call.  Neurenix and PyTorch run
with 2 threads (`NEURENIX_NUM_THREADS=2`, `torch.set_num_threads(2)`); NumPy's reductions use
one.  Data is uniform in [0, 1), seeded.  `--quick` runs every case at a small size (seconds).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench import (
    NOISY,
    child_env,
    machine_cpu_seconds,
    measure,
    other_load,
    own_cpu_seconds,
    wait_for_idle,
)
from workloads import THREADS

WARM_UP = 0.6  # seconds of calls before timing


@dataclass(frozen=True)
class Case:
    """One reduction: `fn` works on a Neurenix or a PyTorch tensor, `np_fn` on an array."""

    name: str
    what: str
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    fn: Callable[[Any], Any]
    np_fn: Callable[[np.ndarray], np.ndarray]
    broadcast: tuple[int, int] | None = None  # the expand target, for the expand cases
    quick_broadcast: tuple[int, int] | None = None


def _expand(shape):
    return lambda x: x.expand(*shape).sum()


def _np_expand(shape):
    return lambda x: np.broadcast_to(x, shape).sum()


CASES = [
    Case("mean_16x1024x1024", "x.mean(), x (16, 1024, 1024)", (16, 1024, 1024), (4, 256, 256),
         lambda x: x.mean(), lambda x: x.mean()),
    Case("sum_1e4x1e4", "x.sum(), x (10^4, 10^4)", (10_000, 10_000), (1000, 1000),
         lambda x: x.sum(), lambda x: x.sum()),
    Case("expand_1e8", "ones(1, 1).expand(10^4, 10^4).sum()", (1, 1), (1, 1), None, None,
         (10_000, 10_000), (1000, 1000)),
    Case("expand_4e9", "ones(1, 1).expand(4*10^4, 10^5).sum()", (1, 1), (1, 1), None, None,
         (40_000, 100_000), (2000, 2000)),
    Case("rows_4x4M", "x.sum(-1), x (4, 4*10^6)", (4, 4_000_000), (4, 100_000),
         lambda x: x.sum(-1), lambda x: x.sum(-1)),
    Case("cols_4Mx4", "x.sum(0), x (4*10^6, 4)", (4_000_000, 4), (100_000, 4),
         lambda x: x.sum(0), lambda x: x.sum(0)),
    Case("rows_4096", "x.sum(1), x (4096, 4096)", (4096, 4096), (256, 1024),
         lambda x: x.sum(1), lambda x: x.sum(1)),
    Case("cols_4096", "x.sum(0), x (4096, 4096)", (4096, 4096), (256, 1024),
         lambda x: x.sum(0), lambda x: x.sum(0)),
    Case("sum_1024x1024", "x.sum(), x (1024, 1024) (4 MiB)", (1024, 1024), (128, 128),
         lambda x: x.sum(), lambda x: x.sum()),
    Case("rows_1024x1024", "x.sum(1), x (1024, 1024) (4 MiB)", (1024, 1024), (128, 128),
         lambda x: x.sum(1), lambda x: x.sum(1)),
    Case("cols_1024x1024", "x.sum(0), x (1024, 1024) (4 MiB)", (1024, 1024), (128, 128),
         lambda x: x.sum(0), lambda x: x.sum(0)),
]
FRAMEWORKS = ("neurenix", "numpy", "torch")


def run_case(case: Case, quick: bool, framework: str, seconds: float,
             warm_up: float = WARM_UP) -> dict:
    """Inside a worker: one case on one framework; its error and median time per call."""
    shape = case.quick_shape if quick else case.shape
    target = case.quick_broadcast if quick else case.broadcast
    if target is not None:
        x = np.ones(shape, np.float32)
        fn, np_fn = _expand(target), _np_expand(target)
        exact = np.float64(np.prod(target, dtype=np.float64))
    else:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        fn, np_fn = case.fn, case.np_fn
        exact = np.asarray(np_fn(x.astype(np.float64)))
    if framework == "neurenix":
        import neurenix
        compiled, nx = neurenix.compile(fn), neurenix.tensor(x)
        step = lambda: compiled(nx)
        value = lambda: compiled(nx).numpy()
    elif framework == "numpy":
        step = value = lambda: np_fn(x)
    else:
        import torch
        torch.set_num_threads(THREADS)
        tx = torch.from_numpy(x)
        step = lambda: fn(tx)
        value = lambda: fn(tx).numpy()
    got = np.asarray(value(), dtype=np.float64)
    error = float(np.max(np.abs(got - exact) / np.abs(exact)))
    warm_end, calls = time.perf_counter() + warm_up, 0
    while calls < 3 or time.perf_counter() < warm_end:  # PyTorch's pool needs ~0.4 s to settle
        step()
        calls += 1
    busy, own, start = machine_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    median, _ = measure(step, seconds)
    return {"error": error, "ms": median * 1e3, "other_load": other_load(busy, own, start)}


def spawn(case: Case, framework: str, opts: argparse.Namespace) -> dict:
    """One worker in a fresh interpreter (so thread pools never meet), 2 threads for all."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case.name, framework,
           "--seconds", str(opts.seconds)] + (["--quick"] if opts.quick else [])
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.run(cmd, env=child_env(Path(cache)), capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": float("nan"), "ms": float("nan"), "other_load": None,
                "failed": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_ms(r: dict) -> str:
    ms = r["ms"]
    text = "failed" if ms != ms else f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"
    load = r.get("other_load")
    return text + (" (noisy)" if load is not None and load > NOISY else "")


def table(rows: list[dict], frameworks: list[str]) -> str:
    """The markdown table: errors, then milliseconds per call."""
    names = {"neurenix": "Neurenix compiled", "numpy": "NumPy", "torch": "PyTorch"}
    head = (["case", "elements"] + [f"{names[f]} rel. error" for f in frameworks]
            + [f"{names[f]} ms" for f in frameworks])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([f"`{r['what']}`", f"{r['elements']:.3g}"]
                 + [f"{r[f]['error']:.1e}" for f in frameworks]
                 + [_fmt_ms(r[f]) for f in frameworks])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _elements(case: Case, quick: bool) -> int:
    target = case.quick_broadcast if quick else case.broadcast
    return int(np.prod(target or (case.quick_shape if quick else case.shape), dtype=np.int64))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--only", help="comma-separated case names")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--seconds", type=float, default=0.5, help="timing per cell (median)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a quiet machine before each cell")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--worker", nargs=2, metavar=("CASE", "FRAMEWORK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    by_name = {c.name: c for c in CASES}
    if args.worker:
        name, framework = args.worker
        print(json.dumps(run_case(by_name[name], args.quick, framework, args.seconds)))
        return 0
    frameworks = [f for f in args.frameworks.split(",") if f]
    unknown = set(frameworks) - set(FRAMEWORKS)
    if unknown:
        p.error(f"unknown frameworks {sorted(unknown)}; known: {FRAMEWORKS}")
    cases = CASES
    if args.only:
        wanted = args.only.split(",")
        if set(wanted) - set(by_name):
            p.error(f"unknown case in {wanted}; known: {list(by_name)}")
        cases = [by_name[n] for n in wanted]
    rows = []
    for case in cases:
        row = {"case": case.name, "what": case.what, "elements": _elements(case, args.quick)}
        for fw in frameworks:
            if args.wait_idle:
                wait_for_idle(args.wait_idle, sys.stderr)
            row[fw] = spawn(case, fw, args)
        rows.append(row)
        print(f"{case.name}: " + ", ".join(
            f"{f} {row[f]['error']:.1e} {_fmt_ms(row[f])} ms" for f in frameworks),
            file=sys.stderr, flush=True)
    print(table(rows, frameworks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
