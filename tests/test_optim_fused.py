"""Fused optimizer steps (`fused=`): one compiled program per parameter group.

The fused step must take eager's steps exactly (bitwise: the program does the same float32
operations in the same order), follow PyTorch's as the eager one does, compile once however a
scheduler moves the learning rate, keep checkpoints interchangeable, and stay out of the way
inside a traced training step.
"""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

import neurenix as nx
from neurenix import nn, optim
from neurenix.optim.lr_scheduler import ExponentialLR, LambdaLR
from tests.devices import needs_device

STEPS = 20
TOL = {"rtol": 1e-5, "atol": 1e-6}

# (optimizer, keyword arguments, programs compiled): every optimizer and its key options
CONFIGS = [
    ("SGD", {"lr": 0.1}, 1),
    ("SGD", {"lr": 0.1, "momentum": 0.9}, 1),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05}, 1),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}, 2),  # first step differs
    ("SGD", {"lr": 0.05, "weight_decay": 0.1, "maximize": True}, 1),
    ("Adam", {"lr": 0.01}, 1),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}, 1),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "maximize": True}, 1),
    ("AdamW", {"lr": 0.01}, 1),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.5, "amsgrad": True}, 1),
    ("Adadelta", {}, 1),
    ("Adadelta", {"lr": 0.5, "weight_decay": 0.1, "maximize": True}, 1),
    ("RMSprop", {"lr": 0.01}, 1),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.1}, 1),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9, "maximize": True}, 1),
    ("Adagrad", {"lr": 0.1}, 1),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1,
                 "initial_accumulator_value": 0.1}, 1),
]


def config_id(config: tuple[str, dict, int]) -> str:
    name, kwargs, _ = config
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


def weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) * 0.5 for s in [(5, 6), (5,), (3, 5), (3,)]]


def data(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, 6)).astype(np.float32), \
        rng.standard_normal((8, 3)).astype(np.float32)


def nx_model(device: str = "cpu") -> nn.Sequential:
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    with nx.no_grad():
        for p, w in zip(model.parameters(), weights()):
            p.copy_(nx.tensor(w))
    return model.to(device)


def torch_model() -> torch.nn.Sequential:
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights()):
            p.copy_(torch.from_numpy(w))
    return model


def host(model: nn.Module) -> list[np.ndarray]:
    return [p.detach().to("cpu").numpy().copy() for p in model.parameters()]


def nx_step(model: nn.Module, opt: optim.Optimizer, x: np.ndarray, y: np.ndarray) -> None:
    device = next(iter(model.parameters())).device
    opt.zero_grad()
    loss = ((model(nx.tensor(x).to(device)) - nx.tensor(y).to(device)) ** 2).mean()
    loss.backward()
    opt.step()


