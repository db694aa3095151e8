"""Hot eager layers (`neurenix.eager_kernels.hot`): a convolution called with one signature
again and again runs as compiled programs from its `HOT_AFTER`-th call, and gives what the
primitives and PyTorch give, with the eager node's behaviour (versions, gradients only where
asked, higher-order gradients, outputs that later steps leave alone)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from kernel_switch import eager_compile, kernels
from test_eager_kernels_conv import (
    CONV_CASES,
    TOL,
    TORCH_TOL,
    _arrays,
    _assert_all_close,
    _conv_fns,
    _run,
    _torch,
)

import neurenix as nx
import neurenix.nn.functional as F
from neurenix import autograd, compile_hook
from neurenix.eager_kernels import hot


@pytest.fixture(autouse=True)
def _hot_at_once(monkeypatch):
    """Every eager convolution compiled from its first call."""
    monkeypatch.setattr(hot, "HOT_AFTER", 1)
    with kernels(True), eager_compile(True):
        yield


def _compiled_layers() -> list[hot.HotLayer]:
    return [layer for layer in hot._layers.values() if layer is not None and layer.compiled]


@pytest.mark.parametrize("x_shape,w_shape,bias,kwargs", CONV_CASES)
def test_compiled_conv_matches_primitives_and_torch(x_shape, w_shape, bias, kwargs):
    fn, tfn = _conv_fns(w_shape, bias, kwargs)
    shapes = [x_shape, w_shape] + ([(w_shape[0],)] if bias else [])
    arrays = _arrays(shapes, nx.float32)
    got = _run(fn, arrays, nx.float32, on=True)
    assert len(_compiled_layers()) == 1
    if len(x_shape) == len(w_shape):
        assert got[2] == f"Conv{len(w_shape) - 2}dBackward"
    want = _run(fn, arrays, nx.float32, on=False)
    _assert_all_close(got, want, TOL[nx.float32], "compiled vs primitives")
    _assert_all_close(got, _torch(tfn, arrays, nx.float32, got[3]), TORCH_TOL[nx.float32],
                      "compiled vs torch")


def test_a_signature_compiles_on_its_hot_after_th_call(monkeypatch):
    monkeypatch.setattr(hot, "HOT_AFTER", 3)
    x, w = (nx.tensor(a) for a in _arrays([(2, 3, 6, 6), (4, 3, 3, 3)], nx.float32))
    outs = []
    for call in range(1, 5):
        outs.append(F.conv2d(x, w, padding=1).numpy())
        assert len(_compiled_layers()) == (call >= 3)
    F.conv2d(x[:1], w, padding=1)  # another shape counts afresh
    assert len(_compiled_layers()) == 1
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], **TOL[nx.float32])


def test_non_finite_values_match_primitives():
    x, w, b = _arrays([(2, 2, 6, 7), (3, 2, 3, 3), (3,)], nx.float32)
    x[0, 1, 2, 3], x[1, 0, 5, 6], w[1, 0, 0, 2] = np.inf, np.nan, -np.inf

    def fn(x, w, b):
        return F.conv2d(x, w, b, padding=1)

    got = _run(fn, [x, w, b], nx.float32, on=True)
    want = _run(fn, [x, w, b], nx.float32, on=False)
    assert _compiled_layers()
    for a, e in zip([got[0]] + got[1], [want[0]] + want[1]):
        assert np.array_equal(np.isnan(a), np.isnan(e))
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_gradients_only_where_asked_one_backward_program_each():
    x, w, b = _arrays([(2, 3, 6, 6), (4, 3, 3, 3), (4,)], nx.float32)
    xt, wt, bt = nx.tensor(x), nx.tensor(w, requires_grad=True), nx.tensor(b)
    F.conv2d(xt, wt, bt, padding=1).sum().backward()
    assert xt.grad is None and bt.grad is None
    xt2 = nx.tensor(x, requires_grad=True)
    F.conv2d(xt2, nx.tensor(w), bt, padding=1).sum().backward()
    (layer,) = _compiled_layers()
    assert len(layer._backward) == 2
    with kernels(False):
        w2, x2 = nx.tensor(w, requires_grad=True), nx.tensor(x, requires_grad=True)
        F.conv2d(nx.tensor(x), w2, bt, padding=1).sum().backward()
        F.conv2d(x2, nx.tensor(w), bt, padding=1).sum().backward()
    np.testing.assert_allclose(wt.grad.numpy(), w2.grad.numpy(), **TOL[nx.float32])
    np.testing.assert_allclose(xt2.grad.numpy(), x2.grad.numpy(), **TOL[nx.float32])


def test_double_backward_differentiates_the_primitives():
    x, w, b = _arrays([(2, 2, 5, 5), (3, 2, 3, 3), (3,)], nx.float32)

    def second(on):
        with kernels(on):
            xt, wt = nx.tensor(x, requires_grad=True), nx.tensor(w, requires_grad=True)
            y = F.conv2d(xt, wt, nx.tensor(b), padding=1)
            (gx,) = autograd.grad([(y * y).sum()], [xt], create_graph=True)
            (gw,) = autograd.grad([gx.sum()], [wt])
            return gw.numpy()

    got = second(True)
    assert _compiled_layers()
    np.testing.assert_allclose(got, second(False), rtol=1e-4, atol=1e-4)


def test_input_changed_in_place_before_backward_raises():
    x, w = _arrays([(2, 2, 5, 5), (3, 2, 3, 3)], nx.float32)
    xt, wt = nx.tensor(x), nx.tensor(w, requires_grad=True)
    y = F.conv2d(xt, wt, padding=1)
    assert _compiled_layers()
    xt.add_(1.0)
    with pytest.raises(RuntimeError, match="used by Conv2dBackward was modified in place"):
        y.sum().backward()


def test_outputs_and_gradients_kept_by_the_caller_survive_later_steps():
    x, w, b = _arrays([(4, 3, 12, 12), (8, 3, 3, 3), (8,)], nx.float32)
    ts = [nx.tensor(a, requires_grad=True) for a in (x, w, b)]
    kept = []
    for step in range(4):
        for t in ts:
            t.grad = None
        y = F.conv2d(*ts, padding=1)
        (y * float(step + 1)).sum().backward()
        arrays = [y.detach().numpy()] + [t.grad.numpy() for t in ts]
        kept.append((arrays, [a.copy() for a in arrays]))
    assert _compiled_layers()
    for arrays, copies in kept:
        for a, c in zip(arrays, copies):
            assert np.array_equal(a, c)
    every = [a for arrays, _ in kept for a in arrays]
    for i, a in enumerate(every):
        for other in every[i + 1:]:
            assert not np.shares_memory(a, other)


def test_sgd_loop_matches_the_numpy_kernels_and_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    w0 = rng.standard_normal((5, 3, 3, 3)).astype(np.float32) * 0.3
    b0 = rng.standard_normal(5).astype(np.float32) * 0.1

    def loop(on):
        with eager_compile(on):
            w, b = nx.tensor(w0, requires_grad=True), nx.tensor(b0, requires_grad=True)
            opt = nx.optim.SGD([w, b], lr=0.01, momentum=0.9)
            for _ in range(5):
                opt.zero_grad()
                (F.relu(F.conv2d(nx.tensor(x), w, b, padding=1)) ** 2).mean().backward()
                opt.step()
            return w.detach().numpy(), b.detach().numpy()

    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    opt = torch.optim.SGD([tw, tb], lr=0.01, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        (torch.relu(torch.nn.functional.conv2d(torch.tensor(x), tw, tb, padding=1)) ** 2
         ).mean().backward()
        opt.step()
    got = loop(True)
    assert _compiled_layers()
    for a, e in zip(got, loop(False)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    for a, e in zip(got, (tw.detach().numpy(), tb.detach().numpy())):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


def test_off_switch_float64_and_compile_failures_keep_the_numpy_kernel(monkeypatch, caplog):
    x, w = _arrays([(2, 3, 6, 6), (4, 3, 3, 3)], nx.float32)
    with eager_compile(False):
        F.conv2d(nx.tensor(x), nx.tensor(w), padding=1)
    F.conv2d(nx.tensor(x.astype(np.float64)), nx.tensor(w.astype(np.float64)), padding=1)
    assert not hot._layers
    want = F.conv2d(nx.tensor(x), nx.tensor(w), padding=1).numpy()
    hot.clear()

    def failing(fn, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(compile_hook, "_COMPILE", [failing])
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        for _ in range(2):
            got = F.conv2d(nx.tensor(x), nx.tensor(w), padding=1).numpy()
            np.testing.assert_allclose(got, want, **TOL[nx.float32])
    assert "not compiled (RuntimeError: no compiler here)" in caplog.text
    assert caplog.text.count("not compiled") == 1  # the signature stays on NumPy, quietly
    assert list(hot._layers.values()) == [None]


def test_a_backward_that_fails_to_compile_differentiates_the_primitives(monkeypatch):
    x, w = _arrays([(2, 3, 6, 6), (4, 3, 3, 3)], nx.float32)
    wt = nx.tensor(w, requires_grad=True)
    y = F.conv2d(nx.tensor(x), wt, padding=1)
    real = compile_hook.compiler()

    def failing_backward(fn, **kwargs):
        if fn.__name__.endswith("[eager backward]"):
            raise RuntimeError("no backward compiler")
        return real(fn, **kwargs)

    monkeypatch.setattr(compile_hook, "_COMPILE", [failing_backward])
    y.sum().backward()
    with kernels(False):
        w2 = nx.tensor(w, requires_grad=True)
        F.conv2d(nx.tensor(x), w2, padding=1).sum().backward()
    np.testing.assert_allclose(wt.grad.numpy(), w2.grad.numpy(), **TOL[nx.float32])


def test_switch_takes_only_a_bool():
    with pytest.raises(TypeError, match="eager_compile must be a bool, got int 1"):
        nx.backends.eager_compile = 1


def test_a_composition_returning_its_output_bare_is_taken_whole():
    """A layer's composition may return its one output bare (not in a tuple): the compiled
    layer computes that whole tensor, not its first row."""
    x, w = _arrays([(5, 7), (3, 7)], nx.float32)
    xt, wt = nx.tensor(x), nx.tensor(w, requires_grad=True)

    def composite(x, w, b):
        return F.linear(x, w)

    out, backward = hot.run("Bare", (), (xt, wt, None), [False, True, False], composite)
    assert _compiled_layers()
    np.testing.assert_allclose(out, x @ w.T, **TOL[nx.float32])
    g = np.ones((5, 3), np.float32)
    dx, dw, db = backward([g])
    assert dx is None and db is None
    np.testing.assert_allclose(dw, g.T @ x, **TOL[nx.float32])


def test_the_backward_program_writes_each_gradient_once():
    """The gradient program returns the leaves' gradients and clears their `.grad`, so it
    has no second output to copy each gradient into."""
    x, w, b = _arrays([(2, 3, 6, 6), (4, 3, 3, 3), (4,)], nx.float32)
    ts = [nx.tensor(a, requires_grad=True) for a in (x, w, b)]
    F.conv2d(*ts, padding=1).sum().backward()
    (layer,) = _compiled_layers()
    (program,) = layer._backward.values()
    kernels_run = [k.name for k in program._last.forward.program.kernels]
    assert kernels_run and not [k for k in kernels_run if k.endswith("_copy")]


LINEAR_CASES = [
    # (input shape, weight shape, bias): every product of at least THREADED_MNK multiply-adds
    ((64, 96), (48, 96), True),
    ((4, 16, 64), (80, 64), True),  # rows from two leading axes
    ((8, 1568), (128, 1568), False),
]


@pytest.mark.parametrize("x_shape,w_shape,bias", LINEAR_CASES)
def test_compiled_linear_matches_primitives_and_torch(x_shape, w_shape, bias):
    shapes = [x_shape, w_shape] + ([(w_shape[0],)] if bias else [])
    arrays = _arrays(shapes, nx.float32)
    arrays[0][0, 1] = np.inf
    arrays[1][2, 3] = np.nan

    def fn(*ts):
        return F.linear(*ts)

    got = _run(fn, arrays, nx.float32, on=True)
    assert len(_compiled_layers()) == 1 and got[2] == "LinearBackward"
    want = _run(fn, arrays, nx.float32, on=False)
    tol = dict(TORCH_TOL[nx.float32], equal_nan=True)  # sums of up to 1,568 float32 terms
    _assert_all_close(got, want, tol, "compiled vs primitives")
    _assert_all_close(got, _torch(torch.nn.functional.linear, arrays, nx.float32, got[3]),
                      dict(TORCH_TOL[nx.float32], equal_nan=True), "compiled vs torch")


def test_small_linear_products_stay_on_numpy():
    x, w = _arrays([(32, 20), (5, 20)], nx.float32)  # 3,200 multiply-adds
    for _ in range(3):
        F.linear(nx.tensor(x), nx.tensor(w, requires_grad=True)).sum().backward()
    assert not hot._layers


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("layer", ["conv2d", "linear"])
def test_bias_changed_in_place_before_backward_is_allowed(layer, compiled):
    """The backward never reads the bias (its gradient is the sum of g), so changing it in
    place between forward and backward is fine, as in PyTorch; the gradients are PyTorch's."""
    if layer == "conv2d":
        shapes, nx_fn, torch_fn = [(2, 3, 5, 5), (4, 3, 3, 3), (4,)], F.conv2d, \
            torch.nn.functional.conv2d
    else:
        shapes, nx_fn, torch_fn = [(64, 96), (48, 96), (48,)], F.linear, \
            torch.nn.functional.linear
    arrays = _arrays(shapes, nx.float32)
    with eager_compile(compiled):
        ts = [nx.tensor(a, requires_grad=True) for a in arrays]
        y = nx_fn(*ts)
        assert bool(_compiled_layers()) == compiled
        with nx.no_grad():
            ts[2].sub_(0.5)
        y.sum().backward()
    tt = [torch.tensor(a, requires_grad=True) for a in arrays]
    ty = torch_fn(*tt)
    with torch.no_grad():
        tt[2].sub_(0.5)
    ty.sum().backward()
    for t, e in zip(ts, tt):
        np.testing.assert_allclose(t.grad.numpy(), e.grad.numpy(), **TORCH_TOL[nx.float32])
