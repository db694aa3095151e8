"""Loss functions and modules against PyTorch: every option, forward and input gradients, NaN
propagation, the all-ignored edge case, and errors that name the loss and the shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from op_helpers import assert_close

import neurenix as nx
import neurenix.nn as nn
import neurenix.nn.functional as F

RTOL, ATOL = 1e-5, 1e-6


def _floats(shape, seed=0, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def _pair(value):
    """The same value as a Neurenix tensor and a torch tensor (None stays None)."""
    if value is None:
        return None, None
    return nx.tensor(value), torch.tensor(value)


def _check_loss(nx_fn, th_fn, x: np.ndarray, *rest: np.ndarray | None,
                grad_atol: float = ATOL):
    """Compare loss(x, *rest) forward and d/dx (through a random upstream gradient)."""
    xn = nx.tensor(x, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    pairs = [_pair(r) for r in rest]
    yn = nx_fn(xn, *(p[0] for p in pairs))
    yt = th_fn(xt, *(p[1] for p in pairs))
    assert_close(yn, yt, RTOL, ATOL, "loss")
    up = np.random.default_rng(7).standard_normal(tuple(yt.shape)).astype(np.float32)
    (yn * nx.tensor(up)).sum().backward()
    (yt * torch.tensor(up)).sum().backward()
    assert_close(xn.grad, xt.grad, RTOL, grad_atol, "input grad")
    return yn


# ---- regression -----------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,module", [("mse_loss", "MSELoss"), ("l1_loss", "L1Loss")])
def test_regression_losses_match_torch(name, module, reduction):
    x, t = _floats((4, 3, 2)), _floats((4, 3, 2), seed=1)
    _check_loss(lambda a, b: getattr(F, name)(a, b, reduction=reduction),
                lambda a, b: getattr(TF, name)(a, b, reduction=reduction), x, t)
    _check_loss(getattr(nn, module)(reduction=reduction),
                getattr(torch.nn, module)(reduction=reduction), x, t)


def test_regression_losses_propagate_nan():
    x, t = _floats((3, 2)), _floats((3, 2), seed=1)
    x[1, 0] = np.nan
    assert np.isnan(nn.MSELoss()(nx.tensor(x), nx.tensor(t)).item())
    per = nn.L1Loss(reduction="none")(nx.tensor(x), nx.tensor(t)).numpy()
    assert np.isnan(per).tolist() == [[False, False], [True, False], [False, False]]


# ---- cross entropy and NLL with class indices -----------------------------------------------

def _targets(shape, classes, seed=2, ignore=()):
    t = np.random.default_rng(seed).integers(0, classes, shape)
    for pos, value in ignore:
        t[pos] = value
    return t


WEIGHT = np.array([0.5, 2.0, 1.0, 0.25, 1.5], np.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index,ignored", [(-100, ((0,), -100)), (2, ((1,), 2))])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_class_indices_match_torch(reduction, weighted, ignore_index, ignored,
                                                 smoothing):
    x = _floats((6, 5))
    t = _targets((6,), 5, ignore=[ignored, ((3,), 2)])
    w = WEIGHT if weighted else None
    kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    _check_loss(lambda a, b, c: F.cross_entropy(a, b, c, **kw),
                lambda a, b, c: TF.cross_entropy(a, b, c, **kw), x, t, w)
    _check_loss(lambda a, b, c: nn.CrossEntropyLoss(c, **kw)(a, b),
                lambda a, b, c: torch.nn.CrossEntropyLoss(c, **kw)(a, b), x, t, w)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_k_dimensional_matches_torch(reduction, weighted, smoothing):
    x = _floats((2, 5, 3, 4))
    t = _targets((2, 3, 4), 5, ignore=[((0, 1, 2), -100), ((1, 0, 0), -100)])
    w = WEIGHT if weighted else None
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    _check_loss(lambda a, b, c: F.cross_entropy(a, b, c, **kw),
                lambda a, b, c: TF.cross_entropy(a, b, c, **kw), x, t, w)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_unbatched_and_int32_targets(reduction):
    x = _floats((5,))
    _check_loss(lambda a, b: F.cross_entropy(a, b, reduction=reduction),
                lambda a, b: TF.cross_entropy(a, b, reduction=reduction), x, np.array(3))
    out = _check_loss(lambda a, b: F.cross_entropy(a, b, reduction=reduction),
                      lambda a, b: TF.cross_entropy(a, b.long(), reduction=reduction),
                      _floats((4, 5)), np.array([0, 4, 1, 1], np.int32))
    assert out.dtype == nx.float32


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("shape", [(4, 5), (2, 5, 3), (5,)])
def test_cross_entropy_probability_targets_match_torch(reduction, weighted, smoothing, shape):
    x = _floats(shape)
    p = np.random.default_rng(3).dirichlet(np.ones(5), size=int(np.prod(shape)) // 5)
    p = np.moveaxis(p.reshape((-1,) + shape[2:] + (5,)), -1, 1).reshape(shape)
    w = WEIGHT if weighted else None
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    _check_loss(lambda a, b, c: F.cross_entropy(a, b, c, **kw),
                lambda a, b, c: TF.cross_entropy(a, b, c, **kw), x, p.astype(np.float32), w)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_all_ignored_targets_give_torch_results(weighted, smoothing):
    x = _floats((3, 5))
    t = np.full((3,), -100)
    w = WEIGHT if weighted else None
    for reduction in ("mean", "sum", "none"):
        kw = dict(reduction=reduction, label_smoothing=smoothing)
        xn = nx.tensor(x, requires_grad=True)
        xt = torch.tensor(x, requires_grad=True)
        wn, wt = _pair(w)
        yn = F.cross_entropy(xn, nx.tensor(t), wn, **kw)
        yt = TF.cross_entropy(xt, torch.tensor(t), wt, **kw)
        assert_close(yn, yt, RTOL, ATOL, reduction)
        if reduction == "mean":
            assert np.isnan(yn.item())  # 0 / 0, as in PyTorch
        else:
            yn.sum().backward()
            yt.sum().backward()
            assert_close(xn.grad, xt.grad, RTOL, ATOL, "grad")
            assert not xn.grad.numpy().any()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss_matches_torch(reduction, weighted):
    x = _floats((6, 5, 2), low=-4.0, high=0.0)
    t = _targets((6, 2), 5, ignore=[((2, 1), 4)])
    w = WEIGHT if weighted else None
    kw = dict(ignore_index=4, reduction=reduction)
    _check_loss(lambda a, b, c: F.nll_loss(a, b, c, **kw),
                lambda a, b, c: TF.nll_loss(a, b, c, **kw), x, t, w)
    _check_loss(lambda a, b, c: nn.NLLLoss(c, **kw)(a, b),
                lambda a, b, c: torch.nn.NLLLoss(c, **kw)(a, b), x, t, w)


def test_cross_entropy_nan_propagates_only_where_it_is():
    x = _floats((3, 4))
    x[1, 2] = np.nan
    per = F.cross_entropy(nx.tensor(x), nx.tensor([0, 1, 3]), reduction="none").numpy()
    assert np.isnan(per).tolist() == [False, True, False]
    assert np.isnan(F.cross_entropy(nx.tensor(x), nx.tensor([0, 1, 3])).item())
    # an ignored row contributes exactly 0, whatever its values
    ignored = F.cross_entropy(nx.tensor(x), nx.tensor([0, -100, 3])).item()
    want = TF.cross_entropy(torch.tensor(x), torch.tensor([0, -100, 3])).item()
    assert np.isfinite(ignored) and abs(ignored - want) <= 1e-6


# ---- binary cross entropy -------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight_shape", [None, (3,), (4, 3)])
def test_bce_matches_torch(reduction, weight_shape):
    x = _floats((4, 3), low=0.02, high=0.98)
    t = _floats((4, 3), seed=1, low=0.0, high=1.0)
    w = None if weight_shape is None else _floats(weight_shape, seed=2, low=0.5, high=2.0)
    _check_loss(lambda a, b, c: F.binary_cross_entropy(a, b, c, reduction=reduction),
                lambda a, b, c: TF.binary_cross_entropy(a, b, c, reduction=reduction),
                x, t, w)
    _check_loss(lambda a, b, c: nn.BCELoss(c, reduction=reduction)(a, b),
                lambda a, b, c: torch.nn.BCELoss(c, reduction=reduction)(a, b),
                x, t, w)


def test_bce_clamps_the_log_at_minus_100_like_torch():
    x = np.array([0.0, 1.0, 0.0, 1.0, 0.5], np.float32)
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.3], np.float32)
    out = F.binary_cross_entropy(nx.tensor(x), nx.tensor(t), reduction="none")
    want = TF.binary_cross_entropy(torch.tensor(x), torch.tensor(t), reduction="none")
    assert_close(out, want, RTOL, ATOL)
    assert out.numpy()[:2].tolist() == [100.0, 100.0]
    xn = nx.tensor(x, requires_grad=True)
    F.binary_cross_entropy(xn, nx.tensor(t)).backward()
    assert np.isfinite(xn.grad.numpy()).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pos_weighted", [False, True])
def test_bce_with_logits_matches_torch(reduction, weighted, pos_weighted):
    x = _floats((4, 3), low=-6.0, high=6.0)
    x[0, 0] = 0.0  # the kink of |x| in the stable form: the gradient must still be exact
    t = _floats((4, 3), seed=1, low=0.0, high=1.0)
    w = _floats((4, 1), seed=2, low=0.5, high=2.0) if weighted else None
    pw = np.array([0.5, 1.0, 3.0], np.float32) if pos_weighted else None
    _check_loss(lambda a, b, c, d: F.binary_cross_entropy_with_logits(
                    a, b, c, reduction=reduction, pos_weight=d),
                lambda a, b, c, d: TF.binary_cross_entropy_with_logits(
                    a, b, c, reduction=reduction, pos_weight=d), x, t, w, pw)
    _check_loss(lambda a, b, c, d: nn.BCEWithLogitsLoss(c, d, reduction)(a, b),
                lambda a, b, c, d: torch.nn.BCEWithLogitsLoss(c, reduction=reduction,
                                                              pos_weight=d)(a, b),
                x, t, w, pw)


def test_bce_with_logits_is_stable_for_huge_logits():
    x = np.array([-200.0, -50.0, 0.0, 50.0, 200.0], np.float32)
    t = np.array([1.0, 0.0, 1.0, 1.0, 0.0], np.float32)
    _check_loss(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="none"),
                lambda a, b: TF.binary_cross_entropy_with_logits(a, b, reduction="none"), x, t)
    x[2] = np.nan
    per = F.binary_cross_entropy_with_logits(nx.tensor(x), nx.tensor(t), reduction="none")
    assert np.isnan(per.numpy()).tolist() == [False, False, True, False, False]


# ---- modules: buffers and options -----------------------------------------------------------

def test_loss_weights_are_buffers_like_torch():
    w = nx.tensor(WEIGHT)
    for mine, theirs in [
        (nn.CrossEntropyLoss(w), torch.nn.CrossEntropyLoss(torch.tensor(WEIGHT))),
        (nn.NLLLoss(w), torch.nn.NLLLoss(torch.tensor(WEIGHT))),
        (nn.BCELoss(w), torch.nn.BCELoss(torch.tensor(WEIGHT))),
        (nn.BCEWithLogitsLoss(w, w), torch.nn.BCEWithLogitsLoss(
            torch.tensor(WEIGHT), pos_weight=torch.tensor(WEIGHT))),
        (nn.MSELoss(), torch.nn.MSELoss()),
        (nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()),
    ]:
        assert list(mine.state_dict()) == list(theirs.state_dict())
        assert list(mine.parameters()) == []
        assert repr(mine) == repr(theirs)
    ce = nn.CrossEntropyLoss(w).to(nx.float64)
    assert ce.weight.dtype == nx.float64


def test_spec_loss_example_runs():
    model = nn.Linear(10, 5)
    criterion = nn.CrossEntropyLoss()
    loss = criterion(model(nx.Tensor.randn((32, 10))), nx.Tensor.randint(0, 5, (32,)))
    assert loss.shape == () and loss.item() > 0
    loss.backward()
    assert model.weight.grad.shape == (5, 10)


# ---- errors ---------------------------------------------------------------------------------

def test_loss_errors_name_the_loss_and_the_shapes():
    x = nx.zeros(32, 5)
    with pytest.raises(ValueError, match=r"^MSELoss: input shape \(32, 5\) and target shape "
                                         r"\(32, 4\) differ$"):
        nn.MSELoss()(x, nx.zeros(32, 4))
    with pytest.raises(ValueError, match=r"l1_loss: input shape \(32, 5\) and target shape "
                                         r"\(32, 1\) differ"):
        F.l1_loss(x, nx.zeros(32, 1))
    with pytest.raises(TypeError, match=r"CrossEntropyLoss: expected integer class indices of "
                                        r"shape \(32,\) or class probabilities of shape "
                                        r"\(32, 5\), got float32 target of shape \(32,\)"):
        nn.CrossEntropyLoss()(x, nx.zeros(32))
    with pytest.raises(ValueError, match="^CrossEntropyLoss: target 7 is out of range for 5 "
                                         "classes"):
        nn.CrossEntropyLoss()(x, nx.tensor([7] + [0] * 31))
    with pytest.raises(ValueError, match="NLLLoss: target -1 is out of range for 5 classes"):
        nn.NLLLoss()(x, nx.tensor([0] * 31 + [-1]))
    with pytest.raises(TypeError, match=r"NLLLoss: expected integer class indices of shape "
                                        r"\(32,\), got float32"):
        nn.NLLLoss()(x, nx.zeros(32, 5))
    with pytest.raises(ValueError, match=r"cross_entropy: expected a target of shape \(32,\) "
                                         r"for input of shape \(32, 5\), got \(32, 1\)"):
        F.cross_entropy(x, nx.zeros(32, 1, dtype=nx.int64))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: weight must have shape \(5,\), "
                                         r"one per class, got \(4,\)"):
        nn.CrossEntropyLoss(nx.ones(4))(x, nx.zeros(32, dtype=nx.int64))
    with pytest.raises(ValueError, match="CrossEntropyLoss: label_smoothing must be in"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="BCELoss: input values must be probabilities in "
                                         r"\[0, 1\], got 1.5"):
        nn.BCELoss()(nx.tensor([0.5, 1.5]), nx.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"BCEWithLogitsLoss: pos_weight of shape \(4,\) does "
                                         r"not broadcast to the input shape \(32, 5\)"):
        nn.BCEWithLogitsLoss(pos_weight=nx.ones(4))(x, x)
    with pytest.raises(ValueError, match="L1Loss: reduction must be 'none', 'mean' or 'sum', "
                                         "got 'avg'"):
        nn.L1Loss(reduction="avg")
    with pytest.raises(TypeError, match="MSELoss: expected a floating-point input, got int64"):
        nn.MSELoss()(nx.tensor([1, 2]), nx.tensor([1, 2]))
    with pytest.raises(TypeError, match="CrossEntropyLoss: weight must be a Tensor or None"):
        nn.CrossEntropyLoss([1.0, 2.0])