def torch_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: np.ndarray,
               y: np.ndarray) -> None:
    opt.zero_grad()
    loss = ((model(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2).mean()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_fused_equals_eager_bitwise_and_torch(config: tuple[str, dict, int]) -> None:
    """20 steps with the learning rate changed before every step: fused and eager agree bit
    for bit, both follow torch, and the fused program compiled once."""
    name, kwargs, programs = config
    x, y = data()
    models = [nx_model(), nx_model()]
    opts = [getattr(optim, name)(m.parameters(), fused=f, **kwargs)
            for m, f in zip(models, (True, False))]
    scheds = [ExponentialLR(o, gamma=0.93) for o in opts]
    tmodel = torch_model()
    topt = getattr(torch.optim, name)(tmodel.parameters(), **kwargs)
    tsched = torch.optim.lr_scheduler.ExponentialLR(topt, gamma=0.93)
    for step in range(STEPS):
        for model, opt, sched in zip(models, opts, scheds):
            nx_step(model, opt, x, y)
            sched.step()
        torch_step(tmodel, topt, x, y)
        tsched.step()
        fused, eager = host(models[0]), host(models[1])
        for a, b, t in zip(fused, eager, tmodel.parameters()):
            np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
            np.testing.assert_allclose(a, t.detach().numpy(), **TOL, err_msg=f"step {step}")
    assert opts[0].fused_cache_size == programs
    assert opts[1].fused_cache_size == 0
    assert opts[0].param_groups[0]["lr"] == opts[1].param_groups[0]["lr"]


def test_default_fuses_cpu_float32_only() -> None:
    """fused=None fuses float32 parameters on the CPU (bitwise eager's), not float64; True
    fuses them too; False never; anything else is refused."""
    p32 = nx.ones(3, requires_grad=True)
    p64 = nx.ones(3, dtype=nx.float64, requires_grad=True)
    for p in (p32, p64):
        p.grad = nx.ones_like(p)
    assert optim.Adam([p32]).fuses(optim.Adam([p32]).param_groups[0]) == nx.device("cpu")
    default64 = optim.Adam([p64])
    assert default64.fuses(default64.param_groups[0]) is None
    forced64 = optim.Adam([p64], fused=True)
    assert forced64.fuses(forced64.param_groups[0]) == nx.device("cpu")
    off = optim.Adam([p32], fused=False)
    assert off.fuses(off.param_groups[0]) is None
    with pytest.raises(TypeError, match="fused must be True, False or None"):
        optim.SGD([p32], fused="yes")


def test_float64_fused_matches_eager() -> None:
    """fused=True on float64 parameters: eager's trajectory, bit for bit."""
    ps = [nx.tensor(w.astype(np.float64), requires_grad=True) for w in weights()]
    qs = [nx.tensor(w.astype(np.float64), requires_grad=True) for w in weights()]
    opts = [optim.Adam(ps, lr=0.01, fused=True), optim.Adam(qs, lr=0.01, fused=False)]
    rng = np.random.default_rng(3)
    for _ in range(5):
        for p, q in zip(ps, qs):
            g = rng.standard_normal(p.shape)
            p.grad, q.grad = nx.tensor(g), nx.tensor(g)
        for o in opts:
            o.step()
    for p, q in zip(ps, qs):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())
    assert opts[0].fused_cache_size == 1


def test_lambda_schedule_and_momentum_cycle_compile_once() -> None:
    """A LambdaLR schedule and a cycled momentum are program inputs: one program."""
    model = nx_model()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = LambdaLR(opt, lambda e: 1.0 / (1 + e))
    x, y = data()
    for step in range(10):
        opt.param_groups[0]["momentum"] = 0.8 + 0.01 * step
        nx_step(model, opt, x, y)
        sched.step()
    assert opt.fused_cache_size == 1


def test_groups_compile_separately() -> None:
    """Each group has its program; a hyper-parameter change in one recompiles only it."""
    model = nx_model()
    first, second = list(model.parameters())[:2], list(model.parameters())[2:]
    opt = optim.Adam([{"params": first}, {"params": second, "weight_decay": 0.1}], lr=0.01)
    x, y = data()
    nx_step(model, opt, x, y)
    assert opt.fused_cache_size == 2
    opt.param_groups[1]["weight_decay"] = 0.2
    nx_step(model, opt, x, y)
    counts = {index: c.cache_size for (index, _), c in opt._fused_steps.items()}
    assert counts == {0: 1, 1: 2}


def test_missing_gradient_and_shape_error() -> None:
    """A parameter without a gradient is skipped as eagerly; a gradient of the wrong shape
    raises eager's error before anything runs."""
    ps = [nx.tensor(w, requires_grad=True) for w in weights()]
    qs = [nx.tensor(w, requires_grad=True) for w in weights()]
    opts = [optim.SGD(ps, lr=0.1, momentum=0.9), optim.SGD(qs, lr=0.1, momentum=0.9,
                                                          fused=False)]
    rng = np.random.default_rng(2)
    for step in range(4):
        for i, (p, q) in enumerate(zip(ps, qs)):
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad, q.grad = (None, None) if i == step else (nx.tensor(g), nx.tensor(g))
        for o in opts:
            o.step()
    for p, q in zip(ps, qs):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())
    assert set(map(len, (opts[0].state, opts[1].state))) == {4}
    ps[0].grad = nx.zeros(2, 2)
    before = ps[1].detach().numpy().copy()
    with pytest.raises(ValueError, match="the gradient of a parameter has shape"):
        opts[0].step()
    np.testing.assert_array_equal(ps[1].detach().numpy(), before)


