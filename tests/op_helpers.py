"""One op-test helper with PyTorch as the oracle (in the spirit of tinygrad's helper_test_op).

`check_op(shapes, fn)` feeds the same seeded data to Neurenix and torch, runs `fn` (or the
separate `nx_fn`/`torch_fn` when the two APIs differ), compares shape, dtype and values of every
output, then backpropagates one random upstream gradient per floating output and compares the
gradients of every input.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

import neurenix as nx

TORCH_DTYPES = {
    nx.float32: torch.float32,
    nx.float64: torch.float64,
    nx.int32: torch.int32,
    nx.int64: torch.int64,
    nx.bool: torch.bool,
}

# Default tolerances: float32 forward (the brief's rtol/atol), float64 everywhere.
FWD_TOL = {nx.float32: (1e-5, 1e-6), nx.float64: (1e-10, 1e-12)}
# Gradients pass through one more round of float32 arithmetic than the forward (the VJP rule
# and the upstream product), so their absolute tolerance is one notch looser.
GRAD_TOL = {nx.float32: (1e-5, 1e-5), nx.float64: (1e-10, 1e-12)}


def torch_dtype(dtype: nx.DType) -> torch.dtype:
    return TORCH_DTYPES[dtype]


def make_data(shapes: Sequence[tuple[int, ...]], dtype: nx.DType = nx.float32, *,
              low: float = -2.0, high: float = 2.0, seed: int = 0) -> list[np.ndarray]:
    """Seeded random arrays: uniform floats in [low, high), integers in [low, high), bools."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        if dtype.is_floating:
            arr = rng.uniform(low, high, size=shape)
        elif dtype == nx.bool:
            arr = rng.integers(0, 2, size=shape).astype(bool)
        else:
            arr = rng.integers(int(low), int(high), size=shape)
        out.append(np.asarray(arr, dtype=dtype.np_type))
    return out


def _outputs(value: Any) -> list:
    if isinstance(value, (tuple, list)):
        return list(value)
    return [value]


def assert_close(nx_t: nx.Tensor, th: torch.Tensor, rtol: float, atol: float,
                 what: str = "forward") -> None:
    """Shape, dtype and values of a Neurenix tensor against a torch tensor."""
    assert isinstance(nx_t, nx.Tensor), f"{what}: expected a neurenix Tensor, got {type(nx_t)}"
    assert tuple(nx_t.shape) == tuple(th.shape), \
        f"{what}: shape {tuple(nx_t.shape)} != torch {tuple(th.shape)}"
    assert torch_dtype(nx_t.dtype) == th.dtype, f"{what}: dtype {nx_t.dtype} != torch {th.dtype}"
    got = nx_t.detach().numpy()
    want = th.detach().numpy()
    if nx_t.dtype.is_floating:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True,
                                   err_msg=what)
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


def check_op(shapes: Sequence[tuple[int, ...]] | None,
             fn: Callable | None = None,
             torch_fn: Callable | None = None, *,
             nx_fn: Callable | None = None,
             data: Sequence[np.ndarray] | None = None,
             dtype: nx.DType = nx.float32,
             low: float = -2.0, high: float = 2.0, seed: int = 0,
             grad: bool = True,
             rtol: float | None = None, atol: float | None = None,
             grad_rtol: float | None = None, grad_atol: float | None = None) -> list:
    """Compare `fn` on Neurenix tensors with `torch_fn` (default: `fn`) on torch tensors.

    Returns the Neurenix outputs (a list) so callers can check more.
    """
    nx_fn = nx_fn or fn
    torch_fn = torch_fn or fn
    assert nx_fn is not None and torch_fn is not None, "check_op: give fn or nx_fn and torch_fn"
    arrays = list(data) if data is not None else make_data(shapes, dtype, low=low, high=high,
                                                           seed=seed)
    nx_in = []
    th_in = []
    for arr in arrays:
        floating = arr.dtype.kind == "f"
        nx_in.append(nx.tensor(arr, requires_grad=grad and floating))
        th_in.append(torch.tensor(arr, requires_grad=grad and floating))
    nx_out = _outputs(nx_fn(*nx_in))
    th_out = _outputs(torch_fn(*th_in))
    assert len(nx_out) == len(th_out), f"{len(nx_out)} outputs, torch gives {len(th_out)}"
    for i, (a, b) in enumerate(zip(nx_out, th_out)):
        f_rtol, f_atol = FWD_TOL.get(a.dtype, (0, 0))
        assert_close(a, b, rtol if rtol is not None else f_rtol,
                     atol if atol is not None else f_atol, f"output {i}")
    if not grad or not any(t.requires_grad for t in nx_in):
        return nx_out
    rng = np.random.default_rng(seed + 1)
    nx_loss = None
    th_loss = None
    for a, b in zip(nx_out, th_out):
        if not b.requires_grad:
            assert not a.requires_grad, "output requires grad but torch's does not"
            continue
        assert a.requires_grad, "output does not require grad but torch's does"
        up = rng.standard_normal(tuple(b.shape)).astype(a.dtype.np_type)
        nx_term = (a * nx.tensor(up)).sum()
        th_term = (b * torch.tensor(up)).sum()
        nx_loss = nx_term if nx_loss is None else nx_loss + nx_term
        th_loss = th_term if th_loss is None else th_loss + th_term
    if nx_loss is None:
        return nx_out
    nx_loss.backward()
    th_loss.backward()
    for i, (a, b) in enumerate(zip(nx_in, th_in)):
        if not b.requires_grad:
            continue
        if b.grad is None:
            assert a.grad is None or not np.any(a.grad.numpy()), f"input {i}: unexpected grad"
            continue
        assert a.grad is not None, f"input {i}: no gradient, torch has one"
        g_rtol, g_atol = GRAD_TOL[a.dtype]
        assert_close(a.grad, b.grad, grad_rtol if grad_rtol is not None else g_rtol,
                     grad_atol if grad_atol is not None else g_atol, f"grad of input {i}")
    return nx_out


def check_lib(shapes: Sequence[tuple[int, ...]] | None, fn: Callable, **kwargs: Any) -> list:
    """`check_op` for a function written once against a library: `fn(lib, *inputs)` is called
    with `lib=neurenix` and with `lib=torch` (the two share most names)."""
    return check_op(shapes, nx_fn=lambda *xs: fn(nx, *xs), torch_fn=lambda *xs: fn(torch, *xs),
                    **kwargs)


def message_id(value: object) -> str:
    """A test id for an (action, error, message) case: the message, cut to 40 characters;
    nothing for the rest (a lambda's repr holds its address, which would differ between the
    processes of a parallel run, so that they would collect different tests)."""
    return value[:40] if isinstance(value, str) else ""
