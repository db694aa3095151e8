"""Bad input raises a clear error naming the op, what it expected and what came; NaN propagates.

Every case lists the substrings its message must contain, so a message that loses the op name or
the offending shapes fails here.
"""
from __future__ import annotations

import numpy as np
import pytest
from neurenix.compiler.ops import OpError
from op_helpers import check_lib

import neurenix as nx
from neurenix.dispatch import apply


def _x(*shape, **kw):
    return nx.zeros(*shape, **kw)


def _leaf():
    return nx.ones(3, requires_grad=True)


def _setitem(t, index, value):
    t[index] = value


CASES = [
    # (id, thunk, exception type, substrings of the message)
    ("view incompatible", lambda: _x(2, 3).view(4, 2), ValueError,
     ["view", "(4, 2)", "size 6", "(2, 3)"]),
    ("view -1 incompatible", lambda: _x(2, 3).view(-1, 4), ValueError,
     ["view", "(-1, 4)", "size 6"]),
    ("reshape two -1", lambda: _x(2, 3).reshape(-1, -1), ValueError, ["reshape", "-1"]),
    ("item multi-element", lambda: _x(2, 2).item(), ValueError,
     ["item", "one element", "(2, 2)", "4 elements"]),
    ("backward non-scalar", lambda: (_leaf() * 2).backward(), RuntimeError,
     ["backward", "scalar", "(3,)", "gradient="]),
    ("backward wrong gradient shape", lambda: (_leaf() * 2).backward(nx.ones(2)), ValueError,
     ["backward", "(2,)", "(3,)"]),
    ("backward without grad", lambda: _x(1).backward(), RuntimeError,
     ["backward", "does not require grad"]),
    ("broadcast add", lambda: _x(3, 4) + _x(5), ValueError, ["add", "(3, 4)", "(5,)",
                                                            "broadcast"]),
    ("broadcast mul", lambda: _x(2, 3) * _x(3, 2), ValueError, ["mul", "(2, 3)", "(3, 2)"]),
    ("broadcast where", lambda: nx.where(_x(2) > 0, _x(3), 0.0), ValueError,
     ["where", "(2,)", "(3,)"]),
    ("broadcast_to", lambda: nx.broadcast_to(_x(3), (2, 4)), ValueError,
     ["broadcast_to", "(3,)", "(2, 4)"]),
    ("expand", lambda: _x(3, 2).expand(3, 4), ValueError, ["expand", "(3, 2)", "(3, 4)"]),
    ("matmul inner", lambda: _x(2, 3) @ _x(4, 5), ValueError,
     ["matmul", "(2, 3)", "(4, 5)", "2x3", "4x5"]),
    ("matmul vector", lambda: _x(3) @ _x(4), ValueError, ["matmul", "(3,)", "(4,)"]),
    ("matmul batch", lambda: _x(2, 3, 4) @ _x(3, 4, 5), ValueError,
     ["matmul", "(2,)", "(3,)"]),
    ("matmul 0-d", lambda: nx.tensor(1.0) @ _x(3), ValueError, ["matmul", "1 dimension"]),
    ("matmul dtypes", lambda: _x(2, 2) @ _x(2, 2, dtype=nx.float64), TypeError,
     ["matmul", "float32", "float64"]),
    ("mm rank", lambda: nx.mm(_x(2), _x(2, 2)), ValueError, ["mm", "2-D", "(2,)"]),
    ("int index high", lambda: _x(3, 4)[3], IndexError,
     ["index 3", "out of bounds", "dimension 0", "size 3"]),
    ("int index low", lambda: _x(3, 4)[:, -5], IndexError,
     ["index -5", "dimension 1", "size 4"]),
    ("tensor index", lambda: _x(3, 4)[nx.tensor([0, 3])], IndexError,
     ["index 3", "out of bounds", "size 3"]),
    ("tensor index negative", lambda: _x(3, 4)[:, nx.tensor([-5])], IndexError,
     ["index -5", "dimension 1", "size 4"]),
    ("too many indices", lambda: _x(3, 4)[0, 1, 2], IndexError,
     ["too many indices", "dimension 2", "got 3"]),
    ("index tensors mismatch", lambda: _x(3, 4)[nx.tensor([0, 1]), nx.tensor([0, 1, 2])],
     IndexError, ["index", "(2,)", "(3,)"]),
    ("bool mask shape", lambda: _x(3, 4)[nx.tensor([True, False])], IndexError,
     ["bool mask", "(2,)", "(3,)"]),
    ("bool mask after ellipsis", lambda: _x(2, 3)[..., nx.tensor([True])], IndexError,
     ["bool mask", "(1,)", "(3,)", "dimension 1"]),
    ("two ellipses", lambda: _x(3, 4)[..., ...], IndexError, ["ellipsis"]),
    ("float index tensor", lambda: _x(3)[nx.tensor([0.0])], IndexError,
     ["integer or bool", "float32"]),
    ("bad index type", lambda: _x(3)["a"], IndexError, ["str"]),
    ("negative step", lambda: _x(5)[::-1], ValueError, ["step", "-1", "flip"]),
    ("dim out of range", lambda: _x(2, 3).sum(2), IndexError,
     ["reduce_sum", "out of range", "[-2, 1]", "2"]),
    ("softmax dim", lambda: _x(2, 3).softmax(-3), IndexError, ["softmax", "-3"]),
    ("repeated dim", lambda: _x(2, 3).sum((0, -2)), ValueError, ["reduce_sum", "repeats"]),
    ("permute", lambda: _x(2, 3).permute(0, 0), ValueError, ["permute", "(0, 0)", "(2, 3)"]),
    ("cat", lambda: nx.cat([_x(2, 3), _x(3, 2)], 0), ValueError,
     ["cat", "(2, 3)", "(3, 2)", "dimension 0"]),
    ("stack", lambda: nx.stack([_x(2), _x(3)]), ValueError, ["stack", "(2,)", "(3,)"]),
    ("split", lambda: _x(5).split([2, 2]), ValueError, ["split", "[2, 2]", "size 5"]),
    ("requires_grad int", lambda: nx.tensor([1, 2]).requires_grad_(), TypeError,
     ["requires_grad", "floating", "int64"]),
    ("requires_grad int ctor", lambda: nx.tensor([1, 2], requires_grad=True), TypeError,
     ["requires_grad", "int64"]),
    ("requires_grad bool zeros", lambda: nx.zeros(2, dtype=nx.bool, requires_grad=True),
     TypeError, ["requires_grad", "bool"]),
    ("setitem leaf", lambda: _setitem(_leaf(), 0, 2.0), RuntimeError,
     ["__setitem__", "leaf", "no_grad"]),
    ("copy_ leaf", lambda: _leaf().copy_(nx.zeros(3)), RuntimeError, ["copy_", "leaf"]),
    ("fill_ leaf", lambda: _leaf().fill_(1.0), RuntimeError, ["leaf"]),
    ("zero_ leaf", lambda: _leaf().zero_(), RuntimeError, ["leaf"]),
    ("requires_grad_ off non-leaf", lambda: (_leaf() * 2).requires_grad_(False), RuntimeError,
     ["requires_grad", "leaf"]),
    ("setitem shape", lambda: _setitem(_x(3, 4), 0, nx.ones(3)), ValueError,
     ["__setitem__", "(3,)", "(4,)"]),
    ("copy_ shape", lambda: _x(3).copy_(nx.ones(4)), ValueError, ["copy_", "(4,)", "(3,)"]),
    ("numpy of grad tensor", lambda: _leaf().numpy(), RuntimeError, ["numpy", "detach"]),
    ("truth value", lambda: bool(_x(2)), ValueError, ["ambiguous", "2 elements"]),
    ("len 0-d", lambda: len(nx.tensor(1.0)), TypeError, ["0-d"]),
    ("add string", lambda: _x(2) + "a", TypeError, ["str"]),
    ("unsupported numpy dtype", lambda: nx.tensor(np.zeros(2, np.complex64)), TypeError,
     ["complex64", "float32"]),
    ("object data", lambda: nx.tensor([object()]), TypeError, ["Tensor", "non-numeric"]),
    ("dtype not neurenix", lambda: nx.tensor([1.0], dtype=np.float32), TypeError,
     ["dtype", "neurenix.float32"]),
    ("mean of ints", lambda: nx.tensor([1, 2]).mean(), TypeError, ["mean", "int64"]),
    ("clamp no bounds", lambda: _x(2).clamp(), ValueError, ["clamp", "min", "max"]),
    ("randint range", lambda: nx.randint(3, 3, (2,)), ValueError, ["randint", "low=3",
                                                                   "high=3"]),
    ("randn int dtype", lambda: nx.randn(2, dtype=nx.int64), TypeError, ["randn", "int64"]),
    ("zeros negative", lambda: nx.zeros(2, -1), ValueError, ["zeros", "(2, -1)"]),
    ("zeros float size", lambda: nx.zeros(2.5), TypeError, ["zeros", "shape of ints"]),
    ("manual_seed type", lambda: nx.manual_seed(1.5), TypeError, ["manual_seed", "float"]),
    ("argmax empty", lambda: _x(0).argmax(), ValueError, ["argmax", "(0,)"]),
    ("max empty", lambda: _x(0).max(), ValueError, ["max", "(0,)"]),
    ("to bad keyword", lambda: _x(2).to(foo=1), TypeError, ["to", "foo"]),
    ("unknown device", lambda: _x(2).to("tpu"), ValueError, ["tpu", "cpu"]),
]


