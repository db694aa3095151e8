"""RMSprop: gradients divided by a running root mean square, with momentum and centering."""
from __future__ import annotations

from typing import Any

from .. import elementwise as ew
from ..tensor import Tensor
from .optimizer import CountStep, Optimizer, ParamsT, check_range, host_values, zeros_for


class RMSprop(Optimizer):
    """RMSprop (Hinton, 2012), step for step the same as `torch.optim.RMSprop`.

    v = alpha * v + (1 - alpha) * g^2; the step divides g by avg = sqrt(v) + eps, or with
    `centered` by sqrt(v - m^2) + eps where m is the running mean of g. With momentum mu the
    buffer b = mu * b + g / avg moves the parameter by -lr * b, otherwise by -lr * g / avg.
    weight_decay adds weight_decay * p to the gradient first (L2).
    """

    def __init__(self, params: ParamsT, lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False, *, maximize: bool = False,
                 fused: bool | None = None) -> None:
        defaults = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay,
                    "momentum": momentum, "centered": centered, "maximize": maximize}
        super().__init__(params, defaults, fused=fused)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        check_range("RMSprop", "lr", group["lr"], 0.0)
        check_range("RMSprop", "eps", group["eps"], 0.0)
        check_range("RMSprop", "momentum", group["momentum"], 0.0)
        check_range("RMSprop", "weight_decay", group["weight_decay"], 0.0)
        check_range("RMSprop", "alpha", group["alpha"], 0.0)

    def _prepare_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any],
                       traced: bool) -> None:
        if not state:
            state["step"] = 0
            state["square_avg"] = zeros_for(p)
        # a zero buffer gives the first step's b = g / avg, as PyTorch's does
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = zeros_for(p)
        if group["centered"] and "grad_avg" not in state:
            state["grad_avg"] = zeros_for(p)

    def _baked(self, group: dict[str, Any]) -> dict[str, Any]:
        """Momentum is read per call (OneCycleLR cycles it); only whether it is positive is
        baked in."""
        baked = super()._baked(group)
        baked["momentum"] = baked["momentum"] > 0
        return baked

    def _update(self, p: Tensor, grad: Tensor, state: dict[str, Any],
                group: dict[str, Any]) -> None:
        lr, momentum = host_values(lambda: (group["lr"], group["momentum"]), p, 2,
                                   commit=CountStep(state))
        alpha, eps = group["alpha"], group["eps"]
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"] != 0:
            grad = grad + p * group["weight_decay"]
        square_avg = state["square_avg"]
        square_avg.copy_(square_avg * alpha + grad * grad * (1.0 - alpha))
        if group["centered"]:
            grad_avg = state["grad_avg"]
            grad_avg.copy_(grad_avg + (grad - grad_avg) * (1.0 - alpha))
            avg = ew.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            avg = ew.sqrt(square_avg) + eps
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf.copy_(buf * momentum + grad / avg)
            p.copy_(p - buf * lr)
        else:
            p.copy_(p - grad / avg * lr)
