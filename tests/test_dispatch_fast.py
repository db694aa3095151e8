"""The eager dispatch fast path (issue 15) gives what the general path gives."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from kernel_switch import kernels
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


@pytest.mark.parametrize("on", [True, False])
def test_relu_as_its_composition(on: bool) -> None:
    """The ReLU eager kernel and the primitive composition give the same bits."""
    values = np.array([-np.inf, -1.0, -0.0, 0.0, 0.5, np.inf, np.nan], np.float32)
    x = nx.tensor(values, requires_grad=True)
    with kernels(on):
        out = x.relu()
    expected = np.where(values < 0, np.float32(0), values)
    np.testing.assert_array_equal(out.detach().numpy(), expected)
    assert np.signbit(out.detach().numpy()[2])  # -0.0 stays -0.0, as in PyTorch
    assert out.grad_fn == ("ReluBackward" if on else "where_backward")
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("shape", [(2, 2), (4,)])
def test_relu_kernel_double_backward(shape) -> None:
    """Regression: with create_graph the ReLU kernel ran its composition and iterated the
    one output tensor as if it were a tuple of outputs (a shape error)."""
    values = np.array([1.0, -2.0, 3.0, 0.5]).reshape(shape)
    grads = []
    for on in (True, False):
        with kernels(on):
            x = nx.tensor(values, requires_grad=True)
            y = (x * x - 1.0).relu()
            (g,) = nx.autograd.grad((y * y).sum(), [x], create_graph=True)
            (g * g).sum().backward()
            grads.append((g.detach().numpy(), x.grad.numpy()))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-12)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-12)


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


# ---- the wrappers' fast paths: matmul, sum, reshape/view, transpose/t (issue 15) -------------

def _pair(*shape: int, dtype=np.float32, seed: int = 0) -> tuple[Tensor, torch.Tensor]:
    values = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return nx.tensor(values, requires_grad=True), torch.tensor(values, requires_grad=True)


FAST_CASES = {  # name: (shapes of the inputs, the operation, written for both libraries)
    "sum()": ([(4, 4)], lambda x: x.sum()),
    "sum(1)": ([(4, 5)], lambda x: x.sum(1)),
    "sum(-1, keepdim)": ([(2, 3, 4)], lambda x: x.sum(-1, keepdim=True)),
    "sum(0) 1-d": ([(6,)], lambda x: x.sum(0)),
    "sum() 3-d": ([(2, 3, 4)], lambda x: x.sum()),
    "x @ y": ([(4, 3), (3, 5)], lambda x, y: x @ y),
    "batched @": ([(2, 4, 3), (2, 3, 5)], lambda x, y: x @ y),
    "matmul k=0": ([(2, 0), (0, 3)], lambda x, y: x.matmul(y)),
    "reshape(16)": ([(4, 4)], lambda x: x.reshape(16)),
    "reshape((8, 2))": ([(4, 4)], lambda x: x.reshape((8, 2))),
    "reshape([2, -1])": ([(4, 4)], lambda x: x.reshape([2, -1])),
    "view(2, -1, 2)": ([(4, 4)], lambda x: x.view(2, -1, 2)),
    "reshape() 1 element": ([(1, 1)], lambda x: x.reshape(())),
    "t()": ([(4, 3)], lambda x: x.t()),
    "transpose(0, -1)": ([(2, 3, 4)], lambda x: x.transpose(0, -1)),
    "transpose(1, 1)": ([(2, 3)], lambda x: x.transpose(1, -1)),
}


def _run_case(name: str, dtype=np.float32):
    shapes, fn = FAST_CASES[name]
    pairs = [_pair(*s, dtype=dtype, seed=i) for i, s in enumerate(shapes)]
    ours, theirs = fn(*[p[0] for p in pairs]), fn(*[p[1] for p in pairs])
    return pairs, ours, theirs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(FAST_CASES))
def test_fast_wrappers_match_torch(name: str, dtype) -> None:
    pairs, ours, theirs = _run_case(name, dtype)
    assert ours.dtype == nx.tensor(np.zeros(1, dtype)).dtype
    assert ours.shape == tuple(theirs.shape)
    got, want = ours.detach().numpy(), theirs.detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-12)
    seed = np.random.default_rng(9).standard_normal(tuple(theirs.shape)).astype(dtype)
    ours.backward(nx.tensor(seed))
    theirs.backward(torch.tensor(seed))
    for mine, ref in pairs:
        np.testing.assert_allclose(mine.grad.numpy(), ref.grad.numpy(), rtol=1e-6, atol=1e-6)
        assert mine.grad.dtype == mine.dtype


@pytest.fixture
def only_fast_paths(monkeypatch):
    """`apply` refused in the wrappers' modules: a call that still works took a fast path."""
    from neurenix import linalg, reductions, shapes

    def refuse(*args, **kwargs):
        raise AssertionError("the general path was taken")
    for module in (linalg, reductions, shapes):
        monkeypatch.setattr(module, "apply", refuse)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("name", list(FAST_CASES))