@pytest.mark.parametrize("thunk, exc, parts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error(thunk, exc, parts):
    with pytest.raises(exc) as info:
        thunk()
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in the message {message!r}"


PRIMITIVE_CASES = [
    ("add", (nx.float32, (2, 3)), (nx.float64, (2, 3)), {}, ["add", "f32[2,3]", "f64[2,3]"]),
    ("mul", (nx.float32, (2, 3)), (nx.float32, (3,)), {}, ["mul", "f32[2,3]", "f32[3]"]),
    ("div", (nx.int64, (2,)), (nx.int64, (2,)), {}, ["div", "floating", "i64[2]"]),
    ("exp", (nx.int32, (2,)), None, {}, ["exp", "floating", "i32[2]"]),
    ("matmul", (nx.float32, (2, 3)), (nx.float32, (2, 3)), {}, ["matmul", "f32[2,3] @ f32[2,3]"]),
    ("reshape", (nx.float32, (2, 3)), None, {"shape": (5,)}, ["reshape", "(5,)", "6", "5"]),
    ("reduce_sum", (nx.float32, (2, 3)), None, {"axes": (1, 0)}, ["reduce_sum", "sorted"]),
]


@pytest.mark.parametrize("op, a, b, attrs, parts", PRIMITIVE_CASES,
                         ids=[c[0] for c in PRIMITIVE_CASES])
def test_primitive_type_rule_errors_through_dispatch(op, a, b, attrs, parts):
    inputs = [nx.zeros(*s[1], dtype=s[0]) for s in (a, b) if s is not None]
    with pytest.raises(OpError) as info:
        apply(op, *inputs, **attrs)
    assert isinstance(info.value, ValueError)
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"


def test_inplace_on_a_leaf_is_allowed_without_requires_grad():
    x = nx.zeros(3)
    x[1] = 2.0
    x.fill_(1.0)
    assert x.tolist() == [1.0, 1.0, 1.0]


# ---- NaN propagates ---------------------------------------------------------------------------

NAN_DATA = np.array([[np.nan, 1.0, -2.0], [0.5, -0.5, 3.0]], np.float32)

NAN_CASES = [
    # (id, fn, whether the gradient is compared with torch's too)
    ("relu", lambda lib, x: lib.relu(x), True),
    ("sigmoid", lambda lib, x: lib.sigmoid(x), True),
    ("tanh", lambda lib, x: lib.tanh(x), True),
    ("exp", lambda lib, x: lib.exp(x), True),
    ("softmax", lambda lib, x: lib.softmax(x, 1), True),
    ("softmax dim 0", lambda lib, x: lib.softmax(x, 0), True),
    ("log_softmax", lambda lib, x: lib.log_softmax(x, 1), True),
    ("logsumexp", lambda lib, x: lib.logsumexp(x, 1), True),
    ("sum", lambda lib, x: x.sum(), True),
    ("sum dim", lambda lib, x: x.sum(1), True),
    ("mean", lambda lib, x: x.mean(0), True),
    ("amax", lambda lib, x: lib.amax(x, 1), True),
    # torch's full max() hands the whole gradient to the NaN; Neurenix's max() is amax, whose
    # gradient (like torch's amax) is NaN there: forward only
    ("max", lambda lib, x: x.max(), False),
    # torch's clamp gradient is 0 at NaN (the NaN is not "inside" the range), Neurenix's
    # where-composition passes it: forward only
    ("clamp", lambda lib, x: lib.clamp(x, -1.0, 1.0), False),
    ("matmul", lambda lib, x: x @ x.T, True),
]


@pytest.mark.parametrize("fn, grad", [c[1:] for c in NAN_CASES], ids=[c[0] for c in NAN_CASES])
def test_nan_propagates_like_torch(fn, grad):
    out = check_lib(None, fn, data=[NAN_DATA], grad=grad)[0]
    assert np.isnan(out.detach().numpy()).any(), "NaN vanished"


@pytest.mark.parametrize("name", ["relu", "sigmoid", "softmax", "sum"])
def test_nan_stays_nan_and_other_rows_stay_finite(name):
    x = nx.tensor(NAN_DATA)
    fn = {"relu": nx.relu, "sigmoid": nx.sigmoid, "softmax": lambda t: nx.softmax(t, 1),
          "sum": lambda t: t.sum(1)}[name]
    out = fn(x).numpy()
    assert np.isnan(out[0]).any() and np.isfinite(out[1]).all()
    assert np.isnan(out.reshape(2, -1)[0, 0])
