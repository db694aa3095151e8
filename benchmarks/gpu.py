"""Neurenix on a GPU device against PyTorch on the same GPU: bandwidth, GEMM, the spec models.

    python benchmarks/gpu.py [--device cuda] [--only NAME[,NAME]] [--seconds 0.3] [--tiny]
                             [--peers eager,compile] [--json out.json] [--markdown]
                             [--timeout 150]

Cells (each workload in its own subprocess, so a crash or hang loses only that row; the JSON
is rewritten after every cell, so a run killed from outside keeps what finished):

- `copy`: torch device-to-device copy of a large float32 tensor, GB/s of bytes read + written
  (the bandwidth the elementwise chain is held against);
- `eltwise`: gelu_tanh(x*a+b)*sigmoid(x) at (16384, 8192); GB/s of x read + output written,
  and that as a fraction of the copy bandwidth (target >= 80%);
- `gemm`: float32 4096^3 matmul; TFLOP/s against torch with TF32 off (target >= 70%), and
  Neurenix with `neurenix.backends.allow_tf32` against torch with TF32 on (target >= 50%);
- the spec models (`workloads.py`): inference, and whole training steps (forward, loss,
  backward, optimizer step) compiled as one program; target for training: no slower than
  torch eager.

Every timed call is followed by the device's synchronize.  `err` is the largest difference of
the Neurenix output (the loss after one step, for training) from Neurenix eager on the CPU,
relative to the largest magnitude of that reference.  When torch has no device of the kind
(no "opencl", "webgpu"), the torch columns run on torch's CPU and the table says so.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench import measure, one_line, render, run_child
from workloads import (
    ELTWISE_SHAPE,
    GEMM_N,
    WORKLOADS,
    Workload,
    make_inputs,
    matmul,
    neurenix_eltwise,
    neurenix_model,
    torch_model,
)

MODELS = ("mlp_b64", "cnn_infer", "lstm_infer", "mlp_train_b64", "cnn_train", "lstm_train")
NAMES = ("copy", "eltwise", "gemm") + MODELS
PEERS = ("eager", "compile")
COPY_ELEMENTS = {False: 256 * 2**20, True: 2**20}
GPU_ELTWISE = {False: (16384, 8192), True: ELTWISE_SHAPE[True]}
GPU_GEMM = {False: 4096, True: GEMM_N[True]}
TOLERANCE = 1e-3
TARGETS = {"eltwise": 0.8, "gemm": 0.7, "gemm_tf32": 0.5, "train": 1.0}


def torch_device(device: str) -> str:
    """The torch device the peers run on: the same kind when torch has it, else "cpu"."""
    import torch

    if device == "cuda":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device if device in ("cpu", "mps", "xpu") else "cpu"


def _workload(name: str) -> Workload:
    """The workloads.py entry of a cell (eltwise and gemm: reshaped below)."""
    return WORKLOADS["gemm_1024" if name == "gemm" else name]


def cell_inputs(name: str, tiny: bool) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Host inputs (and training target) of a cell, at the GPU sizes for eltwise and gemm."""
    rng = np.random.default_rng(0)
    if name == "eltwise":
        rows, cols = GPU_ELTWISE[tiny]
        return [rng.standard_normal(s, dtype=np.float32) for s in
                ((rows, cols), (cols,), (cols,))], None
    if name == "gemm":
        n = GPU_GEMM[tiny]
        return [rng.standard_normal((n, n), dtype=np.float32) for _ in range(2)], None
    return make_inputs(WORKLOADS[name], tiny)


def cell_work(name: str, tiny: bool) -> tuple[str, float] | None:
    """(unit, amount per call) of a cell's rate: GB moved or TFLOP done."""
    if name == "copy":
        return "GB/s", 2 * COPY_ELEMENTS[tiny] * 4 / 1e9
    if name == "eltwise":
        rows, cols = GPU_ELTWISE[tiny]
        return "GB/s", 2 * rows * cols * 4 / 1e9
    if name == "gemm":
        return "TFLOP/s", 2 * GPU_GEMM[tiny] ** 3 / 1e12
    return None


# ---- Neurenix -------------------------------------------------------------------------------

