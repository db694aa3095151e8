"""Early stopping: end training once a validation metric has stopped improving."""
from __future__ import annotations

import math
import numbers
from typing import Any, SupportsFloat


class EarlyStopping:
    """Tell a training loop to stop after `patience` epochs without improvement.

    An epoch improves when the metric beats `best` by more than `min_delta` (lower is better
    in mode 'min', higher in 'max'). `step(metric)` returns True once `num_bad_epochs` reaches
    `patience`; a NaN metric never counts as an improvement.
    """

    def __init__(self, patience: int = 10, min_delta: float = 0.0, mode: str = "min") -> None:
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral):
            raise TypeError(f"EarlyStopping: patience must be an int, got "
                            f"{type(patience).__name__}")
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}")
        if not isinstance(min_delta, numbers.Real) or not min_delta >= 0:
            raise ValueError(f"EarlyStopping: min_delta must be a number >= 0, got "
                             f"{min_delta!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        """Forget the history: no best value yet, no bad epochs."""
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = -1
        self.num_bad_epochs = 0
        self.epoch = -1
        self.should_stop = False

    def is_better(self, metric: float) -> bool:
        """Whether metric improves on `best` by more than `min_delta`."""
        if self.mode == "min":
            return metric < self.best - self.min_delta
        return metric > self.best + self.min_delta

    def step(self, metric: SupportsFloat) -> bool:
        """Record one epoch's metric; return True when training should stop now."""
        value = float(metric)
        self.epoch += 1
        if self.is_better(value):
            self.best = value
            self.best_epoch = self.epoch
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        self.should_stop = self.num_bad_epochs >= self.patience and self.num_bad_epochs > 0
        return self.should_stop

    def state_dict(self) -> dict[str, Any]:
        """The counters and settings, to resume after a checkpoint."""
        return dict(self.__dict__)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned."""
        self.__dict__.update(state_dict)
