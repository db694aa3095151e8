"""Compile memory: the parent's RSS over many compiled shapes, with and without the worker.

A process that compiles a new shape for every batch size grows by what each compile leaves
behind.  This script compiles N shapes of two workloads — `matmul`, `neurenix.compile(lambda
a, b: a @ b)` on (m, 64) @ (64, 32) for m = 1..N (no temporaries, so nothing but leaks can
grow), and `mlp`, a small MLP (`Linear(64, 256) - ReLU - Linear(256, 10)`, inference) at
batch sizes 1..N (whose 32 cached programs hold arenas that grow with the batch) — in a fresh
subprocess per workload and mode: `NEURENIX_COMPILE_WORKER=1` (LLVM in the compile worker) and
`0` (LLVM in-process), each with a new, empty cache directory.  It prints the parent's VmRSS
every `--every` compiles, the worker's peak RSS and the compile rate.  `--first-call R` also
times the first call (the compile) of a 784-512-512-10 MLP at batch 64 and of a small CNN in
R fresh processes per mode and prints the medians.

    python benchmarks/compile_memory.py                    # 1000 shapes, RSS every 100
    python benchmarks/compile_memory.py --shapes 300 --every 50 --first-call 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

_RSS_CHILD = """
import json, sys, time
import neurenix as nx
from neurenix import nn
from neurenix.runtime import compile_worker

def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

workload, shapes, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
nx.manual_seed(0)
if workload == "mlp":
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    f, w = nx.compile(model), None
else:
    f, w = nx.compile(lambda a, b: a @ b), nx.randn(64, 32)
samples = [(0, rss_mib())]
start = time.perf_counter()
with nx.no_grad():
    for batch in range(1, shapes + 1):
        f(nx.randn(batch, 64)) if w is None else f(nx.randn(batch, 64), w)
        if batch % every == 0:
            samples.append((batch, rss_mib()))
seconds = time.perf_counter() - start
print(json.dumps({"samples": samples, "seconds": seconds,
                  "worker_peak_mib": compile_worker.peak_rss() / 2**20,
                  "workers_started": compile_worker.STATS["started"]}))
"""

_FIRST_CALL_CHILD = """
import json, sys, time
import neurenix as nx
from neurenix import nn
from neurenix.runtime import compile_worker

if sys.argv[2]:
    compile_worker.EAGER_LIMIT = int(sys.argv[2])
nx.manual_seed(0)
if sys.argv[1] == "mlp":
    model, x = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                             nn.Linear(512, 10)).eval(), nx.randn(64, 784)
else:
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 7 * 7, 10)).eval()
    x = nx.randn(32, 3, 28, 28)
f = nx.compile(model)
with nx.no_grad():
    start = time.perf_counter()
    f(x)
    seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "workers_started": compile_worker.STATS["started"]}))
"""


def _run(code: str, args: list[str], worker: bool) -> dict:
    """Run a child script in a fresh interpreter with a new cache directory; its JSON line."""
    with tempfile.TemporaryDirectory(prefix="neurenix-compile-memory-") as cache:
        os.chmod(cache, 0o700)
        env = dict(os.environ, NEURENIX_CACHE_DIR=os.path.join(cache, "cache"),
                   NEURENIX_COMPILE_WORKER="1" if worker else "0",
                   NEURENIX_RECOMPILE_LIMIT="100000")
        out = subprocess.run([sys.executable, "-c", code, *args], env=env, check=True,
                             capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


WORKLOADS = ("matmul", "mlp")


def rss_table(shapes: int, every: int) -> None:
    """Parent RSS every `every` compiles per workload, in-process vs worker, as a Markdown
    table, then each run's compile rate and the workers' peak RSS."""
    runs = {(name, worker): _run(_RSS_CHILD, [name, str(shapes), str(every)], worker)
            for name in WORKLOADS for worker in (False, True)}
    print("| compiles | " + " | ".join(f"{name} RSS in-process (MiB) | {name} RSS with worker "
                                        "(MiB)" for name in WORKLOADS) + " |")
    print("| --- " * (1 + 2 * len(WORKLOADS)) + "|")
    columns = [runs[name, worker]["samples"] for name in WORKLOADS for worker in (False, True)]
    for row in zip(*columns):
        print(f"| {row[0][0]} | " + " | ".join(f"{rss:.1f}" for _, rss in row) + " |")
    for (name, worker), r in runs.items():
        mode = "worker" if worker else "in-process"
        extra = (f", worker peak RSS {r['worker_peak_mib']:.1f} MiB, "
                 f"{r['workers_started']} worker(s) started" if worker else "")
        print(f"{name}, {mode}: {shapes / r['seconds']:.1f} compiles/s{extra}")


def first_call_table(runs: int) -> None:
    """Median first-call seconds (the compile) of the MLP and the CNN over `runs` fresh
    processes per mode, the modes alternating, as a Markdown table: in-process, the worker
    as configured (a first call's compiles are among the process's first `EAGER_LIMIT`, so
    they run in-process), and the worker forced from the first compile (`EAGER_LIMIT = 0`:
    the worker's start-up is paid by the first call)."""
    modes = {"in-process": (False, ""), "worker (default)": (True, ""),
             "worker from the first compile": (True, "0")}
    print("| model | " + " | ".join(f"{name} (s)" for name in modes) + " |")
    print("| --- " * (1 + len(modes)) + "|")
    for model in ("mlp", "cnn"):
        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(runs):  # alternating, so that a burst of load hits every mode alike
            for name, (worker, eager) in modes.items():
                result = _run(_FIRST_CALL_CHILD, [model, eager], worker)
                times[name].append(result["seconds"])
        print(f"| {model} | " + " | ".join(f"{statistics.median(times[name]):.3f}"
                                          for name in modes) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", type=int, default=1000,
                        help="batch sizes 1..N (0: only the first-call timing)")
    parser.add_argument("--every", type=int, default=100, help="sample RSS every N compiles")
    parser.add_argument("--first-call", type=int, default=0, metavar="R",
                        help="also time first calls in R fresh processes per mode")
    args = parser.parse_args()
    if args.shapes > 0:
        rss_table(args.shapes, args.every)
    if args.first_call:
        first_call_table(args.first_call)


if __name__ == "__main__":
    main()
