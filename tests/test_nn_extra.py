"""The layers added for issue 14 (activations, normalisation, padding, pooling, transposed
convolution, resizing, losses, distances): eager vs compiled vs PyTorch through
`check_compiled`, with PyTorch's weights loaded into each layer, plus their argument errors,
and Module's attribute re-assignment keeping its place."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from op_helpers import message_id
from test_compile_parity import LOOSE, LOOSE_GRAD, check_compiled

import neurenix as nx
import neurenix.nn as nn
import neurenix.nn.functional as F


def _floats(shape, seed=0, low=-2.0, high=2.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32)


def _kinked(shape, seed=0) -> np.ndarray:
    """Data on a grid of halves, with exact zeros and the kinks of ReLU6/Hardswish."""
    x = np.round(_floats(shape, seed, -8.0, 8.0) * 2) / 2
    flat = x.reshape(-1)
    for i, v in enumerate((0.0, 6.0, -3.0, 3.0)):
        flat[i::13] = v
    return x


def _pair(make, *args, **kwargs):
    """A torch layer and a neurenix layer holding its weights (and buffers)."""
    torch.manual_seed(0)
    th = make(torch.nn)(*args, **kwargs)
    mine = make(nn)(*args, **kwargs)
    result = mine.load_state_dict(th.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert list(mine.state_dict()) == list(th.state_dict())
    return mine, th


def _layer(make, args, kwargs, x, **options):
    return pytest.param(make, args, kwargs, x, options,
                        id=f"{make(nn).__name__}-{args}-{kwargs}-{x.shape}")


LAYERS = [
    _layer(lambda m: m.SiLU, (), {}, _kinked((3, 4, 5))),
    _layer(lambda m: m.Softplus, (), {}, _kinked((3, 4, 5))),
    _layer(lambda m: m.Softplus, (), dict(beta=2.0, threshold=3.0), _kinked((3, 4, 5))),
    _layer(lambda m: m.PReLU, (), {}, _kinked((3, 4, 5))),
    _layer(lambda m: m.PReLU, (4,), dict(init=0.1), _kinked((3, 4, 5))),
    _layer(lambda m: m.ReLU6, (), {}, _kinked((3, 4, 5))),
    _layer(lambda m: m.Hardtanh, (-2.0, 3.0), {}, _kinked((3, 4, 5))),
    _layer(lambda m: m.Hardswish, (), {}, _kinked((3, 4, 5))),
    _layer(lambda m: m.GroupNorm, (2, 4), {}, _floats((3, 4, 3, 2)), tol=LOOSE,
           grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.GroupNorm, (3, 6), dict(affine=False, eps=1e-3), _floats((2, 6, 5)),
           tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.InstanceNorm2d, (3,), {}, _floats((2, 3, 4, 5)), tol=LOOSE,
           grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.InstanceNorm2d, (3,), dict(affine=True, track_running_stats=True,
                                                  momentum=0.3),
           _floats((2, 3, 4, 5)), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.InstanceNorm2d, (3,), dict(affine=True), _floats((3, 4, 5)), tol=LOOSE,
           grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.InstanceNorm1d, (3,), dict(track_running_stats=True),
           _floats((2, 3, 6)), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.BatchNorm3d, (3,), dict(momentum=0.2), _floats((2, 3, 2, 3, 2)),
           tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.ReflectionPad2d, (2,), {}, _floats((2, 3, 4, 5))),
    _layer(lambda m: m.ReflectionPad2d, ((1, 0, 2, 3),), {}, _floats((3, 4, 5))),
    _layer(lambda m: m.ReflectionPad1d, ((2, 1),), {}, _floats((2, 3, 4))),
    _layer(lambda m: m.ReplicationPad2d, ((1, 2, 0, 1),), {}, _floats((2, 3, 4, 5))),
    _layer(lambda m: m.ZeroPad2d, (1,), {}, _floats((2, 3, 4, 5))),
    _layer(lambda m: m.ConstantPad1d, ((2, 1), 1.5), {}, _floats((2, 3, 4))),
    _layer(lambda m: m.AvgPool1d, (3,), {}, _floats((2, 3, 10))),
    _layer(lambda m: m.AvgPool1d, (3,), dict(stride=2, padding=1, count_include_pad=False,
                                            ceil_mode=True), _floats((2, 3, 8))),
    _layer(lambda m: m.AdaptiveAvgPool1d, (4,), {}, _floats((2, 3, 10))),
    _layer(lambda m: m.AdaptiveAvgPool1d, (3,), {}, _floats((3, 7))),
    _layer(lambda m: m.AdaptiveMaxPool2d, ((3, 2),), {}, np.round(_floats((2, 3, 7, 5)))),
    _layer(lambda m: m.AdaptiveMaxPool2d, (2,), {}, np.round(_floats((3, 6, 6)))),
    _layer(lambda m: m.AdaptiveMaxPool2d, ((4, None),), {}, np.round(_floats((1, 2, 5, 3)))),
    _layer(lambda m: m.AdaptiveMaxPool1d, (3,), {}, np.round(_floats((2, 3, 8)))),
    _layer(lambda m: m.MaxPool3d, (2,), {}, np.round(_floats((2, 2, 4, 4, 5)) * 2)),
    _layer(lambda m: m.MaxPool3d, ((2, 3, 2),), dict(stride=(1, 2, 2), padding=(1, 1, 0)),
           np.round(_floats((1, 2, 3, 5, 4)) * 2)),
    _layer(lambda m: m.Unflatten, (1, (2, 3)), {}, _floats((4, 6, 2))),
    _layer(lambda m: m.Unflatten, (-1, (2, -1)), {}, _floats((4, 6))),
    _layer(lambda m: m.ConvTranspose2d, (3, 4, 3), {}, _floats((2, 3, 4, 5)), tol=LOOSE,
           grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.ConvTranspose2d, (4, 6, (3, 2)),
           dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(1, 2)),
           _floats((2, 4, 3, 4)), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.ConvTranspose2d, (2, 2, 3),
           dict(stride=2, padding=2, dilation=2, output_padding=1, bias=False),
           _floats((2, 4, 3)), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.ConvTranspose1d, (3, 2, 4), dict(stride=3, padding=1),
           _floats((2, 3, 5)), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.ConvTranspose3d, (2, 2, 2), dict(stride=2), _floats((1, 2, 2, 3, 2)),
           tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Upsample, (), dict(scale_factor=2), _floats((2, 3, 3, 4))),
    _layer(lambda m: m.Upsample, (), dict(size=(5, 7)), _floats((2, 3, 3, 4))),
    _layer(lambda m: m.Upsample, (), dict(scale_factor=1.7, mode="nearest"),
           _floats((1, 2, 5, 3))),
    _layer(lambda m: m.Upsample, (), dict(scale_factor=(2, 1.5), mode="bilinear"),
           _floats((2, 3, 3, 4))),
    _layer(lambda m: m.Upsample, (), dict(size=(7, 3), mode="bilinear", align_corners=True),
           _floats((2, 3, 3, 4))),
    _layer(lambda m: m.Upsample, (), dict(size=(2, 3), mode="bilinear"), _floats((1, 2, 5, 7))),
    _layer(lambda m: m.Upsample, (), dict(scale_factor=0.6, mode="bilinear",
                                         recompute_scale_factor=True), _floats((1, 2, 5, 7))),
    _layer(lambda m: m.Upsample, (), dict(scale_factor=2.5, mode="linear"), _floats((2, 3, 4))),
    _layer(lambda m: m.PixelShuffle, (2,), {}, _floats((2, 8, 3, 2))),
    _layer(lambda m: m.PixelShuffle, (3,), {}, _floats((9, 2, 2))),
    _layer(lambda m: m.PixelUnshuffle, (2,), {}, _floats((2, 2, 4, 6))),
]


@pytest.mark.parametrize("make, args, kwargs, x, options", LAYERS)
def test_layer(make, args, kwargs, x, options):
    mine, th = _pair(make, *args, **kwargs)
    check_compiled(mine, [x], torch_fn=th, **options)


@pytest.mark.parametrize("train", [True, False])
def test_instance_norm_running_statistics(train):
    """Tracked statistics move in training and normalise in evaluation, as PyTorch's."""
    mine, th = _pair(lambda m: m.InstanceNorm2d, 3, affine=True, track_running_stats=True)
    with torch.no_grad():
        th.running_mean.uniform_(-0.5, 0.5)
        th.running_var.uniform_(0.5, 1.5)
    mine.load_state_dict(th.state_dict())
    mine.train(train)
    th.train(train)
    check_compiled(mine, [_floats((2, 3, 4, 4)) * 2 + 1], torch_fn=th, tol=LOOSE,
                   grad_tol=LOOSE_GRAD)


