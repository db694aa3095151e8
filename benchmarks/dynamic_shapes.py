"""Shape-polymorphic programs (issue 13): one dynamic program against static per-shape ones.

    python benchmarks/dynamic_shapes.py [--only mlp,cnn,lstm] [--modes infer,train]
                                        [--sizes 1,7,32,64,100] [--trace N]
                                        [--rounds 10] [--seconds 0.1]
                                        [--cv-epochs 20] [--no-cv] [--quick]
                                        [--json out.json] [--markdown] [--timeout 600]

For each spec model of `workloads.py` (the MLP 784-512-512-10, the CNN, the 2-layer LSTM),
inference (`mlp_b64`, `cnn_infer`, `lstm_infer`: the model under no_grad) and the whole
training step (`mlp_train_b64`, `cnn_train`, `lstm_train`: zero_grad, forward, loss,
backward, optimizer step, compiled as one function), one subprocess per (model, step)
(`bench.run_child`, 2 threads, disk compile cache off so every compile is a real one):

- `neurenix.compile(f, dynamic=True)`: ONE function called at every batch size, first at
  `--trace` (default: the first size >= 2 of `--sizes`; the size it is traced at, whose value
  the compiler's heuristics read), then the other sizes >= 2, then sizes 0 and 1 (which get
  their own static program by design);
- `neurenix.compile(f, dynamic=False)`: one static program per size.

First pass, one call per size in that order: the first call of each function at each size is
timed on its own, the programs each holds are counted (`_cache`), and outputs are checked
(inference: dynamic and static against eager, at every size; training: three identical
models, eager, dynamic and static, take the same steps: the losses and, at the end, every
parameter are compared).  Then the timing, per size: after a warm-up, `--rounds` rounds each
time the dynamic and the static function for `--seconds` (`bench.sample`), alternating which
goes first, so that a slow patch of the machine hits both; "dynamic / static" is the median
over rounds of the ratio of the two medians of a round, the ms columns the median of every
sample.  The issue's target: dynamic / static <= 1.10 at every size.

Then (`--no-cv` skips it) a 5-fold cross-validation (`sklearn.model_selection.cross_validate`)
of `neurenix.sklearn.NeuralNetClassifier` (backend "compiled", hidden layer 100, Adam,
batch size 200, `--cv-epochs` epochs) on the digits dataset, with a fresh disk compile cache
shared by the folds (as one script's cross-validation would have): per fold the fit time,
accuracy, and the programs its training step and its forward pass compiled (whatever
`dynamic` the estimator passes to `neurenix.compile`).

`--quick` is a shorter run (3 rounds of 0.03 s, 5-epoch folds): about 1.5-2 minutes; the
full run about 2.5 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench import (
    NOISY,
    fmt_ms,
    machine,
    machine_cpu_seconds,
    one_line,
    other_load,
    own_cpu_seconds,
    render,
    run_child,
    run_job,
    sample,
)
from workloads import LSTM_SIZES, MLP_SIZES, THREADS, WORKLOADS, neurenix_model

MODELS = ("mlp", "cnn", "lstm")
MODES = ("infer", "train")
WORKLOAD_NAMES = {("mlp", "infer"): "mlp_b64", ("mlp", "train"): "mlp_train_b64",
                  ("cnn", "infer"): "cnn_infer", ("cnn", "train"): "cnn_train",
                  ("lstm", "infer"): "lstm_infer", ("lstm", "train"): "lstm_train"}
SIZES = (1, 7, 32, 64, 100)
TARGET = 1.10  # dynamic / static at every size
TOLERANCE = 1e-4  # outputs and losses, dynamic vs static parameters: max |a - b| / max |b|
PARAM_TOLERANCE = 2e-3  # parameters after training, compiled vs eager


# ---- one (model, step) cell (inside a worker) -----------------------------------------------

def programs(f: Any) -> int:
    """How many programs a compiled function holds."""
    return sum(len(v) for v in f._cache.values())


def batch_inputs(family: str, n: int, train: bool, loss: str) -> tuple[np.ndarray, Any]:
    """The model's input at batch size n (and the training target), seeded by n."""
    rng = np.random.default_rng(1000 + n)
    if family == "mlp":
        x, classes = rng.standard_normal((n, MLP_SIZES[False][0]), dtype=np.float32), 10
    elif family == "cnn":
        x, classes = rng.standard_normal((n, 3, 28, 28), dtype=np.float32), 10
    else:
        seq, inp, _, out = LSTM_SIZES[False]
        x, classes = rng.standard_normal((n, seq, inp), dtype=np.float32), out
    if not train:
        return x, None
    if loss == "cross_entropy":
        return x, rng.integers(0, classes, size=(n,), dtype=np.int64)
    return x, rng.standard_normal((n, classes), dtype=np.float32)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (inf when the shapes differ)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    if not got.size:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))


