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
        with caplog.at_level(logging.INFO, logger="neurenix.compile"):
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
        with caplog.at_level(logging.INFO, logger="neurenix.compile"):
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


def test_inputs_no_gradient_reaches_keep_no_gradient(backend):
    """An argument or parameter the differentiated outputs do not depend on gets no `.grad`
    (it got zeros, which an optimizer with weight decay then moved), as eagerly and in
    PyTorch; so does an input reached only from an output that took no gradient."""
    def f(a, b):
        return a * 2, b * 3

    cf = neurenix.compile(f, backend=backend)
    for fn in (f, cf):
        a, b = _leaf(1.0), _leaf(1.0)
        fn(a, b)[0].sum().backward()
        np.testing.assert_array_equal(a.grad.numpy(), [2.0])
        assert b.grad is None
        a, b = _leaf(1.0), _leaf(1.0)
        first, second = fn(a, b)
        with pytest.raises(RuntimeError, match="allow_unused"):
            neurenix.autograd.grad(first.sum(), [a, b])
        first, second = fn(a, b)
        assert neurenix.autograd.grad(first.sum(), [a, b], allow_unused=True)[1] is None

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    neurenix.manual_seed(0)
    eager, net = Net(), Net()
    net.load_state_dict(eager.state_dict())
    model = neurenix.compile(net, backend=backend)
    x = neurenix.ones(4, 3)
    for m, owner in ((eager, eager), (model, net)):
        opt = optim.SGD(owner.parameters(), lr=0.1, weight_decay=0.5)
        for _ in range(2):
            opt.zero_grad()
            m(x).sum().backward()
            opt.step()
        assert owner.unused.weight.grad is None
    for pe, pc in zip(eager.parameters(), net.parameters()):
        np.testing.assert_allclose(pc.detach().numpy(), pe.detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_zero_grad_without_none_keeps_stepping_a_frozen_parameter(opt_name, backend):
    """`zero_grad(set_to_none=False)` leaves zeros in a gradient the backward then does not
    reach (a layer frozen between steps): the optimizer still steps it (weight decay,
    momentum, Adam's count), eagerly, compiled and in PyTorch alike."""
    def make(model, opt, lib):
        def step(x):
            opt.zero_grad(set_to_none=False)
            (model(x) ** 2).mean().backward()
            opt.step()
        return step

    def optimizer(lib, params):
        if opt_name == "sgd":
            return lib.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)
        return lib.optim.Adam(params, lr=0.1)

    neurenix.manual_seed(0)
    eager = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net.load_state_dict(eager.state_dict())
    tm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    tm.load_state_dict({k: torch.tensor(v.numpy()) for k, v in eager.state_dict().items()})
    steps = [make(eager, optimizer(neurenix, eager.parameters()), neurenix),
             neurenix.compile(make(net, optimizer(neurenix, net.parameters()), neurenix),
                              backend=backend),
             make(tm, optimizer(torch, tm.parameters()), torch)]
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    for i in range(4):
        if i == 2:  # freeze the first layer
            for m in (eager, net, tm):
                m[0].weight.requires_grad_(False)
        steps[0](neurenix.tensor(x))
        steps[1](neurenix.tensor(x))
        steps[2](torch.tensor(x))
        want = tm[0].weight.detach().numpy()
        for m in (eager, net):
            np.testing.assert_allclose(m[0].weight.detach().numpy(), want, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(m[0].weight.grad.numpy() != 0, i < 2)


def test_detach_and_data_of_a_captured_tensor_are_read_every_call(backend):
    """`w.detach()` and `w.data` in a traced function read w's value at each call (they
    were constants of the trace holding its value when traced)."""
    w = neurenix.zeros(3)
    f = neurenix.compile(lambda x: x * w.detach() + w.data, backend=backend)
    x = neurenix.randn(3)
    for shift in (0.0, 1.0, -2.5):
        with neurenix.no_grad():
            w.fill_(shift)
        np.testing.assert_allclose(f(x).numpy(), x.numpy() * shift + shift, rtol=1e-6)
    assert f.cache_size == 1


def test_tensor_copies_of_traced_and_captured_tensors(backend):
    """`neurenix.tensor(t)` inside a compiled function copies t's value at each call (it
    raised an internal AttributeError for an argument and baked a captured tensor's traced
    value in); writing into the copy leaves t alone, as eagerly."""
    w = neurenix.ones(3)

    def f(x):
        c = neurenix.tensor(x)
        c.add_(1.0)
        return x * neurenix.tensor(w) + c + neurenix.tensor(w, dtype=neurenix.float64).sum()

    cf = neurenix.compile(f, backend=backend)
    x = neurenix.tensor(np.arange(3, dtype=np.float32))
    for shift in (0.0, 2.0):
        with neurenix.no_grad():
            w.add_(shift)
        got, want = cf(x), f(x)
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(x.numpy(), [0, 1, 2])


def test_detach_cuts_the_gradient_and_writes_through_data_reach_the_parameter(backend):
    """Inside one compiled call: the detached use of a parameter takes no gradient (as in
    PyTorch), and an in-place update through `.data` or `detach()` updates the parameter on
    every call, as eager's shared storage does."""
    def make(p):
        def f(x):
            loss = (p * x).sum() + (p.detach() * x * x).sum()
            loss.backward()
            with neurenix.no_grad():
                p.data.mul_(0.5)
                p.detach().add_(1.0)
            return loss
        return f

    start = np.array([1.0, -2.0, 3.0], np.float32)
    pe = neurenix.tensor(start, requires_grad=True)
    pc = neurenix.tensor(start, requires_grad=True)
    pt = torch.tensor(start, requires_grad=True)
    eager, compiled = make(pe), neurenix.compile(make(pc), backend=backend)
    for i in range(3):
        x = neurenix.tensor(np.arange(3, dtype=np.float32) + i)
        xt = torch.tensor(x.numpy())
        want, got = eager(x), compiled(x)
        lt = (pt * xt).sum() + (pt.detach() * xt * xt).sum()
        lt.backward()
        with torch.no_grad():
            pt.data.mul_(0.5)
            pt.detach().add_(1.0)
        np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(got.numpy(), lt.detach().numpy(), rtol=1e-6)
        for p in (pe, pc):
            np.testing.assert_allclose(p.detach().numpy(), pt.detach().numpy(), rtol=1e-6)
            np.testing.assert_allclose(p.grad.numpy(), pt.grad.numpy(), rtol=1e-6)


def test_a_weight_average_updated_inside_the_step_follows_the_weights(backend):
    """An EMA of the weights and a hand-written L2 term, both reading `p.detach()` inside a
    compiled training step, follow the weights the step itself updates."""
    def make(model, ema):
        opt = optim.SGD(model.parameters(), lr=0.5)

        def step(x, y):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            with neurenix.no_grad():
                for p, e in zip(model.parameters(), ema.parameters()):
                    p.grad.add_(p.detach() * 0.01)
                    e.copy_(e * 0.9 + p.data * 0.1)
            opt.step()
            return loss
        return step

    neurenix.manual_seed(0)
    models = [nn.Linear(4, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    emas = [nn.Linear(4, 3) for _ in range(2)]
    emas[1].load_state_dict(models[0].state_dict())
    emas[0].load_state_dict(models[0].state_dict())
    eager = make(models[0], emas[0])
    compiled = neurenix.compile(make(models[1], emas[1]), backend=backend)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = neurenix.tensor(rng.standard_normal((5, 4)).astype(np.float32))
        y = neurenix.tensor(rng.standard_normal((5, 3)).astype(np.float32))
        eager(x, y)
        compiled(x, y)
        for a, b in zip([*models[0].parameters(), *emas[0].parameters()],
                        [*models[1].parameters(), *emas[1].parameters()]):
            np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-5,
                                       atol=1e-6)


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


# ---- 3. value errors are raised after the call, before any state is written back ------------

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


# ---- writes inside a compiled function ----------------------------------------------------------

def test_assignment_into_a_captured_tensor_is_replayed_every_call(backend):
    buf = neurenix.zeros(3)

    def f(x):
        buf[0] = buf[0] + 1.0
        return x + buf
    cf = neurenix.compile(f, backend=backend)
    for step in range(1, 4):
        np.testing.assert_array_equal(cf(neurenix.zeros(3)).numpy(), [step, 0, 0])
        np.testing.assert_array_equal(buf.numpy(), [step, 0, 0])  # never left symbolic
    assert cf.cache_size == 1


def test_assignment_into_a_module_buffer_counts_every_call(backend):
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", neurenix.zeros(1))

        def forward(self, x):
            self.count[0] = self.count[0] + 1
            return x * 2
    m = Counter()
    f = neurenix.compile(m, backend=backend)
    for _ in range(3):
        f(neurenix.ones(2))
    np.testing.assert_array_equal(m.count.numpy(), [3.0])
    np.testing.assert_array_equal(m(neurenix.ones(2)).numpy(), [2.0, 2.0])  # eager still works


def test_assignment_into_an_argument_changes_the_callers_tensor(backend):
    def f(x):
        x[0] = 100.0
        return x * 2
    x, xe = neurenix.tensor([1.0, 2.0]), neurenix.tensor([1.0, 2.0])
    np.testing.assert_array_equal(neurenix.compile(f, backend=backend)(x).numpy(),
                                  f(xe).numpy())
    np.testing.assert_array_equal(x.numpy(), xe.numpy())


def test_in_place_arithmetic_on_an_argument_and_a_captured_tensor(backend):
    acc = neurenix.zeros(2)

    def f(t, s):
        s += t
        acc.add_(t)
        return s * 2
    cf = neurenix.compile(f, backend=backend)
    s = neurenix.zeros(2)
    outs = [cf(neurenix.ones(2), s).numpy() for _ in range(2)]
    np.testing.assert_array_equal(outs, [[2, 2], [4, 4]])
    np.testing.assert_array_equal(s.numpy(), [2, 2])
    np.testing.assert_array_equal(acc.numpy(), [2, 2])


ALIASED_CALLS = {
    "same_tensor_twice": lambda buf: (buf, buf),
    "overlapping_views": lambda buf: (buf[1:], buf[:-1]),
    "view_and_base": lambda buf: (buf[1], buf),
    "transposed_and_base": lambda buf: (buf.reshape(2, 2).T, buf.reshape(2, 2)),
}


@pytest.mark.parametrize("call", ALIASED_CALLS)
def test_arguments_sharing_memory_with_a_write_in_place_give_eagers_answer(call, backend,
                                                                           caplog):
    """The program takes each argument as its own input; when a written one shares memory
    with another, the call runs eagerly (and says so), as PyTorch computes it."""
    def f(lib):
        def w(x, y):
            x.add_(1.0)
            return x * y
        return w

    results = []
    for lib, fn in ((torch, f(torch)), (neurenix, f(neurenix)),
                    (neurenix, neurenix.compile(f(neurenix), backend=backend))):
        buf = lib.tensor(np.arange(4.0, dtype=np.float32))
        with caplog.at_level(logging.INFO, logger="neurenix.compile"):
            out = fn(*ALIASED_CALLS[call](buf))
        results.append((out.numpy(), buf.numpy()))
    for got in results[1:]:
        np.testing.assert_array_equal(got[0], results[0][0])
        np.testing.assert_array_equal(got[1], results[0][1])
    assert "eagerly for this call" in caplog.text and "share memory" in caplog.text


def test_an_argument_sharing_memory_with_a_captured_tensor_written_in_place(backend):
    total = neurenix.zeros(3)

    def f(x):
        total.add_(1.0)
        return x * 2
    cf = neurenix.compile(f, backend=backend)
    np.testing.assert_array_equal(cf(neurenix.ones(3)).numpy(), [2, 2, 2])  # compiled
    np.testing.assert_array_equal(cf(total[:]).numpy(), [4, 4, 4])  # eager: reads total after
    np.testing.assert_array_equal(total.numpy(), [2, 2, 2])
    np.testing.assert_array_equal(cf(neurenix.ones(3)).numpy(), [2, 2, 2])
    np.testing.assert_array_equal(total.numpy(), [3, 3, 3])


def test_an_expanded_argument_written_in_place_raises_eagers_error(backend):
    def f(x):
        x.add_(1.0)
        return x.sum()
    cf = neurenix.compile(f, backend=backend)
    assert float(cf(neurenix.zeros(2, 3)).item()) == 6.0
    base = neurenix.zeros(1, 3)
    with pytest.raises(RuntimeError, match="single memory location"):
        f(base.expand(2, 3))
    with pytest.raises(RuntimeError, match="single memory location"):
        cf(base.expand(2, 3))
    np.testing.assert_array_equal(base.numpy(), [[0, 0, 0]])


def test_arguments_that_share_no_memory_run_compiled(backend, caplog):
    def w(x, y):
        x.add_(1.0)
        return x * y
    cw = neurenix.compile(w, backend=backend)
    buf = neurenix.tensor(np.arange(4.0, dtype=np.float32))
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        out = cw(buf[:2], buf[2:])  # two views of one array: may share, so eagerly
        np.testing.assert_array_equal(out.numpy(), [2, 6])
        caplog.clear()
        out = cw(neurenix.zeros(2), neurenix.ones(2))
    np.testing.assert_array_equal(out.numpy(), [1, 1])
    assert "eagerly" not in caplog.text


def test_outputs_that_are_inputs_are_the_callers_objects(backend):
    """An argument or captured tensor returned as it is comes back as that object (a later
    write into it shows, as eagerly), a tensor returned twice as one object, and gradients
    through them are eager's; they were fresh copies."""
    w = neurenix.ones(2)

    def f(x, y):
        y.add_(1.0)
        z = x * 2
        return x, y, z, z, w

    cf = neurenix.compile(f, backend=backend)
    for fn in (f, cf):
        x = neurenix.tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
        y = neurenix.zeros(2)
        out = fn(x, y)
        assert out[0] is x and out[1] is y and out[2] is out[3] and out[4] is w
        np.testing.assert_array_equal(y.numpy(), [1, 1])
        (out[0].sum() + out[2].sum() * 3).backward()
        np.testing.assert_array_equal(x.grad.numpy(), [7, 7])


def test_views_of_inputs_returned_are_views_of_the_callers_tensors(backend):
    """A view of an argument or captured tensor returned (a slice, a transpose, a reshape,
    an expand) views the caller's tensor, as eagerly: a later write into it shows, and
    gradients flow through it to the input; they were copies."""
    w = neurenix.tensor(np.arange(4, dtype=np.float32).reshape(2, 2))

    def f(x):
        x.add_(1.0)
        return x[1:], x.T, x.reshape(-1), w.T, x[0].expand(3, 2)

    cf = neurenix.compile(f, backend=backend)
    results = []
    for fn in (f, cf):
        x = neurenix.tensor(np.zeros((2, 2), np.float32))
        out = fn(x)
        with neurenix.no_grad():
            x[1, 0] = 100.0
            w[0, 1] = -7.0
        results.append([o.numpy().copy() for o in out])
        with neurenix.no_grad():
            w[0, 1] = 1.0
    for got, want in zip(results[1], results[0]):
        np.testing.assert_array_equal(got, want)
    assert results[0][0][0, 0] == 100.0 and results[0][3][1, 0] == -7.0

    def g(x):
        return x.T, x * 2

    for fn in (g, neurenix.compile(g, backend=backend)):
        leaf = neurenix.tensor(np.ones((2, 2), np.float32), requires_grad=True)
        out = fn(leaf)
        (out[0] * neurenix.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
        np.testing.assert_array_equal(leaf.grad.numpy(), [[1, 3], [2, 4]])


def test_a_returned_detached_view_of_a_parameter_takes_no_gradient(backend):
    """`p.detach()` (a view of p) returned comes back as a view of p that does not require
    grad, as eagerly; `p.T` returned requires it."""
    lin = nn.Linear(3, 2)
    cf = neurenix.compile(lambda: (lin.weight.detach(), lin.weight.T), backend=backend)
    for fn in (lambda: (lin.weight.detach(), lin.weight.T), cf):
        detached, transposed = fn()
        assert not detached.requires_grad and transposed.requires_grad
        with neurenix.no_grad():
            lin.weight.mul_(2.0)
        np.testing.assert_array_equal(detached.numpy(), lin.weight.detach().numpy())


def test_a_write_through_a_view_reaches_its_base():
    """Once refused; now followed as eager follows it (tests/test_view_writes.py)."""
    def f(x):
        y = x * 1
        y.view(2, 2)[0, 0] = 9.0
        return y
    want = f(neurenix.ones(4)).numpy()
    np.testing.assert_array_equal(want, [9, 1, 1, 1])
    np.testing.assert_array_equal(neurenix.compile(f)(neurenix.ones(4)).numpy(), want)


def test_repeated_indices_keep_the_last_value_as_pytorch(backend):
    def g(x, v):
        y = x * 1
        y[neurenix.tensor([1, 1, 1])] = v
        return y
    x = neurenix.arange(4.0)
    v = neurenix.tensor([5.0, 6.0, 7.0], requires_grad=True)
    for fn in (g, neurenix.compile(g, backend=backend)):
        np.testing.assert_array_equal(fn(x, v).detach().numpy(), [0, 7, 2, 3])
    tx = torch.arange(4.0)
    tx[torch.tensor([1, 1, 1])] = torch.tensor([5.0, 6.0, 7.0])
    np.testing.assert_array_equal(tx.numpy(), [0, 7, 2, 3])


def test_enable_grad_inside_a_call_made_under_no_grad(backend):
    def h(x):
        with neurenix.enable_grad():
            return (x * 2).sum()
    x = neurenix.ones(2, requires_grad=True)
    with neurenix.no_grad():
        out = neurenix.compile(h, backend=backend)(x)
    assert out.requires_grad and h(x).requires_grad
    out.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])


def test_two_optimizer_steps_in_one_compiled_function(backend):
    eager, model = _siamese(), _siamese()

    def make(net):
        opt = optim.SGD(net.parameters(), lr=0.1)

        def two_steps(x):
            for _ in range(2):
                opt.zero_grad()
                loss = (net(x) ** 2).mean()
                loss.backward()
                opt.step()
            return loss
        return two_steps
    x = neurenix.randn(4, 4)
    want = make(eager)(x)
    got = neurenix.compile(make(model), backend=backend)(x)
    np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)
    for pe, pc in zip(eager.parameters(), model.parameters()):
        np.testing.assert_allclose(pc.detach().numpy(), pe.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)