def test_fast_paths_are_taken(name: str, grad: bool, only_fast_paths) -> None:
    with nx.set_grad_enabled(grad):
        pairs, ours, _ = _run_case(name)
    assert ours is pairs[0][0] if name == "transpose(1, 1)" else ours.requires_grad == grad


def _general(name: str, *xs: Tensor) -> Tensor:
    """What the general path dispatches for FAST_CASES[name] (its single primitive)."""
    x = xs[0]
    return {
        "sum()": lambda: apply("reduce_sum", x, axes=(0, 1)),
        "sum(1)": lambda: apply("reduce_sum", x, axes=(1,)),
        "x @ y": lambda: apply("matmul", x, xs[-1]),
        "reshape(16)": lambda: apply("reshape", x, shape=(16,)),
        "t()": lambda: apply("permute", x, perm=(1, 0)),
        "transpose(0, -1)": lambda: apply("permute", x, perm=(2, 1, 0)),
    }[name]()


@pytest.mark.parametrize("name", ["sum()", "sum(1)", "x @ y", "reshape(16)", "t()",
                                  "transpose(0, -1)"])
def test_fast_paths_give_what_apply_gives(name: str) -> None:
    pairs, ours, _ = _run_case(name)
    xs = [p[0] for p in pairs]
    want = _general(name, *xs)
    got_a, want_a = ours.detach().numpy(), want.detach().numpy()
    np.testing.assert_array_equal(got_a, want_a)
    assert type(ours._data) is np.ndarray and ours._data.dtype == want._data.dtype
    assert ours._data.flags.writeable == want._data.flags.writeable
    assert ours.dtype is want.dtype and ours.requires_grad and ours.grad_fn == want.grad_fn
    assert ours._node.attrs == want._node.attrs and ours._node.versions == want._node.versions
    assert all(a is b for a, b in zip(ours._node.inputs, want._node.inputs))
    assert (ours._view is None) == (want._view is None)
    if ours._view is not None:
        assert ours._view[0] is xs[0] and ours._view[1:] == want._view[1:]


def test_fast_reshape_of_a_non_contiguous_tensor_is_a_copy() -> None:
    x = nx.arange(12.0).reshape(3, 4).t()
    assert x._view is not None
    flat = x.reshape(12)
    assert flat._view is None and not np.may_share_memory(flat._data, x._data)
    np.testing.assert_array_equal(flat.numpy(), np.arange(12.0).reshape(3, 4).T.reshape(12))
    assert x.reshape(4, 3) is x and x.view(-1, 3) is x