def test_views_and_closure() -> None:
    """Arrays and views taken from a parameter before a fused step see the update (the
    parameter keeps its memory, as eagerly); a closure's loss is returned."""
    model = nx_model()
    opt = optim.Adam(model.parameters(), lr=0.01)
    weight = model[0].weight
    array, view = weight.detach().numpy(), weight.detach()[0]
    x, y = data()

    def closure() -> nx.Tensor:
        opt.zero_grad()
        loss = ((model(nx.tensor(x)) - nx.tensor(y)) ** 2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, nx.Tensor) and opt.fused_cache_size == 1
    np.testing.assert_array_equal(array, weight.detach().numpy())
    np.testing.assert_array_equal(view.numpy(), weight.detach().numpy()[0])
    assert not np.array_equal(array, weights()[0])


def to_torch(saved: dict) -> dict:
    """A Neurenix optimizer checkpoint with torch tensors (as saving it for torch would)."""
    state = {i: {k: torch.from_numpy(v.numpy().copy()) if isinstance(v, nx.Tensor)
                 else torch.tensor(float(v)) if k == "step" else v for k, v in s.items()}
             for i, s in saved["state"].items()}
    return {"state": state, "param_groups": copy.deepcopy(saved["param_groups"])}


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Adagrad"])
def test_state_dict_round_trips(name: str) -> None:
    """Checkpoints move between fused, unfused and torch optimizers: the same layout, and
    training goes on identically after loading."""
    kwargs = {"lr": 0.01, "momentum": 0.9} if name in ("SGD", "RMSprop") else {"lr": 0.01}
    x, y = data()
    fused_model, eager_model = nx_model(), nx_model()
    fused = getattr(optim, name)(fused_model.parameters(), fused=True, **kwargs)
    eager = getattr(optim, name)(eager_model.parameters(), fused=False, **kwargs)
    for _ in range(3):
        nx_step(fused_model, fused, x, y)
        nx_step(eager_model, eager, x, y)
    saved_fused = copy.deepcopy(fused.state_dict())
    saved_eager = copy.deepcopy(eager.state_dict())
    assert saved_fused["param_groups"] == saved_eager["param_groups"]
    for i, s in saved_fused["state"].items():
        assert s.keys() == saved_eager["state"][i].keys()
        for k, v in s.items():
            other = saved_eager["state"][i][k]
            if isinstance(v, nx.Tensor):
                np.testing.assert_array_equal(v.numpy(), other.numpy())
            else:
                assert v == other

    # fused -> unfused, unfused -> fused: both continue as the uninterrupted eager run
    crossed = [(nx_model(), False, saved_fused), (nx_model(), True, saved_eager)]
    for model, _, _ in crossed:
        with nx.no_grad():
            for p, q in zip(model.parameters(), eager_model.parameters()):
                p.copy_(q.detach())
    opts = [getattr(optim, name)(m.parameters(), fused=f, **kwargs) for m, f, _ in crossed]
    for opt, (_, _, saved) in zip(opts, crossed):
        opt.load_state_dict(saved)
    for _ in range(3):
        nx_step(eager_model, eager, x, y)
        for opt, (model, _, _) in zip(opts, crossed):
            nx_step(model, opt, x, y)
    for model, _, _ in crossed:
        for a, b in zip(host(model), host(eager_model)):
            np.testing.assert_array_equal(a, b)

    # fused -> torch and torch -> fused
    tmodel = torch_model()
    with torch.no_grad():
        for t, w in zip(tmodel.parameters(), host(fused_model)):
            t.copy_(torch.from_numpy(w))
    topt = getattr(torch.optim, name)(tmodel.parameters(), **kwargs)
    topt.load_state_dict(to_torch(saved_fused))
    back = getattr(optim, name)(fused_model.parameters(), fused=True, **kwargs)
    back.load_state_dict(topt.state_dict())
    for _ in range(3):
        torch_step(tmodel, topt, x, y)
        nx_step(fused_model, back, x, y)
    for a, t in zip(host(fused_model), tmodel.parameters()):
        np.testing.assert_allclose(a, t.detach().numpy(), **TOL)