INNER_STEPS = {
    "adam": (lambda ps: optim.Adam(ps, lr=0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
    "adamw_amsgrad": (lambda ps: optim.AdamW(ps, lr=0.01, amsgrad=True),
                      lambda ps: torch.optim.AdamW(ps, lr=0.01, amsgrad=True)),
    "adagrad_lr_decay": (lambda ps: optim.Adagrad(ps, lr=0.1, lr_decay=0.5),
                         lambda ps: torch.optim.Adagrad(ps, lr=0.1, lr_decay=0.5)),
    "rmsprop": (lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5),
                lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5)),
}


@pytest.mark.parametrize("name", INNER_STEPS)
def test_several_steps_of_a_counting_optimizer_in_one_call(name, backend):
    """Each of three `opt.step()`s in one compiled call uses its own step number (Adam's
    bias corrections, Adagrad's decayed lr), as eagerly and in PyTorch (all three steps
    once used the number of the first)."""
    make_nx, make_torch = INNER_STEPS[name]

    def make(model, opt):
        def three_steps(x, y):
            for _ in range(3):
                opt.zero_grad()
                loss = ((model(x) - y) ** 2).mean()
                loss.backward()
                opt.step()
            return loss
        return three_steps

    neurenix.manual_seed(0)
    eager, model = nn.Linear(4, 2), nn.Linear(4, 2)
    model.load_state_dict(eager.state_dict())
    tm = torch.nn.Linear(4, 2)
    tm.load_state_dict({k: torch.tensor(v.numpy()) for k, v in eager.state_dict().items()})
    oe, oc = make_nx(eager.parameters()), make_nx(model.parameters())
    ot = make_torch(tm.parameters())
    steps = (make(eager, oe), neurenix.compile(make(model, oc), backend=backend), make(tm, ot))
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal((8, 4)).astype(np.float32)
        y = rng.standard_normal((8, 2)).astype(np.float32)
        steps[0](neurenix.tensor(x), neurenix.tensor(y))
        steps[1](neurenix.tensor(x), neurenix.tensor(y))
        steps[2](torch.tensor(x), torch.tensor(y))
        want = tm.weight.detach().numpy()
        for net in (eager, model):
            np.testing.assert_allclose(net.weight.detach().numpy(), want, rtol=1e-5,
                                       atol=1e-6)
    assert oc.state[model.weight]["step"] == oe.state[eager.weight]["step"] == 9


