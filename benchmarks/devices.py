"""The spec models on the OpenCL and WebGPU devices next to the CPU: correctness and overhead.

    python benchmarks/devices.py [--only NAME[,NAME]] [--devices cpu,opencl,webgpu]
                                 [--seconds 0.5] [--tiny] [--json out.json] [--markdown]
                                 [--timeout 600]

Here the devices are software ones (PoCL: OpenCL on the CPU; Mesa lavapipe: Vulkan, under
WebGPU, on the CPU), so the figures say what a call costs around the kernels (launches,
submissions, uploads, read-backs) and whether the device computes what the CPU does: they are
not GPU speed claims.  For every inference workload of `workloads.py`, and for `overhead` (one
tiny elementwise kernel on a 1-element tensor), each device in its own subprocess:

- `kernels`: launches per call (the program's kernels with a non-empty grid);
- `compile s`: the first call (trace, compile, load);
- `call`: a compiled call on device-resident tensors until its work is done (the frontend's
  path: `run_device`, then the runtime's `synchronize()`); on the CPU the call itself;
- `call+read`: the same with the output read back to the host (`.numpy()`);
- `run_device`: the runtime alone on device buffers, then `synchronize()`;
- `run`: the runtime on host arrays (every input, weights included, uploaded and every output
  read back);
- `slowest kernel ms`: the kernel taking longest when each is launched alone and waited for
  (`Executable.profile`);
- `err`: the largest difference from eager CPU, relative to the eager output's largest value.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench import measure, one_line, render, run_child
from workloads import WORKLOADS, make_inputs, matmul, neurenix_eltwise, neurenix_model

DEVICES = ("cpu", "opencl", "webgpu")
NAMES = ["overhead"] + [name for name, w in WORKLOADS.items() if not w.train]
TOLERANCE = 1e-3


def _model(name: str, tiny: bool) -> tuple[Any, Any, list[np.ndarray]]:
    """(module or None, the function to compile, the host inputs) of a workload."""
    if name == "overhead":
        return None, lambda x: x + 1, [np.ones((1,), np.float32)]
    w = WORKLOADS[name]
    inputs, _ = make_inputs(w, tiny)
    model = neurenix_model(w, tiny)
    if model is not None:
        model.eval()
        return model, model, inputs
    return None, neurenix_eltwise if w.family == "eltwise" else matmul, inputs


def _runtime_times(executable: Any, runtime: Any, seconds: float) -> dict:
    """Kernel launches, and the runtime alone: `run_device` (+ synchronize) and `run`, on
    arbitrary values of the program's input shapes (time does not depend on values)."""
    program = getattr(executable, "program", None)
    if program is None or not hasattr(program, "kernels"):
        return {}
    out: dict = {"kernels": sum(1 for k in program.kernels if 0 not in k.grid)}
    if program.target == "cpu":
        out["kernels"] = len(program.kernels)
    host = [np.zeros(t.shape, t.dtype) for t in program.inputs]
    out["run_s"] = measure(lambda: executable.run(host), seconds)[0]
    if hasattr(executable, "run_device"):
        buffers = [runtime.Buffer.from_host(x) for x in host]

        def device_step() -> None:
            executable.run_device(buffers)
            runtime.synchronize()

        out["run_device_s"] = measure(device_step, seconds)[0]
        times = executable.profile(host, repeat=2)
        if times:
            out["slowest"] = max(times, key=lambda nt: nt[1])
    return out


