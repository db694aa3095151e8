"""Recurrent layers as eager kernels: one layer direction over the whole sequence in NumPy.

The forward computes what `neurenix.nn.rnn`'s primitive composition computes, operation for
operation (the input projection of every step in one product, then per step one product with
W_hh and the gate arithmetic; the LSTM's sigmoids in place as 1 / (1 + exp(-x)), within an
ulp or two of the primitive's), and keeps the gate activations; the backward is
backpropagation through time over them, with the weight gradients as single products over all
steps.  PyTorch's gate orders: LSTM i, f, g, o; GRU r, z, n.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from neurenix.compiler.ops import REGISTRY

from ..tensor import Tensor
from . import workspace
from .record import Arrays, record

_SIGMOID = REGISTRY["sigmoid"].impl  # the primitive's own reference, so values are its values
_WHERE = REGISTRY["where"].impl


def run_direction(mode: str, x: Tensor, state: Sequence[Tensor], w_ih: Tensor, w_hh: Tensor,
                  b_ih: Tensor | None, b_hh: Tensor | None, reverse: bool,
                  composite: Callable[..., Sequence[Tensor]]) -> tuple[Tensor, tuple]:
    """One direction of one layer of an `RNNBase` (mode "LSTM", "GRU", "RNN_TANH" or
    "RNN_RELU") on time-major x (L, N, H_in): (outputs (L, N, H), final state).
    `composite(x, h0, c0, w_ih, w_hh, b_ih, b_hh)` is the same as primitives."""
    h0 = state[0]
    c0 = state[1] if mode == "LSTM" else None
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    arrays = [None if t is None else np.asarray(t._data) for t in inputs]
    with np.errstate(all="ignore"):  # inf and nan as the primitives give them, silently
        outputs, backward = _KERNELS[mode](*arrays, reverse)
    outs = record(f"{mode.split('_')[0]}Direction", inputs, outputs, backward, composite)
    return outs[0], tuple(outs[1:])


def _project(x: np.ndarray, w_ih: np.ndarray, b_ih: np.ndarray | None,
             b_hh: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(x as rows, x @ W_ih^T + b_ih [+ b_hh]) as `nn.rnn._project` adds them; b_hh None for
    the GRU, which adds its recurrent bias inside the step."""
    steps, batch, features = x.shape
    rows = x.reshape(steps * batch, features)
    gi = np.matmul(rows, w_ih.T, out=workspace.empty((steps * batch, w_ih.shape[0]), x.dtype))
    if b_ih is not None:  # in place, in the same order: (gi + b_ih) + b_hh
        gi += b_ih
        if b_hh is not None:
            gi += b_hh
    return rows, gi.reshape(steps, batch, -1)


def _transposed(w: np.ndarray) -> np.ndarray:
    """W^T as a contiguous array of its own.  The step's h @ W_hh^T with a transposed view
    takes a slow BLAS path for these small shapes (about 17 us against 6 us for (16, 64) @
    (64, 256)); one copy per call buys it back on every step."""
    return np.ascontiguousarray(w.T)


def _order(steps: int, reverse: bool) -> range:
    return range(steps - 1, -1, -1) if reverse else range(steps)


def _previous(hs: np.ndarray, h0: np.ndarray, reverse: bool) -> np.ndarray:
    """The state each step started from, (L, N, H): h0 for the first step processed."""
    prev = workspace.empty(hs.shape, hs.dtype)
    if reverse:
        prev[:-1] = hs[1:]
        prev[-1] = h0
    else:
        prev[1:] = hs[:-1]
        prev[0] = h0
    return prev


def _input_grads(dgi: np.ndarray, rows: np.ndarray, x_shape: tuple[int, ...],
                 w_ih: np.ndarray, b_ih: np.ndarray | None,
                 fold_hh: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                         np.ndarray | None]:
    """Gradients of x, W_ih, b_ih and (when folded into the projection) b_hh from the
    projection's gradient dgi (L, N, G*H)."""
    flat = dgi.reshape(-1, dgi.shape[-1])
    dx = workspace.empty(x_shape, dgi.dtype)
    np.matmul(flat, w_ih, out=dx.reshape(flat.shape[0], -1))
    dw_ih = flat.T @ rows
    if b_ih is None:
        return dx, dw_ih, None, None
    db = flat.sum(0)
    return dx, dw_ih, db, (db.copy() if fold_hh else None)