def training_step(w: Any) -> tuple[Any, Any]:
    """A fresh seeded model (identical weights every time) and its step function."""
    from neurenix.nn import CrossEntropyLoss, MSELoss
    from neurenix.optim import SGD, Adam

    model = neurenix_model(w)
    model.train()
    criterion = CrossEntropyLoss() if w.loss == "cross_entropy" else MSELoss()
    if w.optimizer == "sgd":
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        opt = Adam(model.parameters(), lr=1e-3)

    def step(x: Any, y: Any) -> Any:
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, step


def _kernels(f: Any) -> dict:
    """What the program of f's latest call is: symbolic or static, its kernels."""
    stats = f.stats()
    dyn = stats.get("dynamic")
    return {"symbolic": dyn is not None, "kernels": stats.get("kernels"),
            "symbols": dyn.get("symbols") if dyn else None}


def order_sizes(sizes: list[int], trace: int | None = None) -> list[int]:
    """The size traced (`trace`, else the first size >= 2), the other sizes >= 2, then
    sizes 0 and 1."""
    big = [n for n in sizes if n >= 2]
    if trace is not None:
        big = [trace] + [n for n in big if n != trace]
    return big + [n for n in sizes if n < 2]


def run_cell(family: str, mode: str, sizes: list[int], rounds: int, seconds: float,
             trace: int | None = None) -> dict:
    """First calls, correctness and interleaved timings of one model in one mode."""
    os.environ["NEURENIX_CACHE_DIR"] = "off"  # every first call a real compile
    import neurenix

    w = WORKLOADS[WORKLOAD_NAMES[(family, mode)]]
    train = mode == "train"
    order = order_sizes(sizes, trace)
    data = {n: batch_inputs(family, n, train, w.loss) for n in order}
    tensors = {n: (neurenix.Tensor(x), None if y is None else neurenix.Tensor(y))
               for n, (x, y) in data.items()}
    if train:
        eager_model, eager = training_step(w)
        dyn_model, dyn_step = training_step(w)
        stat_model, stat_step = training_step(w)
        dyn = neurenix.compile(dyn_step, dynamic=True)
        stat = neurenix.compile(stat_step, dynamic=False)

        def call(f: Any, n: int) -> Any:
            return f(*tensors[n])
    else:
        model = neurenix_model(w)
        model.eval()
        eager = model
        dyn = neurenix.compile(model, dynamic=True)
        stat = neurenix.compile(model, dynamic=False)

        def call(f: Any, n: int) -> Any:
            with neurenix.no_grad():
                return f(tensors[n][0])

    def value(out: Any) -> np.ndarray:
        return np.asarray(out.item()) if train else np.array(out.numpy(), copy=True)

    result: dict[str, Any] = {"ok": True, "family": family, "mode": mode,
                              "workload": w.name, "order": order, "sizes": {}}
    # ---- first pass: first calls, program counts, correctness
    for n in order:
        r: dict[str, Any] = {}
        compiles = dyn._compiles
        t = time.perf_counter()
        d = value(call(dyn, n))
        r["dyn_first_s"] = time.perf_counter() - t
        r["dyn_compiled"] = dyn._compiles > compiles
        r["dyn_programs"] = programs(dyn)
        r["dyn_program"] = _kernels(dyn)
        t = time.perf_counter()
        s = value(call(stat, n))
        r["stat_first_s"] = time.perf_counter() - t
        r["stat_programs"] = programs(stat)
        r["stat_program"] = _kernels(stat)
        e = value(call(eager, n))
        r["err_dyn"], r["err_stat"], r["err_dyn_stat"] = rel_err(d, e), rel_err(s, e), \
            rel_err(d, s)
        if train:
            r["loss"] = {"eager": float(e), "dynamic": float(d), "static": float(s)}
        # the second call at this size: no compile (steady state from here on); in training
        # all three models take that step, so that they stay in step
        t = time.perf_counter()
        call(dyn, n)
        r["dyn_second_s"] = time.perf_counter() - t
        if train:
            call(stat, n)
            call(eager, n)
        result["sizes"][str(n)] = r
        print(f"[dynamic_shapes] {w.name} b{n}: dynamic first {r['dyn_first_s'] * 1e3:.1f} ms "
              f"(compiled: {r['dyn_compiled']}, {r['dyn_programs']} programs), static first "
              f"{r['stat_first_s'] * 1e3:.1f} ms, err {r['err_dyn']:.1e}/{r['err_stat']:.1e}",
              file=sys.stderr, flush=True)
    if train:  # the three models took the same steps: compare every parameter
        def params_err(a: Any, b: Any) -> float:
            return max(rel_err(p.detach().numpy(), q.detach().numpy())
                       for p, q in zip(a.parameters(), b.parameters()))

        result["param_err_dyn"] = params_err(dyn_model, eager_model)
        result["param_err_stat"] = params_err(stat_model, eager_model)
        result["param_err_dyn_stat"] = params_err(dyn_model, stat_model)
    result["dyn_programs_big"] = max((result["sizes"][str(n)]["dyn_programs"]
                                      for n in order if n >= 2), default=0)
    result["dynamic_failed"] = dyn._dynamic.failed
    # ---- steady state: interleaved rounds, per size
    busy, own, t0 = machine_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    for n in order:
        r = result["sizes"][str(n)]
        steps = {"dyn": lambda n=n: call(dyn, n), "stat": lambda n=n: call(stat, n)}
        for step in steps.values():  # warm-up
            end = time.perf_counter() + max(0.25 * seconds, 0.01)
            calls = 0
            while calls < 3 or time.perf_counter() < end:
                step()
                calls += 1
        samples: dict[str, list[float]] = {"dyn": [], "stat": []}
        ratios = []
        cell_busy, cell_own, cell_t = machine_cpu_seconds(), own_cpu_seconds(), \
            time.perf_counter()
        for i in range(rounds):
            medians = {}
            for which in (("dyn", "stat") if i % 2 == 0 else ("stat", "dyn")):
                got = sample(steps[which], seconds, min_samples=3)
                samples[which] += got
                medians[which] = statistics.median(got)
            ratios.append(medians["dyn"] / medians["stat"])
        r["other_load"] = other_load(cell_busy, cell_own, cell_t)
        r["dyn_ms"] = statistics.median(samples["dyn"]) * 1e3
        r["stat_ms"] = statistics.median(samples["stat"]) * 1e3
        r["ratio"] = statistics.median(ratios)
        r["ratios"] = ratios
        r["samples"] = {k: len(v) for k, v in samples.items()}
        r["dyn_programs_after"] = programs(dyn)
        print(f"[dynamic_shapes] {w.name} b{n}: dynamic {r['dyn_ms']:.3f} ms, static "
              f"{r['stat_ms']:.3f} ms, ratio {r['ratio']:.3f} "
              f"({min(ratios):.3f}..{max(ratios):.3f})", file=sys.stderr, flush=True)
    result["other_load"] = other_load(busy, own, t0)
    return result


