"""Differential tests of shape-polymorphic compiled programs (issue 13): a dynamic program must
give what eager Neurenix (and PyTorch, where the op exists there) gives, for every size, and
must not recompile for sizes >= 2 when nothing in the function depends on the size.

The tests at the end are minimal repros of bugs adversarial testing found, kept as
regression tests.
"""
import copy
import logging

import numpy as np
import pytest

import neurenix
import neurenix.nn.functional as F
from neurenix import nn

torch = pytest.importorskip("torch")


def _rand(*shape, seed=0):
    rng = np.random.default_rng([seed, *shape])
    return neurenix.tensor(rng.standard_normal(shape).astype(np.float32))


def _ints(high, shape, seed=0):
    rng = np.random.default_rng([seed + 1, *shape])
    return neurenix.tensor(rng.integers(0, high, shape))


def _programs(f):
    return sum(len(v) for v in f._cache.values())


def _np(t):
    return t.detach().numpy()


def _close(got, want, tol=1e-5):
    got, want = _np(got), _np(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _leaves(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _leaves(o)]
    return [out]


def _same_everywhere(fn, make, sizes=(3, 7, 2, 64, 5), dynamic=True, tol=1e-5):
    """Run `fn` compiled and eagerly on `make(n)` for each size; return the compiled fn."""
    cf = neurenix.compile(fn, dynamic=dynamic)
    for n in sizes:
        args = make(n)
        for got, want in zip(_leaves(cf(*args)), _leaves(fn(*args))):
            _close(got, want, tol)
    return cf


# ---- forward: one program for every size >= 2 ---------------------------------------------

W5 = _rand(5, seed=99).abs() + 0.1
FORWARD = {
    "elementwise": (lambda x: (x * 2 - 1).relu().sum(1), lambda n: [_rand(n, 4)]),
    "view_minus_one": (lambda x: x.view(-1) * 2, lambda n: [_rand(n, 4)]),
    "reshape_n_times_4": (lambda x: x.reshape(x.shape[0] * 4) + 1, lambda n: [_rand(n, 4)]),
    "view_n_minus_one": (lambda x: x.view(x.shape[0], -1).sum(1), lambda n: [_rand(n, 2, 3)]),
    "flatten": (lambda x: x.flatten() * 3, lambda n: [_rand(n, 2, 3)]),
    "gram": (lambda x: x.t() @ x, lambda n: [_rand(n, 3)]),
    "outer": (lambda x: x @ x.t(), lambda n: [_rand(n, 3)]),
    "mean0": (lambda x: x.mean(0), lambda n: [_rand(n, 3)]),
    "var0": (lambda x: x.var(0), lambda n: [_rand(n, 3)]),
    "std0": (lambda x: x.std(0), lambda n: [_rand(n, 3)]),
    "mean_all": (lambda x: x.mean(), lambda n: [_rand(n, 3)]),
    "softmax0": (lambda x: x.softmax(0), lambda n: [_rand(n, 3)]),
    "logsumexp0": (lambda x: x.logsumexp(0), lambda n: [_rand(n, 3)]),
    "argmax0": (lambda x: x.argmax(0), lambda n: [_rand(n, 3)]),
    "argmax_all": (lambda x: x.argmax(), lambda n: [_rand(n, 3)]),
    "amax1": (lambda x: x.amax(1), lambda n: [_rand(n, 3)]),
    "cumsum0": (lambda x: x.cumsum(0), lambda n: [_rand(n, 3)]),
    "cat0": (lambda x: neurenix.cat([x, x * 2], 0), lambda n: [_rand(n, 3)]),
    "stack0": (lambda x: neurenix.stack([x, x * 2], 0), lambda n: [_rand(n, 3)]),
    "permute": (lambda x: x.permute(2, 0, 1).reshape(2, -1), lambda n: [_rand(n, 3, 2)]),
    "tril": (lambda x: (x @ x.t()).tril(), lambda n: [_rand(n, 3)]),
    "pad_dynamic_axis": (lambda x: F.pad(x, (0, 0, 1, 2)), lambda n: [_rand(n, 3)]),
    "bmm": (lambda x, y: x @ y, lambda n: [_rand(n, 5, 16), _rand(n, 16, 9)]),
    "size_as_number": (lambda x: ((x - x.mean(0)) ** 2).sum(0) / (x.shape[0] - 1) + x.shape[0],
                       lambda n: [_rand(n, 3)]),
    "int_floordiv_size": (lambda x: x // x.shape[0],
                          lambda n: [neurenix.tensor(np.arange(n * 3).reshape(n, 3))]),
    "two_independent_sizes": (lambda x, y: x.sum(0) + y.sum(0),
                              lambda n: [_rand(n, 3), _rand(2 * n + 1, 3)]),
    "one_hot": (lambda i: F.one_hot(i, 5).float().sum(0), lambda n: [_ints(5, (n,))]),
    "gather_static_axis": (lambda x, i: x.gather(1, i), lambda n: [_rand(n, 3), _ints(3, (n, 2))]),
    "cross_entropy_all_options": (
        lambda x, y: F.cross_entropy(x, y, weight=W5, ignore_index=1, label_smoothing=0.2),
        lambda n: [_rand(n, 5), _ints(5, (n,))]),
    "kl_div_batchmean": (lambda x, y: F.kl_div(x.log_softmax(1), y.softmax(1),
                                               reduction="batchmean"),
                         lambda n: [_rand(n, 5), _rand(n, 5, seed=1)]),
}


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_forward_matches_eager_with_one_program(name):
    fn, make = FORWARD[name]
    cf = _same_everywhere(fn, make)
    assert _programs(cf) == 1, cf.stats().get("dynamic")


def test_broadcast_n1_with_1n_declared():
    cf = _same_everywhere(lambda x, y: x + y, lambda n: [_rand(n, 1), _rand(1, n + 1)],
                          dynamic={"x": {0: None}, "y": {1: None}})
    assert _programs(cf) == 1


def test_matmul_schedules_across_trace_sizes():
    w = _rand(64, 48, seed=5)

    def f(x, y):
        return (x @ w).softmax(1).sum(0), x.t() @ y

    for traced in (2, 300):
        cf = _same_everywhere(f, lambda n: [_rand(n, 64), _rand(n, 17)],
                              sizes=(traced, 3, 17, 65, 1000, 2), tol=1e-4)
        assert _programs(cf) == 1


def test_memory_plan_with_n_squared_and_4n_temporaries():
    def f(x):
        g = x @ x.t()
        b = neurenix.cat([(x * 2).view(-1), x.view(-1).exp()], 0)
        return (g.softmax(1) @ x).sum(1) * b.view(x.shape[0], 8).mean(1)

    for traced in (2, 300):
        cf = _same_everywhere(f, lambda n: [_rand(n, 4)], sizes=(traced, 3, 4, 5, 100, 2),
                              tol=1e-4)
        assert _programs(cf) == 1


# ---- losses against PyTorch ----------------------------------------------------------------

LOSSES = {
    "ce": lambda m, x, y, w: m.cross_entropy(x, y),
    "ce_weight_ignore_smooth": lambda m, x, y, w: m.cross_entropy(
        x, y, weight=w, ignore_index=1, label_smoothing=0.2),
    "nll_weight": lambda m, x, y, w: m.nll_loss(x.log_softmax(1), y, weight=w),
    "kl_batchmean": lambda m, x, y, w: m.kl_div(x.log_softmax(1), (x * 0.5).softmax(1),
                                                reduction="batchmean"),
    "bce": lambda m, x, y, w: m.binary_cross_entropy(x.sigmoid(), (x * 0.3).sigmoid()),
    "mse": lambda m, x, y, w: m.mse_loss(x, x.tanh()),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_value_and_grad_match_torch(name):
    loss = LOSSES[name]
    w = np.abs(np.random.default_rng(1).standard_normal(5)).astype(np.float32) + 0.1
    cf = neurenix.compile(lambda x, y: loss(F, x, y, neurenix.tensor(w)), dynamic=True)
    for n in (3, 7, 64, 2):
        rng = np.random.default_rng(n)
        xa, ya = rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 5, n)
        x = neurenix.tensor(xa)
        x.requires_grad = True
        out = cf(x, neurenix.tensor(ya))
        out.backward()
        xt = torch.tensor(xa, requires_grad=True)
        ref = loss(torch.nn.functional, xt, torch.tensor(ya), torch.tensor(w))
        ref.backward()
        np.testing.assert_allclose(_np(out), ref.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert _programs(cf) == 1


# ---- modules: outputs, gradients, buffers --------------------------------------------------


def _module_check(model, make, sizes=(5, 2, 9, 64), train=True, dynamic=True, tol=1e-4):
    model.train(train)
    ref = copy.deepcopy(model)
    cm = neurenix.compile(model, dynamic=dynamic)
    for n in sizes:
        args = make(n)
        got, want = _leaves(cm(*args)), _leaves(ref(*args))
        sum((o * o).sum() for o in got if o.dtype.is_floating).backward()
        sum((o * o).sum() for o in want if o.dtype.is_floating).backward()
        for a, b in zip(got, want):
            _close(a, b, tol)
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=tol, atol=tol,
                                       err_msg=name)
        for (name, p), (_, q) in zip(model.named_buffers(), ref.named_buffers()):
            np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=tol, atol=tol, err_msg=name)
        model.zero_grad()
        ref.zero_grad()
    return cm


