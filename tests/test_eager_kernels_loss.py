"""The eager kernel for class-index cross entropy and NLL (`neurenix.eager_kernels.loss`)
against the primitive composition it replaces (`neurenix.backends.eager_kernels = False`) and
PyTorch: values and input gradients over shapes, reductions, weights, ignore_index, label
smoothing and dtypes; nan and inf as the primitives give them; double backward, errors, a
weight that requires grad, no_grad and compiled code."""
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

TOL = {nx.float32: dict(rtol=1e-5, atol=1e-6), nx.float64: dict(rtol=1e-12, atol=1e-13)}
TORCH_TOL = {nx.float32: dict(rtol=1e-4, atol=1e-5), nx.float64: dict(rtol=1e-10, atol=1e-12)}
TORCH_DTYPE = {nx.float32: torch.float32, nx.float64: torch.float64}


def _case(shape, dtype, seed=0, ignore_index=-100, ignored=0.0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, shape).astype(dtype.np_type)
    classes = shape[1] if len(shape) > 1 else shape[0]
    tshape = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    t = rng.integers(0, classes, tshape)
    if ignored:
        t = np.where(rng.random(tshape) < ignored, ignore_index, t)
    w = rng.uniform(0.2, 2.0, classes).astype(dtype.np_type)
    return x, t, w


def _loss(kind, x, t, w, on, reduction, smoothing, ignore_index, dtype):
    """(value, input gradient under a random upstream gradient, grad_fn) with the kernel on
    or off."""
    with kernels(on):
        xt = nx.tensor(x, dtype=dtype, requires_grad=True)
        kw = dict(weight=None if w is None else nx.tensor(w, dtype=dtype),
                  ignore_index=ignore_index, reduction=reduction)
        if kind == "ce":
            y = F.cross_entropy(xt, nx.tensor(t), label_smoothing=smoothing, **kw)
        else:
            y = F.nll_loss(xt, nx.tensor(t), **kw)
        up = np.random.default_rng(7).standard_normal(tuple(y.shape)).astype(dtype.np_type)
        (y * nx.tensor(up)).sum().backward()
        return y.detach().numpy(), xt.grad.numpy(), y.grad_fn, up


def _torch(kind, x, t, w, reduction, smoothing, ignore_index, dtype, up):
    tx = torch.tensor(x, dtype=TORCH_DTYPE[dtype], requires_grad=True)
    kw = dict(weight=None if w is None else torch.tensor(w), ignore_index=ignore_index,
              reduction=reduction)
    if kind == "ce":
        y = TF.cross_entropy(tx, torch.tensor(t), label_smoothing=smoothing, **kw)
    else:
        y = TF.nll_loss(tx, torch.tensor(t), **kw)
    (y * torch.tensor(up)).sum().backward()
    return y.detach().numpy(), tx.grad.numpy()


CASES = [(kind, shape, reduction, smoothing, weighted, ignore_index)
         for kind in ("ce", "nll")
         for shape in [(16, 10), (4, 3, 5), (7,), (2, 4, 3, 2)]
         for reduction in ("mean", "sum", "none")
         for smoothing in ((0.0, 0.15) if kind == "ce" else (0.0,))
         for weighted in (False, True)
         for ignore_index in (-100, 1)]