# ---- cross-validation of the estimator (inside a worker) ------------------------------------

def built(f: Any) -> list[dict]:
    """Per program of a compiled function: symbolic or static, what the disk compile cache
    did ("hit", "miss", "off": symbolic programs are not stored there) and the seconds its
    build took (trace, passes, codegen, LLVM or the cache load)."""
    return [{"symbolic": "dynamic" in e.stats, "cache": e.stats.get("cache"),
             "seconds": sum(e.stats.get("seconds", {}).values())}
            for es in getattr(f, "_cache", {}).values() for e in es]


def run_cv(epochs: int, folds: int = 5) -> dict:
    """5-fold cross-validation of NeuralNetClassifier on digits: per fold fit time, accuracy
    and the programs its compiled training step and forward pass hold."""
    from sklearn import datasets
    from sklearn.model_selection import KFold, cross_validate
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from neurenix.sklearn import NeuralNetClassifier

    x, y = datasets.load_digits(return_X_y=True)
    x = x.astype(np.float32)
    clf = NeuralNetClassifier(hidden_layer_sizes=(100,), epochs=epochs, batch_size=200,
                              learning_rate=1e-3, alpha=0.0, random_state=0,
                              backend="compiled", progress=False)
    cv = KFold(n_splits=folds, shuffle=True, random_state=0)
    start = time.perf_counter()
    out = cross_validate(make_pipeline(StandardScaler(), clf), x, y, cv=cv,
                         return_estimator=True)
    wall = time.perf_counter() - start
    rows = []
    for i, (train_idx, test_idx) in enumerate(cv.split(x, y)):
        est = out["estimator"][i][-1].estimator_
        step, forward = est._train_step, est._forward
        n_train = len(train_idx)
        rows.append({
            "fold": i + 1, "train_rows": n_train, "test_rows": len(test_idx),
            "last_batch": n_train % 200 or 200,
            "fit_s": float(out["fit_time"][i]), "score_s": float(out["score_time"][i]),
            "accuracy": float(out["test_score"][i]),
            "step_programs": programs(step) if hasattr(step, "_cache") else None,
            "forward_programs": programs(forward) if hasattr(forward, "_cache") else None,
            "step_dynamic": getattr(getattr(step, "_dynamic", None), "mode", None),
            "forward_dynamic": getattr(getattr(forward, "_dynamic", None), "mode", None),
            "step_built": built(step), "forward_built": built(forward)})
    return {"ok": True, "epochs": epochs, "wall_s": wall, "folds": rows}


