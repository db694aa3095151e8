"""Eager kernels for convolution and max pooling (`neurenix.eager_kernels.conv`) against the
primitive compositions they replace (`neurenix.backends.eager_kernels = False`) and PyTorch:
outputs and every gradient over strides, paddings, dilations, groups and dtypes; max pooling's
choice of the gradient's tap on ties and NaN, bit for bit; double backward, in-place checks,
no_grad and compiled code."""
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
from neurenix.nn.functional.conv import convolution

TOL = {nx.float32: dict(rtol=1e-5, atol=1e-5), nx.float64: dict(rtol=1e-12, atol=1e-12)}
TORCH_TOL = {nx.float32: dict(rtol=1e-4, atol=1e-4), nx.float64: dict(rtol=1e-10, atol=1e-10)}
TORCH_DTYPE = {nx.float32: torch.float32, nx.float64: torch.float64}


@pytest.fixture(autouse=True)
def _kernels_on():
    with kernels(True):
        yield


def _arrays(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [None if s is None else rng.uniform(-2, 2, s).astype(dtype.np_type) for s in shapes]


def _run(fn, arrays, dtype, on: bool, seed: int = 1):
    """fn's output and the gradient of every input under one random upstream gradient, with
    the kernels on or off; also the output's grad_fn name."""
    with kernels(on):
        ts = [None if a is None else nx.tensor(a, dtype=dtype, requires_grad=True)
              for a in arrays]
        y = fn(*ts)
        up = np.random.default_rng(seed).standard_normal(tuple(y.shape)).astype(dtype.np_type)
        (y * nx.tensor(up)).sum().backward()
        grads = [None if t is None else t.grad.numpy() for t in ts]
        return y.detach().numpy(), grads, y.grad_fn, up


def _torch(fn, arrays, dtype, up):
    ts = [None if a is None else torch.tensor(a, dtype=TORCH_DTYPE[dtype], requires_grad=True)
          for a in arrays]
    y = fn(*ts)
    (y * torch.tensor(up)).sum().backward()
    return y.detach().numpy(), [None if t is None else t.grad.numpy() for t in ts]


def _assert_all_close(got, want, tol, what):
    np.testing.assert_allclose(got[0], want[0], err_msg=f"{what}: output", **tol)
    for i, (a, b) in enumerate(zip(got[1], want[1])):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, err_msg=f"{what}: gradient {i}", **tol)


