"""Stochastic gradient descent with momentum, Nesterov momentum and L2 weight decay."""
from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from .optimizer import Optimizer, ParamsT, check_range, host_values, zeros_for


class SGD(Optimizer):
    """Stochastic gradient descent, step for step the same as `torch.optim.SGD`.

    With momentum mu and dampening d, the buffer is b = mu * b + (1 - d) * g (b = g on the
    first step), and the parameter moves by -lr * b, or by -lr * (g + mu * b) with Nesterov.
    weight_decay adds weight_decay * p to the gradient first (L2 regularization).
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 *, maximize: bool = False,
                 fused: bool | None = None) -> None:
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize}
        super().__init__(params, defaults, fused=fused)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        check_range("SGD", "lr", group["lr"], 0.0)
        check_range("SGD", "momentum", group["momentum"], 0.0)
        check_range("SGD", "dampening", group["dampening"], float("-inf"))
        check_range("SGD", "weight_decay", group["weight_decay"], 0.0)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"SGD: Nesterov momentum requires a momentum > 0 and zero "
                             f"dampening, got momentum={group['momentum']} and "
                             f"dampening={group['dampening']}")

    def _prepare_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any],
                       traced: bool) -> None:
        # b = mu * 0 + 1 * g is exactly g: a zero buffer gives the first step's b = g, and one
        # traced program serves every step (with dampening the first step differs: the trace
        # then creates the buffer and the next call compiles the steady state)
        if traced and group["momentum"] != 0 and group["dampening"] == 0 \
                and "momentum_buffer" not in state:
            state["momentum_buffer"] = zeros_for(p)

    def _baked(self, group: dict[str, Any]) -> dict[str, Any]:
        """Momentum is read per call (OneCycleLR cycles it); only whether it is zero is
        baked in."""
        baked = super()._baked(group)
        baked["momentum"] = baked["momentum"] != 0
        return baked

    def _update(self, p: Tensor, grad: Tensor, state: dict[str, Any],
                group: dict[str, Any]) -> None:
        lr, momentum = host_values(lambda: (group["lr"], group["momentum"]), p, 2)
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"] != 0:
            grad = grad + p * group["weight_decay"]
        if group["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = grad.clone()
                state["momentum_buffer"] = buf
            else:
                buf.copy_(buf * momentum + grad * (1.0 - group["dampening"]))
            grad = grad + buf * momentum if group["nesterov"] else buf
        p.copy_(p - grad * lr)
