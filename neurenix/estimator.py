"""A train/evaluate estimator for people who want `fit` rather than a hand-written loop.

`Estimator` wraps a model, a loss and an optimizer and runs mini-batch training with shuffling
(through `neurenix.utils.data.DataLoader`), validation (a held-out fraction or given data),
early stopping with best-weight restore, a learning-rate scheduler (ReduceLROnPlateau is stepped
with the validation loss), a progress bar on terminals and a one-line report per epoch.  By
default each training step runs as one compiled program.  `neurenix.sklearn` builds
scikit-learn-style classifiers and regressors on it.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from .compilation.compiled import compile as compile_
from .compiler.types import DType, float32
from .device import CPU, Device
from .optim.early_stopping import EarlyStopping
from .optim.lr_scheduler import ReduceLROnPlateau
from .random import next_seed
from .reductions import argmax
from .shapes import cat
from .state import no_grad
from .tensor import Tensor
from .utils.data import DataLoader, Dataset, Sampler, random_split

BACKENDS = ("eager", "compiled")


@dataclass
class History:
    """Per-epoch records of a `train` call (`val_accuracy` only for class-index targets)."""

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    stopped_epoch: int | None = None
    best_epoch: int | None = None


def as_tensor(data: Any, name: str, dtype: DType = float32) -> Tensor:
    """Accept Tensors, NumPy arrays and nested lists as estimator input; floating data is
    converted to `dtype` (the model's), integer and boolean data kept."""
    if isinstance(data, Tensor):
        return data.to(dtype) if data.dtype.is_floating and data.dtype != dtype else data
    arr = np.asarray(data)
    if arr.dtype.kind == "f":
        arr = arr.astype(dtype.np_type, copy=False)
    elif arr.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected numeric data, got dtype {arr.dtype}")
    return Tensor(arr)


def model_dtype(model: Any) -> DType:
    """The dtype of the model's first floating parameter (float32 without one)."""
    for p in model.parameters():
        if p.dtype.is_floating:
            return p.dtype
    return float32


def model_device(model: Any) -> Device:
    """The device of the model's first parameter (the CPU without one)."""
    for p in model.parameters():
        return p.device
    return CPU


class RowBatches(Dataset):
    """Whole mini-batches of rows: `dataset[index]` is the tuple of each tensor's rows at
    `index` (an index array or a slice), gathered at once on the host and moved to `device`
    (None: left on the CPU)."""

    def __init__(self, *tensors: Tensor, device: Device | None = None) -> None:
        self.tensors = tensors
        self.arrays = [t._host() for t in tensors]
        self.device = None if device == CPU else device

    def __getitem__(self, index: Any) -> tuple[Tensor, ...]:
        if isinstance(index, list):
            index = np.asarray(index, dtype=np.int64)
        rows = tuple(Tensor._wrap(a[index], t.dtype) for a, t in zip(self.arrays, self.tensors))
        return rows if self.device is None else tuple(r.to(self.device) for r in rows)

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])


class BatchOrder(Sampler[Any]):
    """The batches of a `batch_size` batching of n rows, as a batch sampler: each iteration
    shuffles (a permutation drawn as `RandomSampler` draws it: from a seed taken from
    Neurenix's global random state, so `neurenix.manual_seed` makes runs repeat) and yields
    index arrays, or, without shuffling, slices in order.  The same batches as
    `BatchSampler(RandomSampler(...), batch_size, False)`, without a Python step per row."""

    def __init__(self, n: int, batch_size: int, shuffle: bool) -> None:
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle

    def __iter__(self) -> Iterator[Any]:
        n, size = self.n, self.batch_size
        if not self.shuffle:
            return (slice(lo, min(lo + size, n)) for lo in range(0, n, size))
        order = np.random.default_rng(next_seed()).permutation(n)
        return (order[lo:lo + size] for lo in range(0, n, size))

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


def batch_loader(x: Tensor, y: Tensor, batch_size: int, shuffle: bool,
                 device: Device | None = None) -> DataLoader:
    """A `DataLoader` of `(x_batch, y_batch)` Tensors on `device`, reshuffled every epoch or
    in order.

    It loads on the caller's thread (`prefetch=False`): gathering a batch of in-memory rows
    takes microseconds, less than handing it over from a prefetch thread would cost."""
    rows = RowBatches(x, y, device=device)
    return DataLoader(rows, batch_size=None, sampler=BatchOrder(len(rows), batch_size, shuffle),
                      collate_fn=_as_is, prefetch=False)


