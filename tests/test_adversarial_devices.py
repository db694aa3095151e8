"""Adversarial checks of the OpenCL and WebGPU devices against the CPU (eager) and PyTorch.

Passing tests are regressions; `xfail(strict=True)` tests are the smallest reproducers of
bugs found (each reason says what is wrong).  Tolerances, float32: elementwise results
within rtol 1e-5 / atol 1e-6 (`ELEMENTWISE`), reductions, matrix products, convolutions and
gradients within rtol 1e-4 / atol 1e-5 (`REDUCED`, another summation order); special values
(nan, inf, signed zeros) compared exactly.  Shapes are tiny and shared so that each device
compiles few one-op programs, except where size itself is the attack.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from devices import GPU_DEVICES, needs_device

import neurenix
from neurenix import Device, nn, optim
from neurenix.nn import functional as F

ELEMENTWISE = dict(rtol=1e-5, atol=1e-6)
REDUCED = dict(rtol=1e-4, atol=1e-5)
WORK_GROUP_LIMIT = 65535 * 256  # elements one 1-D dispatch of 256-wide groups covers


@pytest.fixture(params=GPU_DEVICES)
def device(request) -> str:
    needs_device(request.param)
    return request.param


def _on(values, device: str, dtype=None) -> neurenix.Tensor:
    return neurenix.tensor(np.asarray(values, dtype=dtype)).to(device)


def _same(actual: np.ndarray, expected: np.ndarray, **tol) -> None:
    """Equal values (nan where nan), the same dtype kind, and the same signs of zeros."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype.kind == expected.dtype.kind
    np.testing.assert_allclose(actual, expected, equal_nan=True, **tol)
    if expected.dtype.kind == "f":
        zeros = expected == 0
        np.testing.assert_array_equal(np.signbit(actual[zeros]), np.signbit(expected[zeros]))


