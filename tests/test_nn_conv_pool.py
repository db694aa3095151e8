"""Convolution, padding and pooling against PyTorch: forward values, input gradients and
parameter gradients, over strides, paddings, dilations, groups, ranks and unbatched inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from op_helpers import assert_close, check_op

import neurenix as nx
import neurenix.nn as nn
import neurenix.nn.functional as F

CONV_TOL = dict(rtol=1e-4, atol=1e-5, grad_rtol=1e-4, grad_atol=1e-5)
TOL = dict(rtol=1e-5, atol=1e-6, grad_rtol=1e-5, grad_atol=1e-6)


def _data(*shapes, seed=0, low=-2.0, high=2.0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(low, high, s).astype(np.float32) for s in shapes]


def _compare_modules(nx_mod, th_mod, x: np.ndarray, rtol: float, atol: float, seed: int = 1):
    """Forward, input gradient and every parameter gradient of two equivalent modules."""
    xn = nx.tensor(x, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    yn, yt = nx_mod(xn), th_mod(xt)
    assert_close(yn, yt, rtol, atol, "forward")
    up = np.random.default_rng(seed).standard_normal(tuple(yt.shape)).astype(np.float32)
    (yn * nx.tensor(up)).sum().backward()
    (yt * torch.tensor(up)).sum().backward()
    assert_close(xn.grad, xt.grad, rtol, atol, "input grad")
    th_params = dict(th_mod.named_parameters())
    nx_params = dict(nx_mod.named_parameters())
    assert sorted(nx_params) == sorted(th_params)
    for name, p in nx_params.items():
        assert_close(p.grad, th_params[name].grad, rtol, atol, f"grad of {name}")


# ---- convolution ----------------------------------------------------------------------------

CONV_CASES = [
    # (dims, in, out, kernel, kwargs, input shape)
    (1, 3, 4, 3, {}, (2, 3, 9)),
    (1, 4, 6, 5, dict(stride=2, padding=2, dilation=2, groups=2), (2, 4, 13)),
    (1, 2, 3, 4, dict(padding="same"), (2, 2, 7)),
    (1, 2, 3, 3, dict(padding=1, bias=False), (2, 7)),
    (2, 3, 4, 3, dict(padding=1), (2, 3, 6, 5)),
    (2, 4, 6, (3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2,
                           bias=False), (2, 4, 7, 6)),
    (2, 3, 5, 2, dict(padding="valid", stride=2), (2, 3, 7, 6)),
    (2, 2, 3, 2, dict(padding="same", dilation=2), (2, 2, 6, 5)),
    (2, 2, 3, (2, 4), dict(padding="same"), (2, 2, 5, 6)),
    (2, 4, 8, 3, dict(groups=4, padding=1), (2, 4, 5, 5)),
    (2, 3, 4, 3, dict(padding=2, stride=2), (3, 6, 6)),
    (2, 2, 3, 3, dict(padding=1, padding_mode="reflect"), (2, 2, 5, 4)),
    (2, 2, 3, 3, dict(padding=(2, 1), padding_mode="replicate"), (2, 2, 5, 4)),
    (2, 2, 3, 3, dict(padding=1, padding_mode="circular", stride=2), (2, 2, 5, 6)),
    (2, 2, 3, 4, dict(padding="same", padding_mode="circular"), (2, 2, 5, 6)),
    (3, 2, 3, 2, {}, (2, 2, 4, 3, 4)),
    (3, 4, 4, (3, 2, 2), dict(stride=(1, 2, 1), padding=(1, 0, 1), dilation=(1, 1, 2),
                              groups=2), (1, 4, 5, 5, 5)),
    (3, 2, 2, 3, dict(padding="same"), (2, 4, 4, 3)),
]


@pytest.mark.parametrize("dims,cin,cout,kernel,kwargs,shape", CONV_CASES)
def test_conv_module_matches_torch(dims, cin, cout, kernel, kwargs, shape):
    th_cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims]
    nx_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    torch.manual_seed(0)
    th = th_cls(cin, cout, kernel, **kwargs)
    mine = nx_cls(cin, cout, kernel, **kwargs)
    mine.load_state_dict(th.state_dict())
    (x,) = _data(shape)
    _compare_modules(mine, th, x, CONV_TOL["rtol"], CONV_TOL["atol"])


@pytest.mark.parametrize("fn,shapes,kwargs", [
    ("conv1d", [(2, 4, 10), (6, 2, 3), (6,)], dict(stride=3, padding=1, groups=2)),
    ("conv2d", [(2, 3, 7, 6), (4, 3, 3, 3), (4,)], dict(stride=(1, 2), dilation=2)),
    ("conv2d", [(3, 7, 6), (4, 3, 2, 2), (4,)], dict(padding="same")),
    ("conv3d", [(1, 2, 4, 5, 3), (2, 1, 2, 2, 2), (2,)], dict(groups=2, padding=(0, 1, 1))),
])
def test_conv_functional_matches_torch(fn, shapes, kwargs):
    check_op(shapes, nx_fn=lambda x, w, b: getattr(F, fn)(x, w, b, **kwargs),
             torch_fn=lambda x, w, b: getattr(TF, fn)(x, w, b, **kwargs), **CONV_TOL)


def test_conv_nd_follows_the_weight_rank():
    check_op([(2, 3, 6, 5), (4, 3, 2, 3)],
             nx_fn=lambda x, w: F.conv_nd(x, w, None, 1, (1, 0)),
             torch_fn=lambda x, w: TF.conv2d(x, w, None, 1, (1, 0)), **CONV_TOL)


def test_conv_nan_propagates_like_torch():
    x, w = _data((1, 2, 6, 6), (3, 2, 3, 3))
    x[0, 1, 2, 3] = np.nan
    out = F.conv2d(nx.tensor(x), nx.tensor(w), padding=1).numpy()
    want = TF.conv2d(torch.tensor(x), torch.tensor(w), padding=1).numpy()
    assert np.isnan(out).sum() == 3 * 9
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_conv_default_init_and_state_dict_layout():
    nx.manual_seed(0)
    conv = nn.Conv2d(4, 6, (3, 2), groups=2)
    th = torch.nn.Conv2d(4, 6, (3, 2), groups=2)
    assert list(conv.state_dict()) == list(th.state_dict()) == ["weight", "bias"]
    assert conv.weight.shape == tuple(th.weight.shape) == (6, 2, 3, 2)
    fan_in = 2 * 3 * 2
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) and the bias share it
    w = conv.weight.detach().numpy()
    b = conv.bias.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.7 * bound
    assert np.abs(b).max() <= bound and np.abs(w).std() > 0.2 * bound
    assert conv.weight.requires_grad and conv.bias.requires_grad
    no_bias = nn.Conv1d(2, 3, 3, bias=False, dtype=nx.float64)
    assert no_bias.bias is None and list(no_bias.state_dict()) == ["weight"]
    assert no_bias.weight.dtype == nx.float64


@pytest.mark.parametrize("cls,args,kwargs", [
    ("Conv2d", (3, 16, 3), dict(stride=1, padding=1)),
    ("Conv2d", (4, 8, (3, 2)), dict(stride=(2, 1), padding=(1, 0), dilation=2, groups=2,
                                    bias=False)),
    ("Conv1d", (2, 4, 4), dict(padding="same", padding_mode="reflect")),
    ("Conv3d", (2, 4, 3), dict(padding="valid", dilation=(1, 2, 1))),
])
def test_conv_repr_matches_torch(cls, args, kwargs):
    assert repr(getattr(nn, cls)(*args, **kwargs)) == repr(getattr(torch.nn, cls)(*args, **kwargs))


def test_conv_errors_name_the_layer_and_shapes():
    conv = nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match=r"^Conv2d: expected input with 3 channels "
                                         r"\(in_channels\), got 5 in shape \(32, 5, 28, 28\)$"):
        conv(nx.zeros(32, 5, 28, 28))
    with pytest.raises(ValueError, match=r"Conv2d: expected 4-D input \(N, C, H, W\) or 3-D "
                                         r"unbatched, got shape \(28, 28\)"):
        conv(nx.zeros(28, 28))
    with pytest.raises(ValueError, match=r"Conv1d: expected 3-D input \(N, C, L\) or 2-D "
                                         r"unbatched, got shape \(1, 2, 3, 4\)"):
        nn.Conv1d(2, 2, 1)(nx.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"Conv2d: in_channels \(3\) must be divisible by "
                                         r"groups \(2\)"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"Conv3d: out_channels \(5\) must be divisible by "
                                         r"groups \(2\)"):
        nn.Conv3d(4, 5, 3, groups=2)
    with pytest.raises(ValueError, match=r"Conv2d: kernel size \(3, 3\) \(dilated extent "
                                         r"\(5, 5\)\) is larger than the padded input size "
                                         r"\(4, 6\)"):
        nn.Conv2d(3, 8, 3, dilation=2, padding=(0, 1))(nx.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="Conv2d: padding='same' is not supported for strided"):
        nn.Conv2d(3, 8, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="conv2d: padding='same' is not supported for strided"):
        F.conv2d(nx.zeros(1, 3, 5, 5), nx.zeros(2, 3, 3, 3), stride=2, padding="same")
    with pytest.raises(ValueError, match="Conv2d: padding must be an int, a tuple, 'valid' or "
                                         "'same', got 'full'"):
        nn.Conv2d(3, 8, 3, padding="full")
    with pytest.raises(ValueError, match="Conv2d: padding_mode must be one of"):
        nn.Conv2d(3, 8, 3, padding_mode="mirror")
    with pytest.raises(TypeError, match="Conv2d: expected a floating input of the weight's "
                                        "dtype float32, got float64"):
        conv(nx.zeros(1, 3, 5, 5, dtype=nx.float64))
    with pytest.raises(ValueError, match=r"conv2d: expected a 4-D weight \(out_channels, "
                                         r"in_channels / groups, k0, k1\), got shape \(2, 3, 3\)"):
        F.conv2d(nx.zeros(1, 3, 5, 5), nx.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"conv1d: expected input with 4 channels "
                                         r"\(in_channels = 2 groups x 2\), got 3"):
        F.conv1d(nx.zeros(1, 3, 5), nx.zeros(4, 2, 3), groups=2)
    with pytest.raises(ValueError, match=r"conv1d: expected a bias of shape \(4,\), got "
                                         r"shape \(3,\)"):
        F.conv1d(nx.zeros(1, 2, 5), nx.zeros(4, 2, 3), nx.zeros(3))


# ---- padding --------------------------------------------------------------------------------

@pytest.mark.parametrize("pad,mode,value,shape", [
    ((1, 2), "constant", 0.0, (2, 3, 4, 5)),
    ((1, 2, 0, 3), "constant", -1.5, (2, 3, 4, 5)),
    ((-1, 2, 1, -2), "constant", 0.0, (2, 3, 4, 5)),
    ((1, 1, 2, 2, 1, 0), "constant", 2.0, (2, 3, 4, 5)),
    ((2, 1), "reflect", None, (2, 3, 5)),
    ((2, 1, 1, 3), "reflect", None, (2, 3, 4, 5)),
    ((3, 0, 1, 2), "replicate", None, (2, 3, 4, 5)),
    ((2, 4, 3, 1), "circular", None, (2, 3, 4, 5)),
    ((1, 0, 2, 1, 1, 2), "replicate", None, (1, 2, 3, 4, 5)),
])
def test_pad_matches_torch(pad, mode, value, shape):
    kw = {} if value is None else dict(value=value)
    check_op([shape], nx_fn=lambda x: F.pad(x, pad, mode=mode, **kw),
             torch_fn=lambda x: TF.pad(x, pad, mode=mode, **kw), **TOL)


def test_pad_integer_tensor_and_errors():
    x = nx.tensor(np.arange(6).reshape(2, 3))
    out = F.pad(x, (1, 1), value=7)
    assert out.dtype == nx.int64
    assert out.tolist() == [[7, 0, 1, 2, 7], [7, 3, 4, 5, 7]]
    with pytest.raises(ValueError, match="pad: the pad tuple must have an even length"):
        F.pad(x, (1, 2, 3))
    with pytest.raises(ValueError, match=r"pad: \(1, 1, 1, 1, 1, 1\) pads 3 dimensions but the "
                                         r"input has shape \(2, 3\)"):
        F.pad(x, (1,) * 6)
    with pytest.raises(ValueError, match="pad: reflect padding of \\(3, 0\\) is too large for "
                                         "dimension 1 of size 3"):
        F.pad(x.float(), (3, 0), mode="reflect")
    with pytest.raises(ValueError, match="pad: padding mode must be one of"):
        F.pad(x, (1, 1), mode="wrap")
    with pytest.raises(ValueError, match="pad: negative padding"):
        F.pad(x, (-2, -2))


# ---- max pooling ----------------------------------------------------------------------------

# inputs rounded to a coarse grid, so windows hold ties: the gradient must go to the first
# maximum of each window, as PyTorch routes it
def _tied(*shapes, seed=0):
    return [np.round(a * 2) / 2 for a in _data(*shapes, seed=seed)]


MAX_POOL_2D = [
    (dict(kernel_size=2), (2, 3, 6, 6)),
    (dict(kernel_size=3, stride=2, padding=1), (2, 2, 7, 6)),
    (dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1)), (1, 2, 7, 8)),
    (dict(kernel_size=3, stride=2, ceil_mode=True), (2, 2, 8, 7)),
    (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 2, 6, 6)),
    (dict(kernel_size=2, stride=1, dilation=2, padding=1), (2, 5, 5)),
]


@pytest.mark.parametrize("kwargs,shape", MAX_POOL_2D)
def test_max_pool2d_matches_torch(kwargs, shape):
    data = _tied(shape)
    nx_out = check_op(None, nx_fn=lambda x: F.max_pool2d(x, return_indices=True, **kwargs),
                      torch_fn=lambda x: TF.max_pool2d(x, return_indices=True, **kwargs),
                      data=data, **TOL)
    assert nx_out[1].dtype == nx.int64
    stride = kwargs.pop("stride", None)
    mine = nn.MaxPool2d(stride=stride, **kwargs)
    th = torch.nn.MaxPool2d(stride=stride, **kwargs)
    _compare_modules(mine, th, data[0], TOL["rtol"], TOL["atol"])
    assert repr(mine) == repr(th)


@pytest.mark.parametrize("kwargs,shape", [
    (dict(kernel_size=3), (2, 3, 10)),
    (dict(kernel_size=2, stride=1, padding=1), (2, 7)),
    (dict(kernel_size=3, stride=2, dilation=2, ceil_mode=True), (1, 2, 12)),
])
def test_max_pool1d_matches_torch(kwargs, shape):
    data = _tied(shape)
    check_op(None, nx_fn=lambda x: F.max_pool1d(x, return_indices=True, **kwargs),
             torch_fn=lambda x: TF.max_pool1d(x, return_indices=True, **kwargs),
             data=data, **TOL)
    _compare_modules(nn.MaxPool1d(**kwargs), torch.nn.MaxPool1d(**kwargs), data[0],
                     TOL["rtol"], TOL["atol"])


def test_max_pool_nd_three_spatial_axes():
    (x,) = _tied((1, 2, 4, 5, 6))
    check_op(None, nx_fn=lambda t: F.max_pool_nd(t, (2, 2, 3), stride=(2, 1, 3), padding=1),
             torch_fn=lambda t: TF.max_pool3d(t, (2, 2, 3), stride=(2, 1, 3), padding=1),
             data=[x], **TOL)


def test_max_pool_gradient_goes_to_the_first_maximum():
    x = nx.tensor([[[[1.0, 3.0], [3.0, 3.0]]]], requires_grad=True)
    F.max_pool2d(x, 2).sum().backward()
    assert x.grad.numpy().reshape(-1).tolist() == [0.0, 1.0, 0.0, 0.0]


def test_max_pool_nan_propagates_like_torch():
    (x,) = _data((1, 1, 4, 4))
    x[0, 0, 1, 2] = np.nan
    xn, xt = nx.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yn, yt = F.max_pool2d(xn, 2), TF.max_pool2d(xt, 2)
    assert np.isnan(yn.detach().numpy()).sum() == 1
    assert_close(yn, yt, 1e-5, 1e-6)
    yn.sum().backward()
    yt.sum().backward()
    assert_close(xn.grad, xt.grad, 1e-5, 1e-6, "grad")


# ---- average pooling ------------------------------------------------------------------------

AVG_POOL_2D = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=(3, 2), stride=2, padding=(1, 1), ceil_mode=True),
    dict(kernel_size=(3, 2), stride=2, padding=(1, 1), ceil_mode=True, count_include_pad=False),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=2, stride=1, padding=1, divisor_override=3),
]


@pytest.mark.parametrize("kwargs", AVG_POOL_2D)
@pytest.mark.parametrize("shape", [(2, 3, 7, 6), (3, 6, 5)])
def test_avg_pool2d_matches_torch(kwargs, shape):
    check_op([shape], nx_fn=lambda x: F.avg_pool2d(x, **kwargs),
             torch_fn=lambda x: TF.avg_pool2d(x, **kwargs), **TOL)
    (x,) = _data(shape, seed=3)
    mine, th = nn.AvgPool2d(**kwargs), torch.nn.AvgPool2d(**kwargs)
    _compare_modules(mine, th, x, TOL["rtol"], TOL["atol"])
    assert repr(mine) == repr(th)


@pytest.mark.parametrize("output_size,shape", [
    ((3, 2), (2, 3, 6, 6)),
    ((4, 3), (2, 3, 7, 5)),
    (5, (1, 2, 8, 9)),
    ((None, 2), (2, 5, 7)),
    (1, (2, 3, 5, 4)),
    ((7, 5), (1, 2, 7, 5)),
    ((3, 4), (1, 1, 2, 3)),
])
def test_adaptive_avg_pool2d_matches_torch(output_size, shape):
    check_op([shape], nx_fn=lambda x: F.adaptive_avg_pool2d(x, output_size),
             torch_fn=lambda x: TF.adaptive_avg_pool2d(x, output_size), **TOL)
    mine, th = nn.AdaptiveAvgPool2d(output_size), torch.nn.AdaptiveAvgPool2d(output_size)
    assert repr(mine) == repr(th)


def test_avg_pool_nan_propagates_like_torch():
    (x,) = _data((1, 1, 5, 5))
    x[0, 0, 2, 2] = np.nan
    out = F.avg_pool2d(nx.tensor(x), 3, stride=1).numpy()
    assert np.isnan(out).all()
    adaptive = F.adaptive_avg_pool2d(nx.tensor(x), (2, 3)).numpy()
    want = TF.adaptive_avg_pool2d(torch.tensor(x), (2, 3)).numpy()
    np.testing.assert_array_equal(np.isnan(adaptive), np.isnan(want))


def test_pooling_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"MaxPool2d: expected 4-D input \(N, C, H, W\) or "
                                         r"3-D unbatched, got shape \(4, 4\)"):
        nn.MaxPool2d(2)(nx.zeros(4, 4))
    with pytest.raises(ValueError, match=r"MaxPool2d: padding should be at most half of the "
                                         r"kernel size, got padding \(2, 2\)"):
        nn.MaxPool2d(3, padding=2)(nx.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"AvgPool2d: input of shape \(1, 1, 2, 2\) is too "
                                         r"small for kernel_size \(3, 3\)"):
        nn.AvgPool2d(3)(nx.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"max_pool1d: stride must be >= 1, got \(0,\)"):
        F.max_pool1d(nx.zeros(1, 1, 8), 2, stride=0)
    with pytest.raises(TypeError, match="max_pool2d: expected a floating-point input, got int64"):
        F.max_pool2d(nx.tensor(np.zeros((1, 1, 4, 4), np.int64)), 2)
    with pytest.raises(ValueError, match="avg_pool2d: divisor_override must be a non-zero int"):
        F.avg_pool2d(nx.zeros(1, 1, 4, 4), 2, divisor_override=0)
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d: output_size must be >= 1, got "
                                         r"\(0, 2\)"):
        nn.AdaptiveAvgPool2d((0, 2))(nx.zeros(1, 1, 4, 4))


# ---- the spec's CNN tutorial ----------------------------------------------------------------

def _cnn(lib):
    """The spec's tutorial CNN, written once for either library."""

    class CNN(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = lib.nn.Sequential(
                lib.nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1),
                lib.nn.ReLU(),
                lib.nn.MaxPool2d(kernel_size=2, stride=2),
                lib.nn.Conv2d(16, 32, kernel_size=3, stride=1, padding=1),
                lib.nn.ReLU(),
                lib.nn.MaxPool2d(kernel_size=2, stride=2),
            )
            self.classifier = lib.nn.Sequential(
                lib.nn.Linear(32 * 7 * 7, 128),
                lib.nn.ReLU(),
                lib.nn.Linear(128, 10),
            )

        def forward(self, x):
            x = self.features(x)
            x = x.view(x.shape[0], -1)
            return self.classifier(x)

    return CNN()


def test_spec_cnn_matches_torch_forward_and_parameter_gradients():
    torch.manual_seed(0)
    th = _cnn(torch)
    mine = _cnn(nx)
    mine.load_state_dict(th.state_dict())
    x, = _data((4, 3, 28, 28), seed=5)
    target = np.array([3, 0, 9, 3])
    out_n = mine(nx.tensor(x))
    out_t = th(torch.tensor(x))
    assert_close(out_n, out_t, 1e-4, 1e-5, "logits")
    loss_n = nn.CrossEntropyLoss()(out_n, nx.tensor(target))
    loss_t = torch.nn.CrossEntropyLoss()(out_t, torch.tensor(target))
    assert_close(loss_n, loss_t, 1e-4, 1e-5, "loss")
    loss_n.backward()
    loss_t.backward()
    th_params = dict(th.named_parameters())
    names = [n for n, _ in mine.named_parameters()]
    assert names == list(th_params)
    for name, p in mine.named_parameters():
        assert_close(p.grad, th_params[name].grad, 1e-4, 1e-5, f"grad of {name}")