MODULES = {
    "mlp": (lambda: nn.Sequential(nn.Linear(5, 17), nn.GELU(), nn.Linear(17, 9),
                                  nn.LogSoftmax(1)), lambda n: [_rand(n, 5)], True),
    "conv_bn": (lambda: nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, stride=2), nn.BatchNorm2d(5),
                                      nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                                      nn.Linear(20, 6)), lambda n: [_rand(n, 3, 9, 9)], True),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                                     nn.Flatten()), lambda n: [_rand(n, 2, 9)], True),
    "batchnorm1d_train": (lambda: nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)),
                          lambda n: [_rand(n, 4)], True),
    "batchnorm1d_eval": (lambda: nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)),
                         lambda n: [_rand(n, 4)], False),
    "layernorm": (lambda: nn.Sequential(nn.Linear(5, 33), nn.LayerNorm(33), nn.Tanh()),
                  lambda n: [_rand(n, 5)], True),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), lambda n: [_rand(n, 4, 5)], True),
    "instancenorm_running": (lambda: nn.InstanceNorm1d(4, affine=True, track_running_stats=True),
                             lambda n: [_rand(n, 4, 5)], True),
    "dropout_eval": (lambda: nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5)),
                     lambda n: [_rand(n, 4)], False),
    "embedding": (lambda: nn.Embedding(10, 4), lambda n: [_ints(10, (n, 3))], True),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_forward_backward_buffers(name):
    make_model, make, train = MODULES[name]
    neurenix.manual_seed(0)
    cm = _module_check(make_model(), make, train=train)
    assert _programs(cm) == 1, cm.stats().get("dynamic")