def test_keyword_only_and_var_keyword_arguments(backend):
    def f(x, *, scale=1.0, **kw):
        return x * scale + kw.get("shift", 0.0)
    cf = neurenix.compile(f, backend=backend)
    x = neurenix.ones(2)
    np.testing.assert_array_equal(cf(x, scale=2.0).numpy(), [2, 2])
    np.testing.assert_array_equal(cf(x, scale=3.0, shift=neurenix.ones(2)).numpy(), [4, 4])
    np.testing.assert_array_equal(cf(x).numpy(), [1, 1])


# ---- what the code reads from outside its arguments --------------------------------------------

class _Config:
    scale = 2.0


W = neurenix.ones(3)


def test_globals_attributes_defaults_and_objects_read_are_guarded(backend):
    global W
    x = neurenix.ones(3)
    f = neurenix.compile(lambda t: t * W * _Config.scale, backend=backend)
    f(x)
    try:
        W = neurenix.full((3,), 3.0)  # a global tensor rebound
        np.testing.assert_array_equal(f(x).numpy(), [6, 6, 6])
        _Config.scale = 5.0  # a class attribute
        np.testing.assert_array_equal(f(x).numpy(), [15, 15, 15])
    finally:
        W, _Config.scale = neurenix.ones(3), 2.0

    def g(t, s=1.0):
        return t * s
    cg = neurenix.compile(g, backend=backend)
    cg(x)
    g.__defaults__ = (4.0,)
    np.testing.assert_array_equal(cg(x).numpy(), [4, 4, 4])

    class Opts:
        pass
    opts = Opts()
    opts.t = neurenix.ones(3)
    ch = neurenix.compile(lambda t, o: t * o.t, backend=backend)
    ch(x, opts)
    opts.t = neurenix.full((3,), 7.0)  # an attribute of an object argument
    np.testing.assert_array_equal(ch(x, opts).numpy(), [7, 7, 7])


