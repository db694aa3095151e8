"""The tensor operations of issue 14 item 5: eager vs compiled (every CPU backend) vs PyTorch,
gradients included (`check_compiled`), their errors, and a few on the GPU devices.

In-place methods (add_, sub_, mul_, div_, clamp_, clamp_min_, clamp_max_, masked_fill_,
normal_, uniform_), new_* creators, as_tensor, inference_mode; gather, index_select, topk,
sort, argsort, einsum, sin, cos, tril, triu, cumsum, repeat_interleave, isnan, isinf, isclose,
allclose.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from devices import needs_device
from kernel_helpers import schedule
from neurenix.compiler.kernel.ir import BufferArg, Kernel, Load, Store, Unary, Var
from op_helpers import make_data
from test_codegen_cstyle import gpu_program
from test_compile_parity import DEVICE_TOL, check_compiled

import neurenix as nx


def _lib(fn):
    return dict(fn=lambda *xs: fn(nx, *xs), torch_fn=lambda *xs: fn(torch, *xs))


def _floats(*shapes, seed=0, low=-2.0, high=2.0):
    return make_data(shapes, seed=seed, low=low, high=high)


def _distinct(shape, seed=0) -> np.ndarray:
    """Floats without ties (sorting and topk are then unambiguous)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) * 0.25 - n / 8).astype(np.float32)


def _with_ties(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-2, 3, shape).astype(np.float32)


def _idx(*values) -> tuple:
    return tuple(values)


X34 = _floats((3, 4))
X234 = _floats((2, 3, 4))

