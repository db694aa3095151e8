"""Recurrent layers as eager kernels (`neurenix.eager_kernels.rnn`): the same outputs and
gradients as the primitive composition (`neurenix.backends.eager_kernels = False`) and as
PyTorch, for every mode and layout; higher-order gradients, in-place checks and compiled code
as before."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_switch import kernels

import neurenix as nx
import neurenix.nn as nn
from neurenix import autograd
from neurenix.eager_kernels import rnn as rnn_kernels
from neurenix.eager_kernels import workspace

TOL = {nx.float32: dict(rtol=2e-5, atol=2e-5), nx.float64: dict(rtol=1e-11, atol=1e-11)}
TORCH_TOL = {nx.float32: dict(rtol=1e-4, atol=1e-4), nx.float64: dict(rtol=1e-10, atol=1e-10)}
LAYERS = {"LSTM": (nn.LSTM, torch.nn.LSTM), "GRU": (nn.GRU, torch.nn.GRU),
          "RNN_TANH": (nn.RNN, torch.nn.RNN), "RNN_RELU": (nn.RNN, torch.nn.RNN)}


def _layers(mode: str, dtype, **kw):
    """The neurenix layer and a PyTorch layer with the same weights."""
    ours, theirs = LAYERS[mode]
    if mode.startswith("RNN"):
        kw["nonlinearity"] = "relu" if mode == "RNN_RELU" else "tanh"
    nx.manual_seed(3)
    layer = ours(5, 6, dtype=dtype, **kw) if dtype is nx.float64 else ours(5, 6, **kw)
    ref = theirs(5, 6, **kw).to(torch.float64 if dtype is nx.float64 else torch.float32)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.from_numpy(getattr(layer, name).detach().numpy()))
    return layer, ref


def _run(layer, x: np.ndarray, hx, dtype, on: bool, seed: int = 1):
    """Output, final state(s) and the gradients of the input, the initial state(s) and every
    parameter under random upstream gradients of the output and the final state(s)."""
    with kernels(on):
        layer.zero_grad()
        xt = nx.tensor(x, dtype=dtype, requires_grad=True)
        states = None if hx is None else tuple(nx.tensor(h, dtype=dtype, requires_grad=True)
                                               for h in hx)
        arg = None if states is None else (states if len(states) == 2 else states[0])
        out, last = layer(xt, arg)
        last = last if isinstance(last, tuple) else (last,)
        rng = np.random.default_rng(seed)
        loss = (out * nx.tensor(rng.standard_normal(tuple(out.shape)), dtype=dtype)).sum()
        for s in last:
            loss = loss + (s * nx.tensor(rng.standard_normal(tuple(s.shape)), dtype=dtype)).sum()
        loss.backward()
        grads = [xt.grad.numpy()] + ([] if states is None else [s.grad.numpy() for s in states])
        grads += [p.grad.numpy() for p in layer.parameters()]
        return [out.detach().numpy()] + [s.detach().numpy() for s in last] + grads, out.grad_fn


def _torch(ref, x: np.ndarray, hx, seed: int = 1):
    xt = torch.tensor(x, requires_grad=True)
    states = None if hx is None else tuple(torch.tensor(h, requires_grad=True) for h in hx)
    arg = None if states is None else (states if len(states) == 2 else states[0])
    out, last = ref(xt, arg)
    last = last if isinstance(last, tuple) else (last,)
    rng = np.random.default_rng(seed)
    loss = (out * torch.tensor(rng.standard_normal(tuple(out.shape)), dtype=out.dtype)).sum()
    for s in last:
        loss = loss + (s * torch.tensor(rng.standard_normal(tuple(s.shape)),
                                        dtype=s.dtype)).sum()
    loss.backward()
    grads = [xt.grad.numpy()] + ([] if states is None else [s.grad.numpy() for s in states])
    grads += [p.grad.numpy() for p in ref.parameters()]
    return [out.detach().numpy()] + [s.detach().numpy() for s in last] + grads


def _close(got, want, tol, what):
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, err_msg=f"{what}: item {i}", **tol)


CASES = [dict(), dict(num_layers=2), dict(bidirectional=True), dict(batch_first=True),
         dict(bias=False), dict(num_layers=2, bidirectional=True, batch_first=True)]


@pytest.mark.parametrize("mode", list(LAYERS))
@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(kw) or "plain")
@pytest.mark.parametrize("dtype", [nx.float32, nx.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("given_state", [False, True], ids=["zero_state", "given_state"])
def test_matches_primitives_and_torch(mode, kw, dtype, given_state, monkeypatch):
    runs = []
    real = rnn_kernels.run_direction
    monkeypatch.setattr(rnn_kernels, "run_direction", lambda *a: runs.append(1) or real(*a))
    layer, ref = _layers(mode, dtype, **kw)
    rng = np.random.default_rng(0)
    shape = (3, 4, 5) if kw.get("batch_first") else (4, 3, 5)
    x = rng.uniform(-2, 2, shape).astype(dtype.np_type)
    hx = None
    if given_state:
        count = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
        hx = tuple(rng.uniform(-1, 1, (count, 3, 6)).astype(dtype.np_type)
                   for _ in range(2 if mode == "LSTM" else 1))
    got, _ = _run(layer, x, hx, dtype, True)
    assert len(runs) == kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    want, _ = _run(layer, x, hx, dtype, False)
    assert len(runs) == kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    _close(got, want, TOL[dtype], "kernel vs primitives")
    _close(got, _torch(ref, x, hx), TORCH_TOL[dtype], "kernel vs torch")


@pytest.mark.parametrize("mode", list(LAYERS))
def test_unbatched_input(mode):
    layer, ref = _layers(mode, nx.float64)
    x = np.random.default_rng(1).uniform(-1, 1, (5, 5))
    got, _ = _run(layer, x, None, nx.float64, True)
    _close(got, _run(layer, x, None, nx.float64, False)[0], TOL[nx.float64], "unbatched")
    _close(got, _torch(ref, x, None), TORCH_TOL[nx.float64], "unbatched vs torch")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_RELU"])
def test_only_some_outputs_used(mode):
    """A loss of the final state alone (the output gets no gradient) or of one time step."""
    layer, _ = _layers(mode, nx.float64, num_layers=2)
    x = np.random.default_rng(2).uniform(-1, 1, (4, 3, 5))
    results = []
    for on in (True, False):
        with kernels(on):
            layer.zero_grad()
            xt = nx.tensor(x, requires_grad=True)
            out, last = layer(xt)
            h = last[0] if mode == "LSTM" else last
            (h.sum() + out[1].sum() * 0.5).backward()
            results.append([xt.grad.numpy()] + [p.grad.numpy() for p in layer.parameters()])
    _close(results[0], results[1], TOL[nx.float64], "partial outputs")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_double_backward_is_the_composites(mode):
    layer, _ = _layers(mode, nx.float64)
    x = np.random.default_rng(4).uniform(-1, 1, (3, 2, 5))
    results = []
    for on in (True, False):
        with kernels(on):
            layer.zero_grad()
            xt = nx.tensor(x, requires_grad=True)
            out, _ = layer(xt)
            (gx,) = autograd.grad((out * out).sum(), [xt], create_graph=True)
            (gx * gx).sum().backward()
            results.append([xt.grad.numpy(), gx.detach().numpy()]
                           + [p.grad.numpy() for p in layer.parameters()])
    _close(results[0], results[1], TOL[nx.float64], "double backward")


def test_weight_changed_in_place_raises():
    layer, _ = _layers("LSTM", nx.float32)
    out, _ = layer(nx.randn(4, 3, 5))
    with nx.no_grad():
        layer.weight_hh_l0.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


def test_output_written_in_place_keeps_gradients():
    """Writing into the output after the forward does not reach what the backward reads."""
    layer, _ = _layers("GRU", nx.float64)
    x = np.random.default_rng(5).uniform(-1, 1, (4, 3, 5))
    results = []
    for on in (True, False):
        with kernels(on):
            layer.zero_grad()
            out, h = layer(nx.tensor(x))
            loss = (h * h).sum()
            with nx.no_grad():
                out.mul_(0.0)
            loss.backward()
            results.append([p.grad.numpy() for p in layer.parameters()])
    _close(results[0], results[1], TOL[nx.float64], "after an in-place write")


@pytest.mark.parametrize("mode", list(LAYERS))
def test_no_grad_outputs(mode):
    layer, ref = _layers(mode, nx.float32, num_layers=2)
    x = np.random.default_rng(6).uniform(-1, 1, (4, 3, 5)).astype(np.float32)
    with nx.no_grad():
        out, _ = layer(nx.tensor(x))
    assert not out.requires_grad
    with kernels(False), nx.no_grad():
        want, _ = layer(nx.tensor(x))
    np.testing.assert_allclose(out.numpy(), want.numpy(), **TOL[nx.float32])


def test_compiled_equals_eager_with_kernels():
    layer, _ = _layers("LSTM", nx.float32, num_layers=2, batch_first=True)
    x = nx.tensor(np.random.default_rng(7).uniform(-1, 1, (3, 4, 5)).astype(np.float32))

    def loss_of(x):
        out, _ = layer(x)
        return (out * out).sum()

    results = []
    for fn in (nx.compile(loss_of), loss_of):
        layer.zero_grad()
        loss = fn(x)
        loss.backward()
        results.append([loss.detach().numpy()] + [p.grad.numpy() for p in layer.parameters()])
    _close(results[0], results[1], dict(rtol=1e-4, atol=1e-5), "compiled vs eager")


def test_non_finite_values_match_primitives():
    layer, _ = _layers("LSTM", nx.float64)
    x = np.random.default_rng(8).uniform(-1, 1, (3, 2, 5))
    x[1, 0, 2] = np.inf
    x[2, 1, 0] = np.nan
    got, _ = _run(layer, x, None, nx.float64, True)
    want, _ = _run(layer, x, None, nx.float64, False)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, equal_nan=True, **TOL[nx.float64])


def test_switch_refuses_non_bools():
    with pytest.raises(TypeError, match="eager_kernels must be a bool"):
        nx.backends.eager_kernels = 1


@pytest.mark.parametrize("dtype", [nx.float32, nx.float64], ids=["f32", "f64"])
def test_saturated_lstm_gates_match_primitives_and_torch(dtype):
    """The LSTM kernel's in-place sigmoid 1 / (1 + exp(-x)) where exp(-x) overflows or
    underflows: inputs large enough to drive every gate to 0 or 1 (and past float32's exp
    range), against the primitives' sign-split sigmoid and PyTorch."""
    layer, ref = _layers("LSTM", dtype)
    x = np.random.default_rng(9).choice([-300.0, -40.0, 40.0, 300.0], (4, 3, 5))
    x = x.astype(dtype.np_type)
    got, _ = _run(layer, x, None, dtype, True)
    want, _ = _run(layer, x, None, dtype, False)
    assert all(np.isfinite(a).all() for a in got)
    _close(got, want, TOL[dtype], "kernel vs primitives")
    _close(got, _torch(ref, x, None), TORCH_TOL[dtype], "kernel vs torch")