# ---- the tables -----------------------------------------------------------------------------

def _miss(ratio: float) -> str:
    return f"{ratio:.2f}" + (" MISS" if ratio > TARGET else "")


def _noisy(r: dict) -> str:
    return " (noisy)" if (r.get("other_load") or 0.0) > NOISY else ""


def summary_rows(cells: dict, sizes: list[int]) -> tuple[list[str], list[list[str]]]:
    """One row per model and step: dynamic / static at every size, and program counts."""
    header = (["model", "step"] + [f"b{n}" for n in sizes]
              + ["dynamic programs (sizes >= 2 / all)", "static programs", "outputs"])
    rows = []
    for (family, mode), c in cells.items():
        if not c.get("ok"):
            rows.append([family, mode, f"error: {c.get('error')}"] + [""] * (len(sizes) + 2))
            continue
        ratios = [_miss(c["sizes"][str(n)]["ratio"]) + _noisy(c["sizes"][str(n)])
                  for n in sizes]
        last = c["sizes"][str(c["order"][-1])]
        fallback = " (static only: symbolic compile failed)" if c["dynamic_failed"] else ""
        rows.append([family, mode, *ratios,
                     f"{c['dyn_programs_big']} / {last['dyn_programs_after']}{fallback}",
                     str(last["stat_programs"]), correctness(c)])
    return header, rows


def correctness(c: dict) -> str:
    """'ok (...)' or 'WRONG (...)': outputs (losses) of both compiled functions against eager,
    and, after training, the dynamic model's parameters against the static model's (to
    TOLERANCE) and both against eager's (to PARAM_TOLERANCE: Adam's update divides by the
    root of tiny second moments, so float rounding of the gradients grows over steps)."""
    out = max(max(r["err_dyn"], r["err_stat"], r["err_dyn_stat"]) for r in c["sizes"].values())
    text = f"outputs {out:.1e}"
    ok = out <= TOLERANCE
    if "param_err_dyn_stat" in c:
        eager = max(c["param_err_dyn"], c["param_err_stat"])
        text += (f"; params dynamic vs static {c['param_err_dyn_stat']:.1e}, "
                 f"vs eager {eager:.1e}")
        ok = ok and c["param_err_dyn_stat"] <= TOLERANCE and eager <= PARAM_TOLERANCE
    return ("ok" if ok else "WRONG") + f" ({text})"


def detail_rows(cells: dict, sizes: list[int]) -> tuple[list[str], list[list[str]]]:
    """Per model, step and size: times, ratio spread, first calls."""
    header = ["model", "step", "batch", "static ms", "dynamic ms", "dynamic / static",
              "ratio range over rounds", "dynamic first call ms", "first / steady",
              "compiled at this size", "dynamic programs after", "static first call ms"]
    rows = []
    for (family, mode), c in cells.items():
        if not c.get("ok"):
            continue
        for n in c["order"]:
            if n not in sizes:
                continue
            r = c["sizes"][str(n)]
            first = r["dyn_first_s"] * 1e3
            rows.append([family, mode, str(n), fmt_ms(r["stat_ms"]), fmt_ms(r["dyn_ms"]),
                         _miss(r["ratio"]) + _noisy(r),
                         f"{min(r['ratios']):.2f}-{max(r['ratios']):.2f}", fmt_ms(first),
                         f"{first / r['dyn_ms']:.1f}x", "yes" if r["dyn_compiled"] else "no",
                         str(r["dyn_programs"]), fmt_ms(r["stat_first_s"] * 1e3)])
    return header, rows


def _built(programs: list[dict]) -> str:
    return ", ".join(f"{'symbolic' if p['symbolic'] else 'static'} ({p['cache']}, "
                     f"{p['seconds']:.2f} s)" for p in programs)