def _as_is(batch: Any) -> Any:
    return batch


class Estimator:
    """Train and evaluate `model` with `loss_fn` and `optimizer` over mini-batches.

    backend: "compiled" (the default) runs each training step — forward, loss, backward and
    optimizer update — as one program compiled by `neurenix.compile`, and predictions through
    the compiled model.  Both compile with a symbolic batch size (`dynamic=True`): one
    training-step program and one prediction program serve every batch of 2 rows or more (the
    smaller last batch, any number of rows to predict); a batch of one row gets a static
    program of its own.  "eager" runs every operation as it comes.  progress: show a progress
    bar (tqdm, when installed) while training, on stderr, when stderr is a terminal.
    """

    def __init__(self, model: Any, loss_fn: Callable[[Tensor, Tensor], Tensor], optimizer: Any,
                 scheduler: Any = None, backend: str = "compiled",
                 progress: bool = True) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"Estimator: backend must be one of {BACKENDS}, got {backend!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.backend = backend
        self.progress = progress
        self._make_callables()

    def _make_callables(self) -> None:
        """The training step and the forward pass `backend` runs (compiled: new `Compiled`
        objects, which compile on their first call, with the batch (leading) dimension of
        every tensor argument symbolic)."""
        self._train_step: Callable[[Tensor, Tensor], Tensor] = self._step
        self._forward: Callable[[Tensor], Tensor] = self.model
        if self.backend == "compiled":
            self._train_step = compile_(self._step, dynamic=True)
            self._forward = compile_(self.model, dynamic=True)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (and deep-copied): the model, loss, optimizer, scheduler and settings;
        never compiled programs.  A loaded estimator compiles again, or loads from the disk
        compile cache, on its first training step or prediction."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_train_step", "_forward")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("progress", True)
        self.__dict__.update(state)
        self._make_callables()

    def _step(self, x: Tensor, y: Tensor) -> Tensor:
        """One training step on a mini-batch; returns the loss."""
        loss = self.loss_fn(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss

    def train(self, x: Any, y: Any = None, *, epochs: int = 10, batch_size: int = 32,
              validation_data: Any = None, validation_split: float = 0.0,
              early_stopping: Any = None, shuffle: bool = True, verbose: bool = True,
              out: TextIO | None = None, progress: bool | None = None) -> History:
        """Fit for up to `epochs` epochs; returns the History of losses and learning rates.

        x, y: arrays, lists or Tensors (batched by a `DataLoader`, reshuffled every epoch
        unless `shuffle=False`), or x a `DataLoader` of `(x, y)` batches and y None.
        validation_data: `(x_val, y_val)` or a loader.  early_stopping: an `EarlyStopping`
        or a patience (int), watching the validation loss (the training loss when there is
        no validation data); the best weights are restored.  progress: None takes the
        estimator's setting.
        """
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"train: epochs and batch_size must be >= 1, got {epochs} and "
                             f"{batch_size}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"train: validation_split must be in [0, 1), got "
                             f"{validation_split}")
        loader, validation_data = self._training_data(x, y, batch_size, shuffle,
                                                      validation_data, validation_split)
        stopper = _as_stopper(early_stopping)
        out = out or sys.stdout
        history = History()
        best_state = None
        bar = _progress_bar(self.progress if progress is None else progress,
                            _length(loader, epochs))
        say = (lambda line: bar.write(line, file=out)) if bar is not None else \
            (lambda line: print(line, file=out))
        try:
            for epoch in range(epochs):
                start = time.perf_counter()
                self.model.train()
                history.loss.append(self._epoch(loader, bar))
                monitored = history.loss[-1]
                if validation_data is not None:
                    metrics = self.evaluate(*validation_data, batch_size=max(batch_size, 256))
                    history.val_loss.append(metrics["loss"])
                    if "accuracy" in metrics:
                        history.val_accuracy.append(metrics["accuracy"])
                    monitored = metrics["loss"]
                history.lr.append(float(self.optimizer.param_groups[0]["lr"]))
                self._step_scheduler(monitored)
                if bar is not None:
                    bar.set_description(f"epoch {epoch + 1}/{epochs}", refresh=False)
                    bar.set_postfix(_postfix(history), refresh=True)
                if verbose:
                    say(_report(epoch, epochs, history, time.perf_counter() - start))
                if stopper is not None:
                    stop = stopper.step(monitored)
                    if stopper.best_epoch == stopper.epoch:
                        best_state = copy.deepcopy(self.model.state_dict())
                        history.best_epoch = epoch
                    if stop:
                        history.stopped_epoch = epoch
                        if verbose:
                            say(f"early stopping at epoch {epoch + 1}: no improvement for "
                                f"{stopper.patience} epochs (best {stopper.best:.6g})")
                        break
        finally:
            if bar is not None:
                bar.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return history

    def _training_data(self, x: Any, y: Any, batch_size: int, shuffle: bool,
                       validation_data: Any, validation_split: float
                       ) -> tuple[Iterable[Any], tuple[Any, ...] | None]:
        """The training batches and the validation data (`(x, y)`, or `(loader,)`)."""
        if _is_loader(x):
            if y is not None:
                raise ValueError("train: x is a data loader, so y must be None (the loader "
                                 "gives (x, y) batches)")
            if validation_split:
                raise ValueError("train: validation_split needs arrays; with a data loader "
                                 "pass validation_data (another loader)")
            return x, _validation(validation_data)
        if y is None:
            raise ValueError("train: y is missing (pass y, or a data loader of (x, y) "
                             "batches as x)")
        dtype = model_dtype(self.model)
        x, y = as_tensor(x, "train x", dtype), as_tensor(y, "train y", dtype)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"train: x has {x.shape[0]} samples but y has {y.shape[0]}")
        if validation_data is None and validation_split > 0:
            n = x.shape[0]
            n_val = max(1, int(round(n * validation_split)))
            train_part, val_part = random_split(range(n), [n - n_val, n_val])
            rows = RowBatches(x, y)
            validation_data = rows[list(val_part.indices)]
            x, y = rows[list(train_part.indices)]
        loader = batch_loader(x, y, batch_size, shuffle, model_device(self.model))
        return loader, _validation(validation_data)

    def _epoch(self, loader: Iterable[Any], bar: Any) -> float:
        """One pass over `loader`; the mean training loss, read once at the end (no host
        synchronisation per batch)."""
        losses: list[tuple[Tensor, int]] = []
        step = self._train_step
        dtype, device = model_dtype(self.model), model_device(self.model)
        for batch in loader:
            xb, yb = batch
            if not isinstance(xb, Tensor) or (xb.dtype.is_floating and xb.dtype != dtype):
                xb = as_tensor(xb, "train x", dtype)
            if not isinstance(yb, Tensor) or (yb.dtype.is_floating and yb.dtype != dtype):
                yb = as_tensor(yb, "train y", dtype)
            if xb.device != device:  # a user's loader of CPU batches for a model on a device
                xb, yb = xb.to(device), yb.to(device)
            losses.append((step(xb, yb).detach(), xb.shape[0]))
            if bar is not None:
                bar.update(1)
        n = sum(size for _, size in losses)
        if not n:
            raise ValueError("train: the training data has no batches")
        return sum(loss.item() * size for loss, size in losses) / n

    def _step_scheduler(self, metric: float) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def predict(self, x: Any, batch_size: int = 256) -> Tensor:
        """The model's outputs for x, in evaluation mode and without recording gradients, run
        `batch_size` rows at a time (the last chunk may hold one row more: see
        `predict_chunks`).  No rows: the model runs eagerly on the empty batch (nothing to
        compile), which gives the outputs' shape."""
        x = as_tensor(x, "predict x", model_dtype(self.model))
        rows = RowBatches(x, device=model_device(self.model))
        self.model.eval()
        with no_grad():
            if not x.shape[0]:
                return self.model(rows[0:0][0])
            parts = [self._forward(rows[chunk][0])
                     for chunk in predict_chunks(x.shape[0], batch_size)]
        return parts[0] if len(parts) == 1 else cat(parts, 0)

    def evaluate(self, x: Any, y: Any = None, batch_size: int = 256) -> dict[str, float]:
        """The mean loss over (x, y), and the accuracy when y holds class indices; x may be
        a data loader of `(x, y)` batches (y None)."""
        if _is_loader(x):
            return self._evaluate_loader(x)
        dtype = model_dtype(self.model)
        x, y = as_tensor(x, "evaluate x", dtype), as_tensor(y, "evaluate y", dtype)
        out = self.predict(x, batch_size)
        if out.device != y.device:
            y = y.to(out.device)
        with no_grad():
            result = {"loss": float(self.loss_fn(out, y).item())}
            if y.dtype.is_integer and out.ndim == 2 and y.ndim == 1:
                result["accuracy"] = float((argmax(out, 1)._host() == y._host()).mean())
        return result

    def _evaluate_loader(self, loader: Iterable[Any]) -> dict[str, float]:
        """evaluate over a loader's batches: losses weighted by batch size."""
        total, correct, n, classes = 0.0, 0.0, 0, True
        for xb, yb in loader:
            yb = as_tensor(yb, "evaluate y", model_dtype(self.model))
            xb = xb if isinstance(xb, Tensor) else as_tensor(xb, "evaluate x",
                                                             model_dtype(self.model))
            out = self.predict(xb)
            if out.device != yb.device:
                yb = yb.to(out.device)
            with no_grad():
                total += float(self.loss_fn(out, yb).item()) * yb.shape[0]
                classes = classes and yb.dtype.is_integer and out.ndim == 2 and yb.ndim == 1
                if classes:
                    correct += float((argmax(out, 1)._host() == yb._host()).sum())
            n += yb.shape[0]
        if not n:
            raise ValueError("evaluate: the data loader gave no batches")
        result = {"loss": total / n}
        if classes:
            result["accuracy"] = correct / n
        return result


