"""neurenix.optim against torch.optim: trajectories, parameter groups, checkpoints, errors.

Each trajectory test starts Neurenix and torch from the same parameters and feeds both the same
gradients (a fixed random sequence, or the gradients of the same least-squares loss), then
compares the parameters after every step.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import neurenix as nx
from neurenix import optim

TORCH_DTYPE = {nx.float32: torch.float32, nx.float64: torch.float64}
TOL = {nx.float32: {"rtol": 1e-5, "atol": 1e-6}, nx.float64: {"rtol": 1e-10, "atol": 1e-12}}
SHAPES = [(3, 4), (3,)]
STEPS = 20

# (optimizer name, keyword arguments): every option of every optimizer, alone and combined.
CONFIGS = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.1, "maximize": True}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05,
             "maximize": True}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "maximize": True}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "maximize": True}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.5}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.5, "amsgrad": True}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.0}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.95, "eps": 1e-5}),
    ("Adadelta", {"weight_decay": 0.1}),
    ("Adadelta", {"maximize": True}),
]


def config_id(config: tuple[str, dict]) -> str:
    name, kwargs = config
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


def initial_arrays(dtype: nx.DType, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype.np_type) for s in SHAPES]


def gradient_sequence(dtype: nx.DType, steps: int = STEPS, seed: int = 1) -> list[list]:
    """Random gradients whose scale drops after the first half (so AMSGrad's max matters)."""
    rng = np.random.default_rng(seed)
    seq = []
    for t in range(steps):
        scale = 1.0 if t < steps // 2 else 0.1
        seq.append([(scale * rng.standard_normal(s)).astype(dtype.np_type) for s in SHAPES])
    return seq


def make_pair(arrays: list[np.ndarray], dtype: nx.DType):
    nx_params = [nx.Tensor(a.copy(), dtype=dtype, requires_grad=True) for a in arrays]
    th_params = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    return nx_params, th_params


def assert_params_close(nx_params, th_params, dtype: nx.DType, what: str) -> None:
    for i, (p, q) in enumerate(zip(nx_params, th_params)):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **TOL[dtype],
                                   err_msg=f"{what}: parameter {i}")


def apply_grads(params, grads, framework) -> None:
    for p, g in zip(params, grads):
        p.grad = framework.tensor(g.copy())


def run_fixed(name: str, kwargs: dict, dtype: nx.DType, steps: int = STEPS) -> list[np.ndarray]:
    """Run a Neurenix optimizer on the fixed gradient sequence; return the final parameters."""
    params = [nx.Tensor(a, dtype=dtype, requires_grad=True) for a in initial_arrays(dtype)]
    opt = getattr(optim, name)(params, **kwargs)
    for grads in gradient_sequence(dtype, steps):
        apply_grads(params, grads, nx)
        opt.step()
    return [p.detach().numpy().copy() for p in params]


@pytest.mark.parametrize("dtype", [nx.float32, nx.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_trajectory_matches_torch_on_fixed_gradients(config, dtype):
    name, kwargs = config
    nx_params, th_params = make_pair(initial_arrays(dtype), dtype)
    nx_opt = getattr(optim, name)(nx_params, **kwargs)
    th_opt = getattr(torch.optim, name)(th_params, **kwargs)
    for t, grads in enumerate(gradient_sequence(dtype)):
        apply_grads(nx_params, grads, nx)
        apply_grads(th_params, grads, torch)
        nx_opt.step()
        th_opt.step()
        assert_params_close(nx_params, th_params, dtype, f"{config_id(config)} step {t}")
    assert all(p.dtype == dtype for p in nx_params)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[1]], ids=config_id)
def test_each_option_changes_the_trajectory(config):
    # guards the comparison above against options that both frameworks would ignore
    name, kwargs = config
    default = {k: v for k, v in kwargs.items() if k == "lr"}
    if kwargs == default:
        default = {}
    if name == "AdamW" and "weight_decay" not in kwargs:
        default["weight_decay"] = 0.0
    if default == kwargs:
        pytest.skip("the configuration is the default")
    ours = run_fixed(name, kwargs, nx.float64)
    base = run_fixed(name, default, nx.float64)
    assert any(not np.allclose(a, b, rtol=1e-6) for a, b in zip(ours, base))


