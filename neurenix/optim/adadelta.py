"""Adadelta: per-coordinate step sizes from running averages of squared gradients and updates."""
from __future__ import annotations

from typing import Any

from .. import elementwise as ew
from ..tensor import Tensor
from .optimizer import CountStep, Optimizer, ParamsT, check_range, host_values, zeros_for


class Adadelta(Optimizer):
    """Adadelta (Zeiler, 2012), step for step the same as `torch.optim.Adadelta`.

    E[g^2] = rho * E[g^2] + (1 - rho) * g^2; the update is
    dx = sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps) * g, then E[dx^2] = rho * E[dx^2] +
    (1 - rho) * dx^2 and p -= lr * dx. It needs no tuned learning rate (lr=1.0 is the paper's).
    """

    def __init__(self, params: ParamsT, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False,
                 fused: bool | None = None) -> None:
        defaults = {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay,
                    "maximize": maximize}
        super().__init__(params, defaults, fused=fused)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        check_range("Adadelta", "lr", group["lr"], 0.0)
        check_range("Adadelta", "rho", group["rho"], 0.0, 1.0, high_inclusive=True)
        check_range("Adadelta", "eps", group["eps"], 0.0)
        check_range("Adadelta", "weight_decay", group["weight_decay"], 0.0)

    def _prepare_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any],
                       traced: bool) -> None:
        if not state:
            state["step"] = 0
            state["square_avg"] = zeros_for(p)
            state["acc_delta"] = zeros_for(p)

    def _update(self, p: Tensor, grad: Tensor, state: dict[str, Any],
                group: dict[str, Any]) -> None:
        (lr,) = host_values(lambda: (group["lr"],), p, 1,
                                          commit=CountStep(state))
        rho, eps = group["rho"], group["eps"]
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"] != 0:
            grad = grad + p * group["weight_decay"]
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        square_avg.copy_(square_avg * rho + grad * grad * (1.0 - rho))
        std = ew.sqrt(square_avg + eps)
        delta = ew.sqrt(acc_delta + eps) / std * grad
        acc_delta.copy_(acc_delta * rho + delta * delta * (1.0 - rho))
        p.copy_(p - delta * lr)