def test_load_state_dict_recompiles_from_scratch() -> None:
    """Loading replaces the state tensors: the programs are dropped and traced again (no
    stale programs pile up), and the step goes on."""
    model = nx_model()
    opt = optim.Adam(model.parameters(), lr=0.01)
    x, y = data()
    nx_step(model, opt, x, y)
    for _ in range(3):
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        nx_step(model, opt, x, y)
        assert opt.fused_cache_size == 1


def test_pickle_and_deepcopy_drop_programs() -> None:
    """A fused optimizer pickles and copies (without its programs) and steps afterwards."""
    model = nx_model()
    opt = optim.AdamW(model.parameters(), lr=0.01)
    x, y = data()
    nx_step(model, opt, x, y)
    twin_model, twin = pickle.loads(pickle.dumps((model, opt)))
    assert twin.fused is None and twin.fused_cache_size == 0
    nx_step(twin_model, twin, x, y)
    nx_step(model, opt, x, y)
    for a, b in zip(host(model), host(twin_model)):
        np.testing.assert_array_equal(a, b)
    assert copy.deepcopy(opt).fused_cache_size == 0


def test_compiled_training_step_does_not_nest() -> None:
    """In a compiled training step the fused optimizer's update is part of that trace (no
    program of its own), with eager's result."""
    x, y = data()
    models = [nx_model(), nx_model()]
    opts = [optim.Adam(models[0].parameters(), lr=0.01, fused=True),
            optim.Adam(models[1].parameters(), lr=0.01, fused=False)]

    @nx.compile
    def train_step(xb: nx.Tensor, yb: nx.Tensor) -> nx.Tensor:
        opts[0].zero_grad()
        loss = ((models[0](xb) - yb) ** 2).mean()
        loss.backward()
        opts[0].step()
        return loss

    for _ in range(5):
        train_step(nx.tensor(x), nx.tensor(y))
        nx_step(models[1], opts[1], x, y)
    assert train_step.cache_size == 1 and opts[0].fused_cache_size == 0
    for a, b in zip(host(models[0]), host(models[1])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["opencl", "webgpu"])
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_fused_on_devices(name: str, kind: str) -> None:
    """fused=True on device parameters: one program on the device, parameters and state
    stay there, the trajectory is the CPU's."""
    needs_device(kind)
    kwargs = {"lr": 0.1, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    x, y = data()
    dev_model, cpu_model = nx_model(kind), nx_model()
    dev = getattr(optim, name)(dev_model.parameters(), fused=True, **kwargs)
    cpu = getattr(optim, name)(cpu_model.parameters(), fused=False, **kwargs)
    sched = ExponentialLR(dev, gamma=0.9)
    cpu_sched = ExponentialLR(cpu, gamma=0.9)
    for _ in range(5):
        nx_step(dev_model, dev, x, y)
        nx_step(cpu_model, cpu, x, y)
        sched.step()
        cpu_sched.step()
    assert dev.fuses(dev.param_groups[0]) == nx.device(kind)
    assert dev.fused_cache_size == 1
    assert all(p.device.type.value == kind for p in dev_model.parameters())
    assert all(v.device.type.value == kind for s in dev.state.values()
               for v in s.values() if isinstance(v, nx.Tensor))
    for a, b in zip(host(dev_model), host(cpu_model)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