def least_squares_data(dtype: nx.DType) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 4)).astype(dtype.np_type)
    y = rng.standard_normal((16, 3)).astype(dtype.np_type)
    return x, y


def loss_of(params, x, y):
    w, b = params
    return ((x @ w.T + b - y) ** 2).mean()


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("Adam", {"lr": 0.05, "weight_decay": 0.01, "amsgrad": True}),
    ("AdamW", {"lr": 0.05}),
    ("Adadelta", {"lr": 1.0}),
])
def test_least_squares_training_matches_torch(name, kwargs):
    dtype = nx.float32
    x, y = least_squares_data(dtype)
    nx_params, th_params = make_pair(initial_arrays(dtype), dtype)
    nx_opt = getattr(optim, name)(nx_params, **kwargs)
    th_opt = getattr(torch.optim, name)(th_params, **kwargs)
    nx_x, nx_y = nx.Tensor(x), nx.Tensor(y)
    th_x, th_y = torch.tensor(x), torch.tensor(y)
    first = None
    for t in range(STEPS):
        nx_opt.zero_grad()
        th_opt.zero_grad()
        nx_loss = loss_of(nx_params, nx_x, nx_y)
        th_loss = loss_of(th_params, th_x, th_y)
        nx_loss.backward()
        th_loss.backward()
        nx_opt.step()
        th_opt.step()
        np.testing.assert_allclose(nx_loss.item(), th_loss.item(), rtol=1e-5)
        assert_params_close(nx_params, th_params, dtype, f"{name} step {t}")
        first = nx_loss.item() if first is None else first
    assert nx_loss.item() < first  # the optimizer actually trains


def test_step_with_closure_returns_the_loss():
    x, y = least_squares_data(nx.float64)
    nx_params, th_params = make_pair(initial_arrays(nx.float64), nx.float64)
    nx_opt = optim.SGD(nx_params, lr=0.1, momentum=0.5)
    th_opt = torch.optim.SGD(th_params, lr=0.1, momentum=0.5)
    nx_x, nx_y = nx.Tensor(x), nx.Tensor(y)

    def closure():
        nx_opt.zero_grad()
        loss = loss_of(nx_params, nx_x, nx_y)
        loss.backward()
        return loss

    def th_closure():
        th_opt.zero_grad()
        loss = loss_of(th_params, torch.tensor(x), torch.tensor(y))
        loss.backward()
        return loss

    for _ in range(5):
        with nx.no_grad():  # step must turn grad mode on for the closure itself
            loss = nx_opt.step(closure)
        th_loss = th_opt.step(th_closure)
        np.testing.assert_allclose(loss.item(), th_loss.item(), rtol=1e-10)
    assert_params_close(nx_params, th_params, nx.float64, "closure")
    assert nx_opt.step() is None


def test_param_groups_with_different_hyperparameters():
    dtype = nx.float64
    nx_params, th_params = make_pair(initial_arrays(dtype), dtype)
    nx_opt = optim.SGD([{"params": [nx_params[0]]},
                        {"params": nx_params[1], "lr": 0.5, "momentum": 0.0}],
                       lr=0.05, momentum=0.9)
    th_opt = torch.optim.SGD([{"params": [th_params[0]]},
                              {"params": th_params[1], "lr": 0.5, "momentum": 0.0}],
                             lr=0.05, momentum=0.9)
    assert [g["lr"] for g in nx_opt.param_groups] == [0.05, 0.5]
    assert [g["momentum"] for g in nx_opt.param_groups] == [0.9, 0.0]
    assert nx_opt.param_groups[1]["params"][0] is nx_params[1]
    assert set(nx_opt.param_groups[0]) == {"params", "lr", "momentum", "dampening",
                                           "weight_decay", "nesterov", "maximize"}
    assert nx_opt.defaults["lr"] == 0.05
    for grads in gradient_sequence(dtype, 10):
        apply_grads(nx_params, grads, nx)
        apply_grads(th_params, grads, torch)
        nx_opt.step()
        th_opt.step()
    assert_params_close(nx_params, th_params, dtype, "param groups")
    assert "momentum_buffer" in nx_opt.state[nx_params[0]]
    assert nx_params[1] not in nx_opt.state  # no momentum, no state (as in torch)