CASES = [
    # math
    ("sin", lambda lib, x: lib.sin(x), _floats((3, 4), low=-4.0, high=4.0), {}),
    ("cos", lambda lib, x: x.cos(), _floats((3, 4), low=-4.0, high=4.0), {}),
    ("sin float64", lambda lib, x: lib.sin(x) * x.cos(),
     make_data([(2, 3)], nx.float64, low=-3.0, high=3.0), {}),
    ("sin of int", lambda lib, x: lib.sin(x), [np.arange(-3, 3)], {}),
    ("clamp_min", lambda lib, x: x.clamp_min(-0.5), X34, {}),
    ("clamp_max", lambda lib, x: lib.clamp_max(x, 0.5), X34, {}),
    ("isnan isinf", lambda lib, x: (lib.isnan(lib.log(x)), lib.isinf(1.0 / (x * 0)),
                                    lib.isfinite(lib.log(x))),
     [np.array([[-1.0, 0.0, 1.0], [2.0, -0.5, 3.0]], np.float32)], {"grad": False}),
    ("isnan int", lambda lib, x: (x.isnan(), x.isinf()), [np.arange(4)], {}),
    ("isclose", lambda lib, a, b: lib.isclose(a, a + b * 1e-6, rtol=1e-4, atol=0.0),
     _floats((3, 4), (3, 4)), {}),
    # triangles and running sums
    ("tril", lambda lib, x: lib.tril(x), X34, {}),
    ("tril 1", lambda lib, x: x.tril(1), X234, {}),
    ("triu -1", lambda lib, x: lib.triu(x, -1), X234, {}),
    ("triu int", lambda lib, x: x.triu(), [np.arange(12).reshape(3, 4)], {}),
    ("cumsum", lambda lib, x: lib.cumsum(x, 1), X234, {}),
    ("cumsum -1", lambda lib, x: x.cumsum(-1), X234, {}),
    ("cumsum 0", lambda lib, x: x.cumsum(0) * x, X34, {}),
    ("cumsum int", lambda lib, x: x.cumsum(0), [np.arange(6, dtype=np.int32).reshape(3, 2)],
     {}),
    ("cumsum dtype", lambda lib, x: x.cumsum(1, dtype=lib.float64), X34, {}),
    # gathering
    ("gather 1", lambda lib, x: lib.gather(x, 1, lib.tensor([[0, 3], [1, 1], [2, 0]])), X34,
     {}),
    ("gather 0", lambda lib, x: x.gather(0, lib.tensor([[2, 0, 1, 1]])), X34, {}),
    ("gather -1 3d", lambda lib, x: x.gather(-1, lib.tensor([[[3, 2], [0, 0], [1, 2]]] * 2)),
     X234, {}),
    ("index_select", lambda lib, x: lib.index_select(x, 1, lib.tensor([3, 0, 3])), X34, {}),
    ("index_select -3", lambda lib, x: x.index_select(-3, lib.tensor([1])), X234, {}),
    ("masked_fill", lambda lib, x: x.masked_fill(x > 0.5, -1.0), X34, {}),
    ("masked_fill broadcast", lambda lib, x: lib.masked_fill(
        x, lib.tensor([True, False, False, True]), 2.5), X34, {}),
    ("masked_fill tensor value", lambda lib, x, v: x.masked_fill(x < 0, v.sum()),
     _floats((3, 4), (2,)), {}),
    ("repeat_interleave", lambda lib, x: x.repeat_interleave(2), X34, {}),
    ("repeat_interleave dim", lambda lib, x: lib.repeat_interleave(x, 3, dim=1), X234, {}),
    ("repeat_interleave counts", lambda lib, x: x.repeat_interleave(
        lib.tensor([1, 0, 2]), dim=0), X34, {}),
    ("repeat_interleave only counts", lambda lib, x: lib.repeat_interleave(
        lib.tensor([2, 1, 3])), [np.zeros(1, np.float32)], {"grad": False}),
    # sorting
    ("sort", lambda lib, x: lib.sort(x), [_distinct((3, 5))], {}),
    ("sort descending 0", lambda lib, x: x.sort(0, descending=True), [_distinct((4, 3))], {}),
    ("sort stable ties", lambda lib, x: lib.sort(x, stable=True), [_with_ties((3, 6))], {}),
    ("sort stable ties descending", lambda lib, x: x.sort(dim=-1, descending=True, stable=True),
     [_with_ties((3, 6), 1)], {}),
    ("sort nan", lambda lib, x: lib.sort(x, stable=True),
     [np.array([[1.0, np.nan, -1.0, np.inf, -np.inf]], np.float32)], {"grad": False}),
    ("sort nan descending", lambda lib, x: x.sort(descending=True, stable=True),
     [np.array([[1.0, np.nan, -1.0, np.inf, -np.inf]], np.float32)], {"grad": False}),
    ("sort int", lambda lib, x: x.sort(stable=True), [np.array([[3, 1, 2, 1, -5]])], {}),
    ("sort 3d dim 1", lambda lib, x: x.sort(1), [_distinct((2, 4, 3))], {}),
    ("argsort", lambda lib, x: lib.argsort(x, 0), [_distinct((4, 3))], {}),
    ("argsort descending", lambda lib, x: x.argsort(descending=True), [_distinct((3, 5))], {}),
    ("topk", lambda lib, x: lib.topk(x, 2), [_distinct((3, 5))], {}),
    ("topk smallest dim 0", lambda lib, x: x.topk(3, 0, largest=False), [_distinct((4, 3))],
     {}),
    ("topk values", lambda lib, x: x.topk(1, -1).values * 2, [_distinct((2, 3, 4))], {}),
    # einsum
    ("einsum matmul", lambda lib, a, b: lib.einsum("ij,jk->ik", a, b),
     _floats((3, 4), (4, 5)), {}),
    ("einsum batch", lambda lib, a, b: lib.einsum("bij,bkj->bik", a, b),
     _floats((2, 3, 4), (2, 5, 4)), {}),
    ("einsum implicit", lambda lib, a, b: lib.einsum("ij,jk", a, b), _floats((3, 4), (4, 2)),
     {}),
    ("einsum trace", lambda lib, x: lib.einsum("ii", x), _floats((3, 3)), {}),
    ("einsum diagonal", lambda lib, x: lib.einsum("ii->i", x), _floats((3, 3)), {}),
    ("einsum sum", lambda lib, x: lib.einsum("ijk->j", x), X234, {}),
    ("einsum transpose", lambda lib, x: lib.einsum("ijk->kij", x), X234, {}),
    ("einsum outer", lambda lib, a, b: lib.einsum("i,j->ij", a, b), _floats((3,), (4,)), {}),
    ("einsum dot", lambda lib, a, b: lib.einsum("i,i->", a, b), _floats((4,), (4,)), {}),
    ("einsum ellipsis", lambda lib, a, b: lib.einsum("...ij,...jk->...ik", a, b),
     _floats((2, 3, 4), (1, 4, 2)), {}),
    ("einsum three", lambda lib, a, b, c: lib.einsum("ij,jk,kl->il", a, b, c),
     _floats((2, 3), (3, 4), (4, 2)), {}),
    ("einsum summed alone", lambda lib, a, b: lib.einsum("ij,kl->ik", a, b),
     _floats((2, 3), (4, 5)), {}),
    ("einsum list", lambda lib, a, b: lib.einsum("bi,bi->b", [a, b]),
     _floats((3, 4), (3, 4)), {}),
    ("einsum int", lambda lib, a, b: lib.einsum("ij,jk->ik", a, b),
     [np.arange(6).reshape(2, 3), np.arange(6).reshape(3, 2)], {}),
]


