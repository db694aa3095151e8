"""Adagrad: per-coordinate step sizes from the running sum of squared gradients."""
from __future__ import annotations

from typing import Any

from .. import elementwise as ew
from ..creation import full
from ..tensor import Tensor
from .optimizer import CountStep, Optimizer, ParamsT, check_range, host_values


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011), step for step the same as `torch.optim.Adagrad`.

    s += g^2 and p -= clr * g / (sqrt(s) + eps), where clr = lr / (1 + (t - 1) * lr_decay) at
    step t. s starts at `initial_accumulator_value`; as in PyTorch, every parameter's state
    exists from construction. weight_decay adds weight_decay * p to the gradient (L2).
    """

    def __init__(self, params: ParamsT, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False,
                 fused: bool | None = None) -> None:
        defaults = {"lr": lr, "lr_decay": lr_decay, "weight_decay": weight_decay,
                    "initial_accumulator_value": initial_accumulator_value, "eps": eps,
                    "maximize": maximize}
        super().__init__(params, defaults, fused=fused)
        for group in self.param_groups:
            for p in group["params"]:
                self._prepare_state(p, self.state.setdefault(p, {}), group, False)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        check_range("Adagrad", "lr", group["lr"], 0.0)
        check_range("Adagrad", "lr_decay", group["lr_decay"], 0.0)
        check_range("Adagrad", "weight_decay", group["weight_decay"], 0.0)
        check_range("Adagrad", "initial_accumulator_value",
                    group["initial_accumulator_value"], 0.0)
        check_range("Adagrad", "eps", group["eps"], 0.0)

    def _prepare_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any],
                       traced: bool) -> None:
        if not state:
            state["step"] = 0
            state["sum"] = full(p.shape, float(group["initial_accumulator_value"]),
                                dtype=p.dtype, device=p.device)

    def _update(self, p: Tensor, grad: Tensor, state: dict[str, Any],
                group: dict[str, Any]) -> None:
        (clr,) = host_values(
            lambda: (group["lr"] / (1.0 + state["step"] * group["lr_decay"]),), p, 1,
            commit=CountStep(state),
            per_step=(state["step"], lambda step: (ew.div(group["lr"], ew.add(
                ew.mul(ew.sub(step, 1.0), group["lr_decay"]), 1.0)),)))
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"] != 0:
            grad = grad + p * group["weight_decay"]
        state_sum = state["sum"]
        state_sum.copy_(state_sum + grad * grad)
        std = ew.sqrt(state_sum) + group["eps"]
        p.copy_(p - grad / std * clr)
