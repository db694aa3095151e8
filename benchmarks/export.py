"""Exported artifacts (`neurenix.export`): their size, their speed, their cold start.

    python benchmarks/export.py [--models mlp,cnn,lstm] [--targets cpu,opencl,webgpu,cuda,hip]
                                [--runs 200] [--seconds 1.0] [--threads 1] [--cold 5]
                                [--no-browser] [--json out.json] [--keep DIR] [--smoke]

For the spec's MLP (`mlp_b1`), CNN (`cnn_infer`) and LSTM (`lstm_infer`) of `workloads.py`,
at their benchmark sizes (`--smoke`: the MLP alone, at its tiny size, on the CPU target only,
no browser, a few runs), it:

1. exports each model for every target (cuda and hip only where their toolchain is present)
   and lists each artifact's files (a directory counted as one entry) and total size;
2. times one call (the median) of: the CPU artifact's C API, from a C program built here with
   the system C compiler (`benchmarks/c/time_model.c`: `clock_gettime` around each
   `nx_model_run`, in its own process); the same artifact through `neurenix.runtime.load` in
   Python; the model compiled in this process with `neurenix.compile`; PyTorch eager; and
   onnxruntime on the PyTorch model exported with `torch.onnx.export` (the runners of
   `workloads.py`, as `bench.py` uses them);
3. measures the cold start: a fresh process that loads the CPU artifact through the C API and
   runs it once (the process's wall time, and load and first run timed inside it; the median
   of `--cold` processes), and, where Chromium is installed, the WebGPU artifact's
   `index.html` in a freshly launched headless Chromium (driven as tests/test_export_browser.py
   does): the browser's launch, then the time from opening the page to its result.

Everything runs with `--threads` threads (default 1: the C API runs a model on the calling
thread): `NEURENIX_NUM_THREADS`, `OMP_NUM_THREADS`, `torch.set_num_threads` and onnxruntime's
`intra_op_num_threads`.  Every output is checked against eager Neurenix.  Prints markdown
tables; `--json` writes the numbers.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "benchmarks" / "c" / "time_model.c"
MODELS = {"mlp": "mlp_b1", "cnn": "cnn_infer", "lstm": "lstm_infer"}
TARGETS = ("cpu", "opencl", "webgpu", "cuda", "hip")
TOLERANCE = 1e-4  # largest |output - eager|, relative to the eager output's scale


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--runs", type=int, default=200, help="timed runs of the C driver")
    p.add_argument("--seconds", type=float, default=1.0, help="timing per Python framework")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cold", type=int, default=5, help="fresh processes for the C cold start")
    p.add_argument("--no-browser", action="store_true", help="skip the browser cold start")
    p.add_argument("--json", type=Path, help="write the numbers here")
    p.add_argument("--keep", type=Path, help="export under this directory and keep it")
    p.add_argument("--smoke", action="store_true",
                   help="the MLP at its tiny size, the CPU target, no browser, a few runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.targets, args.no_browser = "mlp", "cpu", True
        args.runs, args.seconds, args.cold = min(args.runs, 20), min(args.seconds, 0.05), 1
    args.models = [m for m in args.models.split(",") if m]
    args.targets = [t for t in args.targets.split(",") if t]
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; known: {', '.join(MODELS)}")
    for t in args.targets:
        if t not in TARGETS:
            p.error(f"unknown target {t!r}; known: {', '.join(TARGETS)}")
    return args


def set_threads(threads: int) -> None:
    """Pin every framework's thread count (before any of them is imported)."""
    for var in ("NEURENIX_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


# ---- 1. the artifacts ---------------------------------------------------------------------------


def toolchain_missing(target: str) -> str | None:
    """Why `target`'s export cannot be built here (None when it can)."""
    try:
        if target == "cuda":
            from neurenix.compiler.codegen import ptxas
            from neurenix.runtime import nvrtc

            nvrtc.version()
            ptxas.find()
        elif target == "hip":
            from neurenix.runtime import hip_compile

            hip_compile.hipcc()
    except Exception as e:  # noqa: BLE001 - any failure means: not here
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def artifact_files(directory: Path) -> list[tuple[str, int]]:
    """(name, bytes) of each entry of the artifact; a directory is one entry, 'name/ (N)'."""
    entries = []
    for path in sorted(directory.iterdir()):
        if path.is_dir():
            files = [f for f in path.rglob("*") if f.is_file()]
            entries.append((f"{path.name}/ ({len(files)} files)",
                            sum(f.stat().st_size for f in files)))
        else:
            entries.append((path.name, path.stat().st_size))
    return entries


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


# ---- 2. latency ---------------------------------------------------------------------------------


def build_driver(directory: Path, out: Path) -> Path:
    """benchmarks/c/time_model.c built against the artifact's model.h, linked with model.so."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    binary = out / "time_model"
    subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", str(DRIVER), "-I",
                    str(directory), str(directory / "model.so"), f"-Wl,-rpath,{directory}",
                    "-o", str(binary)], check=True, capture_output=True, text=True, timeout=300)
    return binary


def run_driver(binary: Path, directory: Path, inputs: list[Path], runs: int,
               warmup: int) -> tuple[dict, float]:
    """One fresh process of the driver: its JSON line and the process's wall seconds."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    t = time.perf_counter()
    done = subprocess.run([str(binary), str(directory), str(runs), str(warmup),
                           *map(str, inputs)], capture_output=True, text=True, timeout=600,
                          env=env)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"time_model exited {done.returncode}: {done.stderr.strip()}")
    return json.loads(done.stdout), wall


