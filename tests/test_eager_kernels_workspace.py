"""The eager kernels' recycled storage (`neurenix.eager_kernels.workspace`) and what uses it:
a buffer is handed out again only once nothing holds a view of it, outputs and gradients a
caller keeps are never overwritten by a later step, a training loop stops faulting pages,
and the convolution's wide col2im (stride 1, 2-d) sums exactly as the per-tap one and
keeps the primitives' NaN placement."""
from __future__ import annotations

import numpy as np
import pytest
from kernel_switch import eager_compile, kernels

import neurenix as nx
import neurenix.nn as nn
import neurenix.nn.functional as F
from neurenix.eager_kernels import conv as conv_kernels
from neurenix.eager_kernels import workspace


@pytest.fixture(autouse=True)
def _kernels_on():
    """The NumPy kernels' storage: hot layers stay on them (`eager_kernels.hot`)."""
    with kernels(True), eager_compile(False):
        yield


def test_a_buffer_is_reused_only_when_no_view_of_it_lives():
    a = workspace.empty((64, 300), np.float32)
    view = a.T[3:, ::2]  # a view of a view still holds the buffer
    del a
    b = workspace.empty((64, 300), np.float32)
    assert not np.shares_memory(view, b)
    del view
    c = workspace.empty((300, 64), np.float32)  # same size, another shape: the free buffer
    assert c.base is not None and c.flags.c_contiguous and c.shape == (300, 64)
    d = workspace.empty((300, 64), np.float32)
    assert not np.shares_memory(c, d) and not np.shares_memory(b, d)
    c_address = c.ctypes.data
    del c
    e = workspace.empty((64, 300), np.float32)
    assert e.ctypes.data == c_address  # handed out again once free
    z = workspace.zeros((64, 300), np.float64)
    assert not z.any()
    assert (workspace.full((70, 300), -np.inf, np.float32) == -np.inf).all()


