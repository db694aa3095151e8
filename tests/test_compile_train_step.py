"""`neurenix.compile` of a whole training step: forward, loss, backward and optimizer update.

Every case runs the same step eagerly and compiled on twin models and compares losses,
parameters, gradients and optimizer state after each step (eager autograd is the oracle).
"""
import logging

import numpy as np
import pytest
from neurenix.compiler.trace import TraceError

import neurenix
from neurenix import nn, optim

RNG = np.random.default_rng(7)


def _mlp(seed=0):
    neurenix.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _batch(n=5):
    x = neurenix.Tensor(RNG.standard_normal((n, 6)).astype(np.float32))
    y = neurenix.Tensor(RNG.integers(0, 3, n))
    return x, y


def _step_fn(model, opt, crit):
    def step(x, y):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def _assert_same(eager_model, compiled_model, atol=2e-6):
    for (name, a), b in zip(eager_model.named_parameters(), compiled_model.parameters()):
        np.testing.assert_allclose(b.numpy() if not b.requires_grad else b.detach().numpy(),
                                   a.detach().numpy(), atol=atol, rtol=1e-5, err_msg=name)
        if a.grad is not None:
            np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), atol=atol, rtol=1e-5,
                                       err_msg=f"{name}.grad")


OPTIMIZERS = [
    (optim.SGD, dict(lr=0.1), 1),
    (optim.SGD, dict(lr=0.1, momentum=0.9), 1),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), 1),
    # dampening: the first step creates the buffer differently; the second compiles again
    (optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5), 2),
    (optim.SGD, dict(lr=0.1, maximize=True), 1),
    (optim.Adam, dict(lr=0.01), 1),
    (optim.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True), 1),
    (optim.AdamW, dict(lr=0.01, weight_decay=0.1), 1),
    (optim.Adadelta, dict(lr=1.0, weight_decay=0.01), 1),
]


@pytest.mark.parametrize("opt_cls,kwargs,programs", OPTIMIZERS,
                         ids=[f"{o.__name__}-{'-'.join(k)}" for o, k, _ in OPTIMIZERS])
def test_compiled_training_step_matches_eager(opt_cls, kwargs, programs, backend):
    eager, compiled = _mlp(), _mlp()
    crit = nn.CrossEntropyLoss()
    eager_opt = opt_cls(eager.parameters(), **kwargs)
    compiled_opt = opt_cls(compiled.parameters(), **kwargs)
    eager_step = _step_fn(eager, eager_opt, crit)
    step = neurenix.compile(_step_fn(compiled, compiled_opt, crit), backend=backend)
    for _ in range(4):
        x, y = _batch()
        want = eager_step(x, y)
        got = step(x, y)
        assert not got.requires_grad
        np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)
        _assert_same(eager, compiled)
    assert step.cache_size == programs
    for pe, pc in zip(eager.parameters(), compiled.parameters()):
        se, sc = eager_opt.state.get(pe, {}), compiled_opt.state.get(pc, {})
        assert set(se) == set(sc)
        for key, value in se.items():
            if isinstance(value, neurenix.Tensor):
                np.testing.assert_allclose(sc[key].numpy(), value.numpy(), atol=1e-6, rtol=1e-5)
            else:
                assert sc[key] == value


@pytest.fixture(params=["reference", "llvm"])
def backend(request):
    return request.param


def test_learning_rate_schedule_is_read_every_call_without_recompiling(caplog):
    eager, compiled = _mlp(), _mlp()
    crit = nn.MSELoss()
    opts = [optim.SGD(m.parameters(), lr=0.2, momentum=0.5) for m in (eager, compiled)]
    scheds = [optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in opts]
    eager_step = _step_fn(eager, opts[0], crit)
    step = neurenix.compile(_step_fn(compiled, opts[1], crit))
    target = neurenix.Tensor(RNG.standard_normal((5, 3)).astype(np.float32))
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        for _ in range(4):
            x, _ = _batch()
            eager_step(x, target)
            step(x, target)
            for s in scheds:
                s.step()
            _assert_same(eager, compiled)
    assert step.cache_size == 1
    assert "recompiling" not in caplog.text


