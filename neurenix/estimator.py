"""A train/evaluate estimator for people who want `fit` rather than a hand-written loop.

`Estimator` wraps a model, a loss and an optimizer and runs mini-batch training with shuffling,
validation (a held-out fraction or given data), early stopping with best-weight restore, a
learning-rate scheduler (ReduceLROnPlateau is stepped with the validation loss) and a one-line
progress report per epoch.  `neurenix.sklearn` builds scikit-learn-style classifiers and
regressors on it.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from .compilation.compiled import compile as compile_
from .optim.early_stopping import EarlyStopping
from .optim.lr_scheduler import ReduceLROnPlateau
from .random import generator
from .reductions import argmax
from .shapes import cat
from .state import no_grad
from .tensor import Tensor

BACKENDS = ("eager", "compiled")


@dataclass
class History:
    """Per-epoch records of a `train` call."""

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    stopped_epoch: int | None = None
    best_epoch: int | None = None


def as_tensor(data: Any, name: str) -> Tensor:
    """Accept Tensors, NumPy arrays and nested lists as estimator input."""
    if isinstance(data, Tensor):
        return data
    arr = np.asarray(data)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    elif arr.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected numeric data, got dtype {arr.dtype}")
    return Tensor(arr)


def _rows(t: Tensor, index: np.ndarray) -> Tensor:
    return Tensor._wrap(t._host()[index], t.dtype)


class Estimator:
    """Train and evaluate `model` with `loss_fn` and `optimizer` over mini-batches.

    backend: "eager" runs every operation as it comes (the NumPy reference implementation);
    "compiled" runs each training step — forward, loss, backward and optimizer update — as one
    program compiled by `neurenix.compile`, and predictions through the compiled model (one
    program per batch shape: the last, smaller batch compiles its own).
    """

    def __init__(self, model: Any, loss_fn: Callable[[Tensor, Tensor], Tensor], optimizer: Any,
                 scheduler: Any = None, backend: str = "eager") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"Estimator: backend must be one of {BACKENDS}, got {backend!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.backend = backend
        self._make_callables()

    def _make_callables(self) -> None:
        """The training step and the forward pass `backend` runs (compiled: new `Compiled`
        objects, which compile, or load from the disk cache, on their first call)."""
        self._train_step: Callable[[Tensor, Tensor], Tensor] = self._step
        self._forward: Callable[[Tensor], Tensor] = self.model
        if self.backend == "compiled":
            self._train_step = compile_(self._step)
            self._forward = compile_(self.model)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (and deep-copied): the model, loss, optimizer, scheduler and backend; never
        compiled programs.  A loaded estimator compiles again, or loads from the disk compile
        cache, on its first training step or prediction."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_train_step", "_forward")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._make_callables()

    def _step(self, x: Tensor, y: Tensor) -> Tensor:
        """One training step on a mini-batch; returns the loss."""
        loss = self.loss_fn(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss

    def train(self, x: Any, y: Any, *, epochs: int = 10, batch_size: int = 32,
              validation_data: tuple[Any, Any] | None = None, validation_split: float = 0.0,
              early_stopping: Any = None, shuffle: bool = True, verbose: bool = True,
              out: TextIO | None = None) -> History:
        """Fit for up to `epochs` epochs; returns the History of losses and learning rates.

        early_stopping: an `EarlyStopping` or a patience (int), watching the validation loss
        (the training loss when there is no validation data); the best weights are restored.
        """
        x, y = as_tensor(x, "train x"), as_tensor(y, "train y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"train: x has {x.shape[0]} samples but y has {y.shape[0]}")
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"train: epochs and batch_size must be >= 1, got {epochs} and "
                             f"{batch_size}")
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"train: validation_split must be in [0, 1), got "
                             f"{validation_split}")
        if validation_data is None and validation_split > 0:
            n_val = max(1, int(round(x.shape[0] * validation_split)))
            order = generator().permutation(x.shape[0])
            val_idx, train_idx = order[:n_val], order[n_val:]
            validation_data = (_rows(x, val_idx), _rows(y, val_idx))
            x, y = _rows(x, train_idx), _rows(y, train_idx)
        stopper = _as_stopper(early_stopping)
        out = out or sys.stdout
        history = History()
        best_state = None
        n = x.shape[0]
        for epoch in range(epochs):
            start = time.perf_counter()
            self.model.train()
            order = generator().permutation(n) if shuffle else np.arange(n)
            total = 0.0
            for lo in range(0, n, batch_size):
                idx = order[lo:lo + batch_size]
                loss = self._train_step(_rows(x, idx), _rows(y, idx))
                total += loss.item() * len(idx)
            history.loss.append(total / n)
            monitored = history.loss[-1]
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=max(batch_size, 256))["loss"]
                history.val_loss.append(val)
                monitored = val
            history.lr.append(float(self.optimizer.param_groups[0]["lr"]))
            self._step_scheduler(monitored)
            if verbose:
                _report(out, epoch, epochs, history, time.perf_counter() - start)
            if stopper is not None:
                stop = stopper.step(monitored)
                if stopper.best_epoch == stopper.epoch:
                    best_state = copy.deepcopy(self.model.state_dict())
                    history.best_epoch = epoch
                if stop:
                    history.stopped_epoch = epoch
                    if verbose:
                        print(f"early stopping at epoch {epoch + 1}: no improvement for "
                              f"{stopper.patience} epochs (best {stopper.best:.6g})", file=out)
                    break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return history

    def _step_scheduler(self, metric: float) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def predict(self, x: Any, batch_size: int = 256) -> Tensor:
        """The model's outputs for x, in evaluation mode and without recording gradients."""
        x = as_tensor(x, "predict x")
        self.model.eval()
        with no_grad():
            parts = [self._forward(Tensor._wrap(x._host()[lo:lo + batch_size], x.dtype))
                     for lo in range(0, x.shape[0], batch_size)]
        return cat(parts, 0) if parts else Tensor._wrap(np.zeros((0,), np.float32))

    def evaluate(self, x: Any, y: Any, batch_size: int = 256) -> dict[str, float]:
        """The mean loss over (x, y), and the accuracy when y holds class indices."""
        x, y = as_tensor(x, "evaluate x"), as_tensor(y, "evaluate y")
        out = self.predict(x, batch_size)
        with no_grad():
            result = {"loss": float(self.loss_fn(out, y).item())}
            if y.dtype.is_integer and out.ndim == 2 and y.ndim == 1:
                result["accuracy"] = float((argmax(out, 1)._host() == y._host()).mean())
        return result


def _as_stopper(early_stopping: Any):
    if early_stopping is None:
        return None
    if isinstance(early_stopping, EarlyStopping):
        early_stopping.reset()
        return early_stopping
    if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
        return EarlyStopping(patience=early_stopping)
    raise TypeError(f"train: early_stopping must be an EarlyStopping or a patience int, got "
                    f"{type(early_stopping).__name__}")


def _report(out: TextIO, epoch: int, epochs: int, history: History, seconds: float) -> None:
    width = len(str(epochs))
    line = f"epoch {epoch + 1:>{width}}/{epochs}  loss {history.loss[-1]:.6g}"
    if history.val_loss:
        line += f"  val_loss {history.val_loss[-1]:.6g}"
    line += f"  lr {history.lr[-1]:.3g}  {seconds * 1000:.0f} ms"
    if not math.isfinite(history.loss[-1]):
        line += "  (loss is not finite)"
    print(line, file=out)