@pytest.mark.parametrize("fn, data, options", [pytest.param(f, d, o, id=n)
                                               for n, f, d, o in CASES])
def test_op(fn, data, options):
    check_compiled(**_lib(fn), inputs=data, **options)


# ---- in place ---------------------------------------------------------------------------------


def _in_place_chain(lib, x, y):
    z = x * 1.0  # a non-leaf: in-place writes keep the gradient
    z.add_(y, alpha=2)
    z.sub_(0.5)
    z.mul_(y)
    z.div_(2.0)
    z.clamp_(-1.0, 1.0)
    z.clamp_min_(-0.8)
    z.clamp_max_(0.9)
    z.masked_fill_(y > 1.0, 0.25)
    return z.exp()


def _into_view(lib, x):
    z = x * 1.0
    z[1].mul_(3.0)
    z[:, 0].masked_fill_(z[:, 0] > 0, 0.0)
    return z


def test_in_place_methods_keep_gradients():
    check_compiled(**_lib(_in_place_chain), inputs=_floats((3, 4), (3, 4), seed=3))


def test_in_place_methods_write_through_views_eagerly():
    x = _floats((3, 4), seed=4)[0]
    got, want = _into_view(nx, nx.tensor(x)), _into_view(torch, torch.tensor(x))
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_in_place_methods_write_through_views_compiled():
    check_compiled(**_lib(_into_view), inputs=_floats((3, 4), seed=4), grad=False)


def test_in_place_on_a_tensor_outliving_the_compiled_call():
    """A write to a captured tensor becomes an output written back after every call."""
    state = nx.zeros(3)

    @nx.compile
    def step(x):
        state.add_(x)
        state.masked_fill_(state > 2.5, 0.0)
        return state * 1.0

    for i in range(4):
        out = step(nx.ones(3))
        want = float((i + 1) % 3)
        np.testing.assert_array_equal(state.numpy(), np.full(3, want, np.float32))
        np.testing.assert_array_equal(out.numpy(), np.full(3, want, np.float32))


def test_in_place_on_a_leaf_that_requires_grad_raises():
    x = nx.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="clamp_min_: a leaf tensor"):
        x.clamp_min_(0.0)
    with pytest.raises(RuntimeError, match="masked_fill_: a leaf tensor"):
        x.masked_fill_(x > 0, 1.0)
    with pytest.raises(RuntimeError, match="normal_: a leaf tensor"):
        x.normal_()
    with nx.no_grad():
        x.uniform_(-1.0, 1.0)
    assert x.requires_grad and x.grad is None