def _seed(g: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    return np.zeros_like(like) if g is None else np.array(g, dtype=like.dtype)


def _sigmoid_inplace(a: np.ndarray) -> None:
    """a = 1 / (1 + exp(-a)) in place, four passes without temporaries (PyTorch's formula):
    exp(-a) overflows to inf for a very negative a, and 1 / inf is the 0.0 the limit is."""
    np.negative(a, out=a)
    np.exp(a, out=a)
    a += 1
    np.divide(1, a, out=a)


def _slope(s: np.ndarray, out: np.ndarray) -> np.ndarray:
    """s * (1 - s) into out: the sigmoid's derivative from its value."""
    np.subtract(1, s, out=out)
    return np.multiply(s, out, out=out)


def _tanh_slope(t: np.ndarray, out: np.ndarray) -> np.ndarray:
    """1 - t * t into out: tanh's derivative from its value."""
    np.multiply(t, t, out=out)
    return np.subtract(1, out, out=out)


def _lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse):
    rows, gi = _project(x, w_ih, b_ih, b_hh)
    steps, hidden = x.shape[0], h0.shape[-1]
    w_hh_t = _transposed(w_hh)
    # the big arrays from the workspace: fresh ones would fault their pages in every step
    acts = workspace.empty(gi.shape, gi.dtype)  # sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    states = (steps,) + h0.shape
    cs, tcs, hs = (workspace.empty(states, gi.dtype) for _ in range(3))
    h, c = h0, c0
    g_ = slice(2 * hidden, 3 * hidden)
    cell_in = np.empty(h0.shape, gi.dtype)  # tanh of the cell gate, before the sigmoids
    for t in _order(steps, reverse):
        a = acts[t]
        np.matmul(h, w_hh_t, out=a)
        a += gi[t]
        np.tanh(a[:, g_], out=cell_in)
        _sigmoid_inplace(a)
        a[:, g_] = cell_in
        i, f, g, o = a[:, :hidden], a[:, hidden:2 * hidden], a[:, g_], a[:, 3 * hidden:]
        c = np.multiply(f, c, out=cs[t])
        c += i * g
        h = np.multiply(o, np.tanh(c, out=tcs[t]), out=hs[t])

    def backward(grads: Arrays) -> Arrays:
        g_out, g_h, g_c = grads
        dh, dc = _seed(g_h, h0), _seed(g_c, c0)
        gates = acts.reshape(acts.shape[:-1] + (4, hidden))  # (L, N, 4, H): i, f, g, o
        i, f, g, o = (gates[..., k, :] for k in range(4))
        # every step's gate-gradient factors at once; the loop keeps only the recurrence:
        # d_o = dh * out_gate, dc += dh * cell, (d_i, d_f, d_g) = dc * inner, dc *= f
        # (the same products in the same order as written, into workspace buffers)
        tmp = workspace.empty(states, acts.dtype)
        out_gate = workspace.empty(states, acts.dtype)  # tcs * (o * (1 - o))
        np.multiply(tcs, _slope(o, tmp), out=out_gate)
        cell = workspace.empty(states, acts.dtype)  # o * (1 - tcs * tcs)
        np.multiply(o, _tanh_slope(tcs, tmp), out=cell)
        inner = workspace.empty(gates.shape[:-2] + (3, hidden), acts.dtype)
        np.multiply(g, _slope(i, tmp), out=inner[..., 0, :])
        np.multiply(_previous(cs, c0, reverse), _slope(f, tmp), out=inner[..., 1, :])
        np.multiply(i, _tanh_slope(g, tmp), out=inner[..., 2, :])
        del tmp
        dpre = workspace.empty(acts.shape, acts.dtype)
        dgates = dpre.reshape(gates.shape)
        for t in _order(steps, not reverse):
            if g_out is not None:
                dh += g_out[t]
            np.multiply(dh, out_gate[t], out=dgates[t, ..., 3, :])
            dc += dh * cell[t]
            np.multiply(dc[..., None, :], inner[t], out=dgates[t, ..., :3, :])
            dc *= f[t]
            dh = dpre[t] @ w_hh
        hp = _previous(hs, h0, reverse)
        dw_hh = dpre.reshape(-1, dpre.shape[-1]).T @ hp.reshape(-1, hidden)
        dx, dw_ih, db_ih, db_hh = _input_grads(dpre, rows, x.shape, w_ih, b_ih, True)
        return [dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh]

    return (_own(hs), h.copy(), c.copy()), backward