def _neurenix_step(name: str, device: str, tiny: bool) -> Callable[[], Any]:
    """A compiled call of the cell's Neurenix program on `device` (a whole training step for
    training workloads); it returns the output (or the loss) on `device`."""
    import neurenix

    w = _workload(name)
    inputs, target = cell_inputs(name, tiny)
    on = (lambda t: t) if device == "cpu" else (lambda t: t.to(device))
    xs = [on(neurenix.Tensor(x)) for x in inputs]
    model = neurenix_model(w, tiny)
    if model is not None:
        model.to(device)
    if not w.train:
        fn = model if model is not None else (neurenix_eltwise if name == "eltwise" else matmul)
        if model is not None:
            model.eval()
        call = neurenix.compile(fn)

        def infer() -> Any:
            with neurenix.no_grad():
                return call(*xs)

        return infer
    from neurenix.nn import CrossEntropyLoss, MSELoss
    from neurenix.optim import SGD, Adam

    model.train()
    criterion = CrossEntropyLoss() if w.loss == "cross_entropy" else MSELoss()
    params = list(model.parameters())
    opt = SGD(params, lr=0.01, momentum=0.9) if w.optimizer == "sgd" else Adam(params, lr=1e-3)
    y = on(neurenix.Tensor(target))

    def train_step(*args: Any) -> Any:
        opt.zero_grad()
        loss = criterion(model(*args[:-1]), args[-1])
        loss.backward()
        opt.step()
        return loss

    call = neurenix.compile(train_step)
    return lambda: call(*xs, y)


def _reference(name: str, tiny: bool) -> np.ndarray:
    """Neurenix eager on the CPU: the output, or the loss of the first training step."""
    import neurenix

    w = _workload(name)
    inputs, target = cell_inputs(name, tiny)
    xs = [neurenix.Tensor(x) for x in inputs]
    model = neurenix_model(w, tiny)
    if not w.train:
        fn = model if model is not None else (neurenix_eltwise if name == "eltwise" else matmul)
        if model is not None:
            model.eval()
        with neurenix.no_grad():
            return fn(*xs).numpy()
    from neurenix.nn import CrossEntropyLoss, MSELoss

    criterion = CrossEntropyLoss() if w.loss == "cross_entropy" else MSELoss()
    return np.asarray(criterion(model(*xs), neurenix.Tensor(target)).item())


def run_neurenix(name: str, device: str, seconds: float, tiny: bool,
                 tf32: bool = False) -> dict:
    """First call (compile) time, synchronized time per call, and the error from CPU eager
    (under `neurenix.backends.allow_tf32 = tf32`)."""
    import neurenix

    neurenix.backends.allow_tf32 = tf32
    try:
        return _run_neurenix(name, device, seconds, tiny)
    finally:
        neurenix.backends.allow_tf32 = False


def _run_neurenix(name: str, device: str, seconds: float, tiny: bool) -> dict:
    from neurenix.runtime import backend_module

    sync = (lambda: None) if device == "cpu" else backend_module(device).synchronize
    if device != "cpu" and not backend_module(device).available():
        raise RuntimeError(f"{device}: {backend_module(device).unavailable_reason()}")
    step = _neurenix_step(name, device, tiny)
    t = time.perf_counter()
    out = step()
    got = np.asarray(out.item() if _workload(name).train else out.numpy(), np.float64)
    compile_s = time.perf_counter() - t
    want = _reference(name, tiny)
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got - want).max()) / scale

    def timed() -> None:
        step()
        sync()

    return {"ok": True, "s": measure(timed, seconds)[0], "compile_s": compile_s, "err": err}


# ---- PyTorch --------------------------------------------------------------------------------

def _torch_step(name: str, dev: str, tiny: bool, compiled: bool) -> Callable[[], Any]:
    """A torch call of the cell on `dev` (eager or torch.compile of the model)."""
    import torch

    if name == "copy":
        src = torch.ones(COPY_ELEMENTS[tiny], dtype=torch.float32, device=dev)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)
    w = _workload(name)
    inputs, target = cell_inputs(name, tiny)
    xs = [torch.from_numpy(x).to(dev) for x in inputs]
    model = torch_model(w, tiny).to(dev)
    call = torch.compile(model) if compiled else model
    if not w.train:
        model.eval()

        def infer() -> Any:
            with torch.no_grad():
                return call(*xs)

        return infer
    model.train()
    criterion = torch.nn.CrossEntropyLoss() if w.loss == "cross_entropy" else torch.nn.MSELoss()
    opt = (torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if w.optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=1e-3))
    y = torch.from_numpy(target).to(dev)

    def train() -> Any:
        opt.zero_grad()
        loss = criterion(call(*xs), y)
        loss.backward()
        opt.step()
        return loss

    return train


