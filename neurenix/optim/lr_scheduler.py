"""Learning-rate schedulers: StepLR, ExponentialLR and ReduceLROnPlateau, as in PyTorch.

A scheduler rewrites `group["lr"]` of its optimizer's parameter groups. Every time it changes a
group's rate it logs one readable line on the `neurenix.optim` logger (level INFO, so silent
unless logging is configured to show it), and also prints the line when `verbose=True`.
"""
from __future__ import annotations

import logging
import math
import numbers
from typing import Any, SupportsFloat

from ..call_site import user_source
from ..compiler.trace import TraceError
from ..state import is_tracing
from .optimizer import Optimizer

__all__ = ["ExponentialLR", "LRScheduler", "ReduceLROnPlateau", "StepLR"]

logger = logging.getLogger("neurenix.optim")


def _announce(scheduler: str, epoch: int, group: int, old: float, new: float,
              verbose: bool) -> None:
    verb = "reducing" if new < old else "increasing"
    message = (f"{scheduler}: epoch {epoch}: {verb} learning rate of group {group} "
               f"from {old:.4e} to {new:.4e}")
    logger.info(message)
    if verbose:
        print(message)


def _check_optimizer(owner: str, optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{owner}: expected a neurenix.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")


def _check_count(owner: str, name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{owner}: invalid {name} {value}; it must be >= {low}")


class LRScheduler:
    """Base class: sets each group's lr from `get_lr()` once per `step()`.

    `last_epoch` counts the steps taken (construction is step 0); `base_lrs` are the groups'
    rates when the scheduler was created (kept in `group["initial_lr"]`, so a resumed scheduler,
    built with `last_epoch >= 0` after the optimizer was restored, finds them again).
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1,
                 verbose: bool = False) -> None:
        _check_optimizer(type(self).__name__, optimizer)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"{type(self).__name__}: param_groups[{i}] has no "
                                   "'initial_lr'; to resume a scheduler with last_epoch >= 0 "
                                   "load the optimizer's state_dict first")
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.verbose = verbose
        self._step_count = 0
        self._is_initial = True
        self.step()
        self._is_initial = False

    def get_lr(self) -> list[float]:
        """The rates for the epoch `last_epoch` (already advanced), one per group."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_lr")

    def _closed_form_lr(self) -> list[float]:
        """The rates at `last_epoch` computed from `base_lrs` (used by `step(epoch)`)."""
        return self.get_lr()

    def get_last_lr(self) -> list[float]:
        """The rates the last `step()` set, one per parameter group."""
        return self._last_lr

    def step(self, epoch: int | None = None) -> None:
        """Advance one epoch (call after `optimizer.step()`) and update the groups' rates.

        Passing `epoch` jumps straight to that epoch using the closed form, as PyTorch's
        deprecated form does.
        """
        _refuse_in_trace(type(self).__name__)
        self._step_count += 1
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            values = self._closed_form_lr()
        self._apply(values)

    def _apply(self, values: list[float]) -> None:
        groups = self.optimizer.param_groups
        if len(values) != len(groups):
            raise RuntimeError(f"{type(self).__name__}: computed {len(values)} learning rates "
                               f"for {len(groups)} parameter groups")
        for i, (group, lr) in enumerate(zip(groups, values)):
            old = group["lr"]
            group["lr"] = lr
            if lr != old:
                _announce(type(self).__name__, self.last_epoch, i, old, lr, self.verbose)
        self._last_lr = [group["lr"] for group in groups]

    def state_dict(self) -> dict[str, Any]:
        """Every attribute except the optimizer (PyTorch's layout)."""
        return {key: value for key, value in self.__dict__.items() if key != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore attributes saved by `state_dict()`."""
        self.__dict__.update(state_dict)


class StepLR(LRScheduler):
    """Multiply every group's rate by `gamma` every `step_size` epochs."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1, verbose: bool = False) -> None:
        _check_count("StepLR", "step_size", step_size, 1)
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch, verbose)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [group["lr"] for group in groups]
        return [group["lr"] * self.gamma for group in groups]

    def _closed_form_lr(self) -> list[float]:
        return [base * self.gamma ** (self.last_epoch // self.step_size)
                for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply every group's rate by `gamma` every epoch."""

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1,
                 verbose: bool = False) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch, verbose)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self._is_initial:
            return [group["lr"] for group in groups]
        return [group["lr"] * self.gamma for group in groups]

    def _closed_form_lr(self) -> list[float]:
        return [base * self.gamma ** self.last_epoch for base in self.base_lrs]


class ReduceLROnPlateau(LRScheduler):
    """Multiply the rates by `factor` when a monitored metric stops improving.

    After more than `patience` epochs without improvement (better than `best` by `threshold`,
    relative or absolute per `threshold_mode`), each rate becomes max(lr * factor, min_lr)
    unless that changes it by less than `eps`; then `cooldown` epochs pass before bad epochs
    are counted again. `step(metric)` takes the metric each epoch.
    """

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float | list[float] = 0.0, eps: float = 1e-8,
                 verbose: bool = False) -> None:
        name = "ReduceLROnPlateau"
        _check_optimizer(name, optimizer)
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"{name}: factor must be in [0, 1), got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"{name}: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{name}: threshold_mode must be 'rel' or 'abs', got "
                             f"{threshold_mode!r}")
        _check_count(name, "patience", patience, 0)
        _check_count(name, "cooldown", cooldown, 0)
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(optimizer.param_groups):
                raise ValueError(f"{name}: expected {len(optimizer.param_groups)} min_lrs "
                                 f"(one per parameter group), got {len(min_lr)}")
            self.default_min_lr: float | None = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        self.mode = mode
        self.mode_worse = math.inf if mode == "min" else -math.inf  # the starting `best`
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.cooldown = cooldown
        self.eps = eps
        self.verbose = verbose
        self.last_epoch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]
        self._reset()

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, metrics: SupportsFloat, epoch: int | None = None) -> None:  # type: ignore[override]
        """Record this epoch's metric and reduce the rates if it has plateaued."""
        _refuse_in_trace(type(self).__name__)
        current = float(metrics)
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs during cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(f"ReduceLROnPlateau: the optimizer has {len(groups)} "
                                   f"parameter groups but min_lr lists {len(self.min_lrs)}; "
                                   "update `min_lrs` after adding a group")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for i, group in enumerate(groups):
            old = float(group["lr"])
            new = max(old * self.factor, self.min_lrs[i])
            if old - new > self.eps:
                group["lr"] = new
                _announce("ReduceLROnPlateau", self.last_epoch, i, old, new, self.verbose)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore attributes saved by `state_dict()` (ours or PyTorch's)."""
        super().load_state_dict(state_dict)
        self.mode_worse = math.inf if self.mode == "min" else -math.inf

    def _is_better(self, current: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return current < best * (1.0 - self.threshold)
        if self.mode == "min":
            return current < best - self.threshold
        if self.threshold_mode == "rel":
            return current > best * (1.0 + self.threshold)
        return current > best + self.threshold


def _refuse_in_trace(name: str) -> None:
    """A scheduler changes Python numbers once per step; inside a compiled function that would
    happen only while tracing, never on the calls that follow."""
    if is_tracing():
        raise TraceError(f"{name}.step() inside a compiled function at {user_source()}: the "
                         f"scheduler would step only while tracing; call it outside (the "
                         f"compiled step reads the new learning rate on every call)")