def _lib(fn):
    return dict(fn=lambda *xs: fn(nx, *xs), torch_fn=lambda *xs: fn(torch, *xs))


FUNCTIONAL = [
    pytest.param(lambda lib, x: lib.nn.functional.silu(x), [_kinked((4, 5))], {}, id="silu"),
    pytest.param(lambda lib, x: lib.nn.functional.softplus(x, 0.5, 2.0), [_kinked((4, 5))], {},
                 id="softplus"),
    pytest.param(lambda lib, x, w: lib.nn.functional.prelu(x, w),
                 [_kinked((2, 3, 4)), np.array([0.1, -0.2, 0.3], np.float32)], {}, id="prelu"),
    pytest.param(lambda lib, x: lib.nn.functional.relu6(x), [_kinked((4, 5))], {}, id="relu6"),
    pytest.param(lambda lib, x: lib.nn.functional.hardswish(x), [_kinked((4, 5))], {},
                 id="hardswish"),
    pytest.param(lambda lib, x: lib.nn.functional.group_norm(x, 2), [_floats((2, 4, 3))],
                 dict(tol=LOOSE, grad_tol=LOOSE_GRAD), id="group_norm"),
    pytest.param(lambda lib, x, w, b: lib.nn.functional.instance_norm(x, weight=w, bias=b),
                 [_floats((2, 3, 5)), _floats((3,), 1), _floats((3,), 2)],
                 dict(tol=LOOSE, grad_tol=LOOSE_GRAD), id="instance_norm"),
    pytest.param(lambda lib, x, w: lib.nn.functional.conv_transpose2d(
        x, w, stride=2, padding=1, output_padding=1),
        [_floats((2, 3, 3, 4)), _floats((3, 2, 3, 3), 1)], dict(tol=LOOSE, grad_tol=LOOSE_GRAD),
        id="conv_transpose2d"),
    pytest.param(lambda lib, x: lib.nn.functional.interpolate(
        x, scale_factor=3, mode="nearest-exact"), [_floats((1, 2, 3, 4))], {},
        id="interpolate-nearest-exact"),
    pytest.param(lambda lib, x: lib.nn.functional.interpolate(x, size=7), [_floats((2, 3, 5))],
                 {}, id="interpolate-nearest-1d"),
    pytest.param(lambda lib, x: lib.nn.functional.interpolate(
        x, size=(3, 4, 5), mode="trilinear", align_corners=True),
        [_floats((1, 2, 2, 3, 3))], {}, id="interpolate-trilinear"),
    pytest.param(lambda lib, x: lib.nn.functional.pixel_shuffle(x, 2), [_floats((2, 4, 2, 3))],
                 {}, id="pixel_shuffle"),
    pytest.param(lambda lib, x: lib.nn.functional.dropout2d(x, 0.5, training=False),
                 [_floats((2, 3, 2, 2))], {}, id="dropout2d-eval"),
    pytest.param(lambda lib, x: lib.nn.functional.avg_pool1d(x, 2), [_floats((2, 3, 6))], {},
                 id="avg_pool1d"),
    pytest.param(lambda lib, x: lib.nn.functional.adaptive_max_pool2d(x, (2, 3),
                                                                      return_indices=True),
                 [np.round(_floats((2, 2, 5, 7)))], {}, id="adaptive_max_pool2d-indices"),
    pytest.param(lambda lib, x: lib.nn.functional.normalize(x), [_floats((4, 3, 2))], {},
                 id="normalize"),
    pytest.param(lambda lib, x: lib.nn.functional.normalize(x, p=1.5, dim=-1),
                 [np.concatenate([_floats((3, 4)), np.zeros((1, 4), np.float32)])], {},
                 id="normalize-p-zero-row"),
    pytest.param(lambda lib, a, b: lib.nn.functional.cosine_similarity(a, b),
                 [_floats((4, 5, 2)), _floats((4, 5, 2), 1)], {}, id="cosine_similarity"),
    pytest.param(lambda lib, a, b: lib.nn.functional.cosine_similarity(a, b, dim=-1, eps=0.5),
                 [_floats((4, 3), low=-0.2, high=0.2), _floats((1, 3), 1)], {},
                 id="cosine_similarity-broadcast-eps"),
    pytest.param(lambda lib, a, b: lib.nn.functional.pairwise_distance(a, b, p=3.0),
                 [_floats((4, 3)), _floats((4, 3), 1)], {}, id="pairwise_distance"),
]