def run_cell(name: str, device: str, seconds: float, tiny: bool) -> dict:
    """Compile and time one workload on one device (in a worker process)."""
    from neurenix.runtime import backend_module

    import neurenix

    result: dict = {"ok": True, "workload": name, "device": device}
    module, fn, inputs = _model(name, tiny)
    with neurenix.no_grad():
        want = fn(*[neurenix.Tensor(x) for x in inputs]).numpy()
        runtime = backend_module(device) if device != "cpu" else None
        if runtime is not None and not runtime.available():
            return {"ok": False, "error": f"{device}: {runtime.unavailable_reason()}"}
        if module is not None and device != "cpu":
            module.to(device)
        xs = [neurenix.Tensor(x) if device == "cpu" else neurenix.Tensor(x).to(device)
              for x in inputs]
        call = neurenix.compile(fn)
        t = time.perf_counter()
        got = call(*xs).numpy()
        result["compile_s"] = time.perf_counter() - t
        scale = max(float(np.abs(want).max()), 1e-30)
        result["err"] = float(np.abs(got.astype(np.float64) - want).max()) / scale
        sync = runtime.synchronize if runtime is not None else (lambda: None)

        def step() -> None:
            call(*xs)
            sync()

        result["call_s"] = measure(step, seconds)[0]
        result["call_read_s"] = measure(lambda: call(*xs).numpy(), seconds)[0]
        executable = getattr(getattr(call, "_last", None), "forward", None)
        result.update(_runtime_times(executable, runtime, seconds))
        result["kernels"] = result.get("kernels", call.stats().get("kernels"))
    return result


def spawn(name: str, device: str, opts: argparse.Namespace, cache: Path) -> dict:
    """One cell in a fresh interpreter: its result, or an error that says what failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", name, device,
           "--seconds", str(opts.seconds)] + (["--tiny"] if opts.tiny else [])
    return run_child(cmd, cache, opts.timeout)


def fmt(seconds: float | None) -> str:
    """Milliseconds with three significant digits, or "-"."""
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def rows(results: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """The report table (a row per workload and device) and the errors it refers to."""
    header = ["workload", "device", "kernels", "compile s", "call ms", "call+read ms",
              "run_device ms", "run ms", "slowest kernel ms", "err"]
    table, errors = [], []
    for r in results:
        if not r.get("ok"):
            errors.append(f"[{len(errors) + 1}] {r['workload']} on {r['device']}: "
                          f"{r.get('error', '?')}")
            table.append([r["workload"], r["device"], f"error [{len(errors)}]"] + [""] * 7)
            continue
        err = r["err"]
        table.append([r["workload"], r["device"], str(r.get("kernels", "-")),
                      f"{r['compile_s']:.2f}", fmt(r["call_s"]), fmt(r["call_read_s"]),
                      fmt(r.get("run_device_s")), fmt(r.get("run_s")),
                      f"{r['slowest'][0]} {fmt(r['slowest'][1])}" if r.get("slowest") else "-",
                      f"{err:.1e}" + ("" if err <= TOLERANCE else " (WRONG)")])
    return header, table, errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help=f"comma-separated workloads of {NAMES}")
    p.add_argument("--devices", default=",".join(DEVICES))
    p.add_argument("--seconds", type=float, default=0.5, help="timing per figure")
    p.add_argument("--tiny", action="store_true", help="the smoke-test sizes")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--timeout", type=float, default=600, help="seconds per cell")
    p.add_argument("--cell", nargs=2, metavar=("WORKLOAD", "DEVICE"), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.cell:
        try:
            result = run_cell(*opts.cell, opts.seconds, opts.tiny)
        except Exception as e:
            result = {"ok": False, "error": one_line(f"{type(e).__name__}: {e}")}
        result.update(workload=opts.cell[0], device=opts.cell[1])
        Path(opts.result).write_text(json.dumps(result))
        return 0
    names = opts.only.split(",") if opts.only else NAMES
    devices = opts.devices.split(",")
    for value, known, what in ((names, NAMES, "workload"), (devices, DEVICES, "device")):
        unknown = sorted(set(value) - set(known))
        if unknown:
            sys.exit(f"devices.py: unknown {what} {unknown}; known: {list(known)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="neurenix-devices-") as cache:
        for name in names:
            for device in devices:
                r = spawn(name, device, opts, Path(cache))
                r.update(workload=name, device=device)
                print(f"[devices] {name} on {device}: "
                      + (f"{fmt(r['call_s'])} ms/call" if r.get("ok") else r["error"]),
                      file=sys.stderr, flush=True)
                results.append(r)
    header, table, errors = rows(results)
    print(render(header, table, opts.markdown))
    for line in errors:
        print(line)
    if opts.json:
        Path(opts.json).write_text(json.dumps({"tiny": opts.tiny, "results": results},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