def test_changing_a_baked_in_hyperparameter_recompiles_and_says_which(caplog):
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = neurenix.compile(_step_fn(model, opt, nn.CrossEntropyLoss()))
    step(*_batch())
    opt.param_groups[0]["weight_decay"] = 0.01
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        step(*_batch())
    assert "group 0 weight_decay 0.0 -> 0.01" in caplog.text
    assert step.cache_size == 2


@pytest.mark.parametrize("make, key, values", [
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), "momentum", (0.9, 0.8, 0.95)),
    (lambda ps: optim.Adam(ps, lr=0.01), "betas", ((0.9, 0.999), (0.85, 0.999), (0.95, 0.999))),
    (lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5), "momentum", (0.5, 0.6, 0.7)),
], ids=["sgd", "adam", "rmsprop"])
def test_cycled_momentum_is_read_per_call(make, key, values):
    """OneCycleLR moves momentum / beta1 every step: read per call like the learning rate, so
    the step compiles once and follows eager."""
    eager, compiled = _mlp(), _mlp()
    compiled.load_state_dict(eager.state_dict())
    opts = make(eager.parameters()), make(compiled.parameters())
    crit = nn.CrossEntropyLoss()
    step = neurenix.compile(_step_fn(compiled, opts[1], crit))
    eager_step = _step_fn(eager, opts[0], crit)
    for value in values:
        for opt in opts:
            opt.param_groups[0][key] = value
        batch = _batch()
        np.testing.assert_allclose(step(*batch).item(), eager_step(*batch).item(), rtol=1e-5)
    _assert_same(eager, compiled)
    assert step.cache_size == 1


def test_gradient_accumulation_across_calls_matches_eager():
    """Without zero_grad the gradients of earlier calls are inputs of the next call."""
    eager, compiled = _mlp(), _mlp()
    crit = nn.CrossEntropyLoss()

    def accumulate(model):
        def step(x, y):
            loss = crit(model(x), y)
            loss.backward()
            return loss
        return step

    eager_step, step = accumulate(eager), neurenix.compile(accumulate(compiled))
    for _ in range(3):
        x, y = _batch()
        eager_step(x, y)
        step(x, y)
        _assert_same(eager, compiled)
    assert step.cache_size == 2  # the first call starts without gradients


def test_compiled_optimizer_step_alone_reads_eager_gradients():
    eager, compiled = _mlp(), _mlp()
    crit = nn.CrossEntropyLoss()
    opts = [optim.Adam(m.parameters(), lr=0.01) for m in (eager, compiled)]
    step = neurenix.compile(opts[1].step)
    for _ in range(3):
        x, y = _batch()
        for model, opt in zip((eager, compiled), opts):
            opt.zero_grad()
            crit(model(x), y).backward()
        opts[0].step()
        step()
        _assert_same(eager, compiled)
    assert step.cache_size == 1