def predict_chunks(n: int, batch_size: int) -> list[slice]:
    """The row ranges `predict` runs n > 0 rows in: `batch_size` rows each, but a lone last
    row joins the chunk before it (when batch_size >= 2), since a one-row batch would compile
    a static program of its own.  Rows are predicted independently, so the chunking does
    not change the result."""
    starts = list(range(0, n, batch_size))
    if batch_size >= 2 and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(lo, hi) for lo, hi in zip(starts, [*starts[1:], n])]


def _is_loader(data: Any) -> bool:
    return isinstance(data, DataLoader)


def _validation(data: Any) -> tuple[Any, ...] | None:
    if data is None:
        return None
    if _is_loader(data):
        return (data,)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError("train: validation_data must be (x_val, y_val) or a data loader")
    return tuple(data)


def _length(loader: Iterable[Any], epochs: int) -> int | None:
    """How many batches `epochs` passes over `loader` take (None: unknown)."""
    try:
        return epochs * len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _progress_bar(enabled: bool, total: int | None) -> Any:
    """A tqdm bar over the training batches on stderr, or None: when `enabled` is false,
    stderr is not a terminal, or tqdm is not installed."""
    stream = sys.stderr
    isatty = getattr(stream, "isatty", None)
    if not enabled or stream is None or isatty is None or not isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, file=stream, unit="batch", desc="training", leave=True,
                dynamic_ncols=True)


