"""GEMM sweep: float32 matmul compiled by Neurenix against NumPy's BLAS and PyTorch, per shape.

Every product is compiled through the public API (`neurenix.compile(lambda a, b: a @ b)`,
`a @ b.T` for the "nt" layout, `a.T @ b` for "tn"), so the whole path is measured: tracing
aside, the call, argument checks and the generated kernel.  Shapes cover k from 64 to 16384
(powers of two and not), skinny and tall products, a vector-matrix product and batched
attention-like `P @ V` with long sequences.  The shapes marked `tuning` are the ones the tiled
path's block sizes were tuned on; the others are reported only.

    python benchmarks/gemm_sweep.py                        # 1 thread, then the default threads
    python benchmarks/gemm_sweep.py --threads 1 --only k4160 --seconds 2
    python benchmarks/gemm_sweep.py --json sweep.json --markdown

Each thread setting runs in its own subprocess: `--threads N` sets `OPENBLAS_NUM_THREADS`,
`OMP_NUM_THREADS`, `MKL_NUM_THREADS`, `NEURENIX_NUM_THREADS` and `torch.set_num_threads` to N;
`--threads 0` leaves every library its default (all the cores it may use).  For each shape the
frameworks are timed in alternating rounds (`--rounds`), so that a burst of load from other
processes hits them alike; the table shows the median over every sample of every round.
`--clock cpu` times one-thread runs in the calling thread's CPU time, which a shared machine's
other load inflates far less than wall time.  The BLAS ceiling of the run is NumPy's SGEMM at
2048^3 in GFLOP/s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from bench import sample


@dataclass(frozen=True)
class Shape:
    """One product: (batch,) m x k times k x n, in a layout ("nn", "nt": b stored (n, k),
    "tn": a stored (k, m))."""

    name: str
    m: int
    k: int
    n: int
    batch: int = 0
    layout: str = "nn"
    tuning: bool = False

    @property
    def flops(self) -> float:
        return 2.0 * max(1, self.batch) * self.m * self.k * self.n

    def label(self) -> str:
        lead = f"({self.batch}) " if self.batch else ""
        return f"{lead}{self.m}x{self.k}x{self.n} {self.layout}"


SHAPES = [
    # the shapes the block sizes were tuned on
    Shape("t1024", 1024, 1024, 1024, tuning=True),
    Shape("t512k8192", 512, 8192, 512, tuning=True),
    Shape("t96k12288", 96, 12288, 384, tuning=True),
    Shape("t2048k5000nt", 2048, 5000, 256, layout="nt", tuning=True),
    # k from 64 to 16384 at m = n = 512: powers of two and not
    Shape("k64", 512, 64, 512),
    Shape("k1000", 512, 1000, 512),
    Shape("k3001", 512, 3001, 512),
    Shape("k4096", 512, 4096, 512),
    Shape("k4160", 512, 4160, 512),
    Shape("k9999", 512, 9999, 512),
    Shape("k16384", 512, 16384, 512),
    # odd sizes everywhere, other layouts
    Shape("odd", 777, 4160, 333),
    Shape("odd_nt", 640, 6000, 700, layout="nt"),
    Shape("odd_tn", 700, 5003, 300, layout="tn"),
    Shape("big", 2048, 2048, 2048),
    # skinny and tall
    Shape("skinny_k", 64, 16384, 64),
    Shape("tall", 16384, 64, 64),
    Shape("wide", 64, 64, 16384),
    Shape("tall_k", 4096, 4160, 64),
    # vector-matrix (m < 64: not a target, but no cliff either)
    Shape("vecmat", 1, 4096, 4096),
    Shape("vecmat_nt", 1, 16384, 4096, layout="nt"),
    # attention-like P @ V over long sequences: (batch * heads, seq, seq) @ (.., seq, 64)
    Shape("pv2048", 2048, 2048, 64, batch=16),
    Shape("pv4096", 4096, 4096, 64, batch=8),
]
TARGET = 0.60  # of NumPy's BLAS, for m, n, k >= 64
WRONG = 1e-3  # relative to the largest value of the result


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def measure(step: Callable[[], Any], seconds: float, clock: str = "wall") -> list[float]:
    """Seconds per call of `step` (bench.py's sampling, at least 3 samples).  The `cpu` clock
    counts the calling thread's CPU time, which other processes' load does not inflate: valid
    on one thread only, where every library computes on the calling thread."""
    return sample(step, seconds, 3, CLOCKS[clock])


def operands(shape: Shape, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """a and b as stored for the shape's layout."""
    lead = (shape.batch,) if shape.batch else ()
    a_shape = (shape.k, shape.m) if shape.layout == "tn" else (shape.m, shape.k)
    b_shape = (shape.n, shape.k) if shape.layout == "nt" else (shape.k, shape.n)
    a = rng.standard_normal(lead + a_shape, dtype=np.float32)
    b = rng.standard_normal(lead + b_shape, dtype=np.float32)
    return a, b


def _swap(x: Any) -> Any:
    return np.swapaxes(x, -1, -2) if isinstance(x, np.ndarray) else x.transpose(-2, -1)


def run_shape(shape: Shape, seconds: float, rounds: int, torch: Any, clock: str) -> dict:
    """Time one shape on every framework; the results as a dict of the row."""
    import neurenix

    rng = np.random.default_rng(0)
    a, b = operands(shape, rng)
    fa = (lambda x, y: x @ _swap(y)) if shape.layout == "nt" else \
        (lambda x, y: _swap(x) @ y) if shape.layout == "tn" else (lambda x, y: x @ y)
    compiled = neurenix.compile(fa)
    xa, xb = neurenix.Tensor(a), neurenix.Tensor(b)
    t = time.perf_counter()
    got = compiled(xa, xb).numpy()
    first = time.perf_counter() - t
    want = fa(a, b)
    error = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))
    del got
    paths = _paths(compiled)
    steps: dict[str, Callable[[], Any]] = {
        "neurenix": lambda: compiled(xa, xb),
        "numpy": lambda: fa(a, b),
    }
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        steps["torch"] = lambda: fa(ta, tb)
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            samples[key] += measure(step, seconds / rounds, clock)
    ms = {k: 1e3 * statistics.median(v) for k, v in samples.items()}
    row = asdict(shape)
    row.update(label=shape.label(), flops=shape.flops, first_call_s=first, rel_error=error,
               paths=paths, ms=ms, samples={k: len(v) for k, v in samples.items()},
               gflops={k: shape.flops / v / 1e6 for k, v in ms.items()},
               of_blas=ms["numpy"] / ms["neurenix"])
    return row