def test_add_param_group_joins_later():
    dtype = nx.float64
    nx_params, th_params = make_pair(initial_arrays(dtype), dtype)
    nx_opt = optim.Adam([nx_params[0]], lr=0.01)
    th_opt = torch.optim.Adam([th_params[0]], lr=0.01)
    for t, grads in enumerate(gradient_sequence(dtype, 10)):
        if t == 4:
            nx_opt.add_param_group({"params": [nx_params[1]], "lr": 0.1})
            th_opt.add_param_group({"params": [th_params[1]], "lr": 0.1})
        apply_grads(nx_params, grads, nx)
        apply_grads(th_params, grads, torch)
        nx_opt.step()
        th_opt.step()
    assert_params_close(nx_params, th_params, dtype, "add_param_group")
    assert nx_opt.state[nx_params[1]]["step"] == 6


def test_parameters_without_gradient_are_skipped():
    a = nx.Tensor([1.0, 2.0], requires_grad=True)
    b = nx.Tensor([3.0, 4.0], requires_grad=True)
    frozen = nx.Tensor([5.0])  # accepted, as PyTorch accepts it, and never updated
    opt = optim.Adam([a, b, frozen], lr=0.1)
    a.grad = nx.Tensor([1.0, 1.0])
    opt.step()
    assert not np.allclose(a.detach().numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(b.detach().numpy(), [3.0, 4.0])
    np.testing.assert_array_equal(frozen.numpy(), [5.0])
    assert b not in opt.state and frozen not in opt.state


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    p = nx.Tensor([1.0, -2.0], requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    (p * p).sum().backward()
    grad = p.grad
    np.testing.assert_allclose(grad.numpy(), [2.0, -4.0])
    opt.zero_grad(set_to_none=set_to_none)
    if set_to_none:
        assert p.grad is None
    else:
        assert p.grad is grad
        np.testing.assert_array_equal(p.grad.numpy(), [0.0, 0.0])
    (p * p).sum().backward()
    np.testing.assert_allclose(p.grad.numpy(), [2.0, -4.0])  # not accumulated onto old grads


def test_zero_grad_default_is_set_to_none():
    p = nx.Tensor([1.0], requires_grad=True)
    opt = optim.SGD([p])
    p.grad = nx.Tensor([3.0])
    opt.zero_grad()
    assert p.grad is None


def test_update_is_recorded_as_an_in_place_write():
    # the step writes parameters with copy_, so autograd sees a new version
    p = nx.Tensor([1.0, 2.0], requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    before = p._version
    p.grad = nx.Tensor([1.0, 1.0])
    opt.step()
    assert p._version > before
    assert p.is_leaf and p.requires_grad


def test_named_parameters_are_kept_as_param_names():
    p = nx.Tensor([1.0], requires_grad=True)
    q = nx.Tensor([2.0], requires_grad=True)
    opt = optim.SGD([("weight", p), ("bias", q)], lr=0.1)
    group = opt.param_groups[0]
    assert len(group["params"]) == 2
    assert group["params"][0] is p and group["params"][1] is q
    assert group["param_names"] == ["weight", "bias"]
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


# ---- checkpoints -------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01}),
    ("Adadelta", {"weight_decay": 0.01}),
], ids=config_id)
def test_state_dict_round_trip_continues_exactly(config):
    name, kwargs = config
    dtype = nx.float64
    grads = gradient_sequence(dtype)
    uninterrupted = run_fixed(name, kwargs, dtype)

    params = [nx.Tensor(a, dtype=dtype, requires_grad=True) for a in initial_arrays(dtype)]
    opt = getattr(optim, name)(params, **kwargs)
    for g in grads[:5]:
        apply_grads(params, g, nx)
        opt.step()
    saved = opt.state_dict()
    saved_values = [p.detach().numpy().copy() for p in params]
    del opt

    fresh = [nx.Tensor(a, dtype=dtype, requires_grad=True) for a in saved_values]
    resumed = getattr(optim, name)(fresh, lr=123.0)  # the saved lr must win
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == kwargs.get("lr", 1.0)
    assert resumed.param_groups[0]["params"][0] is fresh[0]
    for g in grads[5:]:
        apply_grads(fresh, g, nx)
        resumed.step()
    for a, b in zip(fresh, uninterrupted):
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-12, atol=0)