def python_latencies(name: str, tiny: bool, directory: Path, inputs: list[np.ndarray],
                     expected: np.ndarray, opts: argparse.Namespace) -> dict:
    """Median seconds per call of runtime.load, neurenix.compile, PyTorch eager and
    onnxruntime, each with its largest difference from eager Neurenix (relative)."""
    import bench
    import workloads
    from neurenix.runtime import load

    workloads.THREADS = opts.threads
    scale = max(float(np.abs(expected).max()), 1e-30)
    out: dict[str, dict] = {}

    loaded = load(directory)
    out["runtime_load"] = _timed(lambda: loaded.run(inputs), lambda o: o[0], expected, scale,
                                 opts.seconds, bench)
    frameworks = {"neurenix_compile": "neurenix_compiled", "torch_eager": "torch_eager"}
    if not opts.smoke:  # torch.onnx.export takes seconds: not in the smoke test
        frameworks["onnxruntime"] = "onnxruntime"
    for key, framework in frameworks.items():
        try:
            runner = workloads.build_runner(name, framework, tiny=tiny)
            with runner.context():
                out[key] = _timed(runner.step, runner.value, expected, scale, opts.seconds,
                                  bench)
        except Exception as e:  # noqa: BLE001 - a failing framework is a cell, not a crash
            out[key] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:200]}
    return out


def _timed(step: Any, value: Any, expected: np.ndarray, scale: float, seconds: float,
           bench: Any) -> dict:
    first = time.perf_counter()
    got = np.asarray(value(step()))
    first = time.perf_counter() - first
    for _ in range(3):
        step()
    median, samples = bench.measure(step, seconds)
    err = float(np.abs(got.reshape(expected.shape) - expected).max()) / scale
    return {"ok": err <= TOLERANCE, "s": median, "samples": samples, "first_s": first,
            "err": err}


