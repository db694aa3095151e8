"""Fit time and test accuracy of the scikit-learn-style classifier against its peers.

    python benchmarks/estimator.py                  # digits and breast cancer, every framework
    python benchmarks/estimator.py --epochs 50 --only digits --markdown

The same training everywhere: an MLP with one hidden layer of `--hidden` ReLU units, Adam at
`--lr`, mini-batches of `--batch-size` reshuffled every epoch, exactly `--epochs` epochs (no
early stopping, no tolerance stop, no L2 penalty), on a standardised 80/20 split (seed 0).
Frameworks: Neurenix's `NeuralNetClassifier` with `backend="compiled"` and `"eager"`,
scikit-learn's `MLPClassifier`, and a plain PyTorch loop doing the same steps.  Each cell runs
once, in its own interpreter, with 2 threads for every library (see bench.child_env).

Neurenix compiled is fitted twice in its interpreter: the first fit starts from an empty
compile cache (it compiles the training step for the full batch and for the smaller last
batch), the second fits a fresh model of the same shapes, which traces the step and loads the
programs from the disk cache — what a second run of a script, or every fit of a
cross-validation after the first, pays.  "fit" is that second fit; "first fit" the first.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from bench import THREADS, one_line, run_child

DATASETS = ("digits", "breast_cancer")
FRAMEWORKS = ("neurenix_compiled", "neurenix_eager", "sklearn", "torch")
LABELS = {"neurenix_compiled": "Neurenix compiled", "neurenix_eager": "Neurenix eager",
          "sklearn": "scikit-learn MLPClassifier", "torch": "PyTorch loop"}


def load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The dataset standardised on its training part: x_train, x_test, y_train, y_test."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0,
                                                        stratify=y)
    scaler = StandardScaler().fit(x_train)
    return (scaler.transform(x_train).astype(np.float32),
            scaler.transform(x_test).astype(np.float32), y_train, y_test)


def fit_neurenix(data: tuple, args: argparse.Namespace, backend: str) -> dict[str, Any]:
    from neurenix.sklearn import NeuralNetClassifier

    x_train, x_test, y_train, y_test = data

    def fit() -> tuple[float, Any]:
        clf = NeuralNetClassifier(hidden_layer_sizes=(args.hidden,), epochs=args.epochs,
                                  batch_size=args.batch_size, learning_rate=args.lr, alpha=0.0,
                                  random_state=0, backend=backend, progress=False)
        start = time.perf_counter()
        clf.fit(x_train, y_train)
        return time.perf_counter() - start, clf

    result: dict[str, Any] = {}
    seconds, clf = fit()
    if backend == "compiled":
        result["first_fit_s"] = seconds
        seconds, clf = fit()
    result.update(fit_s=seconds, accuracy=float(clf.score(x_test, y_test)))
    return result


def fit_sklearn(data: tuple, args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x_train, x_test, y_train, y_test = data
    clf = MLPClassifier(hidden_layer_sizes=(args.hidden,), activation="relu", solver="adam",
                        alpha=0.0, batch_size=args.batch_size, learning_rate_init=args.lr,
                        max_iter=args.epochs, shuffle=True, tol=0.0,
                        n_iter_no_change=args.epochs + 1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        clf.fit(x_train, y_train)
        seconds = time.perf_counter() - start
    assert clf.n_iter_ == args.epochs, clf.n_iter_
    return {"fit_s": seconds, "accuracy": float(clf.score(x_test, y_test))}


def fit_torch(data: tuple, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    x_train, x_test, y_train, y_test = data
    classes = np.unique(y_train)
    model = torch.nn.Sequential(torch.nn.Linear(x_train.shape[1], args.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(args.hidden, len(classes)))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    x = torch.from_numpy(x_train)
    y = torch.from_numpy(np.searchsorted(classes, y_train).astype(np.int64))
    for _ in range(args.epochs):
        order = torch.randperm(len(x))
        for lo in range(0, len(x), args.batch_size):
            rows = order[lo:lo + args.batch_size]
            loss = loss_fn(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        predicted = classes[model(torch.from_numpy(x_test)).argmax(1).numpy()]
    return {"fit_s": seconds, "accuracy": float((predicted == y_test).mean())}


def worker(dataset: str, framework: str, args: argparse.Namespace) -> dict[str, Any]:
    data = load(dataset)
    if framework.startswith("neurenix_"):
        return fit_neurenix(data, args, framework.removeprefix("neurenix_"))
    if framework == "sklearn":
        return fit_sklearn(data, args)
    return fit_torch(data, args)


def table(results: dict[tuple[str, str], dict], markdown: bool) -> str:
    header = ["dataset", "framework", "fit (s)", "first fit, empty cache (s)", "test accuracy"]
    rows = []
    for (dataset, framework), r in results.items():
        if not r.get("ok", True):
            rows.append([dataset, LABELS[framework], f"error: {r['error']}", "", ""])
            continue
        first = f"{r['first_fit_s']:.2f}" if "first_fit_s" in r else ""
        rows.append([dataset, LABELS[framework], f"{r['fit_s']:.2f}", first,
                     f"{r['accuracy']:.3f}"])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths))
                     for row in [header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(DATASETS), help="datasets, comma-separated")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("DATASET", "FRAMEWORK"))
    parser.add_argument("--result", type=Path)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(*args.worker, args)
        args.result.write_text(json.dumps({"ok": True, **result}))
        return 0
    settings = ["--hidden", str(args.hidden), "--epochs", str(args.epochs), "--batch-size",
                str(args.batch_size), "--lr", str(args.lr)]
    results: dict[tuple[str, str], dict] = {}
    for dataset in args.only.split(","):
        for framework in args.frameworks.split(","):
            with tempfile.TemporaryDirectory() as cache:  # an empty compile cache per cell
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", dataset,
                       framework, *settings]
                result = run_child(cmd, Path(cache), args.timeout)
            if not result.get("ok"):
                result["error"] = one_line(result.get("error", "failed"), 80)
            results[(dataset, framework)] = result
            print(f"{dataset} {framework}: {json.dumps(result)}", file=sys.stderr)
    print(f"hidden layer {args.hidden}, {args.epochs} epochs, batch size {args.batch_size}, "
          f"Adam lr {args.lr}, {THREADS} threads")
    print(table(results, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