def cv_rows(cv: dict) -> tuple[list[str], list[list[str]]]:
    header = ["fold", "train rows (last batch)", "fit s", "accuracy", "dynamic mode",
              "training-step programs (disk cache, build s)",
              "forward programs (disk cache, build s)"]
    rows = []
    for f in cv["folds"]:
        rows.append([str(f["fold"]), f"{f['train_rows']} ({f['last_batch']})",
                     f"{f['fit_s']:.2f}", f"{f['accuracy']:.3f}",
                     f"{f['step_dynamic']} / {f['forward_dynamic']}",
                     f"{f['step_programs']}: {_built(f['step_built'])}",
                     f"{f['forward_programs']}: {_built(f['forward_built'])}"])
    return header, rows


# ---- orchestrating (the parent) -------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(MODELS), help="models, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--trace", type=int,
                        help="the batch size the dynamic function is first called (traced) "
                             "at, >= 2 (default: the first size >= 2 of --sizes)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per size (10)")
    parser.add_argument("--seconds", type=float,
                        help="timing per function per round (0.1)")
    parser.add_argument("--cv-epochs", type=int, help="epochs per fold (20)")
    parser.add_argument("--no-cv", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds of 0.03 s, 5-epoch folds")
    parser.add_argument("--timeout", type=float, default=600.0, help="per subprocess")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"))
    parser.add_argument("--cv-worker", action="store_true")
    parser.add_argument("--result")
    args = parser.parse_args(argv)
    defaults = (3, 0.03, 5) if args.quick else (10, 0.1, 20)
    for name, default in zip(("rounds", "seconds", "cv_epochs"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.worker:
        return run_job(lambda: run_cell(*args.worker, sizes, args.rounds, args.seconds,
                                        args.trace), args.result)
    if args.cv_worker:
        return run_job(lambda: run_cv(args.cv_epochs), args.result)
    if args.trace is not None and args.trace < 2:
        raise SystemExit("--trace: sizes 0 and 1 get static programs; give a size >= 2")
    settings = ["--sizes", args.sizes, "--rounds", str(args.rounds), "--seconds",
                str(args.seconds), "--cv-epochs", str(args.cv_epochs)]
    if args.trace is not None:
        settings += ["--trace", str(args.trace)]
    start = time.perf_counter()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                              "trace": args.trace,
                              "load_start": os.getloadavg(), "rounds": args.rounds,
                              "seconds": args.seconds, "sizes": sizes, "cells": {}}
    cells: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="neurenix-dynamic-") as tmp:
        for family in args.only.split(","):
            for mode in args.modes.split(","):
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", family, mode,
                       *settings]
                result = run_child(cmd, Path(tmp) / f"{family}-{mode}", args.timeout,
                                   echo=_progress)
                if not result.get("ok"):
                    result["error"] = one_line(result.get("error", "failed"), 100)
                cells[(family, mode)] = report["cells"][f"{family}/{mode}"] = result
        if not args.no_cv:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--cv-worker", *settings]
            report["cv"] = run_child(cmd, Path(tmp) / "cv", args.timeout, echo=_progress)
    report["load_end"] = os.getloadavg()
    report["wall_s"] = time.perf_counter() - start
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    m = report["machine"]
    print(f"Neurenix dynamic shapes, {report['date']}: {m['cpu']}, {m['cores']} cores, "
          f"{THREADS} threads; dynamic traced at batch "
          f"{args.trace or next((n for n in sizes if n >= 2), '-')}; "
          f"{args.rounds} interleaved rounds x {args.seconds} s per size; "
          f"load average {report['load_start'][0]:.2f} -> {report['load_end'][0]:.2f}; "
          f"{report['wall_s']:.0f} s")
    print(f"\ndynamic / static, median of per-round ratios (target <= {TARGET:.2f}):\n")
    print(render(*summary_rows(cells, sizes), args.markdown))
    print("\nper size (first call: the dynamic function's first call at that size):\n")
    print(render(*detail_rows(cells, sizes), args.markdown))
    cv = report.get("cv")
    if cv is not None:
        if cv.get("ok"):
            print(f"\n5-fold cross-validation, NeuralNetClassifier on digits, {cv['epochs']} "
                  f"epochs, batch size 200 ({cv['wall_s']:.1f} s):\n")
            print(render(*cv_rows(cv), args.markdown))
        else:
            print(f"\ncross-validation: error: {one_line(cv.get('error', 'failed'), 100)}")
    return 0


def _progress(stderr: str) -> str:
    """What of a worker's stderr to pass on: its progress lines."""
    return "".join(line + "\n" for line in stderr.splitlines()
                   if line.startswith("[dynamic_shapes]"))


if __name__ == "__main__":
    sys.exit(main())