def _data(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


SPECIAL = np.array([np.nan, 1.0, -np.inf, np.inf, -0.0, 0.0, -3.0, 2.0], np.float32)


# ---- regressions: special values through max/min/argmax/relu/softmax family ------------------

def test_special_values_through_extremes_and_softmax_family(device):
    rows = np.array([[np.nan, 1.0, 3.0], [-np.inf, -np.inf, -np.inf], [np.inf, 1.0, 0.0],
                     [1000.0, 0.0, -1000.0], [2.0, 2.0, 1.0]], np.float32)
    x, t = _on(SPECIAL, device), torch.tensor(SPECIAL)
    r, tr = _on(rows, device), torch.tensor(rows)
    pairs = [(x.relu(), t.relu()), (x.amax(), t.amax()), (x.argmax(), t.argmax()),
             (r.argmin(1), tr.argmin(1)), (r.softmax(1), tr.softmax(1)),
             (r.logsumexp(1), tr.logsumexp(1))]
    for i, (d, e) in enumerate(pairs):
        assert d.device == Device(device), i
        _same(d.numpy(), e.numpy(), **ELEMENTWISE)


def test_empty_dimensions(device):
    x = neurenix.zeros(0, 3, device=device)
    _same(x.sum(0).numpy(), np.zeros(3, np.float32))
    _same(x.prod(0).numpy(), np.ones(3, np.float32))
    _same(x.logsumexp(0).numpy(), np.full(3, -np.inf, np.float32))
    assert np.isnan(x.mean(0).numpy()).all()
    assert x.sum(1).shape == (0,) and x.softmax(0).shape == (0, 3)
    with pytest.raises(ValueError, match="argmax"):
        x.argmax(0)
    w = neurenix.zeros(3, 2, device=device)
    assert (x @ w).shape == (0, 2)
    _same((neurenix.zeros(2, 0, device=device) @ neurenix.zeros(0, 4, device=device)).numpy(),
          np.zeros((2, 4), np.float32))


# ---- regressions: integer and float division --------------------------------------------------

def test_integer_floor_division_and_remainder_follow_python(device):
    a = np.array([7, -7, 7, -7, 0, -2**31], np.int32)
    b = np.array([2, 2, -2, -2, 3, -1], np.int32)
    x, y = _on(a, device), _on(b, device)
    t, u = torch.tensor(a), torch.tensor(b)
    _same((x // y).numpy(), (t // u).numpy())
    _same((x % y).numpy(), (t % u).numpy())
    with pytest.raises(ZeroDivisionError, match="floor_divide: integer division by zero"):
        x // _on(np.array([1, 1, 1, 1, 1, 0], np.int32), device)
    with pytest.raises(ZeroDivisionError, match="remainder: integer division by zero"):
        x % 0


def test_int64_division_on_opencl_is_exact():
    needs_device("opencl")
    x = _on([16777217, -7, 7, -2**63, 2**40 + 3], "opencl")
    y = _on([1, 2, -2, -1, 3], "opencl")
    assert (x // y).tolist() == [16777217, -4, -4, -2**63, (2**40 + 3) // 3]
    assert (x % y).tolist() == [0, 1, -1, 0, (2**40 + 3) % 3]


def test_float_floor_division_and_remainder(device):
    a = np.array([7, -7, 7, -7, 1, 0, 5.5], np.float32)
    b = np.array([2, 2, -2, -2, 0, 0, np.inf], np.float32)
    x, y, t, u = _on(a, device), _on(b, device), torch.tensor(a), torch.tensor(b)
    _same((x // y).numpy(), (t // u).numpy())
    _same((x % y).numpy(), (t % u).numpy())


def test_float_to_int32_casts(device):
    a = np.array([1.7, -1.7, 2.5, -2.5, np.nan, np.inf, -np.inf, 3e9], np.float32)
    assert _on(a, device).int().tolist() == [1, -1, 2, -2] + [-2**31] * 4
    assert _on([0.0, -0.0, np.nan, 0.1], device, np.float32).bool().tolist() == \
        [False, False, True, True]


# ---- regressions: matmul, convolution, pooling, embedding, losses ---------------------------

def test_matmul_shapes(device):
    cases = [((1, 7), (7, 1)), ((7,), (7, 3)), ((2, 1, 3, 5), (4, 5, 2)), ((2, 1031), (1031, 3))]
    for i, (sa, sb) in enumerate(cases):
        a, b = _data(i, sa), _data(i + 10, sb)
        _same((_on(a, device) @ _on(b, device)).numpy(),
              (torch.tensor(a) @ torch.tensor(b)).numpy(), rtol=1e-4, atol=1e-4)


def test_conv_and_pooling_odd_shapes_nan_and_ceil_mode(device):
    xs, ws = _data(0, (2, 3, 7, 5)), _data(1, (4, 3, 3, 3))
    ours = F.conv2d(_on(xs, device), _on(ws, device), padding=1, stride=2)
    ref = TF.conv2d(torch.tensor(xs), torch.tensor(ws), padding=1, stride=2)
    _same(ours.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
    _same(F.max_pool2d(ours, 2, ceil_mode=True).numpy(),
          TF.max_pool2d(ref, 2, ceil_mode=True).numpy(), rtol=1e-4, atol=1e-4)
    _same(F.avg_pool2d(ours, 2, ceil_mode=True).numpy(),
          TF.avg_pool2d(ref, 2, ceil_mode=True).numpy(), rtol=1e-4, atol=1e-4)
    x = np.array([[[[np.nan, 1], [2, 3]]]], np.float32)
    _same(F.max_pool2d(_on(x, device), 2).numpy(), TF.max_pool2d(torch.tensor(x), 2).numpy())


def test_out_of_range_indices_raise(device):
    table = _on(_data(0, (10, 3)), device)
    for bad in (10, -1, 2**32 + 1):
        with pytest.raises(IndexError, match="out of range"):
            F.embedding(_on([bad], device), table)
    with pytest.raises(IndexError, match="out of bounds"):
        table[_on([10], device)]


# ---- regressions: dropout, mixing devices, dtypes -------------------------------------------

def test_dropout_after_manual_seed_matches_the_cpu(device):
    results = []
    for where in ("cpu", device):
        x = neurenix.ones(2, 6, device=where, requires_grad=True)
        neurenix.manual_seed(5)
        y = F.dropout(x, 0.5, training=True)
        y.sum().backward()
        results.append((y.detach().numpy(), x.grad.numpy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_mixing_the_two_devices_raises_naming_both():
    needs_device("opencl")
    needs_device("webgpu")
    a, b = neurenix.ones(2, device="opencl"), neurenix.ones(2, device="webgpu")
    for fn, name in ((lambda: a + b, "add"), (lambda: neurenix.cat([a, b]), "concat"),
                     (lambda: b.reshape(1, 2) @ a.reshape(2, 1), "matmul")):
        with pytest.raises(ValueError, match=f"{name}: .*(opencl:0 and webgpu:0|"
                                              f"webgpu:0 and opencl:0)"):
            fn()
    np.testing.assert_array_equal((b.to("opencl") + a).numpy(), [2.0, 2.0])


def test_devices_that_do_not_exist_raise_clearly():
    with pytest.raises(ValueError, match="opencl:1 is not available"):
        neurenix.ones(1).to("opencl:1")
    with pytest.raises(ValueError, match="unknown device type 'bogus'"):
        neurenix.ones(1).to("bogus")


def test_webgpu_refuses_float64_and_keeps_wide_int64():
    needs_device("webgpu")
    x = neurenix.ones(2, device="webgpu")
    with pytest.raises(ValueError, match="float64"):
        (x.double() + 1).numpy()
    wide = neurenix.tensor([2**40 + 1, -5]).to("webgpu")
    assert wide.cpu().tolist() == [2**40 + 1, -5]  # stored as it is
    assert wide.amax().item() == 2**40 + 1  # computed in 64 bits (emulated)


def test_float64_on_opencl():
    needs_device("opencl")
    x = neurenix.tensor(np.array([[1 + 1e-12, 1.0]])).to("opencl")
    y = neurenix.tensor(np.array([[1.0], [-1.0]])).to("opencl")
    assert (x @ y).dtype == neurenix.float64
    np.testing.assert_allclose((x @ y).item(), (1 + 1e-12) - 1.0, rtol=1e-12)


# ---- regressions: in place on whole tensors, autograd, modules, optimizers --------------------

def test_in_place_on_whole_device_tensors(device):
    x = _on(np.arange(6, dtype=np.float32).reshape(2, 3), device)
    x[:, 1] = -1.0
    x[x > 3] = 0.0
    x[0] = _on([7.0, 8.0, 9.0], device, np.float32)
    x.clamp_(0.0, 8.0)
    np.testing.assert_array_equal(x.numpy(), [[7, 8, 8], [3, 0, 0]])
    i = _on(np.arange(4, dtype=np.int32), device)
    i //= 2
    with pytest.raises(TypeError, match="can't be cast"):
        i += 1.5
    np.testing.assert_array_equal(i.numpy(), [0, 0, 1, 1])
    host = neurenix.zeros(2)
    host.copy_(_on([1.0, 2.0], device))
    assert host.device == Device("cpu") and host.tolist() == [1.0, 2.0]


def test_gradients_accumulate_and_reset(device):
    x = _on([0.0, 1.0, 2.0], device, np.float32).requires_grad_()
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 5.0, 7.0], **ELEMENTWISE)
    x.grad.zero_()
    assert x.grad.device == Device(device) and not x.grad.numpy().any()
    y = x * 2
    z = y * y
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        z.sum().backward()


OPTIMIZERS = {
    "sgd-nesterov": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True,
                                         weight_decay=0.01),
    "adam": lambda ps: optim.Adam(ps, lr=0.01),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
}


def _train(device: str, make, steps: int = 5) -> tuple[list[float], list[np.ndarray]]:
    neurenix.manual_seed(0)
    model = nn.Linear(3, 2).to(device)
    x = neurenix.tensor(_data(0, (6, 3))).to(device)
    y = neurenix.tensor(_data(1, (6, 2))).to(device)
    opt = make(model.parameters())
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.device == Device(device) for p in model.parameters())
    return losses, [p.detach().cpu().numpy() for p in model.parameters()]


def test_five_optimizer_steps_on_the_device_equal_the_cpu(device):
    for name, make in OPTIMIZERS.items():
        on_cpu, on_device = _train("cpu", make), _train(device, make)
        np.testing.assert_allclose(on_device[0], on_cpu[0], err_msg=name, **REDUCED)
        for d, c in zip(on_device[1], on_cpu[1]):
            np.testing.assert_allclose(d, c, err_msg=name, **REDUCED)


def test_state_dict_round_trip_and_moving_back_and_forth(device):
    neurenix.manual_seed(0)
    model = nn.Linear(3, 2).to(device).cpu().to(device)
    state = model.state_dict()
    assert all(v.device == Device(device) for v in state.values())
    copy = nn.Linear(3, 2)
    copy.load_state_dict(state)
    assert copy.weight.device == Device("cpu")
    np.testing.assert_array_equal(copy.weight.detach().numpy(), model.weight.detach().numpy())
    model.load_state_dict({k: v.cpu() * 0 + 1 for k, v in state.items()})
    assert model.weight.device == Device(device) and model.weight.detach().numpy().min() == 1


def test_optimizer_state_left_on_the_cpu_is_refused_clearly(device):
    p = nn.Parameter(neurenix.tensor([1.0, 2.0]))
    opt = optim.Adam([p], lr=0.1)
    (p * p).sum().backward()
    opt.step()
    p.to(device, inplace=True)
    opt.zero_grad()
    (p * p).sum().backward()
    with pytest.raises(ValueError, match=f"{device}:0 and cpu|cpu and {device}:0"):
        opt.step()


# ---- regressions: compiled on the device ----------------------------------------------------

def _compiled_run(where: str) -> tuple:
    """A compiled forward (eval) and three compiled Adam training steps on `where`."""
    neurenix.manual_seed(0)
    model = nn.Linear(3, 3).to(where)
    x = neurenix.tensor(_data(0, (4, 3))).to(where)
    t = neurenix.tensor(np.array([0, 2, 1, 2])).to(where)
    with neurenix.no_grad():
        out = neurenix.compile(model.eval())(x)
    assert out.device == Device(where)
    model.train()
    opt = optim.Adam(model.parameters(), lr=0.01)

    @neurenix.compile
    def step(x, t):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
        return loss

    losses = [step(x, t).item() for _ in range(3)]
    assert model.weight.device == Device(where)
    return out.numpy(), losses, model.weight.detach().cpu().numpy()


def test_compiled_forward_and_training_step_on_the_device(device):
    for d, c in zip(_compiled_run(device), _compiled_run("cpu")):
        np.testing.assert_allclose(d, c, **REDUCED)


# ---- bugs: views on a device do not alias -----------------------------------------------------

def test_in_place_on_a_view_changes_the_base(device):
    x = _on(np.arange(6, dtype=np.float32).reshape(2, 3), device)
    x[0].add_(10.0)
    np.testing.assert_array_equal(x.numpy(), [[10, 11, 12], [3, 4, 5]])


def test_a_view_sees_in_place_changes_of_its_base(device):
    x = _on(np.arange(6, dtype=np.float32), device)
    v = x[::2]
    x.add_(1.0)
    np.testing.assert_array_equal(v.numpy(), [1, 3, 5])


def test_detach_shares_storage(device):
    x = _on([0.0, 1.0, 2.0], device, np.float32)
    x.detach().add_(1.0)
    np.testing.assert_array_equal(x.numpy(), [1, 2, 3])


def test_state_dict_aliases_the_parameters(device):
    model = nn.Linear(2, 1).to(device)
    state = model.state_dict()
    with neurenix.no_grad():
        model.bias.add_(1.0)
    np.testing.assert_array_equal(state["bias"].numpy(), model.bias.detach().numpy())


# ---- bugs: WebGPU ------------------------------------------------------------------------------

def test_webgpu_reduction_past_the_work_group_limit():
    needs_device("webgpu")
    n = WORK_GROUP_LIMIT + 1
    x = neurenix.ones(n, device="webgpu")
    assert x.sum().item() == n  # 16776960.0 on webgpu
    y = neurenix.cat([neurenix.zeros(n - 1, device="webgpu"), neurenix.ones(1, device="webgpu")])
    assert y.amax().item() == 1.0 and y.argmax().item() == n - 1  # 0.0 and 0 on webgpu


def test_opencl_reduction_past_the_work_group_limit():
    needs_device("opencl")
    n = WORK_GROUP_LIMIT + 1
    x = neurenix.ones(n, device="opencl")
    assert x.sum().item() == n and (x * 2.0).numpy()[-1] == 2.0


def test_webgpu_pow_of_zero_to_a_negative_tensor_exponent():
    needs_device("webgpu")
    x, y = _on([0.0, -0.0, 2.0], "webgpu", np.float32), _on([-1.0, -1.0, -1.0], "webgpu",
                                                             np.float32)
    _same((x ** y).numpy(), np.array([np.inf, -np.inf, 0.5], np.float32))


def test_webgpu_float_remainder():
    needs_device("webgpu")
    x = _on([1e10, -0.0], "webgpu", np.float32)
    ref = torch.tensor([1e10, -0.0]) % 3.3
    _same((x % 3.3).numpy(), ref.numpy(), rtol=1e-5)


def test_webgpu_sign_of_zeros_and_nan():
    needs_device("webgpu")
    _same(_on([np.nan, 0.0, -0.0], "webgpu", np.float32).sign().numpy(),
          np.zeros(3, np.float32))


def test_webgpu_tanh_of_small_values():
    needs_device("webgpu")
    a = np.array([1e-30, 1e-6, 1e-4, 1e-3], np.float32)
    np.testing.assert_allclose(_on(a, "webgpu").tanh().numpy(), np.tanh(a), rtol=1e-5, atol=0)


def test_webgpu_float_to_int64_cast():
    needs_device("webgpu")
    x = _on([1e10, np.nan], "webgpu", np.float32)
    assert x.long().tolist() == [10000000000, -2**63]


def test_webgpu_small_int64_arithmetic():
    needs_device("webgpu")
    mask = _on([True, False, True], "webgpu")
    assert mask.sum().item() == 2
    assert _on([1, 2], "webgpu", np.int32).sum().item() == 3
    assert (neurenix.arange(3, device="webgpu") + 1).tolist() == [1, 2, 3]


def test_webgpu_batchnorm_training():
    needs_device("webgpu")
    bn = nn.BatchNorm1d(2).to("webgpu")
    bn.train()
    bn(neurenix.tensor(_data(0, (4, 2))).to("webgpu"))
    assert int(bn.num_batches_tracked.item()) == 1


@pytest.mark.xfail(strict=True, reason="webgpu flushes denormals: log(1e-40) is -88.02 "
                                       "(-92.10 on the CPU), exp(-88.0) is 0")
def test_webgpu_denormals():
    needs_device("webgpu")
    np.testing.assert_allclose(_on([1e-40], "webgpu", np.float32).log().numpy(),
                               np.log(np.float32(1e-40)), **ELEMENTWISE)
    assert _on([-88.0], "webgpu", np.float32).exp().item() > 0


def test_webgpu_setitem_with_a_float64_value_names_the_dtype():
    needs_device("webgpu")
    x = neurenix.zeros(2, 3, device="webgpu")
    with pytest.raises(ValueError, match="float64"):
        x[0] = neurenix.tensor(np.array([7.0, 8.0, 9.0])).to("webgpu")


# ---- bugs: both devices -------------------------------------------------------------------

def test_log1p_and_expm1_of_small_values(device):
    a = np.array([1e-6, 1e-4], np.float32)
    x = _on(a, device)
    np.testing.assert_allclose(x.log1p().numpy(), torch.tensor(a).log1p().numpy(), rtol=1e-5,
                               atol=0)
    np.testing.assert_allclose(x.expm1().numpy(), torch.tensor(a).expm1().numpy(), rtol=1e-5,
                               atol=0)


def test_a_one_element_cpu_tensor_is_not_a_scalar(device):
    x = neurenix.ones(2, device=device)
    with pytest.raises(ValueError, match="cpu"):
        neurenix.cat([x, neurenix.tensor([3.0])])
