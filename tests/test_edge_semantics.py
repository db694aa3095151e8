"""Edge semantics where eager, compiled code and PyTorch must agree (issue 7, item 5).

Every case runs eagerly, compiled with each backend ("reference": the graph on the NumPy
references; "llvm": native code) and in PyTorch, forward and gradients: empty tensors through
convolutions, pooling, matmuls and reductions; exact integer floor division and remainder
(INT_MIN // -1, division by zero raising ZeroDivisionError); pow at its special values;
logsumexp, softmax and log_softmax with infinities and empty dimensions; where the
gradient of max/amax/min/amin goes when the input holds a nan; the gradients of maximum,
minimum, abs and clamp at nan, ties, signed zeros and infinities; float -> integer casts of
nan, infinities and out-of-range values (x86's INT_MIN); exact, wrapping integer pow; sign at
nan and -0.0; bool `-` and `**` raising; binary cross entropy's gradient at 0 and 1;
BatchNorm with track_running_stats switched off; and the signed zeros of maximum, minimum and
relu.

`assert_same` is strict where the semantics are: the same nan positions, the same infinities
and signed zeros, and close values elsewhere.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from neurenix.compiler import GraphBuilder, evaluate
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.types import TensorType, dtype_from_numpy
from test_compile_parity import LOOSE, LOOSE_GRAD, check_compiled

import neurenix as nx

BACKENDS = ("reference", "llvm")
NAN, INF = float("nan"), float("inf")
I64_MIN, I64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max
I32_MIN, I32_MAX = np.iinfo(np.int32).min, np.iinfo(np.int32).max


# ---- harness --------------------------------------------------------------------------------


def assert_same(got: np.ndarray, want: np.ndarray, what: str, rtol: float = 1e-5,
                mask: np.ndarray | None = None, signed_zeros: bool = True) -> None:
    """Equal shapes and dtypes; nan where `want` is nan; infinities and zeros exactly (the
    sign of a zero too, with `signed_zeros`); other values within `rtol` (exactly for
    integers).  `mask` (where given) selects the elements compared."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if mask is not None:
        got, want = got[mask], want[mask]
    if want.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    special = np.isnan(want) | np.isinf(want) | (want == 0)
    same = np.where(np.isnan(want), np.isnan(got),
                    (got == want) & ((np.signbit(got) == np.signbit(want)) | (not signed_zeros)))
    bad = special & ~same
    assert not bad.any(), f"{what}: got {got[bad].tolist()}, want {want[bad].tolist()}"
    np.testing.assert_allclose(got[~special], want[~special], rtol=rtol, atol=0, err_msg=what)