@pytest.mark.parametrize("fn, data, options", FUNCTIONAL)
def test_functional(fn, data, options):
    check_compiled(**_lib(fn), inputs=data, **options)


def _loss(name, make, data, **options):
    return pytest.param(make, data, options, id=name)


PROBS = np.random.default_rng(3).dirichlet(np.ones(5), size=4).astype(np.float32)
LOG_PROBS = np.log(np.random.default_rng(4).dirichlet(np.ones(5), size=4)).astype(np.float32)

LOSSES = [
    _loss(f"smooth_l1-{r}-{beta}", lambda lib, r=r, beta=beta: lambda x, t:
          lib.nn.functional.smooth_l1_loss(x, t, reduction=r, beta=beta),
          [_kinked((4, 3)) / 4, _kinked((4, 3), 1) / 4])
    for r in ("mean", "sum", "none") for beta in (1.0, 0.5, 0.0)
] + [
    _loss(f"huber-{r}", lambda lib, r=r: lambda x, t:
          lib.nn.functional.huber_loss(x, t, reduction=r, delta=0.75),
          [_kinked((4, 3)) / 4, _kinked((4, 3), 1) / 4])
    for r in ("mean", "sum", "none")
] + [
    _loss(f"kl_div-{r}", lambda lib, r=r: lambda x, t:
          lib.nn.functional.kl_div(x, t, reduction=r), [LOG_PROBS, PROBS])
    for r in ("batchmean", "sum", "none")
] + [
    _loss("kl_div-log-target", lambda lib: lambda x, t:
          lib.nn.functional.kl_div(x, t, reduction="batchmean", log_target=True),
          [LOG_PROBS, np.log(PROBS)]),
    _loss("triplet", lambda lib: lambda a, p, n: lib.nn.functional.triplet_margin_loss(a, p, n),
          [_floats((5, 3)), _floats((5, 3), 1), _floats((5, 3), 2)]),
    _loss("triplet-swap-p1", lambda lib: lambda a, p, n: lib.nn.functional.triplet_margin_loss(
        a, p, n, margin=0.5, p=1, swap=True, reduction="none"),
        [_floats((5, 3)), _floats((5, 3), 1), _floats((5, 3), 2)]),
    _loss("triplet-unbatched-sum", lambda lib: lambda a, p, n:
          lib.nn.functional.triplet_margin_loss(a, p, n, margin=2.0, reduction="sum"),
          [_floats((4,)), _floats((4,), 1), _floats((4,), 2)]),
]