def test_batch_size_equal_to_a_feature_width_needs_no_program_of_its_own():
    neurenix.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    cm = _module_check(model, lambda n: [_rand(n, 4)], sizes=(3, 8, 5, 4))
    assert _programs(cm) == 1, cm.stats()["dynamic"]


def test_backward_of_interleaved_calls_of_different_sizes():
    neurenix.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 3))
    ref = copy.deepcopy(m)
    cm = neurenix.compile(m, dynamic=True)
    xs = [_rand(n, 4) for n in (3, 500, 2, 1000, 7)]
    outs = [cm(x) for x in xs]  # every forward first: a later call must not clobber saved values
    for o in reversed(outs):
        (o ** 2).sum().backward()
    for x in xs:
        (ref(x) ** 2).sum().backward()
    for p, q in zip(m.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-4, atol=1e-4)
    assert _programs(cm) == 1


def test_lstm_with_tuple_state_automatic_dynamic():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(4, 6, batch_first=True)

        def forward(self, x, hc):
            out, (h, c) = self.rnn(x, hc)
            return out.sum(1), h, c

    neurenix.manual_seed(0)
    _module_check(Net(), lambda n: [_rand(n, 5, 4), (_rand(1, n, 6), _rand(1, n, 6, seed=1))],
                  sizes=(3, 5, 8), dynamic=None)


def test_backward_through_inputs_that_need_grad():
    def f(x, w):
        return (x @ w).softmax(0) * x.var(0).sum()

    cf = neurenix.compile(f, dynamic={"x": {0: None}})
    w = _rand(4, 3, seed=3)
    for n in (3, 6, 2, 40):
        xa = _np(_rand(n, 4))
        x1, x2 = neurenix.tensor(xa), neurenix.tensor(xa)
        x1.requires_grad = x2.requires_grad = True
        g = _rand(n, 3, seed=9)
        (cf(x1, w) * g).sum().backward()
        (f(x2, w) * g).sum().backward()
        np.testing.assert_allclose(x1.grad.numpy(), x2.grad.numpy(), rtol=1e-4, atol=1e-5)
    assert _programs(cf) == 1


