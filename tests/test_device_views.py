"""Device tensors alias as CPU tensors do: views, `detach()` and `state_dict()` share storage.

Each scenario runs once on the CPU (NumPy views: the reference) and once per device, and
every tensor it returns must hold the same values there: an in-place update through one alias
(a view, its base, a sibling view, a detached alias) is seen by all the others.  Shapes are
tiny and shared so that each device compiles few one-op programs.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from devices import GPU_DEVICES, needs_device

import neurenix as nx
from neurenix import nn, optim

Make = Callable[..., nx.Tensor]


@pytest.fixture(params=GPU_DEVICES)
def device(request) -> str:
    needs_device(request.param)
    return request.param


def _maker(device: str) -> Make:
    def make(values=None) -> nx.Tensor:
        values = np.arange(6, dtype=np.float32).reshape(2, 3) if values is None else values
        return nx.tensor(np.asarray(values, np.float32)).to(device)
    return make


def _values(tensors) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in tensors]


def _row_add(make: Make):
    x = make()
    x[0].add_(10.0)
    return [x]


def _view_after_base(make: Make):
    x = make(np.arange(6))
    v = x[::2]
    x.add_(1.0)
    return [v, x]


def _views_of_views_and_siblings(make: Make):
    x = make()
    row, col, inner = x[1], x[:, 0], x[1:][0]
    inner.mul_(2.0)
    col.sub_(1.0)
    return [x, row, col, inner]


def _transposes(make: Make):
    x = make()
    t = x.T
    t[1] = -1.0
    x.T[2].fill_(7.0)
    t2 = x.transpose(0, 1).permute(1, 0)
    t2.add_(0.5)
    return [x, t, t2]


def _reshapes(make: Make):
    x = make()
    flat = x.view(6)
    flat[1:3].mul_(3.0)
    cube = x.reshape(1, 2, 3).unsqueeze(0).squeeze(0)
    cube.add_(1.0)
    copy = x.T.reshape(6)  # a copy on the CPU (NumPy cannot view it): not an alias
    copy.add_(100.0)
    return [x, flat, cube, copy]


def _setitem_on_views(make: Make):
    x = make()
    v = x[0]
    v[1] = 5.0
    x[:, 2][0] = 9.0
    x.T[0][x.T[0] > 2.0] = 0.0
    return [x, v]


def _narrow_split_unbind(make: Make):
    x = make()
    a, b = x.split([1, 2], dim=1)
    b.fill_(4.0)
    first, second = x.unbind(0)
    second.zero_()
    x.narrow(1, 0, 1).add_(2.0)
    return [x, a, b, first, second]


def _detached(make: Make):
    x = make([0.0, 1.0, 2.0])
    d = x.detach()
    d.add_(1.0)
    x.mul_(2.0)
    data = x.data
    data.clamp_(0.0, 5.0)
    return [x, d, data]


SCENARIOS = [_row_add, _view_after_base, _views_of_views_and_siblings, _transposes, _reshapes,
             _setitem_on_views, _narrow_split_unbind, _detached]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
def test_aliases_match_the_cpu(scenario, device):
    expected = _values(scenario(_maker("cpu")))
    actual = _values(scenario(_maker(device)))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


def test_examples_of_the_report(device):
    make = _maker(device)
    x = make()
    x[0].add_(10.0)
    np.testing.assert_array_equal(x.numpy(), [[10, 11, 12], [3, 4, 5]])
    x = make(np.arange(6))
    v = x[::2]
    x.add_(1.0)
    np.testing.assert_array_equal(v.numpy(), [1, 3, 5])
    x = make([0.0, 1.0, 2.0])
    x.detach().add_(1.0)
    np.testing.assert_array_equal(x.numpy(), [1, 2, 3])


def test_in_place_on_an_expanded_view_raises(device):
    x = _maker(device)([1.0, 2.0])
    wide = x.expand(3, 2)
    with pytest.raises(RuntimeError, match="single memory location"):
        wide.add_(1.0)
    np.testing.assert_array_equal(x.numpy(), [1, 2])
    np.testing.assert_array_equal(wide.numpy(), [[1, 2]] * 3)  # still a view, readable


def test_state_dict_follows_an_optimizer_step_and_loads_into_the_parameters(device):
    nx.manual_seed(0)
    model = nn.Linear(3, 2).to(device)
    state = model.state_dict()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = nx.tensor(np.ones((4, 3), np.float32)).to(device)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(state[name].numpy(), p.detach().numpy())
    model.load_state_dict({"weight": np.zeros((2, 3), np.float32), "bias": np.ones(2)})
    np.testing.assert_array_equal(state["weight"].numpy(), np.zeros((2, 3)))
    np.testing.assert_array_equal(model.bias.detach().numpy(), [1, 1])


def test_gradients_through_views_match_the_cpu(device):
    def run(dev: str) -> list[np.ndarray]:
        w = nx.tensor(np.arange(6, dtype=np.float32).reshape(2, 3)).to(dev).requires_grad_()
        snapshot = w.detach()
        loss = (w.T[1:] * w[0, :2].unsqueeze(1)).sum() + w[:, ::2].pow(2).sum()
        loss.backward()
        with nx.no_grad():
            w.sub_(0.5 * w.grad)
        return _values([w.grad, w, snapshot])
    for a, e in zip(run(device), run("cpu")):
        np.testing.assert_allclose(a, e, rtol=1e-6)


def test_a_view_changed_after_use_refuses_backward(device):
    x = nx.tensor(np.ones(3, np.float32)).to(device).requires_grad_()
    h = x * 2.0
    v = h[1:]
    y = (v * v).sum()
    h.add_(1.0)  # v's storage changed after v was used: its gradient would be wrong
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward()
    z = x * 3.0
    z.detach()[0].add_(1.0)  # an alias written after use refuses as well
    w = (z * z).sum()
    w.backward()  # ... but z itself was modified before this use: fine
    np.testing.assert_allclose(x.grad.numpy(), [24, 18, 18])


def test_only_0d_cpu_tensors_join_device_operations(device):
    x = nx.ones(2, device=device)
    with pytest.raises(ValueError, match="cpu"):
        nx.cat([x, nx.tensor([3.0])])
    with pytest.raises(ValueError, match="cpu"):
        x + nx.tensor([3.0])
    np.testing.assert_array_equal((x + nx.tensor(3.0)).numpy(), [4, 4])
    np.testing.assert_array_equal((x * 2.0).numpy(), [2, 2])


def test_moving_a_tensor_leaves_its_old_aliases(device):
    x = nx.tensor([1.0, 2.0]).to(device)
    alias = x.detach()
    x.to("cpu", inplace=True)
    x.add_(1.0)
    np.testing.assert_array_equal(alias.numpy(), [1, 2])
    assert x.device == nx.Device("cpu") and x.tolist() == [2.0, 3.0]


def test_webgpu_assignment_of_a_float64_value_names_the_dtype():
    needs_device("webgpu")
    x = nx.zeros(2, 3, device="webgpu")
    with pytest.raises(ValueError, match="float64"):
        x[0] = nx.tensor(np.array([7.0, 8.0, 9.0])).to("webgpu")


def test_a_buffer_assigned_directly_reaches_every_alias(device):
    """A compiled program writes its results back as `t._data = buffer`: the aliases of t
    (a state_dict entry, a view) see them."""
    model = nn.Linear(3, 2).to(device)
    state = model.state_dict()
    row = model.weight.detach()[0]
    new = nx.tensor(np.full((2, 3), 4.0, np.float32)).to(device)
    model.weight._data = new._data
    np.testing.assert_array_equal(state["weight"].numpy(), np.full((2, 3), 4.0))
    np.testing.assert_array_equal(row.numpy(), [4, 4, 4])


_VIEWS = [
    lambda t: t[0] if t.ndim else None,
    lambda t: t[1:] if t.ndim else None,
    lambda t: t[::2] if t.ndim else None,
    lambda t: t.T if t.ndim >= 2 else None,
    lambda t: t.reshape(-1),
    lambda t: t.unsqueeze(0),
    lambda t: t.squeeze(),
    lambda t: t[:, 1] if t.ndim >= 2 and t.shape[1] > 1 else None,
    lambda t: t.detach(),
    lambda t: t.permute(*reversed(range(t.ndim))),
]
_WRITES = [
    lambda t, r: t.add_(r),
    lambda t, r: t.mul_(2.0),
    lambda t, r: t.fill_(r),
    lambda t, r: t.__setitem__(0, r) if t.ndim else t.fill_(r),
    lambda t, r: t.copy_(t * 0.0 + r),
]


def _random_aliasing(make: Make, seed: int) -> list[nx.Tensor]:
    """Twelve random steps: a view of a random alias, or a write through one."""
    rng = np.random.default_rng(seed)
    tensors = [make(np.arange(24).reshape(2, 3, 4))]
    for _ in range(12):
        t = tensors[rng.integers(len(tensors))]
        if rng.random() < 0.5:
            v = _VIEWS[rng.integers(len(_VIEWS))](t)
            if v is not None and v.numel():
                tensors.append(v)
        elif t.numel():
            _WRITES[rng.integers(len(_WRITES))](t, float(rng.integers(1, 9)))
    return tensors


def test_random_views_and_writes_match_the_cpu(device):
    for seed in range(16):
        expected = _values(_random_aliasing(_maker("cpu"), seed))
        actual = _values(_random_aliasing(_maker(device), seed))
        for a, e in zip(actual, expected, strict=True):
            np.testing.assert_array_equal(a, e, err_msg=f"seed {seed}")


def test_cpu_values_assigned_into_a_device_tensor_are_uploaded(device):
    a = nx.tensor(np.arange(6, dtype=np.float32)).to(device).requires_grad_()
    h = a * 1.0
    h[0:1] = [5.0]
    h[1:3] = nx.tensor([7.0, 8.0])
    h[3] = nx.tensor(9.0)
    h.sum().backward()
    np.testing.assert_array_equal(h.detach().numpy(), [5, 7, 8, 9, 4, 5])
    np.testing.assert_array_equal(a.grad.numpy(), [0, 0, 0, 0, 1, 1])


def test_a_write_through_data_reaches_the_parameter_storage_at_once(device):
    """Code that reads a parameter's buffer directly (a compiled program's arguments) sees a
    write made through `p.data` without any read in between."""
    p = nn.Parameter(nx.tensor([1.0, 2.0]).to(device))
    p.data.add_(1.0)
    p.data[0] = 0.0
    np.testing.assert_array_equal(p._data.to_host(), [0, 3])


@pytest.mark.parametrize("kind", ["opencl", "webgpu"])
def test_compiled_function_reads_a_view_whose_base_changed(kind):
    """Regression: a compiled call passed a view read its stale buffer after the base was
    written in place (eager re-derived it; compiled did not)."""
    needs_device(kind)
    x = nx.arange(6.0).to(kind)
    v = x[::2]
    f = nx.compile(lambda a: a * 2)
    f(v)
    x.add_(1.0)
    np.testing.assert_array_equal(f(v).numpy(), (np.arange(6.0)[::2] + 1) * 2)