def _postfix(history: History) -> dict[str, str]:
    """The bar's latest loss, validation metrics and learning rate."""
    shown = {"loss": f"{history.loss[-1]:.4g}"}
    if history.val_loss:
        shown["val_loss"] = f"{history.val_loss[-1]:.4g}"
    if history.val_accuracy:
        shown["val_acc"] = f"{history.val_accuracy[-1]:.3f}"
    shown["lr"] = f"{history.lr[-1]:.3g}"
    return shown


def _as_stopper(early_stopping: Any) -> EarlyStopping | None:
    if early_stopping is None:
        return None
    if isinstance(early_stopping, EarlyStopping):
        early_stopping.reset()
        return early_stopping
    if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
        return EarlyStopping(patience=early_stopping)
    raise TypeError(f"train: early_stopping must be an EarlyStopping or a patience int, got "
                    f"{type(early_stopping).__name__}")


def _report(epoch: int, epochs: int, history: History, seconds: float) -> str:
    width = len(str(epochs))
    line = f"epoch {epoch + 1:>{width}}/{epochs}  loss {history.loss[-1]:.6g}"
    if history.val_loss:
        line += f"  val_loss {history.val_loss[-1]:.6g}"
    if history.val_accuracy:
        line += f"  val_accuracy {history.val_accuracy[-1]:.4g}"
    line += f"  lr {history.lr[-1]:.3g}  {seconds * 1000:.0f} ms"
    if not math.isfinite(history.loss[-1]):
        line += "  (loss is not finite)"
    return line