# ---- 3. the browser -----------------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def browser_cold_start(directory: Path, expected: np.ndarray) -> dict:
    """The WebGPU artifact's index.html in a fresh headless Chromium: launch seconds, seconds
    from opening the page to its result (one run after the page's warm-up run), the page's
    own load time, then the median time per run over 20 runs in a second page."""
    sys.path.insert(0, str(ROOT / "tests"))  # tests/devices.py, not benchmarks/devices.py
    try:
        from test_export_browser import DevTools, chromium, run_page
    finally:
        sys.path.remove(str(ROOT / "tests"))
    executable = chromium()
    if executable is None:
        return {"ok": False, "error": "Chromium is not installed"}
    handler = functools.partial(_Quiet, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    try:
        with tempfile.TemporaryDirectory(prefix="neurenix-chromium-") as profile:
            t = time.perf_counter()
            browser = DevTools(executable, profile)
            try:
                browser.call("Browser.getVersion", seconds=60)
                launch = time.perf_counter() - t
                t = time.perf_counter()
                cold = run_page(browser, f"{url}?runs=1", seconds=120)
                to_result = time.perf_counter() - t
                warm = run_page(browser, f"{url}?runs=20", seconds=120)
            finally:
                browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    if cold.get("status") != "ok" or warm.get("status") != "ok":
        return {"ok": False, "error": str(cold.get("error") or warm.get("error"))[:200]}
    scale = max(float(np.abs(expected).max()), 1e-30)
    err = float(warm["max_abs_diff"]) / scale
    return {"ok": err <= TOLERANCE, "launch_s": launch, "page_to_result_s": to_result,
            "page_load_ms": float(cold.get("load_ms", float("nan"))),
            "run_ms": float(warm["time_ms_median"]), "err": err,
            "adapter": warm.get("adapter", {})}


# ---- the run ------------------------------------------------------------------------------------


def bench_model(kind: str, opts: argparse.Namespace, root: Path, log: Any) -> dict:
    import workloads

    import neurenix
    from neurenix.export import export

    name = MODELS[kind]
    w = workloads.WORKLOADS[name]
    tiny = opts.smoke
    model = workloads.neurenix_model(w, tiny=tiny)
    model.eval()
    inputs, _ = workloads.make_inputs(w, tiny=tiny)
    with neurenix.no_grad():
        expected = model(*[neurenix.Tensor(x) for x in inputs]).numpy()
    result: dict[str, Any] = {"workload": name, "description": w.description,
                              "artifacts": {}}
    dirs: dict[str, Path] = {}
    for target in opts.targets:
        missing = toolchain_missing(target)
        if missing:
            result["artifacts"][target] = {"ok": False, "skipped": missing}
            continue
        print(f"[export] {kind}: exporting for {target}", file=log, flush=True)
        t = time.perf_counter()
        try:
            directory = export(model, tuple(neurenix.Tensor(x) for x in inputs), target,
                               root / kind / target)
        except Exception as e:  # noqa: BLE001 - reported in the table
            result["artifacts"][target] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:200]}
            continue
        files = artifact_files(directory)
        dirs[target] = directory
        result["artifacts"][target] = {"ok": True, "export_s": time.perf_counter() - t,
                                       "files": files, "total": sum(n for _, n in files)}
    if "cpu" not in dirs:
        return result
    directory = dirs["cpu"]
    work = root / kind / "c"
    work.mkdir(parents=True, exist_ok=True)
    files = []
    for k, x in enumerate(inputs):
        files.append(work / f"in{k}.bin")
        np.ascontiguousarray(x).tofile(files[-1])
    binary = build_driver(directory, work)
    want = float(expected.astype(np.float64).sum())
    scale = max(float(np.abs(expected).max()), 1e-30) * expected.size
    print(f"[export] {kind}: timing", file=log, flush=True)
    timed, _ = run_driver(binary, directory, files, opts.runs, 10)
    result["c_api"] = {"ok": abs(timed["sum"] - want) <= TOLERANCE * scale,
                       "s": timed["median_ns"] * 1e-9, "min_s": timed["min_ns"] * 1e-9,
                       "runs": timed["runs"]}
    colds = [run_driver(binary, directory, files, 0, 0) for _ in range(max(opts.cold, 1))]
    result["c_cold"] = {"process_s": statistics.median(w for _, w in colds),
                        "load_s": statistics.median(c["load_ns"] for c, _ in colds) * 1e-9,
                        "first_run_s": statistics.median(c["first_run_ns"]
                                                         for c, _ in colds) * 1e-9,
                        "processes": len(colds)}
    result["python"] = python_latencies(name, tiny, directory, inputs, expected, opts)
    if "webgpu" in dirs and not opts.no_browser:
        print(f"[export] {kind}: browser cold start", file=log, flush=True)
        try:
            result["browser"] = browser_cold_start(dirs["webgpu"], expected)
        except Exception as e:  # noqa: BLE001 - reported in the table
            result["browser"] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:200]}
    return result


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def cell(r: dict | None, key: str = "s") -> str:
    if not r:
        return "-"
    if "error" in r:
        return f"error: {r['error']}"
    return fmt_ms(r[key]) + ("" if r.get("ok", True) else " (WRONG)")