def test_masked_fill_in_place_cannot_grow_the_tensor():
    x = nx.zeros(4)
    with pytest.raises(ValueError, match=r"does not fit the tensor of shape \(4,\)"):
        x.masked_fill_(nx.tensor([[True], [False]]), 1.0)


def test_in_place_result_type_errors_name_both_types():
    x = nx.tensor([1, 2, 3])
    with pytest.raises(TypeError, match="float32 can't be cast to the tensor's type int64"):
        x.div_(2)
    x.mul_(2)
    np.testing.assert_array_equal(x.numpy(), [2, 4, 6])


# ---- random fills -------------------------------------------------------------------------------


def test_normal_and_uniform_are_seeded_and_shaped():
    x = nx.zeros(20000)
    nx.manual_seed(5)
    x.normal_(2.0, 0.5)
    first = x.numpy().copy()
    assert abs(first.mean() - 2.0) < 0.02 and abs(first.std() - 0.5) < 0.02
    nx.manual_seed(5)
    x.normal_(2.0, 0.5)
    np.testing.assert_array_equal(x.numpy(), first)
    x.uniform_(-3.0, -1.0)
    u = x.numpy()
    assert u.min() >= -3.0 and u.max() < -1.0 and abs(u.mean() + 2.0) < 0.03
    d = nx.zeros(4, dtype=nx.float64).uniform_()
    assert d.dtype == nx.float64 and (d.numpy() >= 0).all() and (d.numpy() < 1).all()


def test_random_fills_compiled_draw_the_same_seeds_as_eager():
    def fill(x):
        y = x * 1.0
        y.normal_()
        z = x * 1.0
        z.uniform_(1.0, 2.0)
        return y, z

    compiled = nx.compile(fill)
    x = nx.zeros(2, 3)
    nx.manual_seed(11)
    eager = fill(x)
    nx.manual_seed(11)
    got = compiled(x)
    for a, b in zip(got, eager):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    again = compiled(x)
    assert not np.array_equal(again[0].numpy(), got[0].numpy()), "a fresh draw per call"


def test_random_fill_errors():
    with pytest.raises(TypeError, match="normal_: expected a floating-point tensor, got int64"):
        nx.tensor([1, 2]).normal_()
    with pytest.raises(TypeError, match="uniform_: expected a floating-point tensor, got bool"):
        nx.tensor([True]).uniform_()
    with pytest.raises(ValueError, match="uniform_: expects a <= b, got a=2.0, b=1.0"):
        nx.zeros(2).uniform_(2.0, 1.0)
    with pytest.raises(ValueError, match="normal_: expects std >= 0.0, got std=-1.0"):
        nx.zeros(2).normal_(0.0, -1.0)


# ---- creation, as_tensor, inference_mode ------------------------------------------------------


def test_new_creators_take_dtype_and_device_from_the_tensor():
    x = nx.ones(2, dtype=nx.float64)
    for got, want in [(x.new_zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)),
                      (x.new_ones((3,)), torch.ones(3, dtype=torch.float64)),
                      (x.new_full((2, 2), 7), torch.full((2, 2), 7.0, dtype=torch.float64)),
                      (x.new_empty(0, 2), torch.zeros(0, 2, dtype=torch.float64)),
                      (x.new_zeros(2, dtype=nx.int32), torch.zeros(2, dtype=torch.int32)),
                      (x.new_tensor([1, 2]), torch.tensor([1.0, 2.0], dtype=torch.float64))]:
        assert got.dtype.name == str(want.dtype).removeprefix("torch.")
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        assert not got.requires_grad
    assert x.new_ones(2, requires_grad=True).requires_grad
    with pytest.raises(ValueError, match="new_zeros: sizes must be non-negative"):
        x.new_zeros(-1)