# ---- training steps ------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd_momentum": lambda p: neurenix.optim.SGD(p, lr=0.1, momentum=0.9),
    "sgd_nesterov_wd": lambda p: neurenix.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                                    weight_decay=0.01),
    "adam": lambda p: neurenix.optim.Adam(p, lr=0.01),
    "adamw": lambda p: neurenix.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


def _train(compiled, make_opt, batchnorm, dynamic, sizes):
    neurenix.manual_seed(0)
    layers = [nn.Linear(4, 16, bias=not batchnorm)]
    if batchnorm:  # no bias before BatchNorm: its gradient is 0 up to rounding, which Adam
        layers.append(nn.BatchNorm1d(16))  # would amplify into noise-sized steps
    model = nn.Sequential(*layers, nn.ReLU(), nn.Linear(16, 3))
    opt = make_opt(model.parameters())

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = neurenix.compile(step, dynamic=dynamic) if compiled else step
    losses = [float(fn(_rand(n, 4, seed=k), _ints(3, (n,), seed=k)))
              for k, n in enumerate(sizes)]
    state = [_np(p) for p in model.parameters()] + [_np(b) for b in model.buffers()]
    for s in opt.state.values():
        state += [_np(v) for v in s.values() if isinstance(v, neurenix.Tensor)]
    return losses, state, fn


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_training_steps_of_varying_batch_size(opt, batchnorm):
    sizes = (8, 8, 5, 13, 2, 64, 5)
    want, want_state, _ = _train(False, OPTIMIZERS[opt], batchnorm, True, sizes)
    got, got_state, fn = _train(True, OPTIMIZERS[opt], batchnorm, True, sizes)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert len(got_state) == len(want_state)
    for a, b in zip(got_state, want_state):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert _programs(fn) == 1


def test_training_step_automatic_dynamic_compiles_twice():
    sizes = (8, 8, 5, 13, 2, 64, 5)
    want, want_state, _ = _train(False, OPTIMIZERS["adam"], True, None, sizes)
    got, got_state, fn = _train(True, OPTIMIZERS["adam"], True, None, sizes)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_state, want_state):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert _programs(fn) == 2  # the static one for 8, then one for every size


# ---- caching, guards, bounds ---------------------------------------------------------------


def test_sizes_zero_and_one_after_a_symbolic_program():
    def f(x):
        return (x * 3).softmax(0).sum(1) + x.mean(0).sum()

    cf = neurenix.compile(f, dynamic=True)
    for n in (5, 1, 0, 2, 9, 1, 0):
        x = _rand(n, 3)
        _close(cf(x), f(x))
    assert _programs(cf) == 3


def test_declared_bounds_violated_fall_back_and_stay_correct():
    def f(x):
        return x.cumsum(0).mean(1)

    cf = neurenix.compile(f, dynamic={"x": {0: (4, 16)}})
    for n in (5, 16, 17, 100, 3, 2, 1, 8, 4):
        x = _rand(n, 3)
        _close(cf(x), f(x))
    assert _programs(cf) == 6  # one for 4..16, static for 17, 100, 3, 2, 1


def test_traced_outside_declared_bounds_is_static():
    f = lambda x: x.cumsum(0).mean(1)  # noqa: E731
    cf = neurenix.compile(f, dynamic={"x": {0: (2, 16)}})
    for n in (20, 5, 6, 30):
        x = _rand(n, 3)
        _close(cf(x), f(x))
    assert _programs(cf) == 3


def test_automatic_dynamic_second_size_then_no_more_compiles(caplog):
    f = lambda x: x.softmax(1).sum(1) * x.shape[0]  # noqa: E731
    cf = neurenix.compile(f)
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        for n in (6, 6, 9):
            _close(cf(_rand(n, 3)), f(_rand(n, 3)))
        assert "changed size" in caplog.text
        caplog.clear()
        for n in (2, 1000, 7, 6, 33):
            _close(cf(_rand(n, 3)), f(_rand(n, 3)))
    assert _programs(cf) == 2
    assert "recompiling" not in caplog.text


