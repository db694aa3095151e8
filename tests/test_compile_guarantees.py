"""Compiled equals eager: the cases that once gave silently wrong answers (issue 7).

Each test runs the same program eagerly and compiled (both backends) and, where PyTorch has
the same program, against PyTorch too: gradients of repeated calls, state the trace read and
the user changed afterwards, errors that depend on values, and outputs detached inside.
"""
import logging

import numpy as np
import pytest
import torch

import neurenix
from neurenix import nn, optim


@pytest.fixture(params=["reference", "llvm"])
def backend(request):
    return request.param


def _leaf(value):
    return neurenix.tensor([float(value)], requires_grad=True)


# ---- 1. every compiled call owns its backward --------------------------------------------------

ORDERS = {
    "sum_of_both": lambda f, b, c: (f(b) + f(c)).sum().backward(),
    "later_first": lambda f, b, c: _two_backwards(f, b, c, later_first=True),
    "earlier_first": lambda f, b, c: _two_backwards(f, b, c, later_first=False),
}


def _two_backwards(f, b, c, later_first):
    ob, oc = f(b), f(c)
    for out in ((oc, ob) if later_first else (ob, oc)):
        out.sum().backward()


@pytest.mark.parametrize("order", ORDERS)
def test_two_calls_before_backward_give_each_input_its_own_gradient(order, backend):
    cf = neurenix.compile(lambda x: x * x, backend=backend)
    xb, xc = _leaf(1), _leaf(3)
    ORDERS[order](cf, xb, xc)
    tb = torch.tensor([1.0], requires_grad=True)
    tc = torch.tensor([3.0], requires_grad=True)
    ORDERS[order](lambda x: x * x, tb, tc)
    np.testing.assert_array_equal(xb.grad.numpy(), tb.grad.numpy())
    np.testing.assert_array_equal(xc.grad.numpy(), tc.grad.numpy())
    assert cf.cache_size == 1


def test_fresh_inputs_after_an_earlier_call_get_their_gradients(backend):
    cf = neurenix.compile(lambda x: (x * 2.0).sum(), backend=backend)
    cf(_leaf(5)).backward()
    x = _leaf(1)
    cf(x).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0])


def _siamese(seed=0):
    neurenix.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def test_siamese_network_and_micro_batches_match_eager_and_pytorch(backend):
    eager, model = _siamese(), _siamese()
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    twin.load_state_dict({k: torch.tensor(v.numpy()) for k, v in eager.state_dict().items()})
    f = neurenix.compile(model, backend=backend)
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((5, 4)).astype(np.float32) for _ in range(3))

    def run(net, wrap):
        x, y, z = wrap(a), wrap(b), wrap(c)
        ((net(x) - net(y)) ** 2).sum().backward()  # one loss through two calls
        net(z).sum().backward()  # a micro-batch accumulated on top
    run(eager, neurenix.Tensor)
    run(f, neurenix.Tensor)
    run(twin, torch.tensor)
    for (name, pe), pc, pt in zip(eager.named_parameters(), model.parameters(),
                                  twin.parameters()):
        np.testing.assert_allclose(pe.grad.numpy(), pt.grad.numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=name)
        np.testing.assert_allclose(pc.grad.numpy(), pe.grad.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_backward_twice_through_one_call_accumulates_as_eager(backend):
    cf = neurenix.compile(lambda x: (x * x).sum(), backend=backend)
    x, xe = _leaf(3), _leaf(3)
    out, oute = cf(x), (xe * xe).sum()
    for _ in range(2):
        out.backward(retain_graph=True)
        oute.backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad.numpy(), xe.grad.numpy())


# ---- 2. what the trace read is guarded ----------------------------------------------------------

def _bn_dropout_model():
    neurenix.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 2))


