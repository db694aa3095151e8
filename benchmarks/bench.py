"""Neurenix against its peers, side by side in one run.

    python benchmarks/bench.py [--only NAME[,NAME]] [--frameworks F[,F]] [--seconds 1.0]
                               [--json out.json] [--markdown] [--timeout 300]
                               [--wait-idle S] [--retries N]

For every workload of `workloads.py` it runs Neurenix eager, Neurenix compiled
(`neurenix.compile`), PyTorch eager, `torch.compile` (inductor) and onnxruntime (inference
only), each in its own subprocess with 2 threads everywhere; it warms up, then takes the median
of repeated timings over at least `--seconds` of timing.  It also measures the machine's
ceilings (NumPy BLAS GEMM GFLOP/s, copy bandwidth), compile times, and checks that every
framework computes the same numbers as PyTorch eager.  A framework that fails on a workload
shows "error: ..." in its cell; the run goes on.  Every timing also records how many cores
other processes kept busy meanwhile; noisy cells are marked, and `--wait-idle`/`--retries`
wait for a quiet machine and measure noisy cells again.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from workloads import FRAMEWORKS, PEERS, THREADS, WORKLOADS, build_runner, eltwise_bytes, gemm_flops

LABELS = {"neurenix_eager": "Neurenix eager", "neurenix_compiled": "Neurenix compiled",
          "torch_eager": "PyTorch eager", "torch_compile": "torch.compile",
          "torch_compile_step": "torch.compile whole step", "onnxruntime": "onnxruntime"}
IMPORTS = {"neurenix_eager": ["neurenix"], "neurenix_compiled": ["neurenix"],
           "torch_eager": ["torch"], "torch_compile": ["torch"], "torch_compile_step": ["torch"],
           "onnxruntime": ["torch", "onnxruntime", "onnxscript"]}
TOLERANCE = 2e-3  # largest difference from PyTorch eager, relative to its largest magnitude
COPY_MIB = 64
NOISY = 0.2  # cores of other load during a timing that make it suspect
NOISY_MARK = "(noisy)"


# ---- measuring (inside a worker) ------------------------------------------------------------

def sample(step: Any, seconds: float, min_samples: int = 5,
           clock: Any = time.perf_counter) -> list[float]:
    """Seconds per call of `step`, one sample per call or per group of calls, over >= `seconds`
    of wall time.

    Cheap calls are grouped so that one sample lasts about a millisecond (timer overhead
    stays negligible); slow calls are timed one by one, with at least `min_samples` samples
    (fewer only when they would take over ten times `seconds`).  `clock` reads the time a
    sample counts (wall time, or e.g. the thread's CPU time).
    """
    t = time.perf_counter()
    step()
    estimate = max(time.perf_counter() - t, 1e-7)
    inner = max(1, int(1e-3 / estimate))
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t = clock()
        for _ in range(inner):
            step()
        samples.append((clock() - t) / inner)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and (len(samples) >= min_samples
                                   or (len(samples) >= 2 and elapsed > 10 * seconds)):
            return samples


def measure(step: Any, seconds: float, min_samples: int = 5) -> tuple[float, int]:
    """Median seconds per call of `step` over >= `seconds` of timing, and the sample count."""
    samples = sample(step, seconds, min_samples)
    return statistics.median(samples), len(samples)


def machine_cpu_seconds() -> float | None:
    """CPU seconds every process on this machine has used so far (Linux /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds this process (all its threads) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def other_load(busy: float | None, own: float, start: float) -> float | None:
    """Cores other processes kept busy, on average, since (busy, own, start) were taken."""
    now = machine_cpu_seconds()
    if busy is None or now is None:
        return None
    wall = max(time.perf_counter() - start, 1e-9)
    return max(0.0, (now - busy) - (own_cpu_seconds() - own)) / wall


def wait_for_idle(limit: float, log: Any) -> float | None:
    """Wait (up to `limit` s) until other processes use < 0.1 core over half a second;
    returns the last load seen."""
    deadline = time.perf_counter() + limit
    said = False
    while True:
        busy, own, t = machine_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        time.sleep(0.5)
        load = other_load(busy, own, t)
        if load is None or load < 0.1 or time.perf_counter() >= deadline:
            return load
        if not said:
            print(f"[bench] waiting for an idle machine (others use {load:.2f} cores)",
                  file=log, flush=True)
            said = True


def _sample(values: np.ndarray, count: int = 256) -> list[float]:
    flat = np.asarray(values, dtype=np.float64).ravel()
    stride = max(1, flat.size // count)
    return flat[::stride][:count].tolist()


def run_worker(workload: str, framework: str, seconds: float, first_only: bool) -> dict:
    """Build, call once (timed: compile), check, warm up, then time one workload/framework."""
    t0 = time.perf_counter()
    for module in IMPORTS[framework]:
        __import__(module)
    if framework in PEERS:
        import torch
        torch.set_num_threads(THREADS)
    t1 = time.perf_counter()
    runner = build_runner(workload, framework)
    t2 = time.perf_counter()
    result: dict[str, Any] = {"ok": True, "import_s": t1 - t0, "build_s": t2 - t1}
    with runner.context():
        out = runner.step()
        result["first_call_s"] = time.perf_counter() - t2
        if first_only:
            return result
        if WORKLOADS[workload].train:
            check = [float(runner.value(out))]
            for _ in range(2):
                check.append(float(runner.value(runner.step())))
        else:
            check = _sample(runner.value(out))
        result["check"] = check
        warm_end = time.perf_counter() + 0.25 * seconds
        calls = 0
        while calls < 3 or time.perf_counter() < warm_end:
            runner.step()
            calls += 1
        busy, own, t = machine_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        median, samples = measure(runner.step, seconds)
        foreign = other_load(busy, own, t)
    result.update(median_ms=median * 1e3, samples=samples, other_load=foreign,
                  info=runner.info())
    return result


def run_ceilings(seconds: float) -> dict:
    """NumPy BLAS GEMM GFLOP/s at 1024^3 and np.copyto bandwidth on a 64 MiB array."""
    rng = np.random.default_rng(0)
    n = 1024
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    busy, own, t = machine_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    gemm_s, _ = measure(lambda: np.matmul(a, b, out=c), seconds)
    src = np.ones(COPY_MIB * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    copy_s, _ = measure(lambda: np.copyto(dst, src), seconds)
    foreign = other_load(busy, own, t)
    return {"ok": True, "gemm_gflops": 2.0 * n**3 / gemm_s / 1e9,
            "copy_gbps": 2 * src.nbytes / copy_s / 1e9, "gemm_ms": gemm_s * 1e3,
            "copy_ms": copy_s * 1e3, "blas": blas_info(), "other_load": foreign}


def blas_info() -> str:
    """NumPy's BLAS, its kernel architecture and thread count (via threadpoolctl if present)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl absent)"
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return "; ".join(f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')}, "
                     f"{p.get('num_threads')} threads" for p in pools) or "unknown"


def run_job(job: Callable[[], dict], result_path: str) -> int:
    """A subprocess's job (`run_child`'s other end): its result, or its error as a result,
    written as JSON to `result_path`; the exit code."""
    try:
        result, code = job(), 0
    except Exception as exc:  # noqa: BLE001 - a failing job is a result, not a crash
        traceback.print_exc()
        result = {"ok": False, "error": one_line(f"{type(exc).__name__}: {exc}")}
        code = 1
    Path(result_path).write_text(json.dumps(result))
    return code


def worker_main(args: argparse.Namespace) -> int:
    """Entry point of a subprocess: run one job, write its JSON result."""
    if args.ceilings:
        return run_job(lambda: run_ceilings(args.seconds), args.result)
    return run_job(lambda: run_worker(args.worker[0], args.worker[1], args.seconds,
                                      args.first_only), args.result)


# ---- orchestrating (the parent) -------------------------------------------------------------

def one_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of `text`, shortened."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "unknown error")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def child_env(cache: Path) -> dict:
    """The environment of every subprocess: 2 threads for every library, private caches."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NEURENIX_NUM_THREADS"):
        env[var] = str(THREADS)
    env["NEURENIX_CACHE_DIR"] = str(cache / "neurenix")
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    env["PYTHONWARNINGS"] = "ignore"
    env.pop("NEURENIX_DEBUG", None)
    return env


def run_child(cmd: list[str], cache: Path, timeout: float,
              echo: Callable[[str], str] | None = None) -> dict:
    """Run a cell's interpreter `cmd` (given `--result FILE` last by this function) under
    `child_env(cache)`: the JSON it wrote, or an error that says what failed (a crash, its
    last stderr line, a timeout).  `echo(stderr)` is what of its stderr to pass on."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    try:
        proc = subprocess.run(cmd + ["--result", str(out)], env=child_env(cache),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)
        if echo is not None:
            sys.stderr.write(echo(proc.stderr))
        text = out.read_text() if out.stat().st_size else ""
        last = _last_error(proc.stderr)
        if proc.returncode < 0:  # killed by a signal: a crash, even if a result was written
            return {"ok": False, "error": f"crashed with {signal.Signals(-proc.returncode).name}"
                    + (f" (last stderr line: {one_line(last, 120)})" if last else "")}
        if text:
            return json.loads(text)
        return {"ok": False, "error": one_line(last or f"exit code {proc.returncode}")}
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    finally:
        out.unlink(missing_ok=True)


def spawn(job: list[str], cache: Path, seconds: float, timeout: float) -> dict:
    """Run one worker in a fresh interpreter; its result, or an error that says what failed."""
    start = time.perf_counter()
    result = run_child([sys.executable, str(Path(__file__).resolve()), *job, "--seconds",
                        str(seconds)], cache, timeout)
    result["wall_s"] = time.perf_counter() - start
    return result


def _last_error(stderr: str) -> str:
    """The last line of stderr that is not one of LLVM's optimisation remarks."""
    lines = [x for x in stderr.splitlines()
             if x.strip() and not x.startswith(("remark:", "warning: <unknown>"))
             and "XDG_RUNTIME" not in x]
    return lines[-1] if lines else ""


def relative_error(got: list[float], want: list[float]) -> float:
    """max |got - want| / max |want| (inf when the sizes differ)."""
    a, b = np.asarray(got), np.asarray(want)
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def _load(r: dict) -> float:
    return r.get("other_load") or 0.0


def measure_job(job: list[str], cache: Path, opts: argparse.Namespace, log: Any) -> dict:
    """One job, retried (after waiting for quiet) while other processes made it noisy;
    the least noisy successful attempt wins.  Every attempt gets fresh caches (cold compile)."""
    best: dict | None = None
    for attempt in range(opts.retries + 1):
        if opts.wait_idle > 0:
            wait_for_idle(opts.wait_idle, log)
        r = spawn(job, cache / f"attempt{attempt}", opts.seconds, opts.timeout)
        r["cache"], r["attempts"] = str(cache / f"attempt{attempt}"), attempt + 1
        if best is None or (r["ok"] and (not best["ok"] or _load(r) < _load(best))):
            best = r
        if not r["ok"] or _load(r) <= NOISY:
            break
    return best


def run_all(names: list[str], frameworks: list[str], opts: argparse.Namespace,
            log: Any = sys.stderr) -> dict:
    """Every (workload, framework) job in its own subprocess, plus the ceilings."""
    started = time.time()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "seconds": opts.seconds,
                              "machine": machine(), "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="neurenix-bench-") as tmp:
        root = Path(tmp)
        report["ceilings"] = c = measure_job(["--ceilings"], root / "ceilings", opts, log)
        print("[bench] ceilings: " + (f"BLAS {c['gemm_gflops']:.0f} GFLOP/s, copy "
                                       f"{c['copy_gbps']:.1f} GB/s" if c["ok"] else
                                       c["error"]), file=log, flush=True)
        for name in names:
            rows: dict[str, Any] = {}
            for fw in frameworks:
                if fw not in WORKLOADS[name].frameworks():
                    continue
                rows[fw] = r = measure_job(["--worker", name, fw], root / f"{name}-{fw}", opts,
                                           log)
                status = (f"{r['median_ms']:.4g} ms, other load {_load(r):.2f}"
                          if r["ok"] else f"error: {r['error']}")
                print(f"[bench] {name:14s} {fw:18s} {status} ({r['wall_s']:.1f} s, "
                      f"attempt {r['attempts']})", file=log, flush=True)
                if fw == "neurenix_compiled" and r["ok"]:
                    again = spawn(["--worker", name, fw, "--first-only"], Path(r["cache"]),
                                  opts.seconds, opts.timeout)
                    r["cached_first_call_s"] = (again["first_call_s"] if again["ok"]
                                                else None)
            reference = rows.get("torch_eager", {})
            for r in rows.values():
                if r["ok"] and reference.get("ok"):
                    r["error_vs_torch"] = relative_error(r["check"], reference["check"])
            report["workloads"][name] = rows
    report["total_s"] = time.time() - started
    return report


def machine() -> dict:
    """The CPU and the versions of everything measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("numpy", "llvmlite", "torch", "onnxruntime", "onnxscript", "neurenix"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "absent"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "versions": versions}


# ---- the tables -----------------------------------------------------------------------------

def fmt_ms(value: float) -> str:
    """Milliseconds with about three significant digits."""
    for limit, digits in ((100, 0), (10, 1), (1, 2), (0.1, 3)):
        if value >= limit:
            return f"{value:.{digits}f}"
    return f"{value:.4f}"


def cell(r: dict | None) -> str:
    """One framework's median, 'error: ...' or '-' when it does not apply."""
    if r is None:
        return "-"
    if not r["ok"]:
        return f"error: {one_line(r['error'], 60)}"
    text = fmt_ms(r["median_ms"])
    if (r.get("other_load") or 0.0) > NOISY:
        text += f" {NOISY_MARK}"
    err = r.get("error_vs_torch")
    if err is not None and err > TOLERANCE:
        text += f" (WRONG: rel. error {err:.2g})"
    return text


def best_peer(rows: dict) -> tuple[str, float] | None:
    """The fastest of PyTorch eager, torch.compile and onnxruntime."""
    ok = [(fw, rows[fw]["median_ms"]) for fw in PEERS if fw in rows and rows[fw]["ok"]]
    return min(ok, key=lambda x: x[1]) if ok else None


def ceiling_fraction(name: str, ms: float, ceilings: dict) -> float | None:
    """For eltwise the fraction of copy bandwidth, for GEMM the fraction of BLAS GFLOP/s."""
    if not ceilings.get("ok"):
        return None
    if WORKLOADS[name].family == "eltwise":
        return eltwise_bytes() / (ms * 1e-3) / 1e9 / ceilings["copy_gbps"]
    if WORKLOADS[name].family == "gemm":
        return gemm_flops() / (ms * 1e-3) / 1e9 / ceilings["gemm_gflops"]
    return None


def summary_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """The main table: medians, ratios to the best peer and to PyTorch eager, ceilings."""
    header = ["workload", *(f"{LABELS[fw]} ms" for fw in FRAMEWORKS), "compiled / best peer",
              "compiled / PyTorch eager", "of ceiling (compiled; best peer)"]
    rows = []
    for name, res in report["workloads"].items():
        nx = res.get("neurenix_compiled")
        peer = best_peer(res)
        ratio = vs_torch = ceiling = "-"
        if nx and nx["ok"] and peer:
            ratio = f"{nx['median_ms'] / peer[1]:.2f}x ({LABELS[peer[0]]})"
        torch_eager = res.get("torch_eager")
        if nx and nx["ok"] and torch_eager and torch_eager["ok"]:
            vs_torch = f"{nx['median_ms'] / torch_eager['median_ms']:.2f}x"
        parts = []
        for r in (nx, res.get(peer[0]) if peer else None):
            frac = ceiling_fraction(name, r["median_ms"], report["ceilings"]) if (
                r and r["ok"]) else None
            if frac is not None:
                parts.append(f"{100 * frac:.0f}%")
        if parts:
            unit = "copy BW" if WORKLOADS[name].family == "eltwise" else "BLAS"
            ceiling = f"{' ; '.join(parts)} of {unit}"
        rows.append([name, *(cell(res.get(fw)) for fw in FRAMEWORKS), ratio, vs_torch, ceiling])
    return header, rows


def compile_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Start-up costs: Neurenix compile (cold, and again from a warm cache in a new process),
    torch.compile's first call, onnxruntime's export + session."""
    header = ["workload", "Neurenix compile cold s", "Neurenix compile, new process, same "
              "cache dir s", "torch.compile first call s",
              "torch.compile whole step first call s", "import torch s",
              "onnx export + session s"]
    rows = []
    for name, res in report["workloads"].items():
        rows.append([name, _seconds(res, "neurenix_compiled", "first_call_s"),
                     _seconds(res, "neurenix_compiled", "cached_first_call_s"),
                     _seconds(res, "torch_compile", "first_call_s"),
                     _seconds(res, "torch_compile_step", "first_call_s"),
                     _seconds(res, "torch_compile", "import_s"),
                     _seconds(res, "onnxruntime", "onnx")])
    return header, rows


def _seconds(res: dict, fw: str, key: str) -> str:
    r = res.get(fw)
    if r is None:
        return "-"
    if not r["ok"]:
        return "error"
    value = r.get(key)
    if key == "onnx":
        value = r["info"].get("export_s", 0) + r["info"].get("session_s", 0)
    return "-" if value is None else f"{value:.2f}"


def memory_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """What `compiled.stats()` says: kernels, the forward program's memory plan (naive,
    planned, lower bound) and the backward program's planned arena."""
    header = ["workload", "ops traced", "kernels fwd (+bwd)", "naive KiB", "planned KiB",
              "lower bound KiB", "planned / naive", "planned / lower bound",
              "backward naive / planned / lower bound KiB"]
    rows = []
    for name, res in report["workloads"].items():
        r = res.get("neurenix_compiled")
        if not r or not r["ok"]:
            continue
        s = r["info"]
        kernels = str(s.get("kernels", "?"))
        if "backward_kernels" in s:
            kernels += f" (+{s['backward_kernels']})"
        naive, planned, low = (s.get(k, 0) for k in ("bytes_naive", "bytes_planned",
                                                     "bytes_lower_bound"))
        rows.append([name, str(s.get("ops_traced", "?")), kernels, f"{naive / 1024:.0f}",
                     f"{planned / 1024:.0f}", f"{low / 1024:.0f}",
                     f"{planned / naive:.2f}" if naive else "-",
                     f"{planned / low:.2f}" if low else "-",
                     _backward_memory(s)])
    return header, rows


def _backward_memory(stats: dict) -> str:
    memory = stats.get("backward_memory")
    if memory:
        return " / ".join(f"{memory.get(k, 0) / 1024:.0f}"
                          for k in ("naive", "planned", "lower_bound"))
    planned = stats.get("backward_bytes_planned")
    return "-" if planned is None else f"? / {planned / 1024:.0f} / ?"


def render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """A Markdown table, or aligned plain text."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*r) for r in rows)])


def _noise(r: dict) -> str:
    load = r.get("other_load") or 0.0
    return f" (noisy: other load {load:.2f} cores)" if load > NOISY else ""


def print_report(report: dict, markdown: bool) -> None:
    """The three tables and the conditions of the run."""
    m, c = report["machine"], report["ceilings"]
    print(f"Neurenix benchmarks, {report['date']}: {m['cpu']}, {m['cores']} cores, "
          f"{THREADS} threads per framework; medians over >= {report['seconds']} s")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    if c.get("ok"):
        print(f"ceilings: NumPy BLAS GEMM 1024^3 {c['gemm_gflops']:.0f} GFLOP/s "
              f"({c['blas']}); np.copyto {COPY_MIB} MiB {c['copy_gbps']:.1f} GB/s "
              f"(bytes read + written){_noise(c)}")
    else:
        print(f"ceilings: error: {c.get('error')}")
    print()
    print(render(*summary_rows(report), markdown))
    print()
    print(render(*compile_rows(report), markdown))
    print()
    print(render(*memory_rows(report), markdown))
    print()
    loads = [r.get("other_load") or 0.0 for rows in report["workloads"].values()
             for r in rows.values() if r["ok"]]
    print(f"total {report['total_s']:.0f} s. {NOISY_MARK} = other processes kept more than "
          f"{NOISY} cores busy while that cell was timed (noisy); the busiest cell saw "
          f"{max(loads, default=0.0):.2f} cores of other load")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (the worker options are internal)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated workloads (default: all): "
                   + ", ".join(WORKLOADS))
    p.add_argument("--frameworks", help="comma-separated frameworks (default: all): "
                   + ", ".join(FRAMEWORKS))
    p.add_argument("--seconds", type=float, default=1.0, help="timing per measurement (s)")
    p.add_argument("--timeout", type=float, default=300.0, help="limit per subprocess (s)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each job, wait up to S s for other processes to go quiet")
    p.add_argument("--retries", type=int, default=0, metavar="N",
                   help="rerun a measurement up to N times while other processes made it noisy")
    p.add_argument("--json", help="also write every number to this JSON file")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "FRAMEWORK"),
                   help=argparse.SUPPRESS)
    p.add_argument("--first-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ceilings", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _choose(value: str | None, known: Any, what: str) -> list[str]:
    if not value:
        return list(known)
    chosen = [x.strip() for x in value.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in known]
    if unknown:
        raise SystemExit(f"bench: unknown {what} {', '.join(unknown)}; choose from "
                         f"{', '.join(known)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (or, with the internal options, one worker)."""
    args = parse_args(argv)
    if args.worker or args.ceilings:
        return worker_main(args)
    names = _choose(args.only, WORKLOADS, "workload")
    frameworks = _choose(args.frameworks, FRAMEWORKS, "framework")
    report = run_all(names, frameworks, args)
    print_report(report, args.markdown)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