def test_small_arrays_and_a_full_pool_fall_back_to_plain_arrays(monkeypatch):
    small = workspace.empty((4, 4), np.float32)
    assert small.base is None
    workspace.clear()
    held = workspace.held_bytes()  # buffers other tests still use
    monkeypatch.setattr(workspace, "MAX_BYTES", held + 3 * workspace.MIN_BYTES)
    kept = [workspace.empty((workspace.MIN_BYTES // 4,), np.float32) for _ in range(3)]
    assert all(k.base is not None for k in kept)
    extra = workspace.empty((workspace.MIN_BYTES // 4,), np.float32)
    assert extra.base is None  # every pooled buffer in use: an ordinary array
    assert workspace.held_bytes() == held + 3 * workspace.MIN_BYTES
    del kept[:2]
    bigger = workspace.empty((workspace.MIN_BYTES // 2,), np.float32)  # evicts the free two
    assert bigger.base is not None
    assert workspace.held_bytes() <= workspace.MAX_BYTES
    del kept, bigger
    workspace.clear()
    assert workspace.held_bytes() == held


def _cnn_step(x, w1, b1, w2, target):
    h = F.max_pool2d(F.relu(F.conv2d(x, w1, b1, padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, w2, padding=1)), 2)
    loss = F.cross_entropy(h.reshape(h.shape[0], -1)[:, :10], target)
    loss.backward()
    return loss


def _params(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 3, 24, 24)).astype(np.float32)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    return x, w1, b1, w2, rng.integers(0, 10, 8)


def test_outputs_and_gradients_kept_by_the_caller_survive_later_steps():
    """Everything a step hands out (activations, the input's and weights' gradients) comes
    from the workspace; a later step must not write into any of it while it is held."""
    x, w1, b1, w2, target = _params()
    ts = [nx.tensor(a, requires_grad=True) for a in (x, w1, b1, w2)]
    kept = []
    for step in range(3):
        for t in ts:
            t.grad = None
        y = F.conv2d(ts[0], ts[1], ts[2], padding=1)
        r = F.relu(y)
        p = F.max_pool2d(r, 2)
        (p * float(step + 1)).sum().backward()
        arrays = [y.detach().numpy(), r.detach().numpy(), p.detach().numpy()]
        arrays += [t.grad.numpy() for t in ts[:3]]
        kept.append((arrays, [a.copy() for a in arrays]))
    for arrays, copies in kept:
        for a, c in zip(arrays, copies):
            assert np.array_equal(a, c)
    pooled = [a for arrays, _ in kept for a in arrays if a.base is not None]
    assert len(pooled) == 6  # the convolution's and ReLU's outputs come from the workspace
    for i, a in enumerate(pooled):
        for b in pooled[i + 1:]:
            assert not np.shares_memory(a, b)


def test_steps_agree_with_the_primitives_over_repeated_steps():
    """Recycled buffers hold the last step's values: a padded border, zeroed col2im target
    or tiled pooling gradient that were not rewritten would show in the second step."""
    results = []
    for on in (True, False):
        with kernels(on):
            x, w1, b1, w2, target = _params()
            ts = [nx.tensor(a, requires_grad=True) for a in (x, w1, b1, w2)]
            per_step = []
            for step in range(3):
                for t in ts:
                    t.grad = None
                scale = nx.tensor(np.float32(1.0 + step))
                loss = _cnn_step(ts[0] * scale, ts[1], ts[2], ts[3], nx.tensor(target))
                per_step.append([loss.item()] + [t.grad.numpy().copy() for t in ts])
            results.append(per_step)
    for got, want in zip(*results):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        for a, b in zip(got[1:], want[1:]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_training_step_stops_faulting_pages():
    """After a warm-up, a step of big conv, ReLU and max-pool layers allocates nothing new
    from the OS (before the workspace: about 2,000 page faults a step on this layer stack,
    glibc returning each freed multi-megabyte array)."""
    rng = np.random.default_rng(0)
    x = nx.tensor(rng.standard_normal((32, 3, 28, 28)).astype(np.float32))
    w1 = nx.tensor(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), requires_grad=True)
    w2 = nx.tensor(rng.standard_normal((32, 16, 3, 3)).astype(np.float32),
                   requires_grad=True)

    def step():
        w1.grad = w2.grad = None
        h = F.max_pool2d(F.relu(F.conv2d(x, w1, padding=1)), 2)
        F.max_pool2d(F.relu(F.conv2d(h, w2, padding=1)), 2).sum().backward()

    _assert_no_faults(step)


@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN, nn.LSTM], ids=["gru", "rnn", "lstm"])
def test_a_recurrent_training_step_stops_faulting_pages(cls):
    """The recurrent kernels' per-step states and gate gradients come from the workspace
    too (a GRU(64, 256) step on (64, 50, 64) faulted about 4,500 pages a step before)."""
    nx.manual_seed(0)
    layer = cls(16, 256, batch_first=True)
    x = nx.tensor(np.random.default_rng(0).standard_normal((64, 40, 16)).astype(np.float32))

    def step():
        for p in layer.parameters():
            p.grad = None
        layer(x)[0].sum().backward()

    _assert_no_faults(step)


def _assert_no_faults(step, warm: int = 3, timed: int = 4) -> None:
    """After `warm` steps, fewer than 200 minor page faults per step over `timed` more."""
    resource = pytest.importorskip("resource")
    for _ in range(warm):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(timed):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / timed
    assert faults < 200, f"{faults} page faults a step"


def _wide_and_per_tap(x, w, g, padding, dilation):
    """dx of conv2d(x, w, stride 1) through the wide convolution and the per-tap col2im."""
    lo = hi = padding
    with np.errstate(all="ignore"):
        _, backward = conv_kernels._wide_conv(x, w, None, dilation, lo, hi,
                                              [True, True, False])
        wide = backward([g])[0]
        padded = x.shape[:2] + tuple(s + 2 * p for s, p in zip(x.shape[2:], padding))
        per_tap = conv_kernels._input_gradient(
            w.reshape(1, w.shape[0], -1), conv_kernels._compact_gradient(g)[None], x.shape,
            padded, lo, w.shape[2:], (1, 1), dilation, g.shape[2:])
    return wide, per_tap


@pytest.mark.parametrize("padding,dilation", [((1, 1), (1, 1)), ((2, 0), (1, 2)),
                                              ((0, 3), (2, 1))])
def test_wide_col2im_sums_as_the_per_tap_one(padding, dilation):
    """Small integers make every product and sum exact, so the two must agree bit for bit,
    infinities, NaN and the signs of zeros in the output gradient included."""
    rng = np.random.default_rng(1)
    x = rng.integers(-3, 4, (3, 4, 9, 8)).astype(np.float64)
    w = rng.integers(-3, 4, (5, 4, 3, 3)).astype(np.float64)
    out = (9 + 2 * padding[0] - 2 * dilation[0], 8 + 2 * padding[1] - 2 * dilation[1])
    g = rng.integers(-3, 4, (3, 5) + out).astype(np.float64)
    g[0, 1, 0, -1] = np.inf
    g[2, 0, -1, 0] = np.nan
    g[1, 2] = -0.0
    wide, per_tap = _wide_and_per_tap(x, w, g, padding, dilation)
    assert np.array_equal(wide, per_tap, equal_nan=True)
    assert np.array_equal(np.signbit(wide), np.signbit(per_tap))


def test_a_non_finite_weight_keeps_the_primitives_nan_placement():
    """A NaN at a border tap of the weight reaches only the input positions that tap
    covers; the wide col2im would spread it through the extra columns (NaN * 0), so a
    non-finite weight takes the per-tap path."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, (2, 2, 6, 6))
    w = rng.uniform(-2, 2, (3, 2, 3, 3))
    w[1, 0, 1, 0] = np.nan  # column tap 0: never reaches the input's last column
    w[2, 1, 0, 2] = np.inf
    got = []
    for on in (True, False):
        with kernels(on):
            xt, wt = nx.tensor(x, requires_grad=True), nx.tensor(w, requires_grad=True)
            F.conv2d(xt, wt, padding=1).sum().backward()
            got.append(xt.grad.numpy())
    assert not np.isnan(got[1][:, 0, :, -1]).all()
    assert np.array_equal(np.isnan(got[0]), np.isnan(got[1]))
    np.testing.assert_allclose(got[0], got[1], rtol=1e-12, atol=1e-12, equal_nan=True)