def tables(report: dict) -> str:
    lines = []
    out = lines.append
    out("### Artifact size\n")
    out("| model | target | total | files | export s |")
    out("| --- | --- | --- | --- | --- |")
    for kind, r in report["models"].items():
        for target, a in r["artifacts"].items():
            if not a["ok"]:
                why = a.get("skipped") or a.get("error")
                out(f"| {kind} | {target} | - | {'skipped' if 'skipped' in a else 'error'}: "
                    f"{why} | - |")
                continue
            files = ", ".join(f"{n} {size(b)}" for n, b in a["files"])
            out(f"| {kind} | {target} | {size(a['total'])} | {files} | "
                f"{a['export_s']:.1f} |")
    out("\n### Latency per run (ms, median)\n")
    out("| model | C API | runtime.load (Python) | neurenix.compile | PyTorch eager | "
        "onnxruntime |")
    out("| --- | --- | --- | --- | --- | --- |")
    for kind, r in report["models"].items():
        p = r.get("python", {})
        out(f"| {kind} | {cell(r.get('c_api'))} | {cell(p.get('runtime_load'))} | "
            f"{cell(p.get('neurenix_compile'))} | {cell(p.get('torch_eager'))} | "
            f"{cell(p.get('onnxruntime'))} |")
    out("\n### Cold start (ms)\n")
    out("| model | C: fresh process (exec to exit) | C: nx_model_load | C: first run | "
        "browser: launch | browser: open page to result | page's load_ms | browser: per "
        "run |")
    out("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, r in report["models"].items():
        c = r.get("c_cold") or {}
        b = r.get("browser")
        if b is None:
            browser = ["skipped"] * 4
        elif "error" in b:
            browser = [f"error: {b['error']}", "-", "-", "-"]
        else:
            browser = [fmt_ms(b["launch_s"]), fmt_ms(b["page_to_result_s"]),
                       f"{b['page_load_ms']:.0f}",
                       f"{b['run_ms']:.2f}" + ("" if b["ok"] else " (WRONG)")]
        out(f"| {kind} | {fmt_ms(c.get('process_s'))} | {fmt_ms(c.get('load_s'))} | "
            f"{fmt_ms(c.get('first_run_s'))} | " + " | ".join(browser) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    set_threads(opts.threads)
    import bench

    start_busy, start_own, start = (bench.machine_cpu_seconds(), bench.own_cpu_seconds(),
                                    time.perf_counter())
    report: dict[str, Any] = {"machine": bench.machine(), "loadavg_before": os.getloadavg(),
                              "threads": opts.threads,
                              "smoke": opts.smoke, "models": {}}
    with tempfile.TemporaryDirectory(prefix="neurenix-export-bench-") as tmp:
        root = opts.keep or Path(tmp)
        for kind in opts.models:
            report["models"][kind] = bench_model(kind, opts, root, sys.stderr)
    # the C drivers and the browser are child processes: their CPU counts as "other" here,
    # so this over-reports; it is an upper bound on what else ran meanwhile
    report["other_load_cores"] = bench.other_load(start_busy, start_own, start)
    report["wall_s"] = time.perf_counter() - start
    m = report["machine"]
    print(f"{m['cpu']}, {m['cores']} cores; {opts.threads} thread(s) everywhere; "
          f"{report['wall_s']:.0f} s; load average before the run "
          f"{report['loadavg_before'][0]:.2f}; CPU used outside this process during the run "
          f"(includes its C drivers and Chromium): {report['other_load_cores'] or 0:.2f} "
          "cores\n")
    print(tables(report))
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=1, default=str))
    bad = [k for k, r in report["models"].items()
           if not r.get("c_api", {}).get("ok", False)
           or not all(v.get("ok") for v in r.get("python", {}).values())]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