@pytest.mark.parametrize("wrap", ["module", "function"])
def test_train_eval_switch_between_calls_recompiles(wrap, backend, caplog):
    model = _bn_dropout_model()
    f = neurenix.compile(model if wrap == "module" else (lambda a: model(a)), backend=backend)
    x = neurenix.randn(8, 4)
    with neurenix.no_grad():
        f(x)
        model.eval()
        with caplog.at_level(logging.WARNING, logger="neurenix.compile"):
            got = f(x)
        np.testing.assert_allclose(got.numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
        assert "training True -> False" in caplog.text
        model.train()
        f(x)
        model.eval()
        np.testing.assert_allclose(f(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert f.cache_size == 2


def _step(model, opt):
    def step(x):
        opt.zero_grad()
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
        return loss
    return step


def test_frozen_parameter_in_a_compiled_step_stops_moving(backend):
    eager, compiled = _siamese(), _siamese()
    eager_step = _step(eager, optim.SGD(eager.parameters(), lr=0.1, momentum=0.9))
    step = neurenix.compile(_step(compiled, optim.SGD(compiled.parameters(), lr=0.1,
                                                      momentum=0.9)), backend=backend)
    x = neurenix.randn(5, 4)
    for i in range(4):
        if i == 2:
            eager[0].weight.requires_grad_(False)
            compiled[0].weight.requires_grad_(False)
        eager_step(x)
        step(x)
        for pe, pc in zip(eager.parameters(), compiled.parameters()):
            np.testing.assert_allclose(pc.detach().numpy(), pe.detach().numpy(), rtol=1e-5,
                                       atol=1e-6)
    assert step.cache_size == 2


def test_replaced_layer_and_parameter_are_used(backend):
    model = _siamese()
    f = neurenix.compile(lambda a: model(a), backend=backend)
    x = neurenix.randn(3, 4)
    with neurenix.no_grad():
        f(x)
        model[2] = nn.Linear(8, 3)
        np.testing.assert_allclose(f(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
        model[0].weight = nn.Parameter(neurenix.randn(8, 4))
        np.testing.assert_allclose(f(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert f.cache_size == 3


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.alpha = 1.0
        self.mode = "linear"
        self.lin = nn.Linear(4, 4)

    def forward(self, a):
        y = self.lin(a) * self.alpha
        return y if self.mode == "linear" else y.tanh()


def test_python_attributes_read_in_forward_are_guarded(backend, caplog):
    m = _Scaled()
    f = neurenix.compile(m, backend=backend)
    x = neurenix.randn(2, 4)
    with neurenix.no_grad():
        f(x)
        m.alpha = 100
        with caplog.at_level(logging.WARNING, logger="neurenix.compile"):
            np.testing.assert_allclose(f(x).numpy(), m(x).numpy(), rtol=1e-5, atol=1e-6)
        assert "alpha 1.0 -> 100" in caplog.text
        m.mode = "tanh"
        np.testing.assert_allclose(f(x).numpy(), m(x).numpy(), rtol=1e-5, atol=1e-6)
        m.alpha = 100.0  # an int and a float of the same value are different keys
        np.testing.assert_allclose(f(x).numpy(), m(x).numpy(), rtol=1e-5, atol=1e-6)


SCALE = 2.0


def test_closure_and_global_numbers_are_guarded(backend):
    global SCALE
    k = 3.0
    f = neurenix.compile(lambda a: a * k + SCALE, backend=backend)
    x = neurenix.randn(4)
    np.testing.assert_allclose(f(x).numpy(), x.numpy() * 3 + 2, rtol=1e-5, atol=1e-6)
    k = 5.0
    np.testing.assert_allclose(f(x).numpy(), x.numpy() * 5 + 2, rtol=1e-5, atol=1e-6)
    try:
        SCALE = -1.0
        np.testing.assert_allclose(f(x).numpy(), x.numpy() * 5 - 1, rtol=1e-5, atol=1e-6)
    finally:
        SCALE = 2.0


def test_captured_tensor_changed_in_place_is_read_every_call(backend):
    c = neurenix.ones(4)
    f = neurenix.compile(lambda a: a + c, backend=backend)
    x = neurenix.randn(4)
    f(x)
    c.copy_(neurenix.full((4,), 5.0))
    np.testing.assert_allclose(f(x).numpy(), x.numpy() + 5, rtol=1e-5, atol=1e-6)
    c.fill_(-2.0)
    np.testing.assert_allclose(f(x).numpy(), x.numpy() - 2, rtol=1e-5, atol=1e-6)
    assert f.cache_size == 1  # an input, not a constant: no recompile
    c._data = np.zeros(3, np.float32)  # a new shape: recompiles (and broadcasting fails as eager)
    with pytest.raises(ValueError):
        f(x)


def test_captured_plain_tensor_attribute_replaced_is_used(backend):
    class Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.offset = neurenix.ones(3)  # a plain attribute, not a buffer

        def forward(self, a):
            return a + self.offset

    m = Shift()
    f = neurenix.compile(m, backend=backend)
    x = neurenix.randn(3)
    f(x)
    m.offset = neurenix.full((3,), 7.0)
    np.testing.assert_allclose(f(x).numpy(), x.numpy() + 7, rtol=1e-5, atol=1e-6)


def test_numpy_array_arguments_are_keyed_by_content(backend):
    f = neurenix.compile(lambda a, arr: a + neurenix.tensor(arr), backend=backend)
    x = neurenix.zeros(3000)
    arr = np.zeros(3000, np.float32)
    other = arr.copy()
    other[1500] = 1.0  # repr() of both arrays is the same truncated text
    assert repr(arr) == repr(other)
    assert f(x, arr).numpy()[1500] == 0.0
    assert f(x, other).numpy()[1500] == 1.0


def test_unhashable_argument_is_refused_clearly():
    f = neurenix.compile(lambda a, opts: a * 2)
    with pytest.raises(TypeError, match="argument 1 is a set"):
        f(neurenix.ones(2), {1, 2})


# ---- 3. value errors are raised after the call, state left as eager leaves it ---------------------

def _raises_alike(fn, args, error, match, backend):
    with pytest.raises(error, match=match) as eager:
        fn(*args)
    with pytest.raises(error) as compiled:
        neurenix.compile(fn, backend=backend)(*args)
    assert str(compiled.value) == str(eager.value)


EMBED = nn.Embedding(10, 3)
VALUE_ERRORS = {
    "embedding_past_end": (lambda i: EMBED(i), ([1, 12],), IndexError, "index 12 out of range"),
    "embedding_negative": (lambda i: EMBED(i), ([1, -1],), IndexError, "index -1 out of range"),
    "index_past_end": (lambda a, i: a[i] * 2, (np.ones((5, 2)), [0, 5]), IndexError,
                       "index 5 is out of bounds for dimension 0 with size 5"),
    "index_before_start": (lambda a, i: a[:, i], (np.ones((2, 5)), [-6]), IndexError,
                           "index -6 is out of bounds for dimension 1"),
    "one_hot": (lambda i: nn.functional.one_hot(i, 3), ([4],), IndexError,
                "index 4 out of range for 3 classes"),
    "cross_entropy_target": (lambda a, t: nn.CrossEntropyLoss()(a, t),
                             (np.zeros((3, 4)), [0, 4, 1]), ValueError, "target 4 is out"),
    "nll_target_negative": (lambda a, t: nn.NLLLoss()(a, t), (np.zeros((3, 4)), [0, -1, -100]),
                            ValueError, "target -1 is out of range for 4 classes"),
    "bce_input": (lambda a, t: nn.BCELoss()(a, t), (np.array([0.5, 1.5]), np.array([0.0, 1.0])),
                  ValueError, "probabilities in \\[0, 1\\], got 1.5"),
}


@pytest.mark.parametrize("case", VALUE_ERRORS)
def test_out_of_range_values_raise_eagers_error(case, backend):
    fn, raw, error, match = VALUE_ERRORS[case]
    args = tuple(neurenix.tensor(np.asarray(a, dtype=np.float32 if isinstance(a, np.ndarray)
                                            else np.int64)) for a in raw)
    _raises_alike(fn, args, error, match, backend)


def test_index_gradient_is_not_dropped_for_valid_indices(backend):
    x = neurenix.randn(5, 3, requires_grad=True)
    idx = neurenix.tensor([4, -1, 0])
    neurenix.compile(lambda a, i: a[i].sum(), backend=backend)(x, idx).backward()
    tx = torch.tensor(x.detach().numpy(), requires_grad=True)
    tx[torch.tensor([4, -1, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


def test_ignored_targets_outside_the_classes_are_allowed(backend):
    fn = lambda a, t: nn.CrossEntropyLoss(ignore_index=-100)(a, t)  # noqa: E731
    a, t = neurenix.randn(3, 4), neurenix.tensor([0, -100, 3])
    np.testing.assert_allclose(neurenix.compile(fn, backend=backend)(a, t).numpy(),
                               fn(a, t).numpy(), rtol=1e-5, atol=1e-6)


def test_failed_compiled_step_leaves_parameters_gradients_and_optimizer_untouched(backend):
    model = _siamese()
    opt = optim.Adam(model.parameters(), lr=0.01)
    crit = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss
    f = neurenix.compile(step, backend=backend)
    x = neurenix.randn(4, 4)
    f(x, neurenix.tensor([0, 1, 2, 1]))
    before = [p.detach().numpy().copy() for p in model.parameters()]
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    steps = [opt.state[p]["step"] for p in model.parameters()]
    with pytest.raises(ValueError, match="target 3 is out of range for 3 classes"):
        f(x, neurenix.tensor([0, 3, 2, 1]))
    for p, b, g, s in zip(model.parameters(), before, grads, steps):
        np.testing.assert_array_equal(p.detach().numpy(), b)
        np.testing.assert_array_equal(p.grad.numpy(), g)
        assert opt.state[p]["step"] == s
    f(x, neurenix.tensor([0, 1, 2, 1]))  # and the next good call goes on from there
    assert all(opt.state[p]["step"] == s + 1 for p, s in zip(model.parameters(), steps))


# ---- 7. detached outputs leave without a graph -------------------------------------------------

def test_detached_output_fed_back_trains_like_truncated_bptt(backend):
    neurenix.manual_seed(3)
    cell, cell_e = nn.Linear(4, 4), nn.Linear(4, 4)
    cell_e.load_state_dict(cell.state_dict())

    def step_with(layer):
        def step(x, h):
            h = (layer(x) + h).tanh()
            return h.sum(), h.detach()
        return step
    f = neurenix.compile(step_with(cell), backend=backend)
    eager = step_with(cell_e)
    h, he = neurenix.zeros(2, 4), neurenix.zeros(2, 4)
    for _ in range(3):
        x = neurenix.randn(2, 4)
        loss, h = f(x, h)
        loss_e, he = eager(x, he)
        assert not h.requires_grad and h.grad_fn is None
        loss.backward()
        loss_e.backward()
    np.testing.assert_allclose(cell.weight.grad.numpy(), cell_e.weight.grad.numpy(),
                               rtol=1e-5, atol=1e-6)
    assert f.cache_size == 1


def test_output_computed_under_no_grad_has_no_graph(backend):
    def fn(x):
        with neurenix.no_grad():
            y = x * 3
        return x * 2, y
    a, b = neurenix.compile(fn, backend=backend)(neurenix.randn(3, requires_grad=True))
    assert a.requires_grad and not b.requires_grad
