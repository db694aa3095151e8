"""Writes through views (neurenix/view_writes.py and the trace's write-through): after
`z[1].mul_(3)` or `v = z[1]; v[0] = 1` the base `z` has the write in its values, in its
gradient and in compiled code, and views taken before the write see it, as in PyTorch.
Regressions: eager gradients ignored the write and an assignment into a view of a tensor
requiring grad did not reach its base; compiled code returned the base without the write.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from devices import needs_device
from kernel_switch import kernels
from test_compile_parity import check_compiled

import neurenix as nx
from neurenix.dispatch import apply


def _writes(lib, x, k: int):
    """Program k of the cases below on x (a neurenix or torch tensor): the values it returns."""
    z = x * 2
    if k == 0:
        z[1].mul_(3)
        return (z * z,)
    if k == 1:
        v = z[1]
        v[0] = 100.0
        return (z * z,)
    if k == 2:
        w = z[:, 0]
        z[1].mul_(3)
        return (w * 5,)
    if k == 3:
        w = z[:, 0]
        z[1].mul_(3)
        v = z[1]
        v[0] = 100.0
        return (z * z, w * 5)
    if k == 4:
        zt = z.t()
        zt[0].add_(x[:, 1])
        return (z * z,)
    if k == 5:
        r = z.reshape(6)
        r[2:4].mul_(x[0, :2])
        return (z * z, r)
    if k == 6:
        v = z[1]
        v += x[0]
        v[1:].mul_(x[1, 1:])
        return (z.sum(1), v)
    if k == 7:
        z[1].copy_(x[0] * 3)
        return (z * z,)
    if k == 8:
        z.copy_(x.flip(0) * 3)
        return (z * z,)
    if k == 9:
        z[1].zero_()
        z[0, 1:].fill_(7.0)
        return (z * 3,)
    raise ValueError(k)


CASES = range(10)


@pytest.mark.parametrize("k", CASES)
def test_eager_values_and_gradients_match_torch(k):
    data = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    x, tx = nx.tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    outs, touts = _writes(nx, x, k), _writes(torch, tx, k)
    for o, t in zip(outs, touts):
        np.testing.assert_allclose(o.detach().numpy(), t.detach().numpy())
    sum(o.sum() for o in outs).backward()
    sum(t.sum() for t in touts).backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy())


@pytest.mark.parametrize("k", CASES)
def test_compiled_equals_eager_and_torch_with_gradients(k):
    data = [np.arange(1, 7, dtype=np.float32).reshape(2, 3)]
    check_compiled(lambda x: _writes(nx, x, k), data,
                   torch_fn=lambda x: _writes(torch, x, k))


def test_compiled_writes_through_a_view_into_a_made_constant_and_a_captured_tensor():
    buffer = nx.zeros((2, 3))

    def f(a):
        z = nx.zeros((2, 3))
        z[1].add_(a[0])
        buffer[0].copy_(a[1])  # a view of a tensor that outlives the call
        return z

    a = nx.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    want = f(a).numpy()
    want_buffer = buffer.numpy().copy()
    buffer.zero_()
    got = nx.compile(f)(a).numpy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(buffer.numpy(), want_buffer)


def test_a_write_into_an_expanded_view_is_refused_when_compiled():
    def f(a):
        e = a[0:1].expand(3, 3)
        e.mul_(2)
        return e

    with pytest.raises(Exception, match="expanded view"):
        nx.compile(f)(nx.ones((2, 3)))


@pytest.mark.parametrize("seed", range(16))
def test_random_view_writes_eager_compiled_and_torch(seed):
    """Random sequences of views (rows, columns, transposes, reshapes, slices) and writes
    (in-place arithmetic with values computed from the input, assignments), then a loss over
    the base and every view taken: values and gradients, eager vs compiled vs torch."""
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(rng.integers(2, 6)):
        view = rng.choice(["row", "col", "trow", "flat", "block"])
        write = rng.choice(["mul", "add", "set", "setx", "copy", "zero", "fill", "clamp",
                            "masked"])
        steps.append((view, write, int(rng.integers(0, 3)), int(rng.integers(0, 4))))

    def program(x):
        z = x * 1.5 + 0.5
        views = []
        for view, write, i, j in steps:
            if view == "row":
                v = z[i % 3]
            elif view == "col":
                v = z[:, j]
            elif view == "trow":
                v = z.t()[j]
            elif view == "flat":
                v = z.reshape(12)[i * 2:i * 2 + 4]
            else:
                v = z[1:3, 1:3]
            if write == "mul":
                v.mul_(x.reshape(-1)[:v.shape[-1]] if v.ndim == 1 else x[:2, :2])
            elif write == "add":
                v.add_(x.sum() * 0.1)
            elif write == "set":
                v[0] = 2.5
            elif write == "setx":
                v[0] = x[0, 0] * 3
            elif write == "copy":
                v.copy_((x.reshape(-1)[:v.shape[-1]] if v.ndim == 1 else x[:2, :2]) * 0.5)
            elif write == "zero":
                v.zero_()
            elif write == "fill":
                v.fill_(1.25)
            elif write == "clamp":
                v.clamp_(-1.0, 1.5)
            else:
                v.masked_fill_(v > 1.0, 0.5)
            views.append(v)
        return (z,) + tuple(views)

    data = [rng.uniform(-2, 2, (3, 4)).astype(np.float32)]
    check_compiled(program, data, torch_fn=program)


def test_view_writes_on_a_device_match_the_cpu():
    needs_device("opencl")
    data = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    for k in CASES:
        x = nx.tensor(data, requires_grad=True)
        xd = nx.tensor(data).to("opencl").requires_grad_()
        outs, douts = _writes(nx, x, k), _writes(nx, xd, k)
        for o, d in zip(outs, douts):
            np.testing.assert_allclose(d.detach().cpu().numpy(), o.detach().numpy())
        sum(o.sum() for o in outs).backward()
        sum(d.sum() for d in douts).backward()
        np.testing.assert_allclose(xd.grad.cpu().numpy(), x.grad.numpy(), err_msg=str(k))


@pytest.mark.parametrize("write", [lambda e: e.mul_(2), lambda e: e.copy_(nx.zeros((2, 3))),
                                   lambda e: e.add_(1)], ids=["mul_", "copy_", "add_"])
def test_a_write_into_an_expanded_view_raises_eagerly_as_torch(write):
    """Regression: eager made a private copy and went on (the base never saw the write)."""
    e = nx.ones(3)[None].expand(2, 3)
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor "
                                           "refers to a single memory location"):
        write(e)
    with pytest.raises(RuntimeError, match="more than one element"):
        torch.ones(3)[None].expand(2, 3).mul_(2)


def _without_grad(write):
    with nx.no_grad():
        write()


@pytest.mark.parametrize("make, write, want", [
    (lambda x: x.exp(), lambda y: y.mul_(2), lambda x: 2 * np.exp(x)),
    (lambda x: x.tanh(), lambda y: y.add_(1), lambda x: 1 - np.tanh(x) ** 2),
    (lambda x: x.exp(), lambda y: y[0:2].mul_(3), lambda x: np.exp(x) * [3, 3, 1]),
    (lambda x: x.sigmoid(), lambda y: y.__setitem__(0, 5.0),
     lambda x: (lambda s: s * (1 - s) * [0, 1, 1])(1 / (1 + np.exp(-x)))),
    (lambda x: x.exp(), lambda y: _without_grad(lambda: y.mul_(2)), lambda x: np.exp(x)),
], ids=["exp-mul_", "tanh-add_", "exp-view-mul_", "sigmoid-setitem", "exp-no_grad-mul_"])
def test_a_write_after_an_op_that_saves_its_output_keeps_its_gradient(make, write, want):
    """Regression: exp's (tanh's, sigmoid's) backward read its output from the tensor's
    memory, which the in-place write had changed: y = x.exp(); y.mul_(2) gave 4e, not 2e.
    PyTorch refuses this backward; Neurenix keeps a copy of the output and gets it right."""
    data = np.array([0.5, -1.0, 1.5], np.float32)
    x = nx.tensor(data, requires_grad=True)
    y = make(x)
    write(y)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), want(data.astype(np.float64)), rtol=1e-5)


# ---- read-only views (expand, unfold, stop_gradient) follow writes into their base ----------
# Regression: an expanded view did not count its base's in-place writes, so a backward through
# a use taken before the write read the new values (a silently wrong gradient; eager
# convolutions as primitives reach their weight through reshape + expand), and a use after the
# write differentiated the old value.


@pytest.mark.parametrize("view", ["expand", "unfold", "stop_gradient"])
def test_write_into_base_after_a_read_only_view_was_used_raises(view):
    def taken(a):
        if view == "expand":
            return a.expand(4, 3)
        if view == "unfold":
            windows = apply("unfold", a.reshape(1, 1, 3), kernel=(2,), stride=(1,),
                            dilation=(1,))  # (1, 1, 2, 2): two windows of 2
            return windows.reshape(4)
        return apply("stop_gradient", a)

    a = nx.tensor(np.arange(3, dtype=np.float32) + 1, requires_grad=True)
    base = a * 1
    seen = taken(base)
    used = (seen * nx.tensor(np.ones(tuple(seen.shape), np.float32), requires_grad=True)).sum()
    with nx.no_grad():
        base.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        used.backward()


def test_expanded_view_used_after_a_write_into_its_base_matches_torch():
    got = []
    for lib in (nx, torch):
        a0 = lib.tensor(np.arange(3, dtype=np.float32) + 1, requires_grad=True)
        b = lib.tensor(np.linspace(0.5, 2, 12, dtype=np.float32).reshape(4, 3),
                       requires_grad=True)
        a = a0 * 1
        e = a.expand(4, 3)
        a.mul_(2)
        (e * b).sum().backward()
        got.append((a0.grad.numpy(), b.grad.numpy()))
    np.testing.assert_allclose(got[0][0], got[1][0], rtol=1e-6)
    np.testing.assert_allclose(got[0][1], got[1][1], rtol=1e-6)


@pytest.mark.parametrize("assign", [False, True])
def test_write_into_a_read_only_view_is_private(assign):
    """A write into a read-only expanded view of distinct elements takes a private array:
    the base keeps its values and its gradient (no write through into the autograd value
    without one into the memory), the view is a view no more."""
    a = nx.tensor(np.arange(3, dtype=np.float32) + 1, requires_grad=True)
    base = a * 1
    e = base.expand(1, 3)
    if assign:
        e[0, 0] = 10.0
    else:
        e.add_(1)
    np.testing.assert_array_equal(base.detach().numpy(), [1, 2, 3])
    want = [[10, 2, 3]] if assign else [[2, 3, 4]]
    np.testing.assert_array_equal(e.detach().numpy(), want)
    (base * 2).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [2, 2, 2])


def test_primitive_convolution_refuses_a_weight_written_after_use():
    """The eager convolution as primitives (kernels off) reaches its weight through an expand:
    a weight written in place between forward and backward raises, as with the kernel."""
    import neurenix.nn.functional as F

    with kernels(False):
        rng = np.random.default_rng(0)
        x = nx.tensor(rng.random((2, 3, 5, 5), dtype=np.float32), requires_grad=True)
        w = nx.tensor(rng.random((4, 3, 3, 3), dtype=np.float32), requires_grad=True)
        y = F.conv2d(x, w)
        with nx.no_grad():
            w.mul_(2.0)
        with pytest.raises(RuntimeError, match="modified in place"):
            y.sum().backward()


def test_write_into_a_stop_gradient_view_does_not_rewire_its_base():
    """A write into `stop_gradient(a)` changes a's values (they are shared) but not a's
    autograd value: later uses of a do not differentiate into what was written."""
    a = nx.tensor(np.ones(3, np.float32), requires_grad=True)
    base = a * 1
    w = nx.tensor(np.full(3, 2.0, np.float32), requires_grad=True)
    sg = apply("stop_gradient", base)
    sg.mul_(w)
    np.testing.assert_array_equal(base.detach().numpy(), [2, 2, 2])
    (base * 3).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [3, 3, 3])
    assert w.grad is None