@pytest.mark.parametrize("make, data, options", LOSSES)
def test_loss_function(make, data, options):
    check_compiled(make(nx), data, torch_fn=make(torch), **options)


MODULE_LOSSES = [
    ("SmoothL1Loss", dict(beta=0.3, reduction="sum"), 2),
    ("HuberLoss", dict(delta=0.4), 2),
    ("KLDivLoss", dict(reduction="batchmean"), 2),
    ("KLDivLoss", dict(reduction="sum", log_target=True), 2),
    ("TripletMarginLoss", dict(margin=0.7, p=1.5, swap=True), 3),
]


@pytest.mark.parametrize("cls, kwargs, count", MODULE_LOSSES, ids=str)
def test_loss_module(cls, kwargs, count):
    data = {2: [LOG_PROBS, PROBS], 3: [_floats((5, 3), s) for s in range(3)]}[count]
    if kwargs.get("log_target"):
        data = [LOG_PROBS, np.log(PROBS)]
    check_compiled(getattr(nn, cls)(**kwargs), data, torch_fn=getattr(torch.nn, cls)(**kwargs))


def test_kl_div_mean_warns_like_torch():
    x, t = nx.tensor(LOG_PROBS), nx.tensor(PROBS)
    with pytest.warns(UserWarning, match="batchmean"):
        got = F.kl_div(x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = torch.nn.functional.kl_div(torch.tensor(LOG_PROBS), torch.tensor(PROBS))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def test_legacy_size_average_and_reduce_map_onto_reduction():
    with pytest.warns(UserWarning, match="deprecated"):
        assert nn.SmoothL1Loss(reduce=False).reduction == "none"
    with pytest.warns(UserWarning):
        assert nn.KLDivLoss(size_average=False).reduction == "sum"


# ---- dropout2d ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "llvm"])
def test_dropout2d_drops_whole_channels(backend):
    p = 0.4
    layer = nn.Dropout2d(p)
    run = layer if backend == "eager" else nx.compile(layer, backend=backend)
    x = nx.ones(40, 50, 3, 2, requires_grad=True)
    y = run(x)
    (y * 3).sum().backward()
    out = y.detach().numpy()
    per_channel = out.reshape(40, 50, -1)
    assert np.all(per_channel.min(-1) == per_channel.max(-1)), "a channel partly dropped"
    kept = per_channel[..., 0] != 0
    assert abs(1 - kept.mean() - p) < 0.05
    np.testing.assert_allclose(per_channel[kept], 1 / (1 - p), rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), np.where(out != 0, 3 / (1 - p), 0.0), rtol=1e-6)
    assert layer.eval()(x) is x