def test_as_tensor_reuses_a_tensor_that_already_fits():
    x = nx.ones(3)
    assert nx.as_tensor(x) is x and nx.as_tensor(x, dtype=nx.float32) is x
    y = nx.as_tensor(x, dtype=nx.float64)
    assert y is not x and y.dtype == nx.float64
    a = nx.as_tensor([[1, 2], [3, 4]])
    assert a.dtype == nx.int64 and a.shape == (2, 2)
    assert nx.as_tensor(np.zeros(2, np.float32), dtype=nx.int32).dtype == nx.int32
    assert nx.as_tensor(2.5).ndim == 0


def test_inference_mode_is_a_context_manager_and_a_decorator():
    x = nx.ones(2, requires_grad=True)
    with nx.inference_mode():
        assert not (x * 2).requires_grad
    with nx.inference_mode(False):
        assert (x * 2).requires_grad

    @nx.inference_mode
    def bare(t):
        return t * 2

    @nx.inference_mode()
    def called(t):
        return t * 2

    assert not bare(x).requires_grad and not called(x).requires_grad
    assert nx.is_grad_enabled()
    with pytest.raises(TypeError, match="inference_mode: mode must be a bool, got str"):
        nx.inference_mode("yes")


# ---- allclose ------------------------------------------------------------------------------------


def test_allclose_matches_torch():
    nan, inf = float("nan"), float("inf")
    pairs = [([1.0, 2.0], [1.0, 2.0 + 1e-6]), ([1.0, 2.0], [1.0, 2.1]), ([inf, 1.0], [inf, 1.0]),
             ([inf], [-inf]), ([nan], [nan]), ([1.0], [inf]), ([0.0, 1e-9], [1e-9, 0.0])]
    for a, b in pairs:
        for equal_nan in (False, True):
            want = torch.allclose(torch.tensor(a), torch.tensor(b), equal_nan=equal_nan)
            assert nx.allclose(nx.tensor(a), nx.tensor(b), equal_nan=equal_nan) is want, (a, b)
            got = nx.isclose(nx.tensor(a), nx.tensor(b), equal_nan=equal_nan).numpy()
            np.testing.assert_array_equal(
                got, torch.isclose(torch.tensor(a), torch.tensor(b), equal_nan=equal_nan))
    assert nx.tensor([1, 2]).allclose(nx.tensor([1, 2]))
    assert not nx.allclose(nx.tensor([1.0]), nx.tensor([1.5]), atol=0.4)
    assert nx.allclose(nx.tensor([1.0]), nx.tensor([1.5]), atol=0.5)


def test_allclose_inside_compile_raises_like_item():
    @nx.compile
    def f(x):
        return x * 2 if nx.allclose(x, x) else x

    with pytest.raises(Exception, match=r"item|trace"):
        f(nx.ones(2))


# ---- errors -------------------------------------------------------------------------------------