def _big_layers(mode: str, num_layers: int = 2):
    """A float32 layer and its PyTorch twin at the off-tuning benchmark's sizes (input 32,
    hidden 64): big enough that the kernels' arrays come from the workspace pool."""
    ours, theirs = LAYERS[mode]
    kw = {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh"} if mode.startswith("RNN") \
        else {}
    nx.manual_seed(4)
    layer = ours(32, 64, num_layers=num_layers, **kw)
    ref = theirs(32, 64, num_layers=num_layers, **kw)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.from_numpy(getattr(layer, name).detach().numpy()))
    return layer, ref


@pytest.mark.parametrize("mode", list(LAYERS))
def test_pool_sized_arrays_match_primitives_and_torch(mode, monkeypatch):
    """At (20 steps, batch 16, hidden 64) the projections, gate activations, states and
    gradients are over the workspace's size floor and come from its pool: the same values as
    the primitives and PyTorch, and the pool really is used."""
    pooled = []
    real = workspace.empty
    monkeypatch.setattr(workspace, "empty",
                        lambda shape, dtype: pooled.append(shape) or real(shape, dtype))
    layer, ref = _big_layers(mode)
    x = np.random.default_rng(10).uniform(-1, 1, (20, 16, 32)).astype(np.float32)
    got, _ = _run(layer, x, None, nx.float32, True)
    assert any(int(np.prod(s)) * 4 >= workspace.MIN_BYTES for s in pooled)
    want, _ = _run(layer, x, None, nx.float32, False)
    _close(got, want, TOL[nx.float32], "kernel vs primitives")
    _close(got, _torch(ref, x, None), TORCH_TOL[nx.float32], "kernel vs torch")