def _gru(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse):
    rows, gi = _project(x, w_ih, b_ih, None)
    steps, hidden = x.shape[0], h0.shape[-1]
    w_hh_t = _transposed(w_hh)
    gates = workspace.empty((steps,) + h0.shape[:-1] + (3 * hidden,), gi.dtype)  # r, z, n
    ghn = workspace.empty((steps,) + h0.shape, gi.dtype)  # W_hn h + b_hn
    hs = workspace.empty(ghn.shape, gi.dtype)
    h = h0
    for t in _order(steps, reverse):
        gh = h @ w_hh_t
        if b_hh is not None:
            gh = gh + b_hh
        i_t = gi[t]
        r = _SIGMOID(i_t[:, :hidden] + gh[:, :hidden])
        z = _SIGMOID(i_t[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
        ghn[t] = gh[:, 2 * hidden:]
        n = np.tanh(i_t[:, 2 * hidden:] + r * ghn[t])
        gates[t, :, :hidden], gates[t, :, hidden:2 * hidden], gates[t, :, 2 * hidden:] = r, z, n
        h = hs[t] = n + z * (h - n)

    def backward(grads: Arrays) -> Arrays:
        g_out, g_h = grads[0], grads[1]
        dh = _seed(g_h, h0)
        hp = _previous(hs, h0, reverse)
        dgi = workspace.empty(gates.shape, gates.dtype)
        dgh = workspace.empty(gates.shape, gates.dtype)
        for t in _order(steps, not reverse):
            if g_out is not None:
                dh = dh + g_out[t]
            r, z, n = gates[t, :, :hidden], gates[t, :, hidden:2 * hidden], gates[t, :, 2 * hidden:]
            through = dh * z
            dn = dh - through
            dz = dh * (hp[t] - n)
            dan = dn * (1 - n * n)
            dgi[t, :, 2 * hidden:] = dan
            dgh[t, :, 2 * hidden:] = dan * r
            dgi[t, :, :hidden] = dgh[t, :, :hidden] = (dan * ghn[t]) * (r * (1 - r))
            dgi[t, :, hidden:2 * hidden] = dgh[t, :, hidden:2 * hidden] = dz * (z * (1 - z))
            dh = through + dgh[t] @ w_hh
        flat = dgh.reshape(-1, 3 * hidden)
        dw_hh = flat.T @ hp.reshape(-1, hidden)
        db_hh = None if b_hh is None else flat.sum(0)
        dx, dw_ih, db_ih, _ = _input_grads(dgi, rows, x.shape, w_ih, b_ih, False)
        return [dx, dh, None, dw_ih, dw_hh, db_ih, db_hh]

    return (_own(hs), h.copy()), backward


def _own(states: np.ndarray) -> np.ndarray:
    """The per-step outputs as an array of their own, so that an in-place write into them
    does not reach the saved states (in the workspace: a fresh array would fault its pages
    in every step)."""
    out = workspace.empty(states.shape, states.dtype)
    np.copyto(out, states)
    return out


def _elman(relu: bool):
    def kernel(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse):
        rows, gi = _project(x, w_ih, b_ih, b_hh)
        steps, hidden = x.shape[0], h0.shape[-1]
        w_hh_t = _transposed(w_hh)
        hs = workspace.empty((steps,) + h0.shape, gi.dtype)
        h = h0
        zero = np.zeros((), gi.dtype)
        for t in _order(steps, reverse):
            pre = gi[t] + h @ w_hh_t
            h = hs[t] = _WHERE(pre < zero, zero, pre) if relu else np.tanh(pre)

        def backward(grads: Arrays) -> Arrays:
            g_out, g_h = grads[0], grads[1]
            dh = _seed(g_h, h0)
            dpre = workspace.empty(hs.shape, hs.dtype)
            for t in _order(steps, not reverse):
                if g_out is not None:
                    dh = dh + g_out[t]
                out = hs[t]
                # relu's gradient is 0 where its input is <= 0 (its output is too), g elsewhere
                dpre[t] = _WHERE(out <= zero, zero, dh) if relu else dh * (1 - out * out)
                dh = dpre[t] @ w_hh
            hp = _previous(hs, h0, reverse)
            dw_hh = dpre.reshape(-1, hidden).T @ hp.reshape(-1, hidden)
            dx, dw_ih, db_ih, db_hh = _input_grads(dpre, rows, x.shape, w_ih, b_ih, True)
            return [dx, dh, None, dw_ih, dw_hh, db_ih, db_hh]

        return (_own(hs), h.copy()), backward
    return kernel


_KERNELS = {"LSTM": _lstm, "GRU": _gru, "RNN_TANH": _elman(False), "RNN_RELU": _elman(True)}