def test_training_step_with_batchnorm_dropout_and_conv():
    def net():
        neurenix.manual_seed(3)
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.0),
                             nn.Linear(4 * 3 * 3, 2))

    eager, compiled = net(), net()
    crit = nn.CrossEntropyLoss()
    # SGD: the conv bias before batch norm gets a gradient of rounding noise only, which
    # Adam's normalisation would amplify into different steps
    opts = [optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (eager, compiled)]
    eager_step = _step_fn(eager, opts[0], crit)
    step = neurenix.compile(_step_fn(compiled, opts[1], crit))
    for _ in range(3):
        x = neurenix.Tensor(RNG.standard_normal((4, 2, 6, 6)).astype(np.float32))
        y = neurenix.Tensor(RNG.integers(0, 2, 4))
        np.testing.assert_allclose(step(x, y).numpy(), eager_step(x, y).detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
        _assert_same(eager, compiled, atol=1e-5)
    np.testing.assert_allclose(compiled[1].running_mean.numpy(),
                               eager[1].running_mean.numpy(), atol=1e-6)


def test_requires_grad_arguments_get_their_gradient():
    w = neurenix.Tensor(RNG.standard_normal((6, 3)).astype(np.float32))

    def f(x):
        loss = ((x @ w) ** 2).sum()
        loss.backward()
        return loss

    step = neurenix.compile(f)
    x = neurenix.randn(4, 6, requires_grad=True)
    step(x)
    expected = 2 * (x.detach().numpy() @ w.numpy()) @ w.numpy().T
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_no_grad_inside_a_compiled_forward_cuts_the_gradient_as_eager_does(backend):
    """A value computed under no_grad is a constant for autodiff of the traced graph."""
    lin = _mlp()

    def forward(x):
        h = lin(x)
        with neurenix.no_grad():
            scale = h.abs().mean()
        return (h * scale).sum()

    x = neurenix.randn(3, 6)
    neurenix.compile(forward, backend=backend)(x).backward()
    compiled_grads = [p.grad.numpy().copy() for p in lin.parameters()]
    lin.zero_grad()
    forward(x).backward()
    for got, p in zip(compiled_grads, lin.parameters()):
        np.testing.assert_allclose(got, p.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_backward_errors_inside_a_trace():
    model = _mlp()

    def vector_loss(x):
        model(x).backward()

    with pytest.raises(RuntimeError, match="implicitly created only for scalar outputs"):
        neurenix.compile(vector_loss)(neurenix.randn(2, 6))

    def detached(x):
        model(x).sum().detach().backward()

    with pytest.raises(RuntimeError, match="does not require grad"):
        neurenix.compile(detached)(neurenix.randn(2, 6))

    def higher_order(x):
        model(x).sum().backward(create_graph=True)

    with pytest.raises(TraceError, match="create_graph=True"):
        neurenix.compile(higher_order)(neurenix.randn(2, 6))


def test_a_failing_trace_leaves_gradients_and_state_as_they_were():
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.5)
    crit = nn.CrossEntropyLoss()
    x, y = _batch()
    crit(model(x), y).backward()
    before = [p.grad.numpy().copy() for p in model.parameters()]

    def step(x, y):
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()  # not traceable: raises after backward and step were traced

    with pytest.raises(TraceError, match="item"):
        neurenix.compile(step)(x, y)
    for p, g in zip(model.parameters(), before):
        assert p.grad._data is not None
        np.testing.assert_array_equal(p.grad.numpy(), g)
    assert all("momentum_buffer" not in s for s in opt.state.values())


def test_lstm_training_step_matches_eager():
    def net():
        neurenix.manual_seed(5)
        return nn.LSTM(4, 6, num_layers=2, batch_first=True)

    eager, compiled = net(), net()
    opts = [optim.SGD(m.parameters(), lr=0.1) for m in (eager, compiled)]

    def make(model, opt):
        def step(x):
            opt.zero_grad()
            out, _ = model(x)
            loss = (out ** 2).mean()
            loss.backward()
            opt.step()
            return loss
        return step

    eager_step, step = make(eager, opts[0]), neurenix.compile(make(compiled, opts[1]))
    for _ in range(2):
        x = neurenix.Tensor(RNG.standard_normal((3, 4, 4)).astype(np.float32))
        np.testing.assert_allclose(step(x).numpy(), eager_step(x).detach().numpy(), rtol=1e-5)
        _assert_same(eager, compiled, atol=1e-5)


def test_a_compiled_model_inside_a_compiled_step_is_traced_inline():
    eager, inner = _mlp(), _mlp()
    crit = nn.CrossEntropyLoss()
    opts = [optim.SGD(m.parameters(), lr=0.1) for m in (eager, inner)]
    eager_step = _step_fn(eager, opts[0], crit)
    step = neurenix.compile(_step_fn(neurenix.compile(inner), opts[1], crit))
    for _ in range(2):
        x, y = _batch()
        eager_step(x, y)
        step(x, y)
        _assert_same(eager, inner)
    assert step.cache_size == 1


@pytest.mark.parametrize("set_to_none, programs", [(True, 1), (False, 2)])
def test_module_zero_grad_inside_a_step_compiles_once(set_to_none, programs):
    """Module.zero_grad and Optimizer.zero_grad share one reset: inside a trace it assigns
    None without reading the old gradients, so no guard on them forces a recompile.  With
    set_to_none=False it zeroes the gradients that exist, as eagerly: whether they do is
    guarded, so the first call (none yet) and the later ones take a program each."""
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()

    def step(x, y):
        model.zero_grad(set_to_none=set_to_none)
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss

    compiled = neurenix.compile(step)
    for _ in range(3):
        compiled(*_batch())
    assert compiled.cache_size == programs
    assert all(p.grad is not None for p in model.parameters())