def run_torch(name: str, dev: str, seconds: float, tiny: bool, compiled: bool,
              tf32: bool = False) -> dict:
    """First call and synchronized time per call of a torch cell (TF32 only when asked)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    step = _torch_step(name, dev, tiny, compiled)
    t = time.perf_counter()
    step()
    sync()
    compile_s = time.perf_counter() - t

    def timed() -> None:
        step()
        sync()

    return {"ok": True, "s": measure(timed, seconds)[0], "compile_s": compile_s}


def run_cell(name: str, device: str, seconds: float, tiny: bool, peers: list[str]) -> dict:
    """Every framework of one cell, each caught on its own: a failure is recorded, not fatal."""
    dev = torch_device(device)
    jobs: dict[str, Callable[[], dict]] = {}
    if name != "copy":
        jobs["neurenix"] = lambda: run_neurenix(name, device, seconds, tiny)
    if "eager" in peers or name == "copy":
        jobs["torch_eager"] = lambda: run_torch(name, dev, seconds, tiny, False)
    if name == "gemm" and dev == "cuda":
        jobs["torch_tf32"] = lambda: run_torch(name, dev, seconds, tiny, False, tf32=True)
        if device == "cuda":
            jobs["neurenix_tf32"] = lambda: run_neurenix(name, device, seconds, tiny, True)
    if "compile" in peers and name != "copy":
        jobs["torch_compile"] = lambda: run_torch(name, dev, seconds, tiny, True)
    result: dict = {"ok": True, "torch_device": dev}
    for framework, job in jobs.items():
        try:
            result[framework] = job()
        except Exception as e:
            result[framework] = {"ok": False, "error": one_line(f"{type(e).__name__}: {e}")}
        print(f"[gpu] {name} {framework}: " + (f"{result[framework]['s'] * 1e3:.3g} ms"
              if result[framework]["ok"] else result[framework]["error"]),
              file=sys.stderr, flush=True)
    return result


# ---- orchestrating --------------------------------------------------------------------------

def spawn(name: str, opts: argparse.Namespace, cache: Path) -> dict:
    """One cell in a fresh interpreter: its result, or an error that says what failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", name, "--device",
           opts.device, "--seconds", str(opts.seconds), "--peers", opts.peers] + (
               ["--tiny"] if opts.tiny else [])
    return run_child(cmd, cache, opts.timeout, echo=lambda err: err if opts.verbose else "".join(
        x + "\n" for x in err.splitlines() if x.startswith("[gpu]")))


def _ms(r: dict | None) -> str:
    """A framework's milliseconds, "error" or "-"."""
    if not r:
        return "-"
    if not r.get("ok"):
        return "error"
    ms = r["s"] * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _rate(name: str, r: dict | None, tiny: bool) -> float | None:
    """GB/s or TFLOP/s of a framework's result (None without a rate or a result)."""
    work = cell_work(name, tiny)
    return work[1] / r["s"] if work and r and r.get("ok") else None


def _target(name: str, res: dict, copy_gbs: float | None, tiny: bool) -> str:
    """How the Neurenix cell stands against its target."""
    mine = res.get("neurenix", {})
    if not mine.get("ok"):
        return "-"
    if name == "eltwise" and copy_gbs:
        frac = _rate(name, mine, tiny) / copy_gbs
        return f"{frac:.0%} of copy (>= {TARGETS['eltwise']:.0%})" + (
            "" if frac >= TARGETS["eltwise"] else " MISS")
    if name == "gemm" and res.get("torch_eager", {}).get("ok"):
        frac = res["torch_eager"]["s"] / mine["s"]
        text = f"{frac:.0%} of fp32 torch (>= {TARGETS['gemm']:.0%})" + (
            "" if frac >= TARGETS["gemm"] else " MISS")
        tf32 = res.get("neurenix_tf32", {})
        if tf32.get("ok") and res.get("torch_tf32", {}).get("ok"):
            frac = res["torch_tf32"]["s"] / tf32["s"]
            text += f"; TF32 {frac:.0%} of torch's (>= {TARGETS['gemm_tf32']:.0%})" + (
                "" if frac >= TARGETS["gemm_tf32"] else " MISS")
        return text
    if WORKLOADS.get(name, _workload("gemm")).train and res.get("torch_eager", {}).get("ok"):
        frac = res["torch_eager"]["s"] / mine["s"]
        return f"{frac:.2f}x eager (>= 1x)" + ("" if frac >= TARGETS["train"] else " MISS")
    return ""