def _paths(compiled: Any) -> list[str]:
    """The contraction paths of the compiled program's kernels (tiled, dot or generic)."""
    program = getattr(getattr(compiled, "_last", None), "forward", None)
    program = getattr(program, "program", program)
    metadata = getattr(program, "metadata", None) or {}
    return sorted(set(metadata.get("paths", {}).values()))


def ceiling(seconds: float, clock: str) -> float:
    """NumPy SGEMM at 2048^3, GFLOP/s."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2048, 2048), dtype=np.float32)
    b = rng.standard_normal((2048, 2048), dtype=np.float32)
    return 2.0 * 2048 ** 3 / statistics.median(measure(lambda: a @ b, seconds, clock)) / 1e9


def worker(opts: argparse.Namespace) -> int:
    """Measure every selected shape in this process (threads already set by the parent)."""
    try:
        import torch
        if opts.threads:
            torch.set_num_threads(opts.threads)
    except ImportError:
        torch = None
    rows = []
    for shape in selected(opts.only):
        rows.append(run_shape(shape, opts.seconds, opts.rounds, torch, opts.clock))
        print(json.dumps({"row": rows[-1]}), flush=True)
    print(json.dumps({"ceiling": ceiling(opts.seconds, opts.clock), "blas": _blas()}),
          flush=True)
    return 0


def _blas() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown"
    return ", ".join(f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}), "
                     f"{p.get('num_threads')} threads" for p in threadpool_info()
                     if p.get("user_api") == "blas") or "unknown"


def selected(only: str | None) -> list[Shape]:
    """The shapes named in `only` (comma-separated), or all of them."""
    if not only:
        return SHAPES
    names = only.split(",")
    unknown = set(names) - {s.name for s in SHAPES}
    if unknown:
        raise SystemExit(f"unknown shapes: {', '.join(sorted(unknown))}")
    return [s for s in SHAPES if s.name in names]


def run_threads(threads: int, opts: argparse.Namespace) -> dict:
    """Run the worker in a subprocess with `threads` threads everywhere (0: defaults)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NEURENIX_NUM_THREADS"):
        env.pop(var, None)
        if threads:
            env[var] = str(threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
           "--seconds", str(opts.seconds), "--rounds", str(opts.rounds),
           "--clock", opts.clock if threads == 1 else "wall"]
    if opts.only:
        cmd += ["--only", opts.only]
    out: dict = {"threads": threads or "default", "rows": [],
                 "clock": opts.clock if threads == 1 else "wall"}
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            msg = json.loads(line)
            if "row" in msg:
                out["rows"].append(msg["row"])
                if opts.progress:
                    print(f"  [{out['threads']} threads] {msg['row']['label']}: "
                          f"{msg['row']['of_blas']:.0%} of BLAS", file=sys.stderr, flush=True)
            else:
                out.update(msg)
    if proc.returncode:
        raise SystemExit(f"worker ({threads} threads) failed with {proc.returncode}")
    return out