def test_errors_name_expected_and_received():
    x = nx.zeros(3, 4)
    idx = nx.tensor([[0, 1]])
    cases = [
        (lambda: nx.gather(x, 1, nx.tensor([[0.0]])), TypeError,
         "gather: expected an integer .* index tensor, got float32"),
        (lambda: nx.gather(x, 1, nx.tensor([0, 1])), ValueError,
         r"gather: index tensor must have the same number of dimensions as the input \(2\), "
         r"got 1"),
        (lambda: nx.gather(x, 1, nx.zeros(4, 1, dtype=nx.int64)), ValueError,
         r"gather: index \(4, 1\) is larger than the input \(3, 4\) at dimension 0"),
        (lambda: nx.gather(x, 1, idx + 4), IndexError,
         "gather: index 5 is out of bounds for dimension 1 with size 4"),
        (lambda: nx.gather(x, 1, idx - 1), IndexError,
         "gather: index -1 is out of bounds for dimension 1 with size 4"),
        (lambda: nx.gather(x, 2, idx), IndexError, "dim"),
        (lambda: nx.gather([1], 0, idx), TypeError, "gather: expected a Tensor input, got list"),
        (lambda: x.index_select(0, idx), ValueError,
         r"index_select: index must be a vector \(0-d or 1-d\), got shape \(1, 2\)"),
        (lambda: x.index_select(0, nx.tensor([3])), IndexError,
         "index_select: index 3 is out of range for dimension 0 with size 3"),
        (lambda: x.masked_fill(nx.ones(3, 4), 1.0), TypeError,
         "masked_fill: expected a bool mask, got float32"),
        (lambda: x.masked_fill(x > 0, nx.zeros(2)), ValueError,
         r"masked_fill: expected a 0-dimensional value tensor, got shape \(2,\)"),
        (lambda: x.masked_fill(x > 0, "a"), TypeError,
         "masked_fill: expected a number or a 0-d Tensor value, got str"),
        (lambda: x.masked_fill(nx.ones(2, dtype=nx.bool), 1.0), ValueError, "broadcast"),
        (lambda: nx.tril(nx.zeros(3)), ValueError,
         r"tril: expected a tensor of at least 2 dimensions, got shape \(3,\)"),
        (lambda: nx.triu(x, 1.5), TypeError, "triu: diagonal must be an int, got float"),
        (lambda: nx.cumsum(x, 2), IndexError, "dim"),
        (lambda: nx.cumsum([1], 0), TypeError, "cumsum: expected a Tensor, got list"),
        (lambda: nx.topk(x, 5), ValueError,
         r"topk: k \(5\) is out of range for dimension 1 of size 4"),
        (lambda: nx.topk(x, 1.0), TypeError, "topk: k must be an int, got float"),
        (lambda: nx.sort(x, descending=1), TypeError,
         "sort: descending must be a bool, got int"),
        (lambda: nx.sort(x, 3), IndexError, "dim"),
        (lambda: nx.repeat_interleave(x, -1), ValueError,
         "repeat_interleave: repeats must be non-negative, got -1"),
        (lambda: nx.repeat_interleave(x, nx.tensor([1, 2]), dim=0), ValueError,
         r"repeat_interleave: repeats must have 3 elements \(one per slice\), got 2"),
        (lambda: nx.repeat_interleave(x, 1.5), TypeError,
         "repeat_interleave: repeats must be an int or a Tensor, got float"),
        (lambda: nx.repeat_interleave(x, 2, dim=0, output_size=5), ValueError,
         "repeat_interleave: output_size 5 does not match the repeated size 6"),
        (lambda: nx.einsum("ij,jk->ik", x, x), ValueError,
         "einsum: subscript 'j' has sizes 4 and 3, which do not broadcast"),
        (lambda: nx.einsum("ij->ik", x), ValueError,
         "einsum: output subscript 'k' of 'ij->ik' does not appear in the inputs"),
        (lambda: nx.einsum("ijk", x), ValueError,
         r"einsum: the subscripts 'ijk' do not match an operand of 2 dimensions"),
        (lambda: nx.einsum("ij,jk", x), ValueError,
         "einsum: the equation 'ij,jk' names 2 operands, got 1"),
        (lambda: nx.einsum("ij,jk", x, x.double()), TypeError,
         "einsum: expected operands of one dtype, got float32, float64"),
        (lambda: nx.einsum("i1", x), ValueError, "einsum: invalid subscript '1'"),
        (lambda: nx.isclose(x, x.double()), TypeError,
         "isclose: expected tensors of one dtype, got float32 and float64"),
        (lambda: nx.isclose(x, x, rtol=-1.0), ValueError,
         "isclose: rtol and atol must be non-negative"),
        (lambda: nx.isnan(1.0), TypeError, "isnan: expected a Tensor, got float"),
        (lambda: nx.sin("x"), TypeError, "sin: expected a Tensor, got str"),
    ]
    for fn, error, message in cases:
        with pytest.raises(error, match=message):
            fn()