def test_duck_sizing_equal_at_trace_then_different():
    def f(x, y):
        return neurenix.cat([x, y], 0) * 2

    cf = neurenix.compile(f, dynamic=True)
    for n, m in ((4, 4), (5, 5), (4, 6), (3, 7), (9, 9), (2, 8)):
        x, y = _rand(n, 3), _rand(m, 3, seed=1)
        _close(cf(x, y), f(x, y))
    assert _programs(cf) == 2  # one with a shared symbol, one with two


def test_keyword_arguments():
    def f(x, y, *, scale=1.0):
        return x.sum(1) * scale + y.sum(1)

    cf = neurenix.compile(f, dynamic=True)
    for n in (3, 5, 9):
        x, y = _rand(n, 4), _rand(n, 2)
        _close(cf(y=y, x=x, scale=2.0), f(x, y, scale=2.0))
    assert _programs(cf) == 1


def test_dropout_in_training_draws_as_eager():
    fn = lambda x: F.dropout(x, 0.5, training=True)  # noqa: E731
    cf = neurenix.compile(fn, dynamic=True)
    for n in (4, 6, 9):
        x = neurenix.tensor(np.ones((n, 8), np.float32))
        neurenix.manual_seed(3)
        a = _np(cf(x))
        neurenix.manual_seed(3)
        np.testing.assert_array_equal(a, _np(fn(x)))
    assert _programs(cf) == 1


# ---- regressions: bugs adversarial testing found ------------------------------------------


@pytest.mark.parametrize("op", ["getitem", "index_select", "gather0"])
def test_tensor_index_on_a_dynamic_axis_falls_back_to_static_programs(op):
    fns = {"getitem": lambda x, i: x[i] * 2,
           "index_select": lambda x, i: x.index_select(0, i),
           "gather0": lambda x, i: x.gather(0, i.reshape(1, -1).expand(3, -1).t())}
    f = fns[op]
    cf = neurenix.compile(f, dynamic={"x": {0: None}})
    for n in (5, 7):
        x, i = _rand(n, 3), neurenix.tensor(np.array([n - 1, 0, -1 if op == "getitem" else 1]))
        _close(cf(x, i), f(x, i))
    if op != "gather0":  # an index out of range raises eager's error
        with pytest.raises(IndexError, match="with size 4"):
            cf(_rand(4, 3), neurenix.tensor(np.array([4, 0, 1])))


@pytest.mark.parametrize("op", ["view_minus_one", "mean", "pad", "cat"])
def test_a_backward_program_gets_sizes_no_input_carries(op):
    fns = {"view_minus_one": lambda x, y: x.view(-1) * 2,
           "mean": lambda x, y: x.mean(),
           "pad": lambda x, y: F.pad(x, (0, 0, 1, 2)) * 2,
           "cat": lambda x, y: neurenix.cat([x, y], 0)}
    f = fns[op]
    cf = neurenix.compile(f, dynamic=True)
    for n in (3, 5):
        xa, ya = _np(_rand(n, 4)), _np(_rand(n + 1, 4))
        x1, y1, x2, y2 = (neurenix.tensor(a) for a in (xa, ya, xa, ya))
        for t in (x1, y1, x2, y2):
            t.requires_grad = True
        cf(x1, y1).sum().backward()
        f(x2, y2).sum().backward()
        np.testing.assert_allclose(x1.grad.numpy(), x2.grad.numpy(), rtol=1e-5)


def test_an_argument_with_leading_dim_one_keeps_it_static_alone():
    f = lambda x, s: x * s  # noqa: E731
    cf = _same_everywhere(f, lambda n: [_rand(n, 4), _rand(1, 4)], sizes=(3, 5, 8))
    assert _programs(cf) == 1


def test_broadcasting_a_symbol_against_an_equal_size_guards():
    f = lambda x, b: x + b  # noqa: E731
    cf = _same_everywhere(f, lambda n: [_rand(n, 4), _rand(4)], sizes=(3, 5, 8))
    assert _programs(cf) == 1


def test_an_optional_tensor_argument_does_not_shift_declared_dims():
    def f(x, m=None, y=None):
        out = x.sum(1)
        if m is not None:
            out = out * m.sum()
        return out + y.sum(1)

    cf = neurenix.compile(f, dynamic={"x": {0: None}, "y": {0: None}})
    for n, use in ((3, False), (5, True), (9, False), (4, True)):
        x, y = _rand(n, 4), _rand(n, 2)
        m = _rand(1, 3) if use else None
        _close(cf(x, m, y), f(x, m, y))
    assert _programs(cf) == 2  # one for calls without m, one for calls with it