MAX_NORM = 1.0


def _scaled(t):
    return t * SCALE * _Config.scale


def _clip(model):
    nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)


def test_globals_read_by_helper_functions_are_guarded(backend, caplog):
    """A global (or an attribute chain from one) read by a function the compiled function
    calls, not by its own code, is guarded as its own reads are: a change recompiles."""
    global SCALE, MAX_NORM
    cf = neurenix.compile(lambda t: _scaled(t) + 1, backend=backend)
    x = neurenix.ones(3)
    np.testing.assert_array_equal(cf(x).numpy(), [5, 5, 5])
    try:
        SCALE = 3.0
        with caplog.at_level(logging.INFO, logger="neurenix.compile"):
            np.testing.assert_array_equal(cf(x).numpy(), [7, 7, 7])
        assert "_scaled" in caplog.text and "SCALE" in caplog.text
        _Config.scale = 5.0
        np.testing.assert_array_equal(cf(x).numpy(), [16, 16, 16])
        assert cf.cache_size == 3
        np.testing.assert_array_equal(cf(x).numpy(), [16, 16, 16])
        assert cf.cache_size == 3  # nothing changed: no recompile

        def make(model):
            opt = optim.SGD(model.parameters(), lr=0.1)

            def step(x):
                opt.zero_grad()
                (model(x) ** 2).sum().backward()
                _clip(model)
                opt.step()
            return step

        neurenix.manual_seed(0)
        eager, net = nn.Linear(3, 2), nn.Linear(3, 2)
        net.load_state_dict(eager.state_dict())
        steps = make(eager), neurenix.compile(make(net), backend=backend)
        for norm in (1.0, 0.01, 0.01):
            MAX_NORM = norm
            for step in steps:
                step(neurenix.ones(4, 3))
            for pe, pc in zip(eager.parameters(), net.parameters()):
                np.testing.assert_allclose(pc.detach().numpy(), pe.detach().numpy(),
                                           rtol=1e-5, atol=1e-7)
    finally:
        SCALE, MAX_NORM, _Config.scale = 2.0, 1.0, 2.0