def _assert_identical(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Equal bit for bit up to NaN payloads: values, NaN positions and signs of zeros."""
    assert a.shape == b.shape and a.dtype == b.dtype, what
    assert np.array_equal(a, b, equal_nan=True), f"{what}:\n{a}\n{b}"
    numbers = ~np.isnan(a)
    assert np.array_equal(np.signbit(a[numbers]), np.signbit(b[numbers])), f"{what}: zeros' signs"


# ---- convolution ----------------------------------------------------------------------------

CONV_CASES = [
    # (input shape, weight shape, bias, kwargs)
    ((2, 3, 9, 8), (4, 3, 3, 3), True, dict(padding=1)),
    ((3, 2, 7, 7), (5, 2, 3, 3), False, {}),
    ((2, 3, 9, 10), (4, 3, 3, 2), True, dict(stride=2, padding=(1, 0))),
    ((2, 2, 11, 9), (3, 2, 3, 3), True, dict(stride=(2, 3), padding=2, dilation=(2, 1))),
    ((1, 4, 8, 8), (6, 2, 3, 3), True, dict(groups=2, padding=1)),
    ((2, 4, 6, 7), (4, 1, 2, 2), False, dict(groups=4, stride=(1, 2), dilation=2)),
    ((2, 2, 6, 5), (3, 2, 2, 4), True, dict(padding="same")),
    ((2, 3, 5, 5), (2, 3, 1, 1), True, {}),
    ((3, 6, 6), (4, 3, 3, 3), True, dict(padding=1)),  # unbatched
    ((2, 3, 12), (4, 3, 3), True, dict(padding=2, dilation=2)),  # 1-D
    ((1, 2, 4, 5, 4), (3, 2, 2, 3, 2), True, dict(stride=(1, 2, 1), padding=1)),  # 3-D
]
CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}
TORCH_CONV = {3: TF.conv1d, 4: TF.conv2d, 5: TF.conv3d}


def _conv_fns(w_shape, bias, kwargs):
    conv, tconv = CONV[len(w_shape)], TORCH_CONV[len(w_shape)]
    if bias:
        return (lambda x, w, b: conv(x, w, b, **kwargs)), (lambda x, w, b: tconv(x, w, b,
                                                                                 **kwargs))
    return (lambda x, w: conv(x, w, **kwargs)), (lambda x, w: tconv(x, w, **kwargs))


@pytest.mark.parametrize("dtype", [nx.float32, nx.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("x_shape,w_shape,bias,kwargs", CONV_CASES)
def test_conv_matches_primitives_and_torch(x_shape, w_shape, bias, kwargs, dtype):
    fn, tfn = _conv_fns(w_shape, bias, kwargs)
    shapes = [x_shape, w_shape] + ([(w_shape[0],)] if bias else [])
    arrays = _arrays(shapes, dtype)
    got = _run(fn, arrays, dtype, on=True)
    want = _run(fn, arrays, dtype, on=False)
    if len(x_shape) == len(w_shape):  # (an unbatched output is a reshape of the kernel's)
        assert got[2] == f"Conv{len(w_shape) - 2}dBackward" and want[2] != got[2]
    _assert_all_close(got, want, TOL[dtype], "kernel vs primitives")
    _assert_all_close(got, _torch(tfn, arrays, dtype, got[3]), TORCH_TOL[dtype],
                      "kernel vs torch")


def test_conv_gradients_only_where_asked():
    x, w, b = _arrays([(2, 3, 6, 6), (4, 3, 3, 3), (4,)], nx.float32)
    xt, wt = nx.tensor(x), nx.tensor(w, requires_grad=True)
    bt = nx.tensor(b)
    F.conv2d(xt, wt, bt, padding=1).sum().backward()
    assert xt.grad is None and bt.grad is None
    with kernels(False):
        w2 = nx.tensor(w, requires_grad=True)
        F.conv2d(nx.tensor(x), w2, nx.tensor(b), padding=1).sum().backward()
    np.testing.assert_allclose(wt.grad.numpy(), w2.grad.numpy(), **TOL[nx.float32])


def test_conv_non_finite_values_match_primitives():
    """inf and NaN in the input, the weight and the upstream gradient reach the same
    outputs and gradients as through the primitives."""
    x, w, b = _arrays([(2, 2, 6, 6), (3, 2, 3, 3), (3,)], nx.float64)
    x[0, 1, 2, 3] = np.inf
    x[1, 0, 5, 5] = np.nan
    w[1, 0, 0, 2] = -np.inf

    def fn(x, w, b):
        return F.conv2d(x, w, b, padding=1, stride=(1, 2))

    got, want = _run(fn, [x, w, b], nx.float64, True), _run(fn, [x, w, b], nx.float64, False)
    _assert_all_close(got, want, dict(rtol=1e-12, atol=1e-12, equal_nan=True), "non-finite")


@pytest.mark.parametrize("padding,dilation", [(1, 1), (0, 1), ((2, 1), (1, 2))])
@pytest.mark.parametrize("where", [(0, 0, 0, 0), (1, 1, 5, 6), (0, 1, 0, 6), (1, 0, 5, 0)])
def test_stride_one_conv_non_finite_input_matches_primitives(where, padding, dilation):
    """The stride-1 kernel computes on rows of the padded width, whose extra columns read
    input values (the next row's, the next channel's, or past the end) that no output
    reads: an inf or NaN there must not reach dW (NaN * 0), wherever it sits in x."""
    x, w, b = _arrays([(2, 2, 6, 7), (3, 2, 3, 3), (3,)], nx.float64)
    x[where] = np.inf
    x[(1, 1, 5, 6) if where != (1, 1, 5, 6) else (0, 0, 0, 0)] = np.nan

    def fn(x, w, b):
        return F.conv2d(x, w, b, padding=padding, dilation=dilation)

    got, want = _run(fn, [x, w, b], nx.float64, True), _run(fn, [x, w, b], nx.float64, False)
    for a, e in zip([got[0]] + got[1], [want[0]] + want[1]):
        assert np.array_equal(np.isnan(a), np.isnan(e))
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_double_backward_is_the_composites(bias):
    """A create_graph backward differentiates the primitives again, so second derivatives
    (of the input gradient with respect to the weight and vice versa) are theirs."""
    arrays = _arrays([(2, 2, 5, 5), (3, 2, 3, 3), (3,) if bias else None], nx.float64)
    results = []
    for on in (True, False):
        with kernels(on):
            x, w, b = [None if a is None else nx.tensor(a, requires_grad=True) for a in arrays]
            y = F.conv2d(x, w, b, padding=1, stride=2)
            up = nx.tensor(np.random.default_rng(3).standard_normal(tuple(y.shape)))
            gx, gw = autograd.grad((y * up).sum(), [x, w], create_graph=True)
            ((gx * gx).sum() + (gw * gw).sum()).backward()
            results.append([t.grad.numpy() for t in (x, w)]
                           + [gx.detach().numpy(), gw.detach().numpy()])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, **TOL[nx.float64])


def test_conv_input_changed_in_place_raises():
    """The kernel saves its input and raises, as PyTorch does.  The primitives pad the input
    (a copy, which the write does not reach; a backward never reads h itself), so their
    gradient is the one of the values the forward used."""
    grads = {}
    for on in (True, False):
        with kernels(on):
            x = nx.tensor(_arrays([(1, 2, 5, 5)], nx.float32)[0], requires_grad=True)
            w = nx.tensor(_arrays([(3, 2, 3, 3)], nx.float32, seed=1)[0], requires_grad=True)
            h = x * 1.0
            y = F.conv2d(h, w, padding=1)
            grads[on] = nx.autograd.grad(y.sum(), [w])[0].numpy()
            with nx.no_grad():
                h.add_(1.0)
            if on:
                with pytest.raises(RuntimeError, match="modified in place after it was used"):
                    y.sum().backward()
            else:
                y.sum().backward()
                np.testing.assert_allclose(w.grad.numpy(), grads[True], rtol=1e-5)


def test_conv_weight_changed_in_place_raises():
    """The kernel checks every input it read, the weight included (PyTorch raises too); the
    primitive path reads the weight through a reshape and does not notice."""
    x = nx.tensor(_arrays([(1, 2, 5, 5)], nx.float32)[0], requires_grad=True)
    w = nx.tensor(_arrays([(3, 2, 3, 3)], nx.float32, seed=1)[0], requires_grad=True)
    y = F.conv2d(x, w)
    with nx.no_grad():
        w.mul_(2.0)
    with pytest.raises(RuntimeError, match="Conv2dBackward was modified in place"):
        y.sum().backward()


def test_conv_under_no_grad():
    x, w, b = _arrays([(2, 3, 6, 6), (4, 3, 3, 3), (4,)], nx.float32)
    ts = [nx.tensor(a, requires_grad=True) for a in (x, w, b)]
    with nx.no_grad():
        y = F.conv2d(*ts, padding=1)
    assert not y.requires_grad and y.grad_fn is None
    with kernels(False), nx.no_grad():
        want = F.conv2d(*ts, padding=1)
    np.testing.assert_allclose(y.numpy(), want.numpy(), **TOL[nx.float32])


def test_conv_errors_unchanged():
    x = nx.tensor(np.zeros((2, 3, 5, 5), np.float32))
    bad = [
        (nx.tensor(np.zeros((4, 2, 3, 3), np.float32)), {}),  # channels
        (nx.tensor(np.zeros((4, 3, 7, 7), np.float32)), {}),  # kernel larger than the input
        (nx.tensor(np.zeros((4, 3, 3, 3), np.float64)), {}),  # dtype
        (nx.tensor(np.zeros((4, 3, 3, 3), np.float32)), dict(padding="same", stride=2)),
    ]
    for w, kwargs in bad:
        messages = []
        for on in (True, False):
            with kernels(on), pytest.raises((ValueError, TypeError)) as info:
                F.conv2d(x, w, **kwargs)
            messages.append((type(info.value), str(info.value)))
        assert messages[0] == messages[1]


def test_conv_padding_modes_and_transposed_run_as_kernels():
    """Reflect and circular padding (done by primitives first) and conv_transpose2d (a
    convolution of a spread-out input) end in the kernel and agree with the primitives."""
    x, w = _arrays([(2, 2, 5, 6), (3, 2, 3, 3)], nx.float64)
    wt = _arrays([(2, 3, 3, 3)], nx.float64, seed=2)[0]
    cases = [
        (lambda x, w: F.conv2d(nn.functional.pad(x, (1, 1, 2, 2), mode="reflect"), w), [x, w]),
        (lambda x, w: convolution(x, w, None, 1, (2, 1), 1, 1, "Conv2d", "circular"), [x, w]),
        (lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1),
         [x, wt]),
    ]
    for fn, arrays in cases:
        got, want = _run(fn, arrays, nx.float64, True), _run(fn, arrays, nx.float64, False)
        assert got[2] == "Conv2dBackward"
        _assert_all_close(got, want, TOL[nx.float64], "padding modes, transposed")


# ---- max pooling ----------------------------------------------------------------------------

POOL_CASES = [
    # (spatial dims, input shape, kwargs)
    (2, (2, 3, 8, 8), dict(kernel_size=2)),
    (2, (2, 2, 9, 7), dict(kernel_size=2)),  # windows leave a row and a column out
    (2, (2, 2, 7, 8), dict(kernel_size=3, stride=1, padding=1)),  # overlapping windows add
    (2, (1, 2, 9, 9), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0),
                           dilation=(2, 3))),
    (2, (2, 2, 7, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (2, (3, 6, 6), dict(kernel_size=2, stride=1)),  # unbatched
    (1, (2, 3, 11), dict(kernel_size=3, stride=2, padding=1)),
    (3, (1, 2, 4, 5, 6), dict(kernel_size=2, stride=(1, 2, 2), padding=1)),
    # windows that tile the (padded) input take the tap-major path (`_tiled_max`)
    (3, (2, 2, 4, 6, 4), dict(kernel_size=(2, 3, 2))),
    (1, (2, 3, 10), dict(kernel_size=2)),
    (2, (2, 2, 6, 7), dict(kernel_size=(2, 3), padding=(1, 1))),
]
POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
TORCH_POOL = {1: TF.max_pool1d, 2: TF.max_pool2d, 3: TF.max_pool3d}


@pytest.mark.parametrize("dtype", [nx.float32, nx.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("dims,x_shape,kwargs", POOL_CASES)
def test_max_pool_matches_primitives_exactly_and_torch(dims, x_shape, kwargs, dtype):
    def fn(x):
        return POOL[dims](x, **kwargs)

    def tfn(x):
        return TORCH_POOL[dims](x, **kwargs)

    arrays = _arrays([x_shape], dtype)
    got, want = _run(fn, arrays, dtype, True), _run(fn, arrays, dtype, False)
    if len(x_shape) == dims + 2:
        assert got[2] == f"MaxPool{dims}dBackward" and want[2] != got[2]
    _assert_identical(got[0], want[0], "output")
    _assert_identical(got[1][0], want[1][0], "input gradient")
    _assert_all_close(got, _torch(tfn, arrays, dtype, got[3]), TORCH_TOL[dtype], "torch")


NAN, INF = np.nan, np.inf
SPECIAL = {
    # several taps at the maximum: the gradient goes to the first (row-major)
    "ties": np.array([[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 2.0, 2.0], [0.0, 0.0, 3.0, 0.0],
                      [0.0, 0.0, 3.0, 3.0]]),
    # after a ReLU: windows of zeros
    "zeros": np.zeros((4, 4)),
    # -0.0 and 0.0 tie; a maximum of -0.0 comes out as 0.0 (the one-hot sum adds +0.0)
    "signed zeros": np.array([[-0.0, 0.0, -0.0, -0.0], [0.0, -0.0, -0.0, -0.0],
                              [-1.0, -0.0, 0.0, 0.0], [-0.0, -2.0, 0.0, -0.0]]),
    # NaN wins its window and the first NaN gets the gradient
    "nan": np.array([[1.0, NAN, 7.0, 2.0], [NAN, 5.0, 3.0, NAN], [INF, 1.0, NAN, NAN],
                     [NAN, 2.0, NAN, NAN]]),
    # -inf inputs tie with the -inf padding: the first tap wins, a padding one drops it
    "-inf": np.array([[-INF, -INF, 1.0, -INF], [-INF, -INF, -INF, 2.0],
                      [INF, -INF, -1.0, -2.0], [-3.0, -INF, -4.0, -5.0]]),
    # negative values next to the -inf padding: the padding is never picked
    "negative": -np.arange(1.0, 17.0).reshape(4, 4),
}
SPECIAL_POOLS = [dict(kernel_size=2), dict(kernel_size=2, padding=1),
                 dict(kernel_size=2, stride=1, padding=1),
                 dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2,
                                                                padding=1, ceil_mode=True)]


@pytest.mark.parametrize("dtype", [nx.float32, nx.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kwargs", SPECIAL_POOLS, ids=str)
@pytest.mark.parametrize("name", list(SPECIAL))
def test_max_pool_ties_nan_and_infinities_route_as_primitives(name, kwargs, dtype):
    """Bit for bit the primitives' values and gradients, whose routing is argmax's: the first
    maximum, or the first NaN; an upstream gradient counting up tells the taps apart."""
    x = np.stack([SPECIAL[name], SPECIAL[name].T])[None].astype(dtype.np_type)
    results = []
    for on in (True, False):
        with kernels(on):
            t = nx.tensor(x, requires_grad=True)
            y = F.max_pool2d(t, **kwargs)
            up = np.arange(1, y.numel() + 1, dtype=dtype.np_type).reshape(tuple(y.shape))
            (y * nx.tensor(up)).sum().backward()
            results.append((y.detach().numpy(), t.grad.numpy(), y.grad_fn))
    (y1, g1, fn1), (y2, g2, fn2) = results
    assert fn1 == "MaxPool2dBackward" and fn2 != fn1
    _assert_identical(y1, y2, "output")
    _assert_identical(g1, g2, "input gradient")


def test_max_pool_non_finite_upstream_gradient_reaches_only_its_tap():
    x = np.arange(32.0).reshape(1, 2, 4, 4)
    up = np.array([[[[INF, NAN], [-INF, 1.0]], [[-0.0, 0.0], [-1.0, -0.0]]]])
    grads = []
    for on in (True, False):
        with kernels(on):
            t = nx.tensor(x, requires_grad=True)
            (F.max_pool2d(t, 2) * nx.tensor(up)).sum().backward()
            grads.append(t.grad.numpy())
    _assert_identical(grads[0], grads[1], "input gradient")
    assert np.isfinite(grads[0]).sum() == 29  # inf, nan and -inf each at one tap


def test_max_pool_output_written_in_place_keeps_its_gradient():
    """The kernel's backward compares the input with its own copy of the maxima, so writing
    into the output afterwards changes nothing."""
    x = _arrays([(1, 2, 6, 6)], nx.float32)[0]
    grads = []
    for on in (True, False):
        with kernels(on):
            t = nx.tensor(x, requires_grad=True)
            y = F.max_pool2d(t, 2)
            y.mul_(3.0)
            y.sum().backward()
            grads.append(t.grad.numpy())
    _assert_identical(grads[0], grads[1], "input gradient")


def test_max_pool_double_backward_is_the_composites():
    x = _arrays([(1, 2, 6, 6)], nx.float64)[0]
    results = []
    for on in (True, False):
        with kernels(on):
            t = nx.tensor(x, requires_grad=True)
            y = F.max_pool2d(t, 3, stride=2, padding=1)
            (g,) = autograd.grad((y * y).sum(), [t], create_graph=True)
            (g * g).sum().backward()
            results.append((g.detach().numpy(), t.grad.numpy()))
    for got, want in zip(*results):
        _assert_identical(got, want, "double backward")


def test_max_pool_input_changed_in_place_raises():
    for on in (True, False):
        with kernels(on):
            x = nx.tensor(_arrays([(1, 2, 6, 6)], nx.float32)[0], requires_grad=True)
            h = x * 1.0
            y = F.max_pool2d(h, 2)
            with nx.no_grad():
                h.add_(1.0)
            with pytest.raises(RuntimeError, match="modified in place after it was used"):
                y.sum().backward()


def test_max_pool_with_indices_and_no_grad():
    x = _arrays([(2, 3, 6, 6)], nx.float32)[0]
    values, indices = F.max_pool2d(nx.tensor(x, requires_grad=True), 2, return_indices=True)
    tv, ti = TF.max_pool2d(torch.tensor(x), 2, return_indices=True)
    np.testing.assert_array_equal(indices.numpy(), ti.numpy())
    np.testing.assert_array_equal(values.detach().numpy(), tv.numpy())
    with nx.no_grad():
        y = F.max_pool2d(nx.tensor(x, requires_grad=True), 2)
    assert y.grad_fn is None and not y.requires_grad
    np.testing.assert_array_equal(y.numpy(), tv.numpy())


def test_empty_batch():
    for fn, shapes in [(lambda x, w: F.conv2d(x, w, padding=1), [(0, 2, 5, 5), (3, 2, 3, 3)]),
                       (lambda x: F.max_pool2d(x, 2), [(0, 2, 5, 5)])]:
        arrays = _arrays(shapes, nx.float32)
        got, want = _run(fn, arrays, nx.float32, True), _run(fn, arrays, nx.float32, False)
        _assert_all_close(got, want, TOL[nx.float32], "empty batch")


# ---- modules, compiled code -----------------------------------------------------------------


def _cnn():
    nx.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2, stride=1), nn.Flatten(), nn.Linear(6, 5))


def _train_step(model, x, y):
    model.zero_grad()
    loss = nn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    return loss, [p.grad for p in model.parameters()]


def test_cnn_training_step_matches_primitives():
    x = nx.tensor(_arrays([(4, 3, 8, 8)], nx.float32)[0])
    y = nx.tensor(np.array([0, 1, 4, 2]))
    results = []
    for on in (True, False):
        with kernels(on):
            loss, grads = _train_step(_cnn(), x, y)
            results.append([loss.detach().numpy()] + [g.numpy() for g in grads])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, **TOL[nx.float32])


def test_compiled_cnn_equals_eager_with_kernels():
    """Inside neurenix.compile the layers trace as primitives whatever the switch says, and
    the compiled program agrees with the eager kernels."""
    model = _cnn()
    x = nx.tensor(_arrays([(4, 3, 8, 8)], nx.float32)[0])
    with nx.no_grad():
        eager = model(x).numpy()
        compiled = nx.compile(model, backend="reference")
        got = compiled(x).numpy()
    assert "unfold" in str(compiled.graph) and "Conv" not in str(compiled.graph)
    np.testing.assert_allclose(got, eager, **TOL[nx.float32])

    target = nx.tensor(np.array([0, 1, 4, 2]))
    step = nx.compile(lambda x, y: _train_step(model, x, y)[0], backend="reference")
    compiled_loss = step(x, target).detach().numpy()
    compiled_grads = [p.grad.numpy() for p in model.parameters()]
    eager_loss, eager_grads = _train_step(model, x, target)
    np.testing.assert_allclose(compiled_loss, eager_loss.detach().numpy(), **TOL[nx.float32])
    for got, want in zip(compiled_grads, eager_grads):
        np.testing.assert_allclose(got, want.numpy(), **TOL[nx.float32])


@pytest.mark.parametrize("dtype", [nx.float32, nx.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(6, 4, 5, 7), (3, 7, 100, 101)], ids=["small", "chunked"])
def test_relu_kernel_blend_is_the_compositions_bit_for_bit(dtype, shape):
    """The ReLU kernel's backward on arrays past the small-array fallback (a byte mask and-ed
    with the gradient's bits): zeros of either sign, infinities and NaN in the input and the
    upstream gradient give the primitives' bits, and PyTorch's values; the forward's too, on
    an array of several chunks and a partial one (`activation._maximum_with_zero`)."""
    rng = np.random.default_rng(5)
    special = np.array([-np.inf, -1.0, -0.0, 0.0, 0.5, np.inf, np.nan])
    values = rng.choice(np.concatenate([special, rng.standard_normal(9)]), shape)
    up = rng.choice(np.concatenate([special, rng.standard_normal(9)]), values.shape)
    values, up = values.astype(dtype.np_type), up.astype(dtype.np_type)
    results = []
    for on in (True, False):
        with kernels(on):
            x = nx.tensor(values, requires_grad=True)
            y = x.relu()
            assert (y.grad_fn == "ReluBackward") == on
            (y * nx.tensor(up)).sum().backward()
            results.append((y.detach().numpy(), x.grad.numpy()))
    _assert_identical(results[0][0], results[1][0], "output")
    _assert_identical(results[0][1], results[1][1], "input gradient")
    t = torch.tensor(values, requires_grad=True)
    (torch.relu(t) * torch.tensor(up)).sum().backward()
    finite = np.isfinite(t.grad.numpy())
    np.testing.assert_array_equal(results[0][1][finite], t.grad.numpy()[finite])


def _write_through_numpy(x, leaf):
    x.detach().numpy()[...] *= -1.0  # no version counter sees it, in either library


def _write_data(x, leaf):
    leaf.data.mul_(-1.0)


def _write_no_grad(x, leaf):
    with nx.no_grad():
        leaf.mul_(-1.0)


def _write_torch(x, leaf, how):
    if how == "numpy":
        x.detach().numpy()[...] *= -1.0
    elif how == "data":
        leaf.data.mul_(-1.0)
    else:
        with torch.no_grad():
            leaf.mul_(-1.0)


RELU_WRITES = {"numpy": _write_through_numpy, "data": _write_data, "no_grad": _write_no_grad}


@pytest.mark.parametrize("on", [True, False], ids=["kernel", "primitives"])
@pytest.mark.parametrize("n", [100, 65536])
@pytest.mark.parametrize("how", list(RELU_WRITES))
def test_relu_gradient_ignores_writes_into_its_input_after_the_forward(how, n, on):
    """Regression: the ReLU kernel read its input at backward time, so a write into the input
    no version counter sees (through `.numpy()`, `.data`) silently flipped the gradient, and a
    counted one raised where PyTorch and the primitives do not.  Its mask is now taken in the
    forward: the gradient is PyTorch's whatever is written afterwards.  (The primitives route
    the gradient by the comparison they computed in the forward, never reading the input
    again, so a counted write does not raise there either.)"""
    xn = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    with kernels(on):
        leaf = nx.tensor(xn, requires_grad=True)
        x = leaf * 1.0 if how == "numpy" else leaf
        y = F.relu(x)
        RELU_WRITES[how](x, leaf)
        y.sum().backward()
    t_leaf = torch.tensor(xn, requires_grad=True)
    t_x = t_leaf * 1.0 if how == "numpy" else t_leaf
    t_y = torch.relu(t_x)
    _write_torch(t_x, t_leaf, how)
    t_y.sum().backward()
    np.testing.assert_array_equal(leaf.grad.numpy(), t_leaf.grad.numpy())
