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


# ---- writes through detach() count as writes into its source (PyTorch's shared counter) ----
# Regression: `detach()` on the CPU shared the values but not the version, so a write through
# it (or through a view of it, or into a view's base through no_grad) went unseen: sin's and
# exp's backward read the written values, a silently wrong gradient, where PyTorch raises.
# `.data` shares the values but not the counter, in PyTorch as here: its writes are not seen.


def _outcome(lib, program):
    """What `program(lib, make)` gives with `lib` (neurenix or torch): "raises" when its
    backward raises PyTorch's "modified by an inplace operation" error, else the gradients it
    returns, as arrays."""
    def make(values, requires_grad=True):
        data = np.asarray(values, np.float32)
        if lib is torch:
            return torch.tensor(data, requires_grad=requires_grad)
        return nx.tensor(data, requires_grad=requires_grad)

    try:
        grads = program(lib, make)
    except RuntimeError as e:
        assert "modified" in str(e), e
        return "raises"
    return [np.asarray(g.detach().numpy()) for g in grads]


def _detach_exp(lib, make):
    a = make([0.1, 0.2, 0.3])
    b = a.exp()  # saves its output b
    b.detach().mul_(2)
    b.sum().backward()
    return (a.grad,)


def _detach_sin(lib, make):
    a = make([0.1, 0.2, 0.3])
    x = a * 1
    y = x.sin()  # saves its input x
    x.detach().zero_()
    y.backward(torch.ones(3) if lib is torch else nx.ones(3))
    return (a.grad,)


def _detach_mul_by_constant(lib, make):
    a = make([0.0, 0.0, 0.0])
    b = a * 2  # its backward needs neither b nor a
    b.detach().add_(1)
    (b * 3).sum().backward()
    return (a.grad,)


def _detach_setitem(lib, make):
    a = make([0.1, 0.2, 0.3])
    x = a * 1
    y = x.sin()
    x.detach()[0] = 5.0
    y.sum().backward()
    return (a.grad,)


def _view_of_detach(lib, make):
    a = make([0.1, 0.2, 0.3])
    x = a * 1
    y = x.sin()
    x.detach()[1:].mul_(2)
    y.sum().backward()
    return (a.grad,)


def _detach_of_view(lib, make):
    a = make([0.1, 0.2, 0.3])
    x = a * 1
    y = x.sin()
    x[1:].detach().mul_(2)
    y.sum().backward()
    return (a.grad,)


def _detach_of_sibling_view(lib, make):
    a = make([[0.1, 0.2], [0.3, 0.4]])
    x = a * 1
    y = x[0].sin()
    x[1].detach().zero_()  # other elements, one counter: PyTorch raises as well
    y.sum().backward()
    return (a.grad,)


def _detach_of_detach(lib, make):
    a = make([0.1, 0.2, 0.3])
    x = a * 1
    y = x.sin()
    x.detach().detach().t().copy_(make([1.0, 1.0, 1.0], False))
    y.sum().backward()
    return (a.grad,)


def _detach_of_leaf(lib, make):
    a = make([0.1, 0.2, 0.3])
    y = a.sin()
    d = a.detach()
    d += 1
    y.sum().backward()
    return (a.grad,)


def _source_written_after_detach_used(lib, make):
    a = make([0.1, 0.2, 0.3])
    w = make([1.0, 2.0, 3.0])
    x = a * 1
    y = w * x.detach()  # saves the detached tensor for w's gradient
    x.mul_(2)
    y.sum().backward()
    return (w.grad,)


def _detach_masked_fill_under_no_grad(lib, make):
    a = make([0.1, 0.2, 0.3])
    b = a.tanh()
    with lib.no_grad():
        d = b.detach()
        d.masked_fill_(d > 0.15, 0.0)
    b.sum().backward()
    return (a.grad,)


def _detach_written_with_a_gradient(lib, make):
    a = make([0.1, 0.2, 0.3])
    w = make([1.0, 2.0, 3.0])
    x = a * 1
    y = x.sin()
    d = x.detach()
    d.add_(w)  # d takes part in autograd from here; x's autograd value does not change
    (y.sum() + d.sum()).backward()
    return a.grad, w.grad


def _no_grad_write_into_a_slice(lib, make):
    a = make([0.1, 0.2, 0.3])
    x = a * 1
    y = x.sin()
    with lib.no_grad():
        x[0:2].mul_(2)
    y.sum().backward()
    return (a.grad,)


def _view_used_after_detach_write(lib, make):
    a = make([0.1, 0.2, 0.3])
    b = a * 2
    v = b[0:2]  # slice's backward reads no values
    b.detach().mul_(2)
    (v * 3).sum().backward()
    return (a.grad,)


def _detach_written_then_used(lib, make):
    a = make([0.1, 0.2, 0.3])
    x = a * 1
    x.detach().add_(1)
    x.sin().sum().backward()  # taken after the write: its values
    return (a.grad,)


def _data_write(lib, make):
    a = make([0.1, 0.2, 0.3])
    x = a * 1
    y = x.sin()
    x.data.mul_(2)  # .data does not share the counter: unseen, in PyTorch too
    y.sum().backward()
    return (a.grad,)


def _data_write_into_saved_output(lib, make):
    a = make([0.1, 0.2, 0.3])
    b = a.exp()
    b.data.mul_(2)  # PyTorch's backward reads the written output: 2 exp(a)
    b.sum().backward()
    return (a.grad,)


def _detach_of_data(lib, make):
    a = make([0.1, 0.2, 0.3])
    x = a * 1
    y = x.sin()
    x.data.detach().mul_(2)  # the counter of .data's tensor, not x's
    y.sum().backward()
    return (a.grad,)