@pytest.mark.parametrize("dtype", [nx.float32, nx.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind,shape,reduction,smoothing,weighted,ignore_index", CASES)
def test_kernel_equals_primitives_and_torch(kind, shape, reduction, smoothing, weighted,
                                            ignore_index, dtype):
    x, t, w = _case(shape, dtype, ignore_index=ignore_index, ignored=0.3)
    w = w if weighted else None
    args = (x, t, w)
    rest = (reduction, smoothing, ignore_index, dtype)
    value, grad, grad_fn, up = _loss(kind, *args, True, *rest)
    assert grad_fn == "ClassificationLossBackward"
    ref_value, ref_grad, ref_fn, _ = _loss(kind, *args, False, *rest)
    assert ref_fn != "ClassificationLossBackward"
    assert value.shape == ref_value.shape and value.dtype == ref_value.dtype
    np.testing.assert_allclose(value, ref_value, **TOL[dtype])
    np.testing.assert_allclose(grad, ref_grad, **TOL[dtype])
    torch_value, torch_grad = _torch(kind, *args, *rest, up)
    np.testing.assert_allclose(value, torch_value, **TORCH_TOL[dtype])
    np.testing.assert_allclose(grad, torch_grad, **TORCH_TOL[dtype])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_target_ignored(reduction):
    """A weighted mean over no target is 0 / 0 = nan, as PyTorch; the gradient is nan too
    under a mean and 0 otherwise -- the same either way."""
    x, t, _ = _case((4, 3), nx.float32)
    t = np.full_like(t, -100)
    got = _loss("ce", x, t, None, True, reduction, 0.0, -100, nx.float32)
    want = _loss("ce", x, t, None, False, reduction, 0.0, -100, nx.float32)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("special", [np.inf, -np.inf, np.nan])
def test_non_finite_logits(special):
    """Rows holding inf or nan are nan (or, -inf, a finite row elsewhere) in the loss and
    its gradient exactly where the primitives' are."""
    x, t, _ = _case((5, 4), nx.float64)
    x[1, 2] = special
    x[3, :] = -np.inf if special == -np.inf else x[3, :]
    for reduction in ("none", "sum"):
        got = _loss("ce", x, t, None, True, reduction, 0.0, -100, nx.float64)
        want = _loss("ce", x, t, None, False, reduction, 0.0, -100, nx.float64)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-15, equal_nan=True)


def test_double_backward_differentiates_the_primitives():
    x, t, _ = _case((6, 5), nx.float64)

    def hessian_vector(on):
        with kernels(on):
            xt = nx.tensor(x, requires_grad=True)
            loss = F.cross_entropy(xt, nx.tensor(t), label_smoothing=0.1)
            (g,) = autograd.grad(loss, [xt], create_graph=True)
            (g * g).sum().backward()
            return g.detach().numpy(), xt.grad.numpy()

    got, want = hessian_vector(True), hessian_vector(False)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("on", [True, False])
def test_out_of_range_target_raises_the_same_error(on):
    x, t, _ = _case((4, 3), nx.float32)
    t[2] = 3
    with kernels(on), pytest.raises(ValueError, match="target 3 is out of range for 3 classes"):
        F.cross_entropy(nx.tensor(x, requires_grad=True), nx.tensor(t))


def test_weight_that_requires_grad_takes_the_primitives():
    x, t, w = _case((8, 4), nx.float64)
    grads = []
    for on in (True, False):
        with kernels(on):
            wt = nx.tensor(w, requires_grad=True)
            xt = nx.tensor(x, requires_grad=True)
            F.cross_entropy(xt, nx.tensor(t), weight=wt).backward()
            grads.append((xt.grad.numpy(), wt.grad.numpy()))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-12)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-12)


def test_no_grad_and_module_form():
    x, t, _ = _case((8, 4), nx.float32)
    with nx.no_grad():
        y = nn.CrossEntropyLoss()(nx.tensor(x), nx.tensor(t))
    assert not y.requires_grad
    with kernels(False):
        want = nn.CrossEntropyLoss()(nx.tensor(x), nx.tensor(t)).numpy()
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-6)


def test_compiled_loss_equals_kernel():
    """Traced, the loss is the primitives (the kernel only runs eagerly): compiled and eager
    agree."""
    x, t, _ = _case((8, 4), nx.float32)

    def loss(a, b):
        return F.cross_entropy(a, b, label_smoothing=0.1)

    eager = loss(nx.tensor(x), nx.tensor(t)).numpy()
    compiled = nx.compile(loss)(nx.tensor(x), nx.tensor(t)).numpy()
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)
