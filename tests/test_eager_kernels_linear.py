"""The eager kernel for the fully connected layer (`neurenix.eager_kernels.linear`) against the
primitive composition it replaces (`neurenix.backends.eager_kernels = False`) and PyTorch:
values and gradients over input ranks, with and without bias, for each subset of inputs that
requires grad; double backward; an input written in place between forward and backward;
no_grad, compiled code, and the gradients' storage (row-major, owned by the leaf)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from kernel_switch import kernels

import neurenix as nx
import neurenix.nn as nn
import neurenix.nn.functional as F
from neurenix import autograd

TOL = {nx.float32: dict(rtol=1e-5, atol=1e-5), nx.float64: dict(rtol=1e-12, atol=1e-12)}
TORCH_TOL = {nx.float32: dict(rtol=1e-4, atol=1e-4), nx.float64: dict(rtol=1e-10, atol=1e-10)}


def _arrays(x_shape, out_features, bias, dtype, seed=0):
    rng = np.random.default_rng(seed)
    in_features = x_shape[-1]
    x = rng.uniform(-2, 2, x_shape).astype(dtype.np_type)
    w = rng.uniform(-1, 1, (out_features, in_features)).astype(dtype.np_type)
    b = rng.uniform(-1, 1, out_features).astype(dtype.np_type) if bias else None
    return x, w, b


def _run(arrays, dtype, on, wants):
    with kernels(on):
        ts = [None if a is None else nx.tensor(a, dtype=dtype, requires_grad=want)
              for a, want in zip(arrays, wants)]
        y = F.linear(*ts)
        up = np.random.default_rng(5).standard_normal(tuple(y.shape)).astype(dtype.np_type)
        if y.requires_grad:
            (y * nx.tensor(up)).sum().backward()
        grads = [None if t is None or t.grad is None else t.grad.numpy() for t in ts]
        return y.detach().numpy(), grads, y.grad_fn, up


@pytest.mark.parametrize("dtype", [nx.float32, nx.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("x_shape", [(8, 5), (5,), (2, 3, 5), (0, 5)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("wants", [(True, True, True), (False, True, True), (True, False, False)])
def test_kernel_equals_primitives_and_torch(x_shape, bias, wants, dtype):
    arrays = _arrays(x_shape, 4, bias, dtype)
    value, grads, grad_fn, up = _run(arrays, dtype, True, wants)
    ref_value, ref_grads, ref_fn, _ = _run(arrays, dtype, False, wants)
    assert grad_fn == "LinearBackward" and ref_fn != "LinearBackward"
    np.testing.assert_allclose(value, ref_value, **TOL[dtype])
    assert value.shape == ref_value.shape
    tt = [None if a is None else torch.tensor(a, requires_grad=want)
          for a, want in zip(arrays, wants)]
    ty = TF.linear(*tt)
    (ty * torch.tensor(up)).sum().backward()
    np.testing.assert_allclose(value, ty.detach().numpy(), **TORCH_TOL[dtype])
    for got, want, t in zip(grads, ref_grads, tt):
        assert (got is None) == (want is None)
        if got is not None:
            np.testing.assert_allclose(got, want, **TOL[dtype])
            np.testing.assert_allclose(got, t.grad.numpy(), **TORCH_TOL[dtype])


@pytest.mark.parametrize("dtype", [nx.float32, nx.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("x_shape", [(8, 300), (2, 4, 300), (64, 300)])
@pytest.mark.parametrize("bias", [True, False])
def test_few_rows_against_a_big_weight(x_shape, bias, dtype):
    """A batch of a few rows against a bigger weight is computed as (W x^T)^T (faster on
    OpenBLAS): the same values and gradients, row-major, inf and NaN where they belong."""
    from neurenix.eager_kernels.linear import _few_rows

    assert _few_rows(int(np.prod(x_shape[:-1])), (200, 300))
    x, w, b = _arrays(x_shape, 200, bias, dtype)
    x.reshape(-1, 300)[1, 7] = np.inf
    w[3, 11] = np.nan
    arrays, wants = (x, w, b), (True, True, bias)
    value, grads, _, up = _run(arrays, dtype, True, wants)
    ref_value, ref_grads, _, _ = _run(arrays, dtype, False, wants)
    assert value.flags.c_contiguous and value.shape == ref_value.shape
    np.testing.assert_array_equal(np.isnan(value), np.isnan(ref_value))
    np.testing.assert_allclose(value, ref_value, equal_nan=True, **TOL[dtype])
    for got, want in zip(grads, ref_grads):
        if want is not None:
            np.testing.assert_allclose(got, want, equal_nan=True, **TOL[dtype])
    finite = [a if a is None else np.nan_to_num(a, nan=0.5, posinf=1.0) for a in arrays]
    tt = [None if a is None else torch.tensor(a) for a in finite]
    np.testing.assert_allclose(_run(finite, dtype, True, wants)[0],
                               TF.linear(*tt).numpy(), **TORCH_TOL[dtype])


def test_gradients_are_row_major_and_owned():
    """The weight's gradient comes out in its layout, taken by the leaf without a copy, and no
    two gradients share storage."""
    x, w, b = _arrays((6, 3), 4, True, nx.float32)
    ts = [nx.tensor(a, requires_grad=True) for a in (x, w, b)]
    F.linear(*ts).sum().backward()
    arrays = [t.grad.numpy() for t in ts]
    assert all(a.flags.c_contiguous for a in arrays)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.may_share_memory(arrays[i], arrays[j])


def test_gradients_accumulate_over_two_backwards():
    x, w, b = _arrays((6, 3), 4, True, nx.float64)
    layer_in = nx.tensor(x)
    wt, bt = nx.tensor(w, requires_grad=True), nx.tensor(b, requires_grad=True)
    for _ in range(2):
        F.linear(layer_in, wt, bt).sum().backward()
    np.testing.assert_allclose(wt.grad.numpy(), 2 * np.ones((4, 6)) @ x, rtol=1e-12)
    np.testing.assert_allclose(bt.grad.numpy(), np.full(4, 12.0), rtol=1e-12)


def test_double_backward_differentiates_the_primitives():
    x, w, b = _arrays((5, 3), 2, True, nx.float64)

    def second(on):
        with kernels(on):
            xt, wt = nx.tensor(x, requires_grad=True), nx.tensor(w, requires_grad=True)
            y = F.linear(xt, wt, nx.tensor(b))
            (gx,) = autograd.grad((y * y).sum(), [xt], create_graph=True)
            (gx * gx).sum().backward()
            return gx.detach().numpy(), wt.grad.numpy()

    got, want = second(True), second(False)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)


@pytest.mark.parametrize("written", ["input", "weight"])
def test_input_written_in_place_after_use_raises(written):
    x, w, b = _arrays((4, 3), 2, True, nx.float32)
    xt = nx.tensor(x, requires_grad=True)
    wt = nx.tensor(w, requires_grad=True)
    y = F.linear(xt, wt, nx.tensor(b))
    with nx.no_grad():
        (xt if written == "input" else wt).mul_(2.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


def test_no_grad_records_nothing_and_module_matches():
    layer = nn.Linear(3, 2)
    x = nx.tensor(np.ones((4, 3), np.float32))
    with nx.no_grad():
        y = layer(x)
    assert not y.requires_grad and y.grad_fn is None
    with kernels(False), nx.no_grad():
        want = layer(x).numpy()
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-6)


def test_errors_are_unchanged():
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="last dimension 3"):
        layer(nx.tensor(np.ones((4, 5), np.float32)))
    with pytest.raises(TypeError):
        layer(nx.tensor(np.ones((4, 3), np.float64)))


def test_compiled_layer_equals_kernel():
    layer = nn.Linear(3, 2)
    x = nx.tensor(np.random.default_rng(0).random((4, 3), dtype=np.float32))
    eager = layer(x).detach().numpy()
    compiled = nx.compile(layer)(x).detach().numpy()
    np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x_shape", [(784,), (1, 784)], ids=["1d", "one-row"])
def test_one_row_weight_gradient_keeps_the_signs_of_zeros(x_shape):
    """With one row, dW is the outer product g x^T, one product per entry: -0.0 where the
    signs differ, as PyTorch gives it (a product summed onto +0.0 would lose them)."""
    rng = np.random.default_rng(4)
    x = np.where(rng.random(x_shape) < 0.5, -0.0, 0.0).astype(np.float32)
    w = rng.standard_normal((512, 784)).astype(np.float32)
    g = rng.standard_normal(x_shape[:-1] + (512,)).astype(np.float32)
    for _ in range(3):  # past the calls after which big products may run compiled
        wt = nx.tensor(w, requires_grad=True)
        F.linear(nx.tensor(x), wt).backward(nx.tensor(g))
        tw = torch.tensor(w, requires_grad=True)
        TF.linear(torch.tensor(x), tw).backward(torch.tensor(g))
        assert np.array_equal(np.signbit(wt.grad.numpy()), np.signbit(tw.grad.numpy()))
        assert np.signbit(wt.grad.numpy()).any()