def test_state_dict_layout_matches_torch():
    dtype = nx.float32
    nx_params, th_params = make_pair(initial_arrays(dtype), dtype)
    nx_opt = optim.Adam([{"params": [nx_params[0]]}, {"params": [nx_params[1]], "lr": 0.1}],
                        lr=0.01, amsgrad=True)
    th_opt = torch.optim.Adam([{"params": [th_params[0]]}, {"params": [th_params[1]],
                                                             "lr": 0.1}],
                              lr=0.01, amsgrad=True)
    for grads in gradient_sequence(dtype, 3):
        apply_grads(nx_params, grads, nx)
        apply_grads(th_params, grads, torch)
        nx_opt.step()
        th_opt.step()
    ours, theirs = nx_opt.state_dict(), th_opt.state_dict()
    assert set(ours) == {"state", "param_groups"}
    assert list(ours["state"]) == list(theirs["state"]) == [0, 1]
    for i in (0, 1):
        assert set(ours["state"][i]) == set(theirs["state"][i])
        assert ours["state"][i]["step"] == float(theirs["state"][i]["step"]) == 3
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            np.testing.assert_allclose(ours["state"][i][key].numpy(),
                                       theirs["state"][i][key].numpy(), **TOL[dtype])
    torch_only = {"foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay"}
    for g, h in zip(ours["param_groups"], theirs["param_groups"]):
        assert set(g) == set(h) - torch_only
        assert g["params"] == h["params"]
        assert all(g[k] == h[k] for k in g)


def test_load_a_torch_state_dict_and_continue():
    dtype = nx.float32
    nx_params, th_params = make_pair(initial_arrays(dtype), dtype)
    th_opt = torch.optim.SGD(th_params, lr=0.1, momentum=0.9)
    grads = gradient_sequence(dtype)
    for g in grads[:5]:
        apply_grads(th_params, g, torch)
        th_opt.step()
    for p, q in zip(nx_params, th_params):
        with nx.no_grad():
            p.copy_(nx.Tensor(q.detach().numpy()))
    nx_opt = optim.SGD(nx_params, lr=0.1, momentum=0.9)
    nx_opt.load_state_dict(th_opt.state_dict())
    buf = nx_opt.state[nx_params[0]]["momentum_buffer"]
    assert isinstance(buf, nx.Tensor) and buf.dtype == nx.float32
    for g in grads[5:]:
        apply_grads(nx_params, g, nx)
        apply_grads(th_params, g, torch)
        nx_opt.step()
        th_opt.step()
    assert_params_close(nx_params, th_params, dtype, "after loading torch state")


def test_loaded_state_is_a_copy():
    p = nx.Tensor([1.0, 2.0], requires_grad=True)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = nx.Tensor([1.0, 1.0])
    opt.step()
    saved = opt.state_dict()
    before = saved["state"][0]["momentum_buffer"].numpy().copy()
    q = nx.Tensor([1.0, 2.0], requires_grad=True)
    other = optim.SGD([q], lr=0.1, momentum=0.9)
    other.load_state_dict(saved)
    q.grad = nx.Tensor([5.0, 5.0])
    other.step()
    np.testing.assert_array_equal(saved["state"][0]["momentum_buffer"].numpy(), before)


def test_load_state_dict_rejects_a_mismatched_layout():
    p = nx.Tensor([1.0], requires_grad=True)
    q = nx.Tensor([2.0], requires_grad=True)
    saved = optim.SGD([p, q], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="group 0 .* 2 parameters.* has 1"):
        optim.SGD([nx.Tensor([1.0], requires_grad=True)], lr=0.1).load_state_dict(saved)
    two_groups = optim.SGD([{"params": [p]}, {"params": [q]}], lr=0.1)
    with pytest.raises(ValueError, match="1 parameter groups, this optimizer has 2"):
        two_groups.load_state_dict(saved)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        two_groups.load_state_dict({"state": {}})