def table(run: dict, markdown: bool) -> str:
    """The results of one thread setting as text."""
    header = ["shape", "tuning", "paths", "Neurenix ms", "NumPy ms", "torch ms",
              "Neurenix GFLOP/s", "NumPy GFLOP/s", "% of BLAS", "rel. error"]
    lines = []
    for r in run["rows"]:
        torch_ms = r["ms"].get("torch")
        target = min(r["m"], r["k"], r["n"]) >= 64
        mark = "" if not target or r["of_blas"] >= TARGET else " (below target)"
        lines.append([r["label"], "yes" if r["tuning"] else "", "/".join(r["paths"]),
                      f"{r['ms']['neurenix']:.3f}", f"{r['ms']['numpy']:.3f}",
                      "-" if torch_ms is None else f"{torch_ms:.3f}",
                      f"{r['gflops']['neurenix']:.1f}", f"{r['gflops']['numpy']:.1f}",
                      f"{100 * r['of_blas']:.0f}%{mark}",
                      f"{r['rel_error']:.1e}" + (" WRONG" if r["rel_error"] > WRONG else "")])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in lines]
    return "\n".join(out)


def summary(run: dict) -> str:
    """The worst target shape (m, n, k >= 64) and the non-tuning worst, as one line."""
    targets = [r for r in run["rows"] if min(r["m"], r["k"], r["n"]) >= 64]
    if not targets:
        return "no target shapes"
    worst = min(targets, key=lambda r: r["of_blas"])
    held = [r for r in targets if not r["tuning"]]
    text = f"worst target shape: {worst['label']} at {worst['of_blas']:.0%} of BLAS"
    if held:
        w = min(held, key=lambda r: r["of_blas"])
        text += f"; worst reported (non-tuning) shape: {w['label']} at {w['of_blas']:.0%}"
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, action="append",
                   help="threads per library (0: each library's default); repeatable; "
                        "default: 1, then 0")
    p.add_argument("--only", help="comma-separated shape names")
    p.add_argument("--seconds", type=float, default=1.0,
                   help="timing per framework and shape (split over the rounds)")
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or the calling thread's CPU time (one-thread runs only; "
                        "others keep wall time)")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--markdown", action="store_true", help="markdown tables")
    p.add_argument("--progress", action="store_true", help="one line per shape on stderr")
    p.add_argument("--list", action="store_true", help="list the shapes and exit")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.list:
        for s in SHAPES:
            print(f"{s.name:14} {s.label():28} {'tuning' if s.tuning else ''}")
        return 0
    if opts.worker:
        opts.threads = (opts.threads or [0])[0]
        return worker(opts)
    runs = [run_threads(t, opts) for t in (opts.threads or [1, 0])]
    for run in runs:
        print(f"\n{run['threads']} threads, {run['clock']} clock; BLAS: {run.get('blas')}; "
              f"BLAS ceiling (NumPy SGEMM 2048^3): {run.get('ceiling', 0):.1f} GFLOP/s")
        print(table(run, opts.markdown))
        print(summary(run))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"runs": runs, "target": TARGET}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
