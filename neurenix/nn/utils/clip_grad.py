"""Gradient clipping: `clip_grad_norm_` and `clip_grad_value_`, as `torch.nn.utils`.

Both are written with tensor operations under `no_grad` (no value is read back to the host), so
they run on any device and inside a compiled training step, between `backward()` and the
optimizer's `step()`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

from neurenix.compiler.trace import TraceError

from ... import elementwise as ew
from ... import reductions
from ...call_site import user_source
from ...creation import tensor
from ...shapes import reshape, stack
from ...state import is_tracing, no_grad
from ...tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_", "get_total_norm"]

TensorsT = Tensor | Iterable[Tensor]


def _tensors(parameters: TensorsT, owner: str) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        return [parameters]
    params = list(parameters)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{owner}: expected Tensors, but entry {i} is a "
                            f"{type(p).__name__}")
    return params


def _vector_norm(x: Tensor, norm_type: float) -> Tensor:
    """The norm of all of x's elements as one vector (0-d)."""
    flat = reshape(x, (-1,))
    if norm_type == math.inf:
        return reductions.amax(ew.abs(flat))
    if norm_type == -math.inf:
        return reductions.amin(ew.abs(flat))
    if norm_type == 0:
        return reductions.sum(ew.ne(flat, 0.0).to(x.dtype))
    if norm_type == 1:
        return reductions.sum(ew.abs(flat))
    if norm_type == 2:
        return ew.sqrt(reductions.sum(flat * flat))
    return ew.pow(reductions.sum(ew.pow(ew.abs(flat), norm_type)), 1.0 / norm_type)


def get_total_norm(tensors: TensorsT, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False, foreach: bool | None = None) -> Tensor:
    """The `norm_type` norm of all the tensors' elements taken together (a 0-d tensor on the
    first tensor's device); 0 for no tensors."""
    items = [t for t in _tensors(tensors, "get_total_norm") if t is not None]
    norm_type = float(norm_type)
    if not items:
        return tensor(0.0)
    with no_grad():
        device = items[0].device
        norms = [_vector_norm(t.detach(), norm_type) for t in items]
        norms = [n if n.device == device else n.to(device) for n in norms]
        dtype = norms[0].dtype
        total = _vector_norm(stack([n.to(dtype) for n in norms]), norm_type)
    if error_if_nonfinite:
        if is_tracing():
            raise TraceError(f"clip_grad_norm_(error_if_nonfinite=True) at {user_source()} "
                             "inside a compiled function: raising depends on the norm's "
                             "value, which a compiled program cannot test; pass "
                             "error_if_nonfinite=False there")
        value = float(total.item())
        if not math.isfinite(value):
            raise RuntimeError(f"The total norm of order {norm_type} for gradients from "
                               "`parameters` is non-finite, so it cannot be clipped. To "
                               "disable this error and scale the gradients by the non-finite "
                               "norm anyway, set `error_if_nonfinite=False`")
    return total


def _scale(p: Tensor, factor: Tensor) -> None:
    """Multiply p's gradient by factor, in place (on its device, or in the trace)."""
    g = p.grad
    g.copy_(g * factor.to(g.device).to(g.dtype))


def clip_grad_norm_(parameters: TensorsT, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> Tensor:
    """Scale the gradients of `parameters` in place so that their joint `norm_type` norm is at
    most `max_norm`; return the norm before clipping (a 0-d tensor).

    As in PyTorch the factor is min(1, max_norm / (norm + 1e-6)), applied to every gradient
    (with factor 1 when the norm is already small). `foreach` is accepted for PyTorch
    compatibility and changes nothing. With `error_if_nonfinite`, a nan or inf norm raises a
    RuntimeError (eagerly only: a compiled step cannot test a value).
    """
    params = _tensors(parameters, "clip_grad_norm_")
    grads = [p.grad for p in params]
    with_grad = [p for p, g in zip(params, grads) if g is not None]
    if not with_grad:
        return tensor(0.0)
    total = get_total_norm([p.grad for p in with_grad], norm_type, error_if_nonfinite)
    with no_grad():
        coef = ew.clamp(float(max_norm) / (total + 1e-6), max=1.0)
        for p in with_grad:
            _scale(p, coef)
    return total


def clip_grad_value_(parameters: TensorsT, clip_value: float,
                     foreach: bool | None = None) -> None:
    """Clamp every gradient of `parameters` to [-clip_value, clip_value], in place."""
    clip_value = float(clip_value)
    with no_grad():
        for p in _tensors(parameters, "clip_grad_value_"):
            g = p.grad
            if g is not None:
                g.copy_(ew.clamp(g, -clip_value, clip_value))