# ---- bad input ---------------------------------------------------------------------------


def param() -> nx.Tensor:
    return nx.Tensor([1.0, 2.0], requires_grad=True)


@pytest.mark.parametrize("make,match", [
    (lambda: optim.SGD([], lr=0.1), "SGD: got an empty parameter list"),
    (lambda: optim.Adam(iter([])), "Adam: got an empty parameter list"),
    (lambda: optim.SGD([param()], lr=-0.1), "SGD: invalid lr -0.1"),
    (lambda: optim.Adam([param()], lr=-1e-3), "Adam: invalid lr"),
    (lambda: optim.AdamW([param()], lr=-1.0), "AdamW: invalid lr"),
    (lambda: optim.Adadelta([param()], lr=-1.0), "Adadelta: invalid lr"),
    (lambda: optim.SGD([param()], momentum=-0.5), "SGD: invalid momentum -0.5"),
    (lambda: optim.SGD([param()], weight_decay=-1.0), "SGD: invalid weight_decay"),
    (lambda: optim.SGD([param()], nesterov=True), "Nesterov momentum requires a momentum"),
    (lambda: optim.SGD([param()], momentum=0.9, dampening=0.1, nesterov=True),
     "zero dampening"),
    (lambda: optim.Adam([param()], betas=(1.0, 0.999)), "beta parameter at index 0"),
    (lambda: optim.Adam([param()], betas=(0.9, -0.1)), "beta parameter at index 1"),
    (lambda: optim.Adam([param()], eps=-1e-8), "Adam: invalid eps"),
    (lambda: optim.Adam([param()], weight_decay=-0.1), "Adam: invalid weight_decay"),
    (lambda: optim.Adadelta([param()], rho=1.5), "Adadelta: invalid rho 1.5"),
    (lambda: optim.Adadelta([param()], eps=-1.0), "Adadelta: invalid eps"),
    (lambda: optim.SGD([{"params": [param()], "lr": -2.0}], lr=0.1), "SGD: invalid lr -2.0"),
    (lambda: optim.SGD([param()], lr=0.1).add_param_group({"lr": 0.1}), "'params' entry"),
])
def test_bad_hyperparameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make,match", [
    (lambda: optim.SGD(param(), lr=0.1), "single Tensor; wrap it in a list"),
    (lambda: optim.SGD([param(), "w"], lr=0.1), "can only optimize Tensors, but parameter 1"),
    (lambda: optim.SGD([np.zeros(3)], lr=0.1), "is a ndarray"),
    (lambda: optim.SGD(3, lr=0.1), "iterable of Tensors or dicts, got int"),
    (lambda: optim.SGD({param()}, lr=0.1), "not a set"),
    (lambda: optim.SGD([{"params": {param()}}], lr=0.1), "not a set"),
    (lambda: optim.SGD([param()], lr="fast"), "lr must be a real number, got str"),
    (lambda: optim.Adam([param()], betas=0.9), "betas must be a pair"),
    (lambda: optim.SGD([param()], lr=0.1).add_param_group([param()]), "must be a dict"),
])
def test_bad_arguments_raise_type_error(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_non_leaf_tensor_is_refused():
    leaf = param()
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        optim.SGD([leaf * 2.0], lr=0.1)


def test_parameter_in_two_groups_is_refused():
    p = param()
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)


def test_duplicate_parameter_in_a_group_warns():
    p = param()
    with pytest.warns(UserWarning, match="duplicate parameters"):
        optim.SGD([p, p], lr=0.1)


def test_gradient_of_the_wrong_shape_is_refused():
    p = param()
    opt = optim.SGD([p], lr=0.1)
    p.grad = nx.Tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"gradient .* shape \(3,\), expected \(2,\)"):
        opt.step()


def test_repr_lists_the_groups():
    opt = optim.Adam([param()], lr=0.01)
    text = repr(opt)
    assert text.startswith("Adam (") and "Parameter Group 0" in text and "lr: 0.01" in text