def test_fast_views_follow_writes_into_their_base() -> None:
    base = nx.ones(2, 3, requires_grad=True).clone()
    flat, swapped = base.reshape(6), base.t()
    base.mul_(nx.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    np.testing.assert_array_equal(flat.detach().numpy(), [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(swapped.detach().numpy(), [[1, 4], [2, 5], [3, 6]])
    swapped[0, 1] = 10.0
    assert base[1, 0].item() == 10.0
    (swapped.sum() + flat.sum(0)).backward()  # gradients through the written base


def test_fast_sum_is_quiet_and_exact() -> None:
    big = nx.full((2, 2), 3e38)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        assert big.sum().item() == np.inf
        np.testing.assert_array_equal(big.sum(1).numpy(), [np.inf, np.inf])
        assert (big @ big).numpy()[0, 0] == np.inf
    whole = nx.tensor([[1.0, 2.0], [3.0, 4.0]]).sum()
    assert whole.shape == () and type(whole._data) is np.ndarray and whole._data.flags.writeable
    assert whole._data.dtype == np.float32 and whole.item() == 10.0
    zero_d = nx.tensor(2.5, requires_grad=True)
    assert zero_d.sum() is zero_d and zero_d.sum(0) is zero_d  # as before: nothing to reduce
    empty = nx.zeros(0, 3)
    assert empty.sum().item() == 0.0 and empty.sum(0).shape == (3,) and empty.t().shape == (3, 0)


def test_fast_paths_keep_dtype_rules() -> None:
    ints = nx.tensor([[1, 2], [3, 4]], dtype=nx.int32)
    assert (ints @ ints).dtype == nx.int32 and (ints @ ints).numpy().tolist() == [[7, 10],
                                                                                  [15, 22]]
    assert ints.sum().dtype == nx.int64 and ints.sum(1).dtype == nx.int64
    assert nx.ones(2, 2, dtype=nx.bool).sum().dtype == nx.int64
    assert nx.ones(2, 2).sum(dtype=nx.float64).dtype == nx.float64
    assert nx.ones(2, 2, dtype=nx.float64).sum(1).dtype == nx.float64
    assert ints.t().dtype == nx.int32 and ints.reshape(4).dtype == nx.int32
    p = nx.nn.Parameter(nx.ones(2, 2))
    for out in (p @ p, p.sum(), p.sum(0), p.t(), p.reshape(4)):
        assert type(out) is Tensor and out.requires_grad


@pytest.mark.parametrize("call, error, message", [
    (lambda x, y: x @ y.double(), TypeError,
     "matmul: expected both operands to have the same dtype, got float32 and float64"),
    (lambda x, y: x.bool() @ y.bool(), OpError, r"matmul: expected \(\.\.\., m, k\)"),
    (lambda x, y: x @ y[:3], ValueError,
     r"matmul: shapes \(4, 4\) and \(3, 4\) cannot be multiplied \(4x4 and 3x4\)"),
    (lambda x, y: x @ 2.0, TypeError, "matmul: expected two Tensors, got Tensor and float"),
    (lambda x, y: x.reshape(5), ValueError,
     r"reshape: shape \(5,\) is invalid for input of size 16 \(shape \(4, 4\)\)"),
    (lambda x, y: x.reshape(-1, -1), ValueError,
     r"reshape: invalid shape \(-1, -1\) \(at most one -1, others >= 0\)"),
    (lambda x, y: x.view(3, -1), ValueError,
     r"view: shape \(3, -1\) is invalid for input of size 16"),
    (lambda x, y: x.reshape(2.0, 8), TypeError, "reshape: expected a shape of ints"),
    (lambda x, y: x.reshape(True, 16), TypeError, "reshape: expected a shape of ints"),
    (lambda x, y: x.transpose(0, 2), IndexError,
     r"transpose: dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)"),
    (lambda x, y: x.transpose(0, 1.0), TypeError, "transpose: dim must be an int, got float"),
    (lambda x, y: x.sum(2), IndexError,
     r"reduce_sum: dimension out of range \(expected to be in range of \[-2, 1\]"),
    (lambda x, y: x.sum(-3), IndexError, r"reduce_sum: dimension out of range"),
    (lambda x, y: x.sum((0, 0)), ValueError, r"reduce_sum: dim \(0, 0\) repeats a dimension"),
])
def test_fast_paths_leave_errors_to_the_general_path(call, error, message) -> None:
    x, y = nx.ones(4, 4, requires_grad=True), nx.ones(4, 4)
    for _ in range(2):
        with pytest.raises(error, match=message):
            call(x, y)


def test_traced_wrappers_record_every_primitive() -> None:
    def f(x, y):
        return (x @ y).t().reshape(-1).sum() + x.sum(1).sum(0) + x.view(16).sum()

    x, y = nx.randn(4, 4), nx.randn(4, 4)
    compiled = nx.compile(f, backend="reference")
    np.testing.assert_allclose(compiled(x, y).numpy(), f(x, y).numpy(), rtol=1e-5)
    graph = str(compiled.graph)
    for op in ("matmul", "permute", "reshape", "reduce_sum"):
        assert op in graph
