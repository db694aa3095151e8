"""Adam (with L2 weight decay and AMSGrad) and AdamW (with decoupled weight decay)."""
from __future__ import annotations

import math
from typing import Any

from .. import elementwise as ew
from ..tensor import Tensor
from .optimizer import CountStep, Optimizer, ParamsT, check_range, host_values, zeros_for


class Adam(Optimizer):
    """Adam, step for step the same as `torch.optim.Adam`.

    m and v are running averages of the gradient and of its square; the parameter moves by
    -lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps). weight_decay adds
    weight_decay * p to the gradient (L2); `amsgrad` divides by the running maximum of v.
    """

    _decoupled = False

    def __init__(self, params: ParamsT, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False,
                 fused: bool | None = None) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "maximize": maximize}
        super().__init__(params, defaults, fused=fused)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        name = self._name
        check_range(name, "lr", group["lr"], 0.0)
        check_range(name, "eps", group["eps"], 0.0)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        check_range(name, "beta parameter at index 0", betas[0], 0.0, 1.0)
        check_range(name, "beta parameter at index 1", betas[1], 0.0, 1.0)
        check_range(name, "weight_decay", group["weight_decay"], 0.0)

    def _prepare_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any],
                       traced: bool) -> None:
        if not state:
            state["step"] = 0
            state["exp_avg"] = zeros_for(p)
            state["exp_avg_sq"] = zeros_for(p)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            # also when amsgrad was switched on after the first step
            state["max_exp_avg_sq"] = zeros_for(p)

    @staticmethod
    def _coefficients(step: int, group: dict[str, Any]) -> tuple[float, ...]:
        """The learning rate, step size, sqrt of bias correction 2 of step `step`, and
        1 - beta1 (read per call: OneCycleLR cycles beta1)."""
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        return lr, lr / (1.0 - beta1 ** step), math.sqrt(1.0 - beta2 ** step), 1.0 - beta1

    @staticmethod
    def _coefficients_of(step: Tensor, group: dict[str, Any]) -> tuple[Any, ...]:
        """`_coefficients` computed from a 0-d tensor step number (for an exported step):
        1 - beta ** step as -expm1(step * log(beta)), accurate where beta ** step is near 1."""
        beta1, beta2 = group["betas"]
        lr = group["lr"]

        def correction(beta: float) -> Tensor:
            if beta == 0.0:
                return ew.add(ew.mul(step, 0.0), 1.0)
            return ew.neg(ew.expm1(ew.mul(step, math.log(beta))))

        return lr, ew.div(lr, correction(beta1)), ew.sqrt(correction(beta2)), 1.0 - beta1

    def _baked(self, group: dict[str, Any]) -> dict[str, Any]:
        """beta1 is read per call; beta2 is baked in."""
        baked = super()._baked(group)
        baked["betas"] = baked["betas"][1]
        return baked

    def _update(self, p: Tensor, grad: Tensor, state: dict[str, Any],
                group: dict[str, Any]) -> None:
        lr, step_size, bias_correction2_sqrt, one_minus_beta1 = host_values(
            lambda: self._coefficients(state["step"] + 1, group), p, 4,
            commit=CountStep(state),
            per_step=(state["step"], lambda step: self._coefficients_of(step, group)))
        _, beta2 = group["betas"]
        eps, weight_decay = group["eps"], group["weight_decay"]
        if group["maximize"]:
            grad = -grad
        param = p
        if weight_decay != 0:
            if self._decoupled:
                param = p * (1.0 - lr * weight_decay)
            else:
                grad = grad + p * weight_decay
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.copy_(exp_avg + (grad - exp_avg) * one_minus_beta1)
        exp_avg_sq.copy_(exp_avg_sq * beta2 + grad * grad * (1.0 - beta2))
        second = exp_avg_sq
        if group["amsgrad"]:
            max_sq = state["max_exp_avg_sq"]
            max_sq.copy_(ew.maximum(max_sq, exp_avg_sq))
            second = max_sq
        denom = ew.sqrt(second) / bias_correction2_sqrt + eps
        p.copy_(param - exp_avg / denom * step_size)


class AdamW(Adam):
    """Adam with decoupled weight decay, the same as `torch.optim.AdamW`.

    Instead of adding weight_decay * p to the gradient, the parameter is first shrunk by
    p *= 1 - lr * weight_decay, so the decay does not pass through Adam's normalisation.
    """

    _decoupled = True

    def __init__(self, params: ParamsT, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False,
                 fused: bool | None = None) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, fused=fused)