def _optimizer_step_through_detach(lib, make):
    p = make([0.1, 0.2, 0.3])
    (p * p).sum().backward()
    p.detach().sub_(0.1 * p.grad)
    (p * p).sum().backward()  # a new graph: the write is before it
    return (p.grad,)


DETACH_CASES = {
    "exp-output": (_detach_exp, "raises"),
    "sin-input": (_detach_sin, "raises"),
    "mul-by-constant": (_detach_mul_by_constant, "grads"),
    "setitem": (_detach_setitem, "raises"),
    "view-of-detach": (_view_of_detach, "raises"),
    "detach-of-view": (_detach_of_view, "raises"),
    "detach-of-sibling-view": (_detach_of_sibling_view, "raises"),
    "detach-of-detach-copy_": (_detach_of_detach, "raises"),
    "detach-of-leaf-iadd": (_detach_of_leaf, "raises"),
    "source-written-after-use": (_source_written_after_detach_used, "raises"),
    "masked_fill_-no_grad": (_detach_masked_fill_under_no_grad, "raises"),
    "write-with-gradient": (_detach_written_with_a_gradient, "raises"),
    "no_grad-slice-write": (_no_grad_write_into_a_slice, "raises"),
    "view-after-write": (_view_used_after_detach_write, "grads"),
    "written-then-used": (_detach_written_then_used, "grads"),
    ".data": (_data_write, "grads"),
    ".data-saved-output": (_data_write_into_saved_output, "grads"),
    "detach-of-.data": (_detach_of_data, "grads"),
    "optimizer-step": (_optimizer_step_through_detach, "grads"),
}


@pytest.mark.parametrize("name", DETACH_CASES)
def test_write_through_detach_matches_torch(name):
    program, want = DETACH_CASES[name]
    got, expected = _outcome(nx, program), _outcome(torch, program)
    assert (expected == "raises") == (want == "raises")  # the case tests what it says
    if expected == "raises":
        assert got == "raises"
        return
    assert got != "raises"
    for g, t in zip(got, expected):
        np.testing.assert_allclose(g, t, rtol=1e-6)


def test_detach_does_not_keep_its_source_alive():
    """The shared counter holds its source weakly: a detached value kept (a logged loss)
    does not keep the graph behind it."""
    import gc
    import weakref

    a = nx.tensor(np.ones(3, np.float32), requires_grad=True)
    b = a.exp()
    ref = weakref.ref(b)
    kept = b.detach()
    del b
    gc.collect()
    assert ref() is None
    kept.mul_(2)  # its source gone, nothing to count the write for
    np.testing.assert_allclose(kept.numpy(), 2 * np.e, rtol=1e-6)


def test_the_saved_output_error_names_the_node():
    a = nx.tensor(np.ones(3, np.float32), requires_grad=True)
    b = a.exp()
    b.detach().mul_(2)
    with pytest.raises(RuntimeError, match="output of exp_backward of shape \\(3,\\) was "
                                           "modified in place"):
        b.sum().backward()


@pytest.mark.parametrize("how", ["detach", "view-under-no_grad", ".data"])
def test_saved_tensors_of_a_function_count_writes_as_torch(how):
    def run(lib):
        class Square(torch.autograd.Function if lib is torch else nx.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x * x

            @staticmethod
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return 2 * x * g

        data = np.array([1.0, 2.0], np.float32)
        a = torch.tensor(data, requires_grad=True) if lib is torch else \
            nx.tensor(data, requires_grad=True)
        x = a * 1
        y = Square.apply(x)
        if how == "detach":
            x.detach().mul_(2)
        elif how == ".data":
            x.data.mul_(2)
        else:
            with lib.no_grad():
                x[0:1].mul_(2)
        try:
            y.sum().backward()
        except RuntimeError as e:
            assert "modified in place" in str(e) or "modified by an inplace" in str(e)
            return "raises"
        return a.grad.detach().numpy()

    got, want = run(nx), run(torch)
    if isinstance(want, str):
        assert got == want
    else:
        np.testing.assert_allclose(got, want)


# ---- writes PyTorch allows: the backward does not read the written tensor --------------------
# Regression: every input of every recorded operation had its version checked, so writing
# into c after `c * 2` or `c + 1` (whose backward reads neither c) raised where PyTorch runs.

EAGER_WRITES = {
    "scale_then_write": lambda c: (c * 2, c.mul_(3))[0] * c,
    "slice_add_then_write": lambda c: (c[0:2] + 1, c.mul_(3))[0].sum() + c.sum(),
    "assign_a_slice_from_itself": lambda c: (c.__setitem__(slice(1, 3), c[1:3] * 2 + 1), c)[1],
    "add_another_slice": lambda c: (c[2:].__iadd__(c[:2]), c)[1],
}


@pytest.mark.parametrize("case", EAGER_WRITES)
def test_writes_after_uses_whose_backward_does_not_read_them(case):
    start = np.arange(1, 5, dtype=np.float64)
    got, want = [], []
    for lib, out in ((nx, got), (torch, want)):
        a = lib.tensor(start.copy(), requires_grad=True)
        EAGER_WRITES[case](a * 1).sum().backward()
        out.append(a.grad.numpy())
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)


def test_a_write_the_backward_reads_still_raises():
    """`c * d` with d requiring grad reads c: writing c before the backward raises, as in
    PyTorch."""
    a = nx.tensor(np.ones(3), requires_grad=True)
    d = nx.tensor(np.ones(3), requires_grad=True)
    c = a * 1
    e = c * d
    c.mul_(3)
    with pytest.raises(RuntimeError, match="modified in place"):
        e.sum().backward()