def test_module_function_attribute_and_class_attribute_are_guarded(backend):
    class M(nn.Module):
        k = 2.0

        def __init__(self):
            super().__init__()
            self.act = neurenix.relu

        def forward(s, t):  # noqa: N805 - not named self on purpose
            return s.act(t) * s.k
    m = M()
    f = neurenix.compile(m, backend=backend)
    x = -neurenix.ones(2)
    f(x)
    m.act = neurenix.tanh
    np.testing.assert_allclose(f(x).numpy(), m(x).numpy(), rtol=1e-6)
    M.k = 3.0
    np.testing.assert_allclose(f(x).numpy(), m(x).numpy(), rtol=1e-6)


def test_python_side_effects_in_a_traced_function_are_refused():
    class Count(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, t):
            self.calls += 1
            return t
    m = Count()
    with pytest.raises(neurenix.compiler.trace.TraceError, match="Count.calls 0 -> 1"):
        neurenix.compile(m)(neurenix.ones(2))
    assert m.calls == 0  # put back

    lin = nn.Linear(2, 1)
    opt = optim.SGD(lin.parameters(), lr=0.1)
    sched = optim.lr_scheduler.StepLR(opt, 1, 0.5)

    def with_scheduler(t):
        opt.zero_grad()
        lin(t).sum().backward()
        opt.step()
        sched.step()
    with pytest.raises(neurenix.compiler.trace.TraceError, match="StepLR.step"):
        neurenix.compile(with_scheduler)(neurenix.ones(1, 2))

    def with_lr(t):
        opt.param_groups[0]["lr"] *= 0.5
        return lin(t)
    with pytest.raises(neurenix.compiler.trace.TraceError, match="lr 0.1 -> 0.05"):
        neurenix.compile(with_lr)(neurenix.ones(1, 2))
    assert opt.param_groups[0]["lr"] == 0.1


# ---- in-place arithmetic, eagerly -------------------------------------------------------------

def test_in_place_operators_change_the_tensor_itself():
    m = nn.Linear(2, 1)
    m(neurenix.ones(1, 2)).sum().backward()
    w = m.weight.detach().numpy().copy()
    with neurenix.no_grad():
        for p in m.parameters():
            p -= 0.1 * p.grad  # the manual SGD update
    np.testing.assert_allclose(m.weight.detach().numpy(), w - 0.1 * m.weight.grad.numpy())
    assert m.weight.requires_grad
    a = neurenix.ones(2)
    b = a
    a += 1
    np.testing.assert_array_equal(b.numpy(), [2, 2])
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        leaf = neurenix.ones(2, requires_grad=True)
        leaf += 1
    with pytest.raises(TypeError, match="can't be cast"):
        i = neurenix.tensor([1, 2])
        i += 0.5
    x = neurenix.ones(2, requires_grad=True)
    y = x * 2
    y *= 3
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [6, 6])