def test_pool_sized_graphs_alive_together_keep_their_arrays():
    """Two forwards whose graphs are both alive, then their backwards in reverse order, and
    an in-place write into each output: a pooled buffer the first graph still holds must not
    be handed to the second, nor an output share the states the backward reads."""
    layer, _ = _big_layers("LSTM")
    rng = np.random.default_rng(11)
    xs = [rng.uniform(-1, 1, (20, 16, 32)).astype(np.float32) for _ in range(2)]

    def grads(on: bool) -> list[list[np.ndarray]]:
        with kernels(on):
            losses = []
            for x in xs:
                out, (h, c) = layer(nx.tensor(x))
                losses.append((c * h).sum())  # (out unused: it is written below)
                with nx.no_grad():
                    out.mul_(0.0)
            results = []
            for loss in reversed(losses):
                layer.zero_grad()
                loss.backward()
                results.append([p.grad.numpy().copy() for p in layer.parameters()])
            return results

    for got, want in zip(grads(True), grads(False)):
        _close(got, want, TOL[nx.float32], "graphs alive together")


def test_recurrent_weight_is_transposed_contiguously():
    """The step's product takes W_hh^T as a contiguous copy (the transposed view takes a slow
    BLAS path at these sizes), with W_hh^T's values."""
    w = np.random.default_rng(12).standard_normal((256, 64)).astype(np.float32)
    t = rnn_kernels._transposed(w)
    assert t.flags.c_contiguous and not np.shares_memory(t, w)
    np.testing.assert_array_equal(t, w.T)
