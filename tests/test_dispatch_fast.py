"""The eager dispatch fast path (issue 15) gives what the general path gives."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from neurenix.compiler.ops.registry import OpError

import neurenix as nx
from neurenix import dispatch
from neurenix.dispatch import EAGER, apply
from neurenix.tensor import Tensor


def test_fast_wrap_sets_every_field_as_wrap() -> None:
    array = np.ones((2, 3), np.float32)
    fast, slow = dispatch.wrap(array, nx.float32), Tensor._wrap(array, nx.float32)
    for name in Tensor.__slots__:
        if name in ("__weakref__", "_alias"):
            continue
        assert getattr(fast, name) is getattr(slow, name) or \
            getattr(fast, name) == getattr(slow, name), name
    assert not hasattr(fast, "_alias") and not hasattr(slow, "_alias")


def test_type_errors_are_raised_every_time() -> None:
    x = nx.ones(2, 3)
    for _ in range(3):
        with pytest.raises(OpError, match="reshape: cannot view"):
            apply("reshape", x, shape=(4,))


def test_attrs_key_keeps_types_apart() -> None:
    key = dispatch._attrs_key
    assert key({"value": 1}) != key({"value": 1.0}) != key({"value": True})
    assert key({"axes": (True,)}) is None
    assert key({"axes": (np.int64(1),)}) is None
    assert key({"shape": [2, 3]}) is None
    assert key({"shape": (2, 3), "dtype": "float32"}) == key({"shape": (2, 3),
                                                             "dtype": "float32"})


def test_numpy_error_state_does_not_leak() -> None:
    before = np.geterr()
    x = nx.tensor([1.0, 0.0, -1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = x / 0.0
        np.testing.assert_array_equal(out.numpy(), [np.inf, np.nan, -np.inf])
        with np.errstate(all="raise"):
            (x / 0.0).numpy()
            with pytest.raises(FloatingPointError):
                np.divide(np.ones(1), 0.0)
    with pytest.raises(OpError):
        apply("reshape", x, shape=(2,))
    assert np.geterr() == before


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "lt"])
@pytest.mark.parametrize("scalar", [2, 2.5, -0.0])
def test_scalar_operand_as_the_general_path(op: str, scalar: float) -> None:
    x = nx.tensor([[1.0, -2.0], [0.0, 3.5]], requires_grad=True)
    fn = getattr(nx, op) if hasattr(nx, op) else getattr(Tensor, f"__{op}__")
    got = fn(x, scalar)
    one = Tensor._wrap(np.asarray(scalar, np.float32), nx.float32)
    want = apply(op, x, EAGER.broadcast_to(one, x.shape))
    np.testing.assert_array_equal(got.detach().numpy(), want.detach().numpy())
    assert got.grad_fn == want.grad_fn
    reflected = fn(scalar, x)
    want = apply(op, EAGER.broadcast_to(one, x.shape), x)
    np.testing.assert_array_equal(reflected.detach().numpy(), want.detach().numpy())


def test_spread_scalar_is_a_read_only_view_of_one_value() -> None:
    x = nx.ones(3, 4, requires_grad=True)
    out = x * 3
    node = out._node
    scalar = node.inputs[1]
    assert scalar.shape == (3, 4) and scalar._data.strides == (0, 0)
    assert not scalar._data.flags.writeable and not scalar.requires_grad
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 4), 3.0, np.float32))


def test_relu_as_its_composition() -> None:
    values = np.array([-np.inf, -1.0, -0.0, 0.0, 0.5, np.inf, np.nan], np.float32)
    x = nx.tensor(values, requires_grad=True)
    out = x.relu()
    expected = np.where(values < 0, np.float32(0), values)
    np.testing.assert_array_equal(out.detach().numpy(), expected)
    assert np.signbit(out.detach().numpy()[2])  # -0.0 stays -0.0, as in PyTorch
    assert out.grad_fn == "where_backward"
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 0, 0, 1, 1, 1])


def test_relu_of_a_view_sees_a_write_into_its_base() -> None:
    z = nx.zeros(2, 3, requires_grad=True).clone()
    v = z[0]
    z[0].mul_(1.0)
    z.add_(1.0)
    out = v.relu().sum()
    out.backward()
    assert out.item() == 3.0


def test_kept_scalars_never_confuse_values() -> None:
    x = nx.ones(2, 2)
    assert not np.signbit((x * 0.0).numpy()).any()
    assert np.signbit((x * -0.0).numpy()).all()
    assert np.isnan((x * float("nan")).numpy()).all()
    assert (x + True).dtype == nx.float32 and (x + 1).numpy().tolist() == [[2, 2], [2, 2]]
    assert (nx.ones(2, 2, dtype=nx.int64) * 2.5).dtype == nx.float32


@pytest.mark.parametrize("value", [-2.0, 0.0, -0.0, 3.0])
def test_relu_of_a_0d_tensor(value):
    """Regression: the eager relu fast path wrapped NumPy's 0-d results, scalars, as arrays."""
    x = nx.tensor([value, 1.0], requires_grad=True)
    s = x[0] * 1
    r = s.relu()
    t = torch.tensor([value, 1.0], requires_grad=True)
    tr = (t[0] * 1).relu()
    np.testing.assert_array_equal(r.detach().numpy(), tr.detach().numpy())
    assert np.signbit(r.detach().numpy()) == np.signbit(tr.detach().numpy())
    r.backward()
    tr.backward()
    np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())
