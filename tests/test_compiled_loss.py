"""A classification loss applied to a compiled module's output runs as a cached program.

In the ordinary training loop (`cmodel = neurenix.compile(model)`, an eager loss, backward,
step) the eager `CrossEntropyLoss` cost more than the model's own programs; applied to the
output of a compiled call it now runs compiled (`nn.functional.loss._after_compiled`).  It
must give eager's loss, gradients and errors; anywhere else the loss stays eager.
"""
from __future__ import annotations

import numpy as np
import pytest

import neurenix
from neurenix import nn
from neurenix.autograd import OutputNode
from neurenix.nn.functional import loss as loss_module

RNG = np.random.default_rng(11)


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    models = []
    for _ in range(2):
        neurenix.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 5)))
    return models[0], models[1]


def _compiled_node(t: neurenix.Tensor) -> bool:
    return type(t._node) is OutputNode and t._node.parent.name == "compiled_backward"


@pytest.mark.parametrize("kwargs", [{}, {"reduction": "sum"}, {"reduction": "none"},
                                    {"label_smoothing": 0.1}, {"ignore_index": 2}])
def test_loss_after_a_compiled_model_matches_eager(kwargs):
    compiled_model, eager_model = _pair()
    cmodel = neurenix.compile(compiled_model)
    crit = nn.CrossEntropyLoss(**kwargs)
    x = neurenix.Tensor(RNG.standard_normal((7, 6)).astype(np.float32))
    y = neurenix.Tensor(RNG.integers(0, 5, 7))
    got = crit(cmodel(x), y)
    want = crit(eager_model(x), y)
    assert _compiled_node(got)  # the loss itself is a compiled call's output
    assert not _compiled_node(want)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-6,
                               atol=1e-7)
    got.sum().backward()
    want.sum().backward()
    for p, q in zip(compiled_model.parameters(), eager_model.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_nll_after_a_compiled_log_softmax_matches_eager():
    compiled_model, eager_model = _pair(1)
    cmodel = neurenix.compile(lambda x: compiled_model(x).log_softmax(1))
    x = neurenix.Tensor(RNG.standard_normal((4, 6)).astype(np.float32))
    y = neurenix.Tensor(RNG.integers(0, 5, 4))
    got = nn.functional.nll_loss(cmodel(x), y)
    want = nn.functional.nll_loss(eager_model(x).log_softmax(1), y)
    assert _compiled_node(got)
    np.testing.assert_allclose(got.item(), want.item(), rtol=1e-6)


def test_an_out_of_range_class_raises_eagers_error():
    compiled_model, eager_model = _pair()
    cmodel = neurenix.compile(compiled_model)
    crit = nn.CrossEntropyLoss()
    x = neurenix.Tensor(RNG.standard_normal((3, 6)).astype(np.float32))
    bad = neurenix.Tensor(np.array([0, 9, 1]))
    with pytest.raises(ValueError) as eager:
        crit(eager_model(x), bad)
    with pytest.raises(ValueError) as compiled:
        crit(cmodel(x), bad)
    assert str(compiled.value) == str(eager.value)
    assert "target 9 is out of range for 5 classes" in str(compiled.value)


def test_the_loss_stays_eager_elsewhere():
    compiled_model, eager_model = _pair()
    cmodel = neurenix.compile(compiled_model)
    x = neurenix.Tensor(RNG.standard_normal((3, 6)).astype(np.float32))
    y = neurenix.Tensor(np.array([0, 4, 1]))
    weighted = nn.CrossEntropyLoss(weight=neurenix.Tensor(np.arange(1, 6, dtype=np.float32)))
    assert not _compiled_node(weighted(cmodel(x), y))  # class weights: eager
    assert not _compiled_node(nn.CrossEntropyLoss()(eager_model(x), y))  # an eager model
    with neurenix.no_grad():
        out = nn.CrossEntropyLoss()(cmodel(x), y)
    assert out._node is None  # no gradient wanted: eager
    soft = neurenix.Tensor(np.full((3, 5), 0.2, dtype=np.float32))
    assert not _compiled_node(nn.CrossEntropyLoss()(cmodel(x), soft))  # probabilities


def test_one_program_per_setting_and_shape():
    compiled_model, _ = _pair()
    cmodel = neurenix.compile(compiled_model)
    crit = nn.CrossEntropyLoss(label_smoothing=0.05)
    before = set(loss_module._COMPILED)
    for n in (4, 4, 6):
        x = neurenix.Tensor(RNG.standard_normal((n, 6)).astype(np.float32))
        crit(cmodel(x), neurenix.Tensor(RNG.integers(0, 5, n))).backward()
    (key,) = set(loss_module._COMPILED) - before
    assert loss_module._COMPILED[key].cache_size == 2  # batch 4 and batch 6