def rows(report: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """The table (a row per cell) and the errors its cells refer to."""
    tiny, results = report["tiny"], report["results"]
    header = ["workload", "torch on", "Neurenix ms", "torch eager ms", "torch.compile ms",
              "torch TF32 ms", "Neurenix TF32 ms", "Neurenix rate", "best peer rate",
              "vs best peer", "target", "compile s", "err"]
    copy_gbs = _rate("copy", results.get("copy", {}).get("torch_eager"), tiny)
    table, errors = [], []

    def ref(where: str, r: dict) -> str:
        errors.append(f"[{len(errors) + 1}] {where}: {r.get('error', '?')}")
        return f"error [{len(errors)}]"

    for name, res in results.items():
        if not res.get("ok"):
            table.append([name, "-", ref(name, res)] + [""] * (len(header) - 3))
            continue
        cells = {fw: (_ms(res.get(fw)) if res.get(fw, {"ok": True}).get("ok")
                      else ref(f"{name} {fw}", res[fw]))
                 for fw in ("neurenix", "torch_eager", "torch_compile", "torch_tf32",
                            "neurenix_tf32")}
        peers = [res[fw] for fw in ("torch_eager", "torch_compile") if res.get(fw, {}).get("ok")]
        best = min(peers, key=lambda r: r["s"]) if peers else None
        mine = res.get("neurenix", {})
        unit = (cell_work(name, tiny) or ("", 0))[0]
        rate = _rate(name, mine, tiny)
        peer_rate = _rate(name, best, tiny)
        err = mine.get("err")
        table.append([
            name, res["torch_device"], cells["neurenix"], cells["torch_eager"],
            cells["torch_compile"], cells["torch_tf32"], cells["neurenix_tf32"],
            f"{rate:.3g} {unit}" if rate else "-",
            f"{peer_rate:.3g} {unit}" if peer_rate else "-",
            f"{best['s'] / mine['s']:.2f}x" if best and mine.get("ok") else "-",
            _target(name, res, copy_gbs, tiny),
            f"{mine['compile_s']:.2f}" if mine.get("ok") else "-",
            "-" if err is None else f"{err:.1e}" + ("" if err <= TOLERANCE else " (WRONG)")])
    return header, table, errors


def environment(device: str) -> dict:
    """What the figures were measured on."""
    info: dict = {"device": device, "python": sys.version.split()[0]}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception as e:
        info["torch"] = one_line(f"unavailable: {e}")
    return info


def device_missing(device: str) -> str:
    """Why Neurenix cannot run on `device` here ("" when it can): no point timing the peers."""
    if device == "cpu":
        return ""
    try:
        from neurenix.runtime import backend_module

        runtime = backend_module(device)
        return "" if runtime.available() else f"{device}: {runtime.unavailable_reason()}"
    except Exception as e:
        return one_line(f"{device}: {type(e).__name__}: {e}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="the Neurenix device kind")
    p.add_argument("--only", help=f"comma-separated cells of {list(NAMES)}")
    p.add_argument("--seconds", type=float, default=0.3, help="timing per figure")
    p.add_argument("--tiny", action="store_true", help="the smoke-test sizes")
    p.add_argument("--peers", default=",".join(PEERS), help="torch peers: eager,compile")
    p.add_argument("--json", help="write the results here (after every cell)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--timeout", type=float, default=150, help="seconds per cell")
    p.add_argument("--verbose", action="store_true", help="pass the cells' stderr through")
    p.add_argument("--cell", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    peers = [p for p in opts.peers.split(",") if p]
    if opts.cell:
        try:
            result = run_cell(opts.cell, opts.device, opts.seconds, opts.tiny, peers)
        except Exception as e:
            result = {"ok": False, "error": one_line(f"{type(e).__name__}: {e}")}
        Path(opts.result).write_text(json.dumps(result))
        return 0
    names = opts.only.split(",") if opts.only else list(NAMES)
    unknown = sorted(set(names) - set(NAMES)) + sorted(set(peers) - set(PEERS))
    if unknown:
        sys.exit(f"gpu.py: unknown cell or peer {unknown}; cells: {list(NAMES)}, "
                 f"peers: {list(PEERS)}")
    if "eltwise" in names and "copy" not in names:
        names.insert(0, "copy")  # the bandwidth the chain is measured against
    report: dict = {"tiny": opts.tiny, "env": environment(opts.device), "results": {}}
    missing = device_missing(opts.device)
    if missing:
        report["error"] = missing
        if opts.json:
            Path(opts.json).write_text(json.dumps(report, indent=1))
        print(f"gpu.py: {missing}; nothing measured")
        return 0
    with tempfile.TemporaryDirectory(prefix="neurenix-gpu-") as cache:
        for name in names:
            report["results"][name] = spawn(name, opts, Path(cache))
            if opts.json:
                Path(opts.json).write_text(json.dumps(report, indent=1))
    header, table, errors = rows(report)
    print("; ".join(f"{k}: {v}" for k, v in report["env"].items()))
    print()
    print(render(header, table, opts.markdown))
    for line in errors:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
