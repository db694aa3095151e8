"""Layers of neurenix.nn against torch.nn: forward values, input and parameter gradients.

Each Neurenix layer receives the weights of a freshly initialised torch layer through
`load_state_dict(torch_layer.state_dict())`, so any difference comes from the computation.
Dropout draws its own random numbers, so it is checked statistically instead.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from op_helpers import assert_close

import neurenix as nx
import neurenix.nn as nn
import neurenix.nn.functional as F

FWD = (1e-5, 1e-6)
GRAD = (1e-5, 1e-5)
# Normalisation layers reduce over the batch with a different summation order than torch's
# kernels (and their backward adds three such reductions), so their float32 tolerance is looser.
NORM_FWD = (1e-4, 1e-5)
NORM_GRAD = (1e-4, 1e-4)


def _data(shape, seed=0, low=-2.0, high=2.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32)


def compare_layer(nx_layer: nn.Module, th_layer: torch.nn.Module, x: np.ndarray, *,
                  fwd=FWD, grad=GRAD, copy_state: bool = True, seed: int = 1):
    """Forward and backward both layers on x; compare output, input grad and parameter grads.

    Returns the two outputs for further checks.
    """
    if copy_state:
        result = nx_layer.load_state_dict(th_layer.state_dict())
        assert result.missing_keys == [] and result.unexpected_keys == []
    floating = x.dtype.kind == "f"
    xn = nx.tensor(x, requires_grad=floating)
    xt = torch.tensor(x, requires_grad=floating)
    yn = nx_layer(xn)
    yt = th_layer(xt)
    assert_close(yn, yt, *fwd, "forward")
    up = np.random.default_rng(seed).standard_normal(tuple(yt.shape)).astype(np.float32)
    (yn * nx.tensor(up)).sum().backward()
    (yt * torch.tensor(up)).sum().backward()
    if floating:
        assert_close(xn.grad, xt.grad, *grad, "input grad")
    nx_params = dict(nx_layer.named_parameters())
    th_params = dict(th_layer.named_parameters())
    assert list(nx_params) == list(th_params)
    for name, tp in th_params.items():
        p = nx_params[name]
        if tp.grad is None:
            assert p.grad is None or not np.any(p.grad.numpy()), name
        else:
            assert p.grad is not None, f"{name}: no gradient, torch has one"
            assert_close(p.grad, tp.grad, *grad, f"grad of {name}")
    return yn, yt


def compare_buffers(nx_layer: nn.Module, th_layer: torch.nn.Module, tol=NORM_FWD) -> None:
    th_buffers = dict(th_layer.named_buffers())
    nx_buffers = dict(nx_layer.named_buffers())
    assert list(nx_buffers) == list(th_buffers)
    for name, tb in th_buffers.items():
        assert_close(nx_buffers[name], tb, *tol, name)


# ---- Linear -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 10), (2, 3, 10), (10,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(shape, bias):
    torch.manual_seed(0)
    compare_layer(nn.Linear(10, 5, bias=bias), torch.nn.Linear(10, 5, bias=bias), _data(shape))


def test_linear_float64():
    torch.manual_seed(0)
    th = torch.nn.Linear(6, 3, dtype=torch.float64)
    layer = nn.Linear(6, 3, dtype=nx.float64)
    assert layer.weight.dtype == nx.float64
    compare_layer(layer, th, _data((4, 6)).astype(np.float64), fwd=(1e-12, 1e-12),
                  grad=(1e-12, 1e-12))


def test_linear_functional_matches_torch():
    x, w, b = _data((3, 4)), _data((2, 4), seed=1), _data((2,), seed=2)
    out = F.linear(nx.tensor(x), nx.tensor(w), nx.tensor(b))
    assert_close(out, torch.nn.functional.linear(torch.tensor(x), torch.tensor(w),
                                                 torch.tensor(b)), *FWD)


def test_linear_errors_name_the_layer():
    layer = nn.Linear(10, 5)
    with pytest.raises(ValueError, match=r"Linear: expected input with last dimension 10 "
                                         r"\(in_features\), got shape \(32, 7\)"):
        layer(nx.randn(32, 7))
    with pytest.raises(TypeError, match=r"Linear: expected input of dtype float32 \(the "
                                        r"weight's\), got float64; convert it with "
                                        r"x.to\(neurenix.float32\)"):
        layer(nx.randn(32, 10, dtype=nx.float64))
    with pytest.raises(TypeError, match=r"expected the input to be a Tensor, got ndarray; wrap "
                                        r"it: neurenix.tensor\(value, dtype=neurenix.float32\)"):
        layer(np.zeros((32, 10)))
    with pytest.raises(ValueError, match="Linear: in_features must be a non-negative int"):
        nn.Linear(-1, 3)


def test_linear_repr_matches_torch():
    assert repr(nn.Linear(3, 4, bias=False)) == repr(torch.nn.Linear(3, 4, bias=False))


# ---- activations --------------------------------------------------------------------------


def _with_kinks(shape, seed=0) -> np.ndarray:
    """Data in [-3, 3) with some exact zeros, where the piecewise activations have a kink."""
    x = _data(shape, seed, -3.0, 3.0)
    x.reshape(-1)[::5] = 0.0
    return x


ACTIVATIONS = [
    (lambda: nn.ReLU(), lambda: torch.nn.ReLU()),
    (lambda: nn.Sigmoid(), lambda: torch.nn.Sigmoid()),
    (lambda: nn.Tanh(), lambda: torch.nn.Tanh()),
    (lambda: nn.LeakyReLU(), lambda: torch.nn.LeakyReLU()),
    (lambda: nn.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2)),
    (lambda: nn.ELU(), lambda: torch.nn.ELU()),
    (lambda: nn.ELU(alpha=0.5), lambda: torch.nn.ELU(alpha=0.5)),
    (lambda: nn.SELU(), lambda: torch.nn.SELU()),
    (lambda: nn.GELU(), lambda: torch.nn.GELU()),
    (lambda: nn.GELU(approximate="tanh"), lambda: torch.nn.GELU(approximate="tanh")),
    (lambda: nn.GELU(approximate=False), lambda: torch.nn.GELU()),
    (lambda: nn.GELU(approximate=True), lambda: torch.nn.GELU(approximate="tanh")),
    (lambda: nn.Softmax(dim=1), lambda: torch.nn.Softmax(dim=1)),
    (lambda: nn.Softmax(dim=0), lambda: torch.nn.Softmax(dim=0)),
    (lambda: nn.Softmax(), lambda: torch.nn.Softmax(dim=-1)),
    (lambda: nn.LogSoftmax(dim=1), lambda: torch.nn.LogSoftmax(dim=1)),
    (lambda: nn.LogSoftmax(), lambda: torch.nn.LogSoftmax(dim=-1)),
]


@pytest.mark.parametrize("make", ACTIVATIONS, ids=lambda m: repr(m[0]()))
def test_activation_matches_torch_including_kinks(make):
    compare_layer(make[0](), make[1](), _with_kinks((4, 5, 6)))


@pytest.mark.parametrize("make", ACTIVATIONS[:12], ids=lambda m: repr(m[0]()))
def test_activation_propagates_nan_and_survives_large_inputs(make):
    x = np.array([[np.nan, 0.0, -80.0, 80.0, 1.0]], dtype=np.float32)
    compare_layer(make[0](), make[1](), x)


def test_activation_gradient_at_zero():
    """The kinks, checked one by one: relu 0, leaky_relu slope, elu alpha, selu scale*alpha."""
    cases = [(F.relu, 0.0), (lambda t: F.leaky_relu(t, 0.1), 0.1),
             (lambda t: F.elu(t, 0.7), 0.7),
             (F.selu, F.activation.SELU_SCALE * F.activation.SELU_ALPHA)]
    for fn, want in cases:
        x = nx.zeros(1, requires_grad=True)
        fn(x).sum().backward()
        assert x.grad.item() == pytest.approx(want, rel=1e-6)


def test_activation_reprs_match_torch():
    pairs = [(nn.ReLU(), torch.nn.ReLU()), (nn.ReLU(inplace=True), torch.nn.ReLU(inplace=True)),
             (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)), (nn.ELU(), torch.nn.ELU()),
             (nn.SELU(), torch.nn.SELU()), (nn.GELU("tanh"), torch.nn.GELU("tanh")),
             (nn.Softmax(dim=1), torch.nn.Softmax(dim=1)), (nn.Sigmoid(), torch.nn.Sigmoid()),
             (nn.LogSoftmax(dim=0), torch.nn.LogSoftmax(dim=0))]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="gelu: approximate must be 'none' or 'tanh'"):
        nn.GELU(approximate="fast")


def test_softmax_implicit_dim_warns_like_torch():
    x = _data((2, 3, 4))
    with pytest.warns(UserWarning, match="implicit dimension"):
        out = F.softmax(nx.tensor(x))
    assert_close(out, torch.softmax(torch.tensor(x), dim=0), *FWD)


def test_softmax_dtype_argument():
    x = _data((2, 3))
    out = F.log_softmax(nx.tensor(x), dim=1, dtype=nx.float64)
    assert_close(out, torch.log_softmax(torch.tensor(x), dim=1, dtype=torch.float64),
                 1e-6, 1e-7)


def test_inplace_flag_returns_correct_values():
    x = nx.tensor([-1.0, 2.0])
    out = nn.ReLU(inplace=True)(x)
    assert out.tolist() == [0.0, 2.0]


# ---- Dropout ------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics(p):
    nx.manual_seed(0)
    layer = nn.Dropout(p)
    x = nx.ones(200, 500)
    y = layer(x).numpy()
    zero_fraction = float(np.mean(y == 0))
    # 100k Bernoulli draws: the standard error of the fraction is below 0.0016
    assert abs(zero_fraction - p) < 0.01
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - p), rtol=1e-6)
    assert abs(float(y.mean()) - 1.0) < 0.05  # the expectation is preserved


def test_dropout_gradient_is_the_mask_scaled():
    nx.manual_seed(3)
    x = nx.randn(50, 40, requires_grad=True)
    y = F.dropout(x, 0.3)
    y.sum().backward()
    kept = y.detach().numpy() != 0
    np.testing.assert_allclose(x.grad.numpy(), np.where(kept, 1 / 0.7, 0.0), rtol=1e-6)


def test_dropout_eval_is_identity_and_train_is_not():
    layer = nn.Dropout(0.5)
    x = nx.randn(10, 10)
    assert not np.array_equal(layer(x).numpy(), x.numpy())
    layer.eval()
    assert layer(x) is x
    assert F.dropout(x, 0.5, training=False) is x


def test_dropout_reproducible_with_manual_seed():
    x = nx.ones(30, 30)
    nx.manual_seed(42)
    a = F.dropout(x, 0.5).numpy().copy()
    b = F.dropout(x, 0.5).numpy().copy()
    nx.manual_seed(42)
    c = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)


def test_dropout_edge_probabilities_and_errors():
    x = nx.randn(4, 4)
    assert F.dropout(x, 0.0) is x
    assert not np.any(F.dropout(x, 1.0).numpy())
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="Dropout: dropout probability p must be between"):
            nn.Dropout(bad)
        with pytest.raises(ValueError, match="between 0 and 1"):
            F.dropout(x, bad)
    with pytest.raises(TypeError, match="Dropout: expected a floating-point input, got int64"):
        F.dropout(nx.tensor([1, 2]), 0.5)
    assert repr(nn.Dropout(0.2)) == repr(torch.nn.Dropout(0.2))


# ---- Flatten and Identity -----------------------------------------------------------------


@pytest.mark.parametrize("dims", [(), (0, -1), (2, 3), (1, 2)])
def test_flatten_matches_torch(dims):
    compare_layer(nn.Flatten(*dims), torch.nn.Flatten(*dims), _data((2, 3, 4, 5)))
    assert repr(nn.Flatten(*dims)) == repr(torch.nn.Flatten(*dims))


def test_identity_returns_its_input():
    x = nx.randn(3)
    assert nn.Identity(54, unused="argument")(x) is x
    assert repr(nn.Identity()) == "Identity()"


# ---- BatchNorm ----------------------------------------------------------------------------

BATCHNORM_CASES = [
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (8, 4)),
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 4, 5)),
    (nn.BatchNorm2d, torch.nn.BatchNorm2d, (3, 4, 5, 6)),
]


def _randomise_affine(th: torch.nn.Module) -> None:
    with torch.no_grad():
        if th.weight is not None:
            th.weight.uniform_(0.5, 1.5)
        if th.bias is not None:
            th.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("ours, theirs, shape", BATCHNORM_CASES)
def test_batchnorm_training_steps_then_eval(ours, theirs, shape, momentum):
    torch.manual_seed(0)
    th = theirs(4, momentum=momentum)
    _randomise_affine(th)
    layer = ours(4, momentum=momentum)
    layer.load_state_dict(th.state_dict())
    for step in range(3):
        # a shifted, scaled batch so the running statistics move visibly
        x = _data(shape, seed=step) * (1.5 + step) + step
        for m in (layer, th):
            m.zero_grad()
        compare_layer(layer, th, x, fwd=NORM_FWD, grad=NORM_GRAD, copy_state=False)
        compare_buffers(layer, th)
    assert layer.num_batches_tracked.item() == 3
    layer.eval()
    th.eval()
    compare_layer(layer, th, _data(shape, seed=9), fwd=NORM_FWD, grad=NORM_GRAD,
                  copy_state=False)
    compare_buffers(layer, th)  # evaluation leaves the running statistics alone


@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("track", [True, False])
def test_batchnorm_affine_and_tracking_options(affine, bias, track):
    torch.manual_seed(1)
    th = torch.nn.BatchNorm2d(3, affine=affine, track_running_stats=track, bias=bias)
    _randomise_affine(th)
    layer = nn.BatchNorm2d(3, affine=affine, track_running_stats=track, bias=bias)
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in th.named_parameters()]
    assert list(layer.state_dict()) == list(th.state_dict())
    compare_layer(layer, th, _data((4, 3, 2, 2)), fwd=NORM_FWD, grad=NORM_GRAD)
    layer.eval()
    th.eval()
    compare_layer(layer, th, _data((4, 3, 2, 2), seed=5), fwd=NORM_FWD, grad=NORM_GRAD,
                  copy_state=False)
    assert repr(layer) == repr(th)


def test_batchnorm_functional_matches_torch():
    x = _data((5, 3, 4))
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    w, b = _data((3,), seed=1), _data((3,), seed=2)
    nx_rm, nx_rv = nx.tensor(rm), nx.tensor(rv)
    th_rm, th_rv = torch.tensor(rm), torch.tensor(rv)
    out = F.batch_norm(nx.tensor(x), nx_rm, nx_rv, nx.tensor(w), nx.tensor(b), training=True,
                       momentum=0.2, eps=1e-3)
    want = torch.nn.functional.batch_norm(torch.tensor(x), th_rm, th_rv, torch.tensor(w),
                                          torch.tensor(b), training=True, momentum=0.2, eps=1e-3)
    assert_close(out, want, *NORM_FWD)
    assert_close(nx_rm, th_rm, *NORM_FWD)
    assert_close(nx_rv, th_rv, *NORM_FWD)


def test_batchnorm_bad_inputs():
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected 4-D input \(N, C, H, W\), got "
                                         r"shape \(3, 4\)"):
        nn.BatchNorm2d(4)(nx.randn(3, 4))
    with pytest.raises(ValueError, match=r"BatchNorm1d: expected 2-D or 3-D input"):
        nn.BatchNorm1d(4)(nx.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected 4 channels \(num_features\) in "
                                         r"dimension 1, got shape \(2, 3, 5, 5\)"):
        nn.BatchNorm2d(4)(nx.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel when training"):
        nn.BatchNorm1d(4)(nx.randn(1, 4))
    layer = nn.BatchNorm1d(4).eval()
    assert layer(nx.randn(1, 4)).shape == (1, 4)  # evaluation accepts a single sample
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        nn.BatchNorm1d(0)


# ---- LayerNorm ----------------------------------------------------------------------------


@pytest.mark.parametrize("normalized_shape, shape", [(6, (4, 6)), ((5, 6), (2, 3, 5, 6)),
                                                     ([6], (2, 3, 6))])
def test_layernorm_matches_torch(normalized_shape, shape):
    torch.manual_seed(0)
    th = torch.nn.LayerNorm(normalized_shape)
    _randomise_affine(th)
    layer = nn.LayerNorm(normalized_shape)
    compare_layer(layer, th, _data(shape) * 3 + 1, fwd=NORM_FWD, grad=NORM_GRAD)
    assert repr(layer) == repr(th)


@pytest.mark.parametrize("kwargs", [{"elementwise_affine": False}, {"bias": False},
                                    {"eps": 1e-2}])
def test_layernorm_options_match_torch(kwargs):
    th = torch.nn.LayerNorm(8, **kwargs)
    layer = nn.LayerNorm(8, **kwargs)
    assert list(layer.state_dict()) == list(th.state_dict())
    compare_layer(layer, th, _data((3, 8)), fwd=NORM_FWD, grad=NORM_GRAD)


def test_layernorm_bad_input():
    with pytest.raises(ValueError, match=r"LayerNorm: expected input with trailing dimensions "
                                         r"\(10,\) \(normalized_shape\), got shape \(3, 7\)"):
        nn.LayerNorm(10)(nx.randn(3, 7))


# ---- Embedding and one_hot ----------------------------------------------------------------


@pytest.mark.parametrize("padding_idx", [None, 0, 3, -1])
def test_embedding_matches_torch(padding_idx):
    torch.manual_seed(0)
    th = torch.nn.Embedding(10, 4, padding_idx=padding_idx)
    layer = nn.Embedding(10, 4, padding_idx=padding_idx)
    idx = np.array([[0, 3, 3, 9], [1, 0, 9, 3]], dtype=np.int64)  # repeats accumulate
    compare_layer(layer, th, idx)
    assert repr(layer) == repr(th)
    if padding_idx is not None:
        fresh = nn.Embedding(10, 4, padding_idx=padding_idx)
        assert not np.any(fresh.weight.detach().numpy()[padding_idx])


def test_embedding_int32_indices_and_from_pretrained():
    table = nx.randn(5, 3)
    layer = nn.Embedding.from_pretrained(table)
    assert not layer.weight.requires_grad
    out = layer(nx.tensor(np.array([4, 0], dtype=np.int32)))
    np.testing.assert_array_equal(out.numpy(), table.numpy()[[4, 0]])


def test_embedding_init_is_standard_normal():
    nx.manual_seed(0)
    w = nn.Embedding(1000, 50).weight.detach().numpy()
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1.0) < 0.02


def test_embedding_bad_inputs():
    layer = nn.Embedding(10, 3)
    with pytest.raises(TypeError, match="Embedding: expected integer indices, got float32"):
        layer(nx.tensor([1.0, 2.0]))
    with pytest.raises(IndexError, match="Embedding: index 12 out of range for 10 embeddings"):
        layer(nx.tensor([[1, 12], [0, 2]]))
    with pytest.raises(IndexError, match="Embedding: index -1 out of range for 10 embeddings"):
        layer(nx.tensor([-1]))
    with pytest.raises(ValueError, match="padding_idx 10 must be within"):
        nn.Embedding(10, 3, padding_idx=10)


@pytest.mark.parametrize("num_classes", [-1, 6])
def test_one_hot_matches_torch(num_classes):
    idx = np.array([[0, 4], [2, 1]], dtype=np.int64)
    out = F.one_hot(nx.tensor(idx), num_classes)
    assert_close(out, torch.nn.functional.one_hot(torch.tensor(idx), num_classes), 0, 0)


def test_one_hot_bad_inputs():
    with pytest.raises(IndexError, match="one_hot: index 3 out of range for 3 classes"):
        F.one_hot(nx.tensor([0, 3]), 3)
    with pytest.raises(TypeError, match="one_hot: expected integer indices, got float32"):
        F.one_hot(nx.tensor([0.0]))


# ---- a small model end to end -------------------------------------------------------------


def test_mlp_with_every_layer_kind_matches_torch():
    torch.manual_seed(0)

    def build(lib):
        return lib.Sequential(lib.Linear(6, 8), lib.BatchNorm1d(8), lib.GELU(), lib.Dropout(0.5),
                              lib.Linear(8, 8), lib.LayerNorm(8), lib.ELU(), lib.Linear(8, 3),
                              lib.LogSoftmax(dim=1))

    th = build(torch.nn).eval()  # eval: dropout off on both sides
    model = build(nn).eval()
    compare_layer(model, th, _data((5, 6)), fwd=NORM_FWD, grad=NORM_GRAD)
    assert math.isclose(float(model(nx.randn(2, 6)).exp().sum().item()), 2.0, rel_tol=1e-5)