def test_dropout2d_three_dimensional_input_warns_as_torch():
    with pytest.warns(UserWarning, match="3D input"):
        F.dropout2d(nx.ones(2, 3, 4))


# ---- module structure -----------------------------------------------------------------------


def _net(lib):
    """conv1, conv2, a parameter and a buffer, in that order."""
    net = lib.nn.Module()
    net.conv1 = lib.nn.Conv2d(1, 2, 3)
    net.conv2 = lib.nn.Conv2d(2, 2, 3)
    net.scale = lib.nn.Parameter(lib.ones(2))
    net.register_buffer("count", lib.zeros(1))
    return net


def test_reassigning_a_child_parameter_or_buffer_keeps_its_position():
    """As in PyTorch: `net.conv1 = Conv2d(...)` replaces conv1 where it was."""
    mine, theirs = _net(nx), _net(torch)
    for net, lib in ((mine, nx), (theirs, torch)):
        net.conv1 = lib.nn.Conv2d(1, 4, 3)
        net.scale = lib.nn.Parameter(lib.zeros(2))
        net.count = lib.ones(1)
        net.register_buffer("count", lib.ones(1))
    assert [n for n, _ in mine.named_children()] == ["conv1", "conv2"]
    assert list(mine.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert mine.conv1.out_channels == 4
    seq = nn.Sequential(nn.ReLU(), nn.Tanh())
    seq[0] = nn.Sigmoid()
    assert [type(m).__name__ for m in seq] == ["Sigmoid", "Tanh"]


def test_cells_are_exported_at_nn():
    from neurenix.nn import rnn

    assert nn.RNNCell is rnn.RNNCell and nn.LSTMCell is rnn.LSTMCell
    assert nn.GRUCell is rnn.GRUCell
    mine, th = _pair(lambda m: m.GRUCell, 3, 4)
    check_compiled(mine, [_floats((2, 3)), _floats((2, 4), 1)], torch_fn=th, tol=LOOSE,
                   grad_tol=LOOSE_GRAD)


# ---- argument errors ------------------------------------------------------------------------


ERRORS = [
    (lambda: nn.GroupNorm(3, 4), ValueError, "divisible by num_groups"),
    (lambda: nn.GroupNorm(0, 4), ValueError, "num_groups must be a positive int, got 0"),
    (lambda: nn.PReLU(0), ValueError, "num_parameters must be a positive int, got 0"),
    (lambda: nn.Hardtanh(2.0, 1.0), ValueError, "must not exceed"),
    (lambda: nn.Dropout2d(1.5), ValueError, "Dropout2d: dropout probability p must be"),
    (lambda: nn.ConvTranspose2d(3, 4, 3, output_padding=2, stride=2), ValueError,
     "output_padding"),
    (lambda: nn.ConvTranspose2d(3, 4, 3, groups=2), ValueError, "in_channels (3) must be "
     "divisible by groups (2)"),
    (lambda: nn.ConvTranspose2d(3, 4, 3, padding_mode="reflect"), ValueError, "zeros"),
    (lambda: nn.ConvTranspose2d(3, 4, 3, padding="same"), ValueError, "padding must be"),
    (lambda: nn.Unflatten(1.5, (2, 3)), TypeError, "dim must be an int"),
    (lambda: nn.Unflatten(1, 6), TypeError, "unflattened_size must be a tuple"),
    (lambda: nn.KLDivLoss(reduction="avg"), ValueError, "batchmean"),
    (lambda: nn.SmoothL1Loss(beta=-1.0), ValueError, "beta must be non-negative"),
    (lambda: nn.HuberLoss(delta=0.0), ValueError, "delta must be positive"),
    (lambda: nn.TripletMarginLoss(reduction="all"), ValueError, "reduction must be"),
    (lambda: nn.ReflectionPad2d((1, 2, 3)), ValueError, "tuple of 4 ints"),
    (lambda: nn.ReflectionPad2d("1"), TypeError, "padding must be an int or a tuple"),
]


@pytest.mark.parametrize("make, error, match", ERRORS, ids=message_id)
def test_constructor_errors(make, error, match):
    with pytest.raises(error, match=match.replace("(", r"\(").replace(")", r"\)")):
        make()


CALL_ERRORS = [
    (lambda: nn.GroupNorm(2, 4)(nx.ones(2, 6, 3)), ValueError, r"\(N, 4, \*\)"),
    (lambda: nn.InstanceNorm2d(3, affine=True)(nx.ones(2, 4, 3, 3)), ValueError,
     r"num_features \(3\)"),
    (lambda: nn.ReflectionPad2d(3)(nx.ones(1, 1, 3, 3)), ValueError, "too large"),
    (lambda: nn.ConvTranspose2d(3, 4, 3)(nx.ones(1, 2, 3, 3)), ValueError,
     "expected input with 3 channels"),
    (lambda: nn.ConvTranspose2d(1, 1, 3, stride=2)(nx.ones(1, 1, 3, 3), output_size=(9, 9)),
     ValueError, "valid sizes range from 7 to 8"),
    (lambda: F.interpolate(nx.ones(1, 1, 3), scale_factor=2, mode="bilinear"), ValueError,
     "4-D input"),
    (lambda: F.interpolate(nx.ones(1, 1, 3, 3), size=4, scale_factor=2), ValueError,
     "only one of size or scale_factor"),
    (lambda: F.interpolate(nx.ones(1, 1, 3, 3), scale_factor=2, align_corners=True),
     ValueError, "align_corners"),
    (lambda: F.interpolate(nx.ones(1, 1, 3, 3), scale_factor=2, mode="bicubic"), ValueError,
     "mode must be one of"),
    (lambda: F.pixel_shuffle(nx.ones(1, 6, 2, 2), 2), ValueError, "divisible by "
     "upscale_factor"),
    (lambda: F.prelu(nx.ones(2, 3), nx.ones(4)), ValueError, "4 slopes"),
    (lambda: F.triplet_margin_loss(nx.ones(2, 3), nx.ones(2, 3), nx.ones(3)), ValueError,
     "same rank"),
    (lambda: F.normalize(nx.ones(2, 3), p=0), ValueError, "positive finite"),
    (lambda: nn.AdaptiveMaxPool2d((2, 2, 2))(nx.ones(1, 1, 4, 4)), ValueError, "output_size"),
]


@pytest.mark.parametrize("call, error, match", CALL_ERRORS, ids=message_id)
def test_call_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_conv_transpose_output_size_and_default_init_layout():
    mine, th = _pair(lambda m: m.ConvTranspose2d, 2, 3, 3, stride=2)
    assert tuple(mine.weight.shape) == (2, 3, 3, 3)
    x = _floats((1, 2, 4, 4))
    got = mine(nx.tensor(x), output_size=(10, 10)).detach().numpy()
    want = th(torch.tensor(x), output_size=(10, 10)).detach().numpy()
    np.testing.assert_allclose(got, want, *LOOSE)
    fresh = nn.ConvTranspose2d(2, 3, 3)  # kaiming bound from fan_in = 3 * 3 * 3
    assert np.abs(fresh.bias.detach().numpy()).max() <= 1 / np.sqrt(27)


def test_reprs_match_torch():
    for make, args, kwargs in [
            (lambda m: m.GroupNorm, (2, 4), {}),
            (lambda m: m.InstanceNorm2d, (3,), {}),
            (lambda m: m.PReLU, (), {}),
            (lambda m: m.Softplus, (), {}),
            (lambda m: m.ReflectionPad2d, (1,), {}),
            (lambda m: m.Upsample, (), dict(scale_factor=2, mode="bilinear")),
            (lambda m: m.PixelShuffle, (2,), {}),
            (lambda m: m.Unflatten, (1, (2, 3)), {}),
            (lambda m: m.ConvTranspose2d, (2, 3, 3), dict(stride=2, output_padding=1))]:
        assert repr(make(nn)(*args, **kwargs)) == repr(make(torch.nn)(*args, **kwargs))