def _leaves(value) -> list:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _upstream(shapes: Sequence[tuple[int, ...]], seed: int) -> list[np.ndarray]:
    """Seeded upstream gradients, away from zero (a zero would hide a nan or an inf)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.5, 1.5, s) * rng.choice([-1.0, 1.0], s) for s in shapes]


def run_neurenix(fn: Callable, arrays: Sequence[np.ndarray], backend: str | None,
                 grad: bool = True, seed: int = 1) -> tuple[list[np.ndarray], list]:
    """Outputs and input gradients of `fn`, eager (backend None) or compiled."""
    f = fn if backend is None else nx.compile(fn, backend=backend)
    xs = [nx.tensor(a, requires_grad=grad and a.dtype.kind == "f") for a in arrays]
    outs = _leaves(f(*xs))
    loss = None
    for o, g in zip(outs, _upstream([tuple(o.shape) for o in outs], seed)):
        if o.requires_grad:
            term = (o * nx.tensor(g.astype(o.dtype.np_type))).sum()
            loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()
    grads = [x.grad.numpy().copy() if x.grad is not None else None for x in xs]
    return [o.detach().numpy().copy() for o in outs], grads


def run_torch(fn: Callable, arrays: Sequence[np.ndarray], grad: bool = True,
              seed: int = 1) -> tuple[list[np.ndarray], list]:
    xs = [torch.tensor(a, requires_grad=grad and a.dtype.kind == "f") for a in arrays]
    outs = _leaves(fn(*xs))
    loss = None
    for o, g in zip(outs, _upstream([tuple(o.shape) for o in outs], seed)):
        if o.requires_grad:
            term = (o * torch.tensor(g, dtype=o.dtype)).sum()
            loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()
    grads = [x.grad.numpy() if x.grad is not None else None for x in xs]
    return [o.detach().numpy() for o in outs], grads


def check_everywhere(fn: Callable, arrays: Sequence[np.ndarray], torch_fn: Callable | None = None,
                     *, grad: bool = True, rtol: float = 1e-5,
                     grad_masks: Sequence[np.ndarray | None] | None = None,
                     signed_zeros: bool = True) -> None:
    """`fn` eager and compiled with every backend against `torch_fn` (default `fn`, given the
    library as first argument when it takes one): outputs and gradients, `assert_same`
    (the outputs' zeros signed as PyTorch's with `signed_zeros`)."""
    want, want_g = run_torch(torch_fn or fn, arrays, grad)
    for backend in (None, *BACKENDS):
        label = backend or "eager"
        got, got_g = run_neurenix(fn, arrays, backend, grad)
        assert len(got) == len(want), f"{label}: number of outputs"
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, f"{label}: output {i}", rtol, signed_zeros=signed_zeros)
        for i, (a, b) in enumerate(zip(got_g, want_g)):
            if b is None:
                assert a is None or not np.any(a), f"{label}: input {i} has a gradient"
                continue
            assert a is not None, f"{label}: input {i} has no gradient"
            mask = grad_masks[i] if grad_masks is not None else None
            # a gradient's zeros are signed by the order of products, not by the semantics
            assert_same(a, b, f"{label}: grad of input {i}", rtol, mask, signed_zeros=False)


def lib(fn: Callable) -> dict:
    """`fn(L, *xs)` as a Neurenix function and its PyTorch twin."""
    return dict(fn=lambda *xs: fn(nx, *xs), torch_fn=lambda *xs: fn(torch, *xs))


def floats(*shape: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---- 1. empty tensors -----------------------------------------------------------------------

EMPTY_FUNCTIONS = [
    ("matmul_rows", lambda L, a, b: a @ b, [floats(0, 3), floats(3, 4)]),
    ("matmul_inner", lambda L, a, b: a @ b, [floats(2, 0), floats(0, 4)]),
    ("matmul_columns", lambda L, a, b: a @ b, [floats(2, 3), floats(3, 0)]),
    ("bmm_batch", lambda L, a, b: a @ b, [floats(0, 2, 3), floats(0, 3, 4)]),
    ("bmm_inner_batch", lambda L, a, b: a @ b, [floats(2, 0, 2, 3), floats(2, 0, 3, 4)]),
    ("sum_over_full_axis", lambda L, a: a.sum(1), [floats(0, 5)]),
    ("sum_over_empty_axis", lambda L, a: a.sum(0), [floats(0, 5)]),
    ("prod_over_empty_axis", lambda L, a: a.prod(0), [floats(0, 5)]),
    ("mean_over_empty_axis", lambda L, a: a.mean(0), [floats(0, 5)]),
    ("amax_over_full_axis", lambda L, a: a.amax(1), [floats(0, 5)]),
    ("max_dim_over_full_axis", lambda L, a: a.max(1)[0], [floats(0, 5)]),
    ("argmax_over_full_axis", lambda L, a: a.argmax(1), [floats(0, 5)]),
    ("softmax_empty_dim", lambda L, a: L.softmax(a, 1), [floats(3, 0)]),
    ("softmax_empty_other", lambda L, a: L.softmax(a, 1), [floats(0, 3)]),
    ("log_softmax_empty_dim", lambda L, a: L.log_softmax(a, 1), [floats(3, 0)]),
    ("log_softmax_empty_other", lambda L, a: L.log_softmax(a, 0), [floats(3, 0)]),
    ("logsumexp_empty_dim", lambda L, a: L.logsumexp(a, 1), [floats(3, 0)]),
    ("logsumexp_empty_other", lambda L, a: L.logsumexp(a, 1), [floats(0, 3)]),
    ("concat_with_empty", lambda L, a, b: L.cat([a, b], 0) * 2, [floats(0, 3), floats(2, 3)]),
    # a reduction of a concatenation of empty parts: nothing to read, each result the identity
    ("sum_of_empty_concat", lambda L, a: L.cat([a, a], 0).sum(), [floats(0)]),
    ("sum_of_empty_concat_2d", lambda L, a: L.cat([a, a], 1).sum(), [floats(2, 0)]),
    ("sum_over_empty_concat_axis", lambda L, a: L.cat([a, a], 1).sum(1), [floats(2, 0)]),
    ("sum_over_empty_concat_rows", lambda L, a: (L.cat([a, a], 0) * 2).sum(0),
     [floats(0, 3)]),
    ("prod_over_empty_concat_axis", lambda L, a: L.cat([a, a], 1).prod(1), [floats(2, 0)]),
    ("mean_of_empty_concat", lambda L, a: L.cat([a, a], 1).mean() + a.sum(), [floats(2, 0)]),
    ("logsumexp_over_empty_concat", lambda L, a: L.logsumexp(L.cat([a, a], 1), 1),
     [floats(3, 0)]),
]


@pytest.mark.parametrize("name, fn, data", EMPTY_FUNCTIONS, ids=[c[0] for c in EMPTY_FUNCTIONS])
def test_empty_tensors_through_functions(name, fn, data):
    check_compiled(**lib(fn), inputs=data)


EMPTY_MODULES = [
    ("conv1d", lambda L: L.nn.Conv1d(3, 4, 3), (0, 3, 8)),
    ("conv2d", lambda L: L.nn.Conv2d(3, 4, 3, padding=1), (0, 3, 6, 6)),
    ("conv2d_strided_grouped", lambda L: L.nn.Conv2d(4, 4, 3, stride=2, groups=2),
     (0, 4, 7, 7)),
    ("conv_relu_linear", lambda L: L.nn.Sequential(L.nn.Conv2d(3, 4, 3), L.nn.ReLU(),
                                                   L.nn.Flatten(), L.nn.Linear(64, 2)),
     (0, 3, 6, 6)),
    ("max_pool2d", lambda L: L.nn.MaxPool2d(2), (0, 3, 6, 6)),
    ("avg_pool2d", lambda L: L.nn.AvgPool2d(2), (0, 3, 6, 6)),
    ("max_pool1d", lambda L: L.nn.MaxPool1d(2), (0, 3, 6)),
]


@pytest.mark.parametrize("name, make, shape", EMPTY_MODULES, ids=[c[0] for c in EMPTY_MODULES])
def test_empty_batch_through_layers(name, make, shape):
    """An empty batch gives the empty result, and zero weight gradients, compiled as eager."""
    torch.manual_seed(0)
    reference = make(torch)
    model = make(nx)
    model.load_state_dict({k: nx.tensor(v.detach().numpy())
                           for k, v in reference.state_dict().items()})
    check_compiled(model, [floats(*shape)], torch_fn=reference)


def test_empty_batch_matmul_lowers_to_no_kernel():
    """A batched matmul with an empty batch has an empty iteration domain: lowering emits no
    kernel for it (it used to drop the batch axis and fail on the epilogue)."""
    gb = GraphBuilder("empty_batch")
    a = gb.input("a", TensorType((0, 1, 4, 3), dtype_from_numpy(np.dtype(np.float32))))
    b = gb.input("b", TensorType((0, 1, 3, 5), dtype_from_numpy(np.dtype(np.float32))))
    y = gb.apply("matmul", a, b)
    graph = gb.build([gb.apply("exp", gb.apply("add", y, y))])
    schedule = lower(graph)
    assert schedule.kernels == []
    (out,) = run_schedule(schedule, [floats(0, 1, 4, 3), floats(0, 1, 3, 5)])
    assert out.shape == (0, 1, 4, 5)


def test_reduction_of_an_empty_concat_lowers_to_its_identity():
    """A reduction over an empty extent reads nothing, so an input with nothing to read (a
    concat of empty parts) lowers too: each result is the identity (it used to fail with
    "concat reads nothing")."""
    f32 = dtype_from_numpy(np.dtype(np.float32))
    gb = GraphBuilder("empty_concat")
    a = gb.input("a", TensorType((2, 0), f32))
    c = gb.apply("concat", a, gb.apply("exp", a), axis=1)
    graph = gb.build([gb.apply("reduce_sum", c, axes=(1,)), gb.apply("reduce_prod", c, axes=(1,)),
                      gb.apply("reduce_sum", c, axes=(0, 1))])
    got = run_schedule(lower(graph), [floats(2, 0)])
    for out, want in zip(got, ([0.0, 0.0], [1.0, 1.0], 0.0)):
        np.testing.assert_array_equal(out, np.array(want, np.float32))


# ---- 2. integer floor division and remainder ------------------------------------------------

DIVIDENDS = [I64_MIN, I64_MIN + 1, -16777217, -7, -6, -1, 0, 1, 5, 7, 16777217, 2 ** 53 + 1,
             I64_MAX]
DIVISORS = [I64_MIN, -16777216, -3, -2, -1, 1, 2, 3, 7, I64_MAX]


def _grid(dividends, divisors, dtype) -> list[np.ndarray]:
    a, b = np.meshgrid(np.array(dividends, dtype), np.array(divisors, dtype), indexing="ij")
    return [a.copy(), b.copy()]


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_integer_floor_division_is_exact(dtype):
    """16777217 // 1 is 16777217 (it was computed through float32); INT_MIN // -1 wraps to
    INT_MIN and INT_MIN % -1 is 0, as in PyTorch; the remainder takes the divisor's sign."""
    info = np.iinfo(dtype)
    clip = lambda v: [int(np.clip(x, info.min, info.max)) for x in v]  # noqa: E731
    data = _grid(clip(DIVIDENDS), clip(DIVISORS), dtype)
    check_everywhere(lambda a, b: (a // b, a % b, a // 3, a % -2, a // 4, a % 8, 7 // b,
                                   -7 % b), data, grad=False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_floor_division_and_remainder_match_pytorch_bits(dtype):
    """Float // and % are PyTorch's: floor of the exact quotient, and fmod moved into the
    divisor's sign (1e10 % 3.3 is not 0; -4 % 2 is -0.0; x // 0 is x / 0)."""
    a = np.array([-4, 4, -4, 4, 5.5, -5.5, 1e10, 0, -0.0, 7, -7, INF, -INF, NAN, 3, 1e-30],
                 dtype)
    b = np.array([2, 2, -2, -2, 0, 0, 3.3, -1, 1, 0.1, 0.1, 3, 2, 1, INF, 1e30], dtype)
    check_everywhere(lambda x, y: (x // y, x % y), [a, b], grad=False, rtol=0)


def test_remainder_gradient_matches_pytorch():
    a = np.array([5.5, -5.5, 7.25, -0.5, 3.0], np.float32)
    b = np.array([2.0, 2.0, -3.0, 0.25, 1.5], np.float32)
    check_everywhere(lambda x, y: x % y, [a, b])


@pytest.mark.parametrize("op, name", [(lambda a, b: a // b, "floor_divide"),
                                      (lambda a, b: a % b, "remainder")])
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_integer_division_by_zero_raises_eagerly(op, name, dtype):
    a = nx.tensor(np.array([3, 4, 5], dtype))
    with pytest.raises(ZeroDivisionError, match=f"{name}: integer division by zero"):
        op(a, nx.tensor(np.array([1, 0, 2], dtype)))
    with pytest.raises(ZeroDivisionError, match=name):
        op(a, 0)
    with pytest.raises(ZeroDivisionError, match=name):
        op(7, nx.tensor(np.array([0, 1], dtype)))
    with pytest.raises(ZeroDivisionError, match=name):
        op(a, nx.tensor(np.array(0, dtype)))
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):  # what PyTorch raises
        op(torch.tensor(np.array([3, 4], dtype)), torch.tensor(np.array([1, 0], dtype)))
    empty = op(nx.tensor(np.zeros((0, 2), dtype)), nx.tensor(np.array([0, 1], dtype)))
    assert empty.shape == (0, 2)  # nothing is divided: no error, as in PyTorch


def test_float_division_by_zero_does_not_raise():
    x = np.array([3.0, -3.0, 0.0], np.float32)
    check_everywhere(lambda t: (t // 0.0, t % 0.0, t // 0, 5 // (t * 0)), [x], grad=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op, name", [(lambda a, b: a // b, "floor_divide"),
                                      (lambda a, b: a % b, "remainder")])
def test_integer_division_by_zero_raises_from_compiled_code(backend, op, name):
    """The compiled call raises eager's error after the program ran (generated code selects a
    safe divisor, so it never traps), and answers again once the divisor is fine."""
    f = nx.compile(lambda a, b: op(a, b) + 1, backend=backend)
    a = nx.tensor(np.array([I64_MIN, 4, 5]))
    with pytest.raises(ZeroDivisionError, match=f"{name}: integer division by zero"):
        f(a, nx.tensor(np.array([-1, 0, 2])))
    got = f(a, nx.tensor(np.array([-1, 3, 2]))).numpy()
    want = op(torch.tensor([I64_MIN, 4, 5]), torch.tensor([-1, 3, 2])) + 1
    np.testing.assert_array_equal(got, want.numpy())


def test_division_references_never_warn():
    """The NumPy references (eager, the reference backend, constant folding) divide by a safe
    divisor: no overflow or division warning, even without np.errstate."""
    a = np.array([I64_MIN, I64_MIN, 5, -5, 0], np.int64)
    b = np.array([-1, 0, 0, -1, 0], np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = REGISTRY["floordiv"].impl(a, b)
        r = REGISTRY["remainder"].impl(a, b)
        r32 = REGISTRY["remainder"].impl(a.astype(np.int32) // 2, b.astype(np.int32))
    np.testing.assert_array_equal(q, [I64_MIN, 0, 0, 5, 0])
    np.testing.assert_array_equal(r, [0, 0, 0, 0, 0])
    assert r32.dtype == np.int32


def test_division_kernels_agree_with_the_references():
    """kernel_eval (the kernel IR's meaning) and the references agree on the wrapping and
    zero-divisor cases, for int32 and int64."""
    for dtype in (np.int64, np.int32):
        info = np.iinfo(dtype)
        a = np.array([info.min, info.min, info.max, -7, 7, -7, 0, 9], dtype)
        b = np.array([-1, 0, -1, 2, -2, -2, 0, info.min], dtype)
        gb = GraphBuilder("divide")
        t = TensorType(a.shape, dtype_from_numpy(a.dtype))
        x, y = gb.input("x", t), gb.input("y", t)
        graph = gb.build([gb.apply("floordiv", x, y), gb.apply("remainder", x, y)])
        got = run_schedule(lower(graph), [a, b])
        want = evaluate(graph, [a, b])
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


# ---- 3. pow at its special values -----------------------------------------------------------

BASES = [-INF, -2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0, INF, NAN]
EXPONENTS = [-INF, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, INF, NAN]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pow_with_a_number_exponent_is_pytorchs(dtype):
    """x ** e for a Python number e: PyTorch's kernel computes 0.5 as sqrt, so (-inf) ** 0.5
    is nan and (-0.0) ** 0.5 is -0.0 (C's pow: inf, 0.0); -0.5 is 1 / sqrt.  Gradients are
    PyTorch's e * x ** (e - 1), except at x = -inf for e = 1.5, where PyTorch's gradient
    (1.5 * sqrt(-inf) = nan) is not C's pow (1.5 * pow(-inf, 0.5) = inf)."""
    x = np.array(BASES, dtype)
    fn = lambda t: tuple(t ** e for e in EXPONENTS)  # noqa: E731
    check_everywhere(fn, [x], grad_masks=[x != -INF])
    check_everywhere(lambda t: t ** 1.5 + t ** -2.0, [x[1:]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pow_with_a_tensor_exponent_is_c_pow(dtype):
    """x ** y for tensors is C's pow in PyTorch, at every special value, whatever NumPy's
    stride-0 shortcut would compute; gradients to both operands match too."""
    x, y = np.meshgrid(np.array(BASES, dtype), np.array(EXPONENTS, dtype), indexing="ij")
    check_everywhere(lambda a, b: a ** b, [x.copy(), y.copy()])
    check_everywhere(lambda a, b: a ** b, [np.array(BASES, dtype)[:, None],
                                           np.full((1, 3), 0.5, dtype)])


# ---- 4. logsumexp, softmax and log_softmax with infinities ----------------------------------

ROWS = np.array([[-INF, -INF, -INF, -INF],    # PyTorch: -inf, gradient nan
                 [1.0, INF, 2.0, 0.0],        # inf; gradient 0 but nan at the inf
                 [INF, INF, 1.0, -INF],
                 [-INF, INF, 0.0, 1.0],
                 [1.0, NAN, INF, 0.0],        # nan
                 [1.0, 2.0, 3.0, -INF],       # finite, -inf gets no gradient
                 [-1e30, 1e30, 0.5, 2.0]], np.float32)


@pytest.mark.parametrize("keepdim", [False, True])
def test_logsumexp_of_infinite_rows(keepdim):
    check_everywhere(lambda t: t.logsumexp(1, keepdim=keepdim), [ROWS])
    check_everywhere(lambda t: t.logsumexp(0), [ROWS[[0, 5]]])


def test_softmax_and_log_softmax_of_infinite_rows():
    check_everywhere(**lib(lambda L, t: (L.softmax(t, 1), L.log_softmax(t, 1))),
                     arrays=[ROWS])
    check_everywhere(lambda t: (nx.nn.functional.log_softmax(t, dim=0),),
                     [ROWS[[5, 6]]],
                     torch_fn=lambda t: (torch.nn.functional.log_softmax(t, dim=0),))


# ---- 5. the gradient of max with nans -------------------------------------------------------

WITH_NANS = np.array([[1.0, NAN, 3.0, NAN],
                      [3.0, 3.0, 1.0, 0.0],
                      [2.0, -1.0, 2.0, 2.0],
                      [NAN, 0.5, -INF, INF]], np.float32)
NO_NANS = WITH_NANS[1:3]

MAX_CASES = [
    # max()/min(): the gradient is shared by the nans when the result is nan, else by the ties
    ("max", lambda L, t: t.max()),
    ("min", lambda L, t: t.min()),
    # amax/amin: (g / count) * (x == result): nan over a slice holding a nan, ties shared
    ("amax", lambda L, t: t.amax()),
    ("amin", lambda L, t: t.amin()),
    ("amax_dim", lambda L, t: t.amax(1)),
    ("amin_dims_keepdim", lambda L, t: t.amin((0, 1), keepdim=True)),
    # ... of computed values too (a traced intermediate never reports requires_grad)
    ("amin_dim_of_product", lambda L, t: (t * 2).amin(1)),
    ("amin_of_abs", lambda L, t: t.abs().amin(0)),
    ("amax_dim_of_exp", lambda L, t: t.exp().amax(1)),
    ("amax_dim_of_relu", lambda L, t: L.relu(t).amax(1, keepdim=True)),
    ("amax_of_neg", lambda L, t: (-t).amax()),
    ("max_of_product", lambda L, t: (t * 2).max()),
    # a nan reaching amax/amin as the upstream gradient: nan over the whole slice
    ("amin_of_amin", lambda L, t: t.amin(1).amin()),
    ("amax_of_amin_of_product", lambda L, t: (t * 3).amin(0).amax()),
    # max(dim)/min(dim): all of it at the index returned (the first nan, else the first tie)
    ("max_dim", lambda L, t: t.max(1)[0]),
    ("min_dim_keepdim", lambda L, t: t.min(0, keepdim=True)[0]),
    ("max_dim_indices", lambda L, t: t.max(1)[1]),
]


@pytest.mark.parametrize("name, fn", MAX_CASES, ids=[c[0] for c in MAX_CASES])
@pytest.mark.parametrize("data", [WITH_NANS, NO_NANS], ids=["nans", "ties"])
def test_max_gradient_with_nans_and_ties(name, fn, data):
    check_everywhere(**lib(fn), arrays=[data])


@pytest.mark.parametrize("name", ["amax", "amin", "max", "min"])
def test_extreme_gradient_with_nan_and_inf_upstream(name):
    """amax/amin: (g / count) * (x == result), so a nan upstream gradient is nan over its
    slice and an infinite one nan off the extremes; max()/min() write g / count at the
    extremes only."""
    upstream = np.array([NAN, INF, -INF, 2.0], np.float32)
    if name in ("amax", "amin"):
        fn = lambda L, t: getattr(t * 2, name)(1) * L.tensor(upstream)  # noqa: E731
    else:
        fn = lambda L, t: getattr(t * 2, name)() * L.tensor(upstream)  # noqa: E731
    for data in (WITH_NANS, WITH_NANS[[1, 2, 1, 2]]):
        check_everywhere(**lib(fn), arrays=[data])


# ---- 6. elementwise gradients at nan, ties, signed zeros and infinities ---------------------

SPECIALS = [NAN, -INF, -1.0, -0.5, -0.0, 0.0, 0.25, 0.5, 1.0, INF]
PAIRS = [a.ravel() for a in np.meshgrid(np.array(SPECIALS, np.float32),
                                        np.array(SPECIALS, np.float32), indexing="ij")]


@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_maximum_minimum_gradient_at_nans_and_ties(op):
    """PyTorch's rule: where(a == b, g / 2, g), 0 where the operand loses; a nan on either
    side sends the whole gradient to both.  (Which zero a tie of -0.0 and 0.0 gives is not
    compared: PyTorch returns the first operand, NumPy the second.)"""
    check_everywhere(**lib(lambda L, a, b: getattr(L, op)(a, b)), arrays=PAIRS,
                     signed_zeros=False)
    check_everywhere(**lib(lambda L, a, b: getattr(L, op)(a * 2, -b)), arrays=PAIRS,
                     signed_zeros=False)


@pytest.mark.parametrize("name, fn", [
    ("abs", lambda L, x: L.abs(x)),
    ("abs_of_product", lambda L, x: L.abs(x * 2)),
    ("clamp", lambda L, x: L.clamp(x, -0.5, 0.5)),
    ("clamp_of_product", lambda L, x: L.clamp(x * 2, -1.0, 1.0)),
    ("clamp_min", lambda L, x: L.clamp(x, min=0.0)),
    ("clamp_min_negative_zero", lambda L, x: L.clamp(x, min=-0.0)),
    ("clamp_max", lambda L, x: L.clamp(x, max=0.0)),
    ("clamp_max_of_product", lambda L, x: L.clamp(x * 2, max=0.5)),
    ("clamp_empty_range", lambda L, x: L.clamp(x, 0.5, 0.5)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_unary_gradient_at_specials(name, fn):
    """abs: g * sgn(x), 0 at +-0 and at nan; clamp: g inside the closed range (the bounds
    included), 0 outside and at nan, whose value stays nan."""
    check_everywhere(**lib(fn), arrays=[np.array(SPECIALS, np.float32)])


def test_clamp_is_free_in_the_compiled_forward():
    """clamp's zero gradient at nan costs the compiled forward nothing: once stop_gradient is
    gone, its `where(x != x, x, x)` folds to x, leaving a compare and a select per bound."""
    from neurenix.compiler.pipeline import build

    f = nx.compile(lambda x: nx.clamp(x, -0.5, 0.5), backend="reference")
    with nx.no_grad():
        f(nx.zeros(3))
    graph, _ = build(f.graph, "reference")
    ops = sorted(n.op for n in graph.nodes if n not in graph.inputs)
    assert ops == ["full", "full", "gt", "lt", "where", "where"]


# ---- 7. float -> integer casts --------------------------------------------------------------

CAST_SOURCES = np.array([NAN, INF, -INF, 1e20, -1e20, 3e9, -3e9, 2.5, -2.5, 0.9, -0.9, -0.0,
                         2.0 ** 31, -2.0 ** 31, 2.0 ** 31 - 128, 2.0 ** 62, 2.0 ** 63, -2.0 ** 63,
                         -2.0 ** 63 - 2.0 ** 12, 16777217.0])


@pytest.mark.parametrize("src", [np.float32, np.float64], ids=lambda t: t.__name__)
@pytest.mark.parametrize("name, fn", [
    ("long", lambda L, t: t.long()),
    ("int", lambda L, t: t.int()),
    ("to_int32", lambda L, t: t.to(L.int32)),
    ("bool", lambda L, t: t.bool()),
    # a cast inside a fused kernel, and one feeding integer arithmetic
    ("long_of_product", lambda L, t: (t * 2).long()),
    ("int_plus_one", lambda L, t: t.int() + 1),
    ("long_of_max", lambda L, t: L.maximum(t, t * 0.5).long() * 3),
], ids=lambda v: v if isinstance(v, str) else "")
def test_float_to_integer_cast_of_nan_inf_and_out_of_range(src, name, fn):
    """x86's conversion, as PyTorch on x86: truncation in range; INT_MIN of the target for
    nan, +-inf and values out of range (the llvm backend used to saturate, nan to 0)."""
    data = CAST_SOURCES.astype(src)
    data = np.concatenate([data, data[::-1], data])  # long enough for a vector loop
    check_everywhere(**lib(fn), arrays=[data], grad=False)


def test_cast_in_a_lowered_kernel():
    """The kernel-level oracle (kernel_eval) converts as the primitive does."""
    for src, dst in ((np.float32, np.int64), (np.float64, np.int32), (np.float32, np.int32)):
        gb = GraphBuilder("cast")
        a = gb.input("a", TensorType((CAST_SOURCES.size,), dtype_from_numpy(np.dtype(src))))
        to = dtype_from_numpy(np.dtype(dst)).name
        graph = gb.build([gb.apply("cast", a, dtype=to)])
        data = CAST_SOURCES.astype(src)
        want = torch.tensor(data).to(getattr(torch, to)).numpy()
        (got,) = run_schedule(lower(graph), [data])
        np.testing.assert_array_equal(got, want)
        (got,) = evaluate(graph, [data])
        np.testing.assert_array_equal(got, want)


# ---- 8. integer pow --------------------------------------------------------------------------


def _wide_ints(dtype, n: int, seed: int) -> np.ndarray:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)


def _pow_operands(dtype) -> list[np.ndarray]:
    """Small bases and exponents (negative ones included), then random full-width ones."""
    bases = np.array([0, 0, 1, 1, -1, -1, -1, 2, -2, 3, 3000000, 7, -5, 2, 0], dtype)
    exps = np.array([-1, 2, -7, 0, -3, -4, 0, 62, 63, 40, 3, -2, 5, 64, 0], dtype)
    exps = np.where(exps > np.iinfo(dtype).max // 2 ** 32 + 64, 1, exps).astype(dtype)
    return [np.concatenate([bases, np.tile(np.arange(-4, 5, dtype=dtype), 4),
                            _wide_ints(dtype, 40, 1)]),
            np.concatenate([exps, np.repeat(np.array([-2, 0, 1, 5], dtype), 9),
                            _wide_ints(dtype, 40, 2)])]


@pytest.mark.parametrize("dtype", [np.int32, np.int64], ids=lambda t: t.__name__)
def test_integer_pow_with_a_tensor_exponent_is_exact_and_wraps(dtype):
    """PyTorch's powi: squaring in wrapping arithmetic; a negative exponent gives 1 for 1,
    +-1 for -1 and 0 otherwise (0 ** -1 is 0)."""
    check_everywhere(**lib(lambda L, a, b: a ** b), arrays=_pow_operands(dtype))
    check_everywhere(**lib(lambda L, a, b: L.pow(a * 1, b) + 1), arrays=_pow_operands(dtype))


@pytest.mark.parametrize("name, fn, data", [
    ("zero_base", lambda L, t: 0 ** t, [np.array([-1, 2, 0, -5, 3])]),
    ("two_base_int32", lambda L, t: 2 ** t, [np.array([-1, 0, 1, 30, 31, 32, 40], np.int32)]),
    ("wraps", lambda L, t: t ** 3, [np.array([3000000, -3000000, 2 ** 21, 7])]),
    ("int32_wraps", lambda L, t: t ** 5, [np.array([100000, -7, 3, 1 << 7], np.int32)]),
    ("zero_exponent", lambda L, t: t ** 0, [np.array([0, -3, 5])]),
    ("one_exponent", lambda L, t: t ** 1 + t, [np.array([0, -3, 5])]),
    ("large_exponent", lambda L, t: t ** 12345678901, [np.array([0, 1, -1, 2, 3, -3, 5])]),
    ("bool_base", lambda L, t: t ** 2, [np.array([True, False])]),
    ("float_exponent", lambda L, t: t ** 2.0, [np.array([3, -2])]),
    ("int_tensor_float_tensor", lambda L, t: t ** L.tensor([0.5, 2.0]), [np.array([4, -2])]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_integer_pow_special_cases(name, fn, data):
    check_everywhere(**lib(fn), arrays=data)


def test_integer_pow_number_exponent_matches_torch_bit_for_bit():
    """A Python-int exponent is unrolled over its bits into wrapping products."""
    base = np.concatenate([np.arange(-5, 6), _wide_ints(np.int64, 30, 3)])
    for e in [*range(0, 70), 2 ** 62 + 1, 2 ** 63 - 1]:
        want = (torch.tensor(base) ** e).numpy()
        np.testing.assert_array_equal((nx.tensor(base) ** e).numpy(), want, err_msg=str(e))
        small = base.astype(np.int32)
        if e < 2 ** 31:
            np.testing.assert_array_equal((nx.tensor(small) ** e).numpy(),
                                          (torch.tensor(small) ** e).numpy(), err_msg=str(e))
    f = nx.compile(lambda t: t ** 29 - t ** 64, backend="llvm")
    np.testing.assert_array_equal(f(nx.tensor(base)).numpy(),
                                  (torch.tensor(base) ** 29 - torch.tensor(base) ** 64).numpy())


def _raises_everywhere(fn: Callable, arrays: Sequence[np.ndarray], error, match: str) -> None:
    """`fn` raises `error` eagerly and when compiled with each backend (at trace time)."""
    for backend in (None, *BACKENDS):
        f = fn if backend is None else nx.compile(fn, backend=backend)
        with pytest.raises(error, match=match):
            f(*(nx.tensor(a) for a in arrays))


@pytest.mark.parametrize("dtype", [np.int32, np.int64], ids=lambda t: t.__name__)
def test_integer_pow_of_a_negative_number_exponent_raises(dtype):
    data = [np.array([2, 3], dtype)]
    with pytest.raises(RuntimeError, match="negative integer powers"):
        torch.tensor(data[0]) ** -1
    _raises_everywhere(lambda t: t ** -1, data, ValueError, "negative integer powers")
    _raises_everywhere(lambda t: nx.pow(t, -3), data, ValueError, "negative integer powers")
    _raises_everywhere(lambda t: t ** (2 ** 63), data, ValueError, "does not fit")


# ---- 9. sign ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64],
                         ids=lambda t: t.__name__)
def test_sign_at_nan_and_signed_zeros(dtype):
    """(x > 0) - (x < 0), as PyTorch: 0 at nan and +0 (not -0) at -0.0."""
    data = np.array(SPECIALS * 3 if np.dtype(dtype).kind == "f" else [-3, 0, 5] * 9, dtype)
    check_everywhere(**lib(lambda L, t: L.sign(t)), arrays=[data])
    check_everywhere(**lib(lambda L, t: L.sign(t * 2) * t), arrays=[data])


def test_sign_maximum_and_integer_pow_in_lowered_kernels():
    """The kernel-level oracle (kernel_eval) agrees with the primitives: sign at nan and
    -0.0, maximum/minimum's second operand on a tie, integer pow wrapping."""
    f32 = dtype_from_numpy(np.dtype(np.float32))
    gb = GraphBuilder("specials")
    a = gb.input("a", TensorType(PAIRS[0].shape, f32))
    b = gb.input("b", TensorType(PAIRS[0].shape, f32))
    graph = gb.build([gb.apply("sign", a), gb.apply("maximum", a, b),
                      gb.apply("minimum", a, b)])
    got = run_schedule(lower(graph), PAIRS)
    for out, want in zip(got, evaluate(graph, PAIRS)):
        assert_same(out, want, "kernel_eval")
    assert_same(got[0], torch.sign(torch.tensor(PAIRS[0])).numpy(), "kernel_eval sign")
    for dtype in (np.int32, np.int64):
        x, e = _pow_operands(dtype)
        gb = GraphBuilder("ipow")
        t = TensorType(x.shape, dtype_from_numpy(np.dtype(dtype)))
        graph = gb.build([gb.apply("pow", gb.input("x", t), gb.input("e", t))])
        (got,) = run_schedule(lower(graph), [x, e])
        np.testing.assert_array_equal(got, (torch.tensor(x) ** torch.tensor(e)).numpy())


# ---- 10. bool arithmetic ---------------------------------------------------------------------

BOOLS = np.array([True, False, True])


@pytest.mark.parametrize("fn, data, torch_error, match", [
    (lambda a, b: a - b, [BOOLS, BOOLS], RuntimeError, "two bool tensors"),
    (lambda a, b: a - 1, [BOOLS, BOOLS], RuntimeError, "with a bool tensor"),
    (lambda a, b: 1.5 - a, [BOOLS, BOOLS], RuntimeError, "with a bool tensor"),
    (lambda a, b: a - True, [np.array([1, 2, 3]), BOOLS], RuntimeError, "with a bool tensor"),
    (lambda a, b: b - a, [np.array([1.0, 2.0, 3.0]), BOOLS], RuntimeError,
     "with a bool tensor"),
    (lambda a, b: -a, [BOOLS, BOOLS], RuntimeError, "Negation"),
    (lambda a, b: a ** b, [BOOLS, BOOLS], NotImplementedError, "pow"),
    (lambda a, b: True ** a, [BOOLS, BOOLS], NotImplementedError, "pow"),
], ids=["bool-bool", "bool-int", "float-bool", "int-True", "bool-float", "neg", "pow",
        "True_pow"])
def test_bool_subtraction_and_pow_raise(fn, data, torch_error, match):
    """PyTorch refuses `-` with a bool operand and `**` computing in bool: TypeError here,
    eagerly and at trace time (the check is the frontend's)."""
    with pytest.raises(torch_error, match=match):
        fn(*(torch.tensor(a) for a in data))
    _raises_everywhere(fn, data, TypeError, "bool tensor")


@pytest.mark.parametrize("name, fn", [
    ("pow_true", lambda L, t: t ** True),
    ("pow_false", lambda L, t: t ** False),
    ("pow_int", lambda L, t: t ** 3),
    ("add", lambda L, t: t + t),
    ("int_pow_bool", lambda L, t: 2 ** t),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bool_arithmetic_that_torch_allows(name, fn):
    check_everywhere(**lib(fn), arrays=[BOOLS])


# ---- 11. binary cross entropy at 0 and 1 -----------------------------------------------------

BCE_INPUT = np.array([0, 1, .5, .2, 1e-13, 1 - 6e-8, 1e-30, 0, 1, 0.75], np.float32)
BCE_TARGET = np.array([0, 0, 1, 1, 0.3, 0.5, 1, 1, 1, 0], np.float32)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda t: t.__name__)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_bce_gradient_at_zero_and_one(reduction, dtype, weighted):
    """PyTorch's gradient (x - t) / max(x (1 - x), 1e-12): finite and huge at x = 0 and 1
    (it was (1 - t) / (1 - x) - t / x through the clamped logs: 0 or nothing there), and the
    value's signed zeros as PyTorch's kernel gives them.  The target's gradient at exactly 0
    or 1 is +-100 here, +-inf in PyTorch, so it is not compared there."""
    weight = np.linspace(0.5, 2.0, BCE_INPUT.size).astype(dtype)

    def fn(L, x, t):
        w = L.tensor(weight) if weighted else None
        return L.nn.functional.binary_cross_entropy(x, t, w, reduction=reduction)

    check_everywhere(**lib(fn), arrays=[BCE_INPUT.astype(dtype), BCE_TARGET.astype(dtype)],
                     grad_masks=[None, ~np.isin(BCE_INPUT, [0.0, 1.0])])


def test_bce_gradient_of_the_reported_case():
    x = nx.tensor([0.0, 1.0, 0.5, 0.2], requires_grad=True)
    nx.nn.BCELoss()(x, nx.tensor([0.0, 0.0, 1.0, 1.0])).backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 2.5e11, -0.5, -1.25], rtol=1e-6)


def test_bce_second_derivative_away_from_zero_and_one():
    """The gradient stays the value's own derivative in the interior, so double backward
    still holds: t / x**2 + (1 - t) / (1 - x)**2 (mean reduction, over 4)."""
    x = nx.tensor([0.5, 0.2, 0.7, 0.4], requires_grad=True)
    t = nx.tensor([1.0, 1.0, 0.0, 0.25])
    nx.nn.functional.binary_cross_entropy(x, t).backward(create_graph=True)
    g, x.grad = x.grad, None
    g.sum().backward()
    xs, ts = x.detach().numpy(), t.numpy()
    np.testing.assert_allclose(x.grad.numpy(), (ts / xs ** 2 + (1 - ts) / (1 - xs) ** 2) / 4,
                               rtol=1e-5)


# ---- 12. BatchNorm with track_running_stats switched off ------------------------------------


@pytest.mark.parametrize("momentum", [None, 0.3], ids=["cumulative", "momentum"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls, shape", [("BatchNorm1d", (6, 4)), ("BatchNorm2d", (3, 4, 2, 5))])
def test_batchnorm_with_tracking_switched_off(momentum, train, cls, shape):
    """track_running_stats = False after construction, as PyTorch: training normalises with
    the batch statistics and leaves the running ones (and the counter) alone (momentum=None
    used to raise "needs num_batches_tracked"); evaluation still uses the running statistics
    the layer holds."""
    th = getattr(torch.nn, cls)(4, momentum=momentum)
    with torch.no_grad():
        th.running_mean.uniform_(-0.5, 0.5)
        th.running_var.uniform_(0.5, 1.5)
        th.num_batches_tracked.fill_(3)
    mine = getattr(nx.nn, cls)(4, momentum=momentum)
    mine.load_state_dict({k: nx.tensor(v.numpy()) for k, v in th.state_dict().items()})
    for m in (th, mine):
        m.track_running_stats = False
        m.train(train)
    check_compiled(mine, [floats(*shape) * 1.5 + 1], torch_fn=th, tol=LOOSE,
                   grad_tol=LOOSE_GRAD)
    assert mine.num_batches_tracked.item() == 3


def test_batchnorm_cumulative_average_without_a_counter():
    """momentum=None with no num_batches_tracked: PyTorch's factor is 0, the running
    statistics stay as they are."""
    th = torch.nn.BatchNorm1d(3, momentum=None)
    th.num_batches_tracked = None
    mine = nx.nn.BatchNorm1d(3, momentum=None)
    mine.num_batches_tracked = None
    check_compiled(mine, [floats(5, 3)], torch_fn=th, tol=LOOSE, grad_tol=LOOSE_GRAD)
    np.testing.assert_array_equal(mine.running_mean.numpy(), np.zeros(3, np.float32))


# ---- 13. signed zeros of maximum, minimum and relu -------------------------------------------


@pytest.mark.parametrize("n", [2, 37, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda t: t.__name__)
def test_maximum_minimum_of_signed_zeros_give_the_second_operand(n, dtype):
    """A tie gives the second operand, as NumPy and x86's maxps/minps (and PyTorch's vector
    kernel, whose scalar tail gives the first: PyTorch's own answer depends on the position,
    so it is not the oracle here); a nan in either operand gives nan.  Eager and every
    backend agree bit for bit."""
    pairs = np.array([(-0.0, 0.0), (0.0, -0.0), (NAN, 0.0), (0.0, NAN), (-0.0, -0.0),
                      (1.0, -1.0), (-INF, INF)], dtype)
    a, b = (np.resize(pairs[:, i], n) for i in (0, 1))
    for op, pick in (("maximum", np.greater), ("minimum", np.less)):
        want = np.where(np.isnan(a) | np.isnan(b), NAN, np.where(pick(a, b), a, b))
        for backend in (None, *BACKENDS):
            f = getattr(nx, op)
            if backend is not None:
                f = nx.compile(f, backend=backend)
            got = f(nx.tensor(a), nx.tensor(b)).numpy()
            assert_same(got, want.astype(dtype), f"{op} {backend or 'eager'}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda t: t.__name__)
def test_relu_keeps_negative_zero(dtype):
    """relu is PyTorch's max(x, 0): -0.0 stays -0.0 and nan stays nan; the gradient is 0 at
    +-0 and below, g at nan."""
    data = np.array(SPECIALS * 4, dtype)
    check_everywhere(**lib(lambda L, x: L.relu(x)), arrays=[data])
    check_everywhere(**lib(lambda L, x: L.nn.functional.relu(x * 2) + x), arrays=[data])
    check_everywhere(**lib(lambda L, x: L.relu(x.long())), arrays=[np.array([-2.0, 0.0, 3.0])])


def test_relu_costs_what_it_did_compiled():
    """The -0.0 fix is free: the forward's nested selects fold into the code of
    `where(x < 0, 0, x)` (one maxps), and training saves one bool mask per relu, as before."""
    import re

    from neurenix.runtime.cpu import optimized_ir

    def counts(fn) -> tuple[int, int]:
        f = nx.compile(fn, backend="llvm")
        with nx.no_grad():
            f(nx.zeros(4096))
        text = optimized_ir(f._last.forward.program)
        return len(re.findall(r"= fcmp ", text)), len(re.findall(r"= select ", text))

    assert counts(nx.relu) == counts(lambda x: nx.where(x < 0, 0.0, x))
    w1, w2 = nx.randn(8, 16, requires_grad=True), nx.randn(16, 16, requires_grad=True)
    f = nx.compile(lambda x: (nx.relu(nx.relu(x @ w1) @ w2)).sum(), backend="reference")
    f(nx.randn(4, 8)).backward()
    saved = [str(o.type) for o in f.graph.outputs[1:]]
    assert sorted(saved) == ["f32[4,16]", "i1[4,16]", "i1[4,16]"], saved


def test_log1p_and_expm1_are_accurate_for_small_inputs_eager_and_compiled():
    """Regression: they were log(1 + x) and exp(x) - 1, 4.6% off at 1e-6 (PyTorch: exact)."""
    import torch
    xs = np.array([1e-30, 1e-10, 1e-7, 1e-6, -1e-6, 1e-4, 0.3, -0.5, 1, 5, -1, -2, 88.0, 88.7,
                   -100.0, 0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)
    for name, grad in (("log1p", lambda x: 1 / (1 + x)), ("expm1", np.exp)):
        want = getattr(torch, name)(torch.tensor(xs)).numpy()
        t = nx.Tensor(xs, requires_grad=True)
        got = getattr(t, name)()
        got.sum().backward()
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=4e-7, atol=0)
        compiled = nx.compile(lambda v, name=name: getattr(v, name)())(nx.Tensor(xs))
        np.testing.assert_allclose(compiled.numpy(), want, rtol=4e-7, atol=0)
        finite = np.isfinite(xs) & (xs > -1)
        with np.errstate(all="ignore"):
            exact = grad(xs.astype(np.float64))
        np.testing.assert_allclose(t.grad.numpy()[finite], exact[finite], rtol=2e-7)


@pytest.mark.parametrize("p", [2, 3, 1.5])
@pytest.mark.parametrize("dim", [None, 1])
def test_norm_gradient_at_a_zero_vector_is_zero(p, dim):
    """Regression: the gradient of `norm` at a zero vector was nan (the root's derivative at
    0 times a zero); PyTorch's subgradient is 0.  Eager and compiled agree with it."""
    a = np.array([[0.0, 0.0, 0.0], [3.0, -4.0, 0.0]], np.float32)
    t = torch.tensor(a, requires_grad=True)
    t.norm(p=p, dim=dim).sum().backward()
    for fn in (lambda x: x.norm(p=p, dim=dim).sum(),
               nx.compile(lambda x: x.norm(p=p, dim=dim).sum())):
        x = nx.tensor(a, requires_grad=True)
        out = fn(x)
        np.testing.assert_allclose(out.detach().numpy(), t.norm(p=p, dim=dim).sum().item(),
                                   rtol=1e-6)
        out.backward()
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-7)