def test_index_errors_are_raised_after_a_compiled_call():
    @nx.compile
    def pick(x, i):
        return x.gather(1, i)

    x = nx.zeros(3, 4)
    assert pick(x, nx.tensor([[0], [1], [3]])).shape == (3, 1)
    with pytest.raises(IndexError, match="gather: index 4 is out of bounds for dimension 1"):
        pick(x, nx.tensor([[0], [4], [3]]))


def test_repeat_interleave_with_traced_counts_names_the_line():
    @nx.compile
    def f(x, r):
        return x.repeat_interleave(r, dim=0)

    with pytest.raises(Exception, match=r"repeat_interleave at .*test_ops_extra.py"):
        f(nx.zeros(2), nx.tensor([1, 2]))


def test_sin_cos_have_their_own_kernel_op():
    """sin and cos are primitives lowered to kernel ops (not compositions)."""
    from neurenix.compiler.kernel.ops import UNARY_PRIMITIVES
    assert UNARY_PRIMITIVES["sin"] == "sin" and UNARY_PRIMITIVES["cos"] == "cos"


# ---- on the GPU devices -------------------------------------------------------------------------


def _device_case(lib, x, y, i):
    values, indices = lib.sort(x, -1)
    return (values, indices, lib.cumsum(y, 1), lib.tril(y, -1), y.gather(1, i),
            lib.einsum("ij,kj->ik", y, y), y.masked_fill(y > 0.5, 0.0), lib.isnan(lib.log(y)))


@pytest.mark.parametrize("device", ["opencl", "webgpu"])
def test_new_ops_on_device(device):
    needs_device(device)
    tol, grad_tol = DEVICE_TOL["math"]
    data = [_distinct((3, 5)), _floats((3, 4), seed=2)[0],
            np.array([[0, 3], [1, 1], [2, 0]], np.int64)]
    check_compiled(**_lib(_device_case), inputs=data, backends=(device,), tol=tol,
                   grad_tol=grad_tol, inference=False)


@pytest.mark.parametrize("device", ["opencl", "webgpu"])
def test_sin_cos_on_device(device):
    """The new kernel ops through each GPU dialect (WebGPU: within its documented range)."""
    needs_device(device)
    tol, grad_tol = DEVICE_TOL["math"]
    check_compiled(**_lib(lambda lib, x: lib.sin(x) * lib.cos(2 * x)),
                   inputs=_floats((4, 5), low=-3.0, high=3.0), backends=(device,),
                   tol=(1e-5, 1e-5), grad_tol=grad_tol, inference=False)
    assert tol


# ---- the new kernel ops through the CUDA and HIP toolchains -----------------------------------


def _trig_source(target: str) -> str:
    """One program of sin and cos kernels over float32 and float64, generated for `target`."""
    kernels, inputs = [], {}
    for dt in (nx.float32, nx.float64):
        x = Load(f"x_{dt.short}", Var(0), dt)
        inputs[x.buffer] = np.zeros(64, dt.np_type)
        for op in ("sin", "cos"):
            kernels.append(Kernel(f"{op}_{dt.short}", (BufferArg(x.buffer, dt, 64),),
                                  (BufferArg(f"{op}_{dt.short}", dt, 64),), (64,),
                                  (Store(f"{op}_{dt.short}", Var(0), Unary(op, x)),)))
    outputs = {k.name: ((64,), k.outputs[0].dtype) for k in kernels}
    return gpu_program(schedule(kernels, inputs, outputs), target).source


def test_sin_cos_compile_with_nvrtc_and_hipcc():
    from test_toolchain_cuda_hip import _cuda_unit, _hip_unit, _need_cuda, _need_hip, _rdna

    source = _trig_source("cuda")
    assert "sinf(" in source and "cos(" in source
    _need_cuda()
    assert all(size > 0 for _, size in _cuda_unit(source))
    _need_hip()
    assert _hip_unit(_trig_source("hip"), ("gfx90a", _rdna())) > 0
