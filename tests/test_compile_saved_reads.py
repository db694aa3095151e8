"""A backward inside (or after) a compiled function that reads a value written in place since
it was used: eager autograd's answer, or eager's error (regressions: the trace kept every old
value, so a backward after `w.detach().mul_(0.5)` or a `no_grad` write gave a gradient where
eager raises "modified in place", and after `w.data.mul_(0.5)` the OLD weights' gradient
where eager and PyTorch use the new ones: a silent wrong answer)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from neurenix.compiler.trace import TraceError

import neurenix


def leaves():
    x = neurenix.Tensor(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    w = neurenix.Tensor(np.linspace(0.5, 2, 12, dtype=np.float32).reshape(3, 4),
                        requires_grad=True)
    return x, w


def write(w, how: str) -> None:
    if how == "data":
        w.data.mul_(0.5)
    elif how == "detach":
        w.detach().mul_(0.5)
    else:
        with neurenix.no_grad():
            w.mul_(0.5)


def step_inside(how: str):
    def step(x, w):
        loss = (x @ w).tanh().sum()
        write(w, how)
        loss.backward()
        return loss
    return step


def outcome(fn, *args):
    """(gradients of the leaves, None) or (None, the RuntimeError's message)."""
    try:
        fn(*args)
    except RuntimeError as e:
        return None, str(e)
    return [a.grad.numpy().copy() for a in args], None


@pytest.mark.parametrize("how", ["detach", "no_grad"])
def test_backward_inside_after_a_counted_write_raises_eagers_error(how):
    eager = outcome(step_inside(how), *leaves())
    compiled = outcome(neurenix.compile(step_inside(how)), *leaves())
    assert eager[1] is not None and "modified in place" in eager[1]
    assert compiled == (None, eager[1])


def test_backward_inside_after_a_data_write_reads_the_new_values_as_eager_and_torch():
    got, _ = outcome(neurenix.compile(step_inside("data")), *leaves())
    want, _ = outcome(step_inside("data"), *leaves())
    x, w = (torch.tensor(a.detach().numpy(), requires_grad=True) for a in leaves())
    loss = (x @ w).tanh().sum()
    w.data.mul_(0.5)
    loss.backward()
    for g, e, t in zip(got, want, (x.grad.numpy(), w.grad.numpy())):
        np.testing.assert_allclose(e, t, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_a_write_after_the_backward_is_no_error():
    def step(x, w):
        loss = (x @ w).sum()
        loss.backward()
        with neurenix.no_grad():
            w.sub_(0.1 * w.grad)
        return loss
    got, error = outcome(neurenix.compile(step), *leaves())
    want, _ = outcome(step, *leaves())
    assert error is None
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-6)


def test_in_place_ops_on_intermediates_keep_their_own_inputs():
    """`h.mul_(w)` reads h's old value for w's gradient, as eagerly (no error, same
    gradients): the write is not a write into what its own computation saved."""
    def step(x, w):
        h = x @ w
        h.mul_(h)
        h.add_(x.sum())
        loss = h.exp().mean()
        loss.backward()
        return loss
    got, error = outcome(neurenix.compile(step), *leaves())
    want, _ = outcome(step, *leaves())
    assert error is None
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-5)


def returns_stale(x):
    c = x * 1
    e = c[0].sin()
    c.mul_(3)
    return e, c.sum()


def test_output_differentiated_after_the_call_raises_when_its_backward_reads_a_stale_value():
    x = leaves()[0]
    e, _ = returns_stale(x)
    with pytest.raises(RuntimeError, match="modified in place") as eager_error:
        e.sum().backward()
    compiled = neurenix.compile(returns_stale)
    x = leaves()[0]
    e, s = compiled(x)
    with pytest.raises(RuntimeError) as raised:
        e.sum().backward()
    assert str(raised.value) == str(eager_error.value)
    # the other output's backward reads nothing stale: its gradient, as eagerly
    x = leaves()[0]
    _, s = compiled(x)
    s.backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 3), 3.0, np.float32))


def test_a_data_write_read_by_a_backward_after_the_call_is_refused():
    def f(x, scale):
        y = (x * scale).sum()
        scale.data.mul_(2)
        return y
    x = leaves()[0]
    scale = neurenix.Tensor(np.full(3, 2.0, np.float32))
    with pytest.raises(TraceError, match=r"\.data"):
        neurenix.compile(f)(x, scale)
