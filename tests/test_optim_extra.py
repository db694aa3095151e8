"""RMSprop, Adagrad, the added schedulers and gradient clipping, against torch.

Optimizers: parameter trajectories on a small least-squares model, compiled training steps
against eager ones, and state_dict round trips. Schedulers: the learning-rate (and momentum)
sequences over many steps, chained, and resumed from a state dict. Clipping: the norms and
clipped gradients, eagerly, compiled and on the OpenCL device.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from devices import needs_device
from neurenix.compiler.trace import TraceError

import neurenix as nx
from neurenix import nn, optim
from neurenix.nn.utils import clip_grad_norm_, clip_grad_value_
from neurenix.optim import lr_scheduler

STEPS = 20
CONFIGS = [
    ("RMSprop", {}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9, "eps": 1e-6}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.01, "centered": True}),
    ("RMSprop", {"lr": 0.01, "weight_decay": 0.1, "momentum": 0.5, "centered": True}),
    ("RMSprop", {"lr": 0.01, "maximize": True}),
    ("Adagrad", {}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.05}),
    ("Adagrad", {"lr": 0.1, "weight_decay": 0.1}),
    ("Adagrad", {"lr": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-6}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.05, "maximize": True}),
]


def config_id(config: tuple[str, dict]) -> str:
    name, kwargs = config
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


def _data() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(3)
    return (rng.standard_normal((3, 4)).astype(np.float32),
            rng.standard_normal(3).astype(np.float32),
            rng.standard_normal((16, 4)).astype(np.float32),
            rng.standard_normal((16, 3)).astype(np.float32))


def _loss(w, b, x, y):
    return ((x @ w.T + b - y) ** 2).mean()


def _pair(name: str, kwargs: dict):
    w0, b0, x, y = _data()
    ours = [nx.Tensor(w0.copy(), requires_grad=True), nx.Tensor(b0.copy(), requires_grad=True)]
    theirs = [torch.tensor(w0.copy(), requires_grad=True),
              torch.tensor(b0.copy(), requires_grad=True)]
    return (ours, getattr(optim, name)(ours, **kwargs), nx.Tensor(x), nx.Tensor(y),
            theirs, getattr(torch.optim, name)(theirs, **kwargs), torch.tensor(x),
            torch.tensor(y))


def _train(params, opt, x, y, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        _loss(*params, x, y).backward()
        opt.step()


def _close(ours, theirs, what: str) -> None:
    for i, (p, q) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=f"{what}: parameter {i}")


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_trajectory_matches_torch(config):
    name, kwargs = config
    ours, opt, x, y, theirs, topt, tx, ty = _pair(name, kwargs)
    for t in range(STEPS):
        _train(ours, opt, x, y, 1)
        _train(theirs, topt, tx, ty, 1)
        _close(ours, theirs, f"{config_id(config)} step {t}")
    assert not np.allclose(ours[0].detach().numpy(), _data()[0])  # it really moved


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[1]], ids=config_id)
def test_each_option_changes_the_trajectory(config):
    name, kwargs = config
    base = {k: v for k, v in kwargs.items() if k == "lr"}
    runs = []
    for kw in (kwargs, base):
        ours, opt, x, y, *_ = _pair(name, kw)
        _train(ours, opt, x, y, 10)
        runs.append(ours[0].detach().numpy())
    assert not np.allclose(runs[0], runs[1], rtol=1e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_state_dict_round_trip_continues_exactly(config):
    name, kwargs = config
    ours, opt, x, y, theirs, topt, tx, ty = _pair(name, kwargs)
    _train(ours, opt, x, y, 5)
    _train(theirs, topt, tx, ty, 5)
    saved = opt.state_dict()
    assert set(saved["state"][0]) == set(topt.state_dict()["state"][0])
    assert saved["state"][0]["step"] == 5
    # a fresh optimizer on copies of the parameters, loaded from ours, and one loaded from torch
    resumed = [nx.Tensor(p.detach().numpy().copy(), requires_grad=True) for p in ours]
    from_torch = [nx.Tensor(p.detach().numpy().copy(), requires_grad=True) for p in ours]
    ropt = getattr(optim, name)(resumed, **kwargs)
    ropt.load_state_dict(saved)
    topt2 = getattr(optim, name)(from_torch, **kwargs)
    topt2.load_state_dict(topt.state_dict())
    for params, o in ((ours, opt), (resumed, ropt), (from_torch, topt2)):
        _train(params, o, x, y, 5)
    _train(theirs, topt, tx, ty, 5)
    for params in (ours, resumed, from_torch):
        _close(params, theirs, config_id(config))
    back = torch.optim.__dict__[name]([torch.tensor(p.detach().numpy()) for p in ours],
                                      **kwargs)
    back.load_state_dict({"state": {k: {n: torch.tensor(np.asarray(v)) if n != "step" else
                                        torch.tensor(float(v)) for n, v in s.items()}
                                    for k, s in ropt.state_dict()["state"].items()},
                          "param_groups": ropt.state_dict()["param_groups"]})


def test_adagrad_has_state_from_construction_like_torch():
    p = nx.Tensor([1.0, 2.0], requires_grad=True)
    opt = optim.Adagrad([p], initial_accumulator_value=0.25)
    theirs = torch.optim.Adagrad([torch.tensor([1.0, 2.0], requires_grad=True)],
                                 initial_accumulator_value=0.25)
    assert set(opt.state_dict()["state"][0]) == set(theirs.state_dict()["state"][0])
    np.testing.assert_array_equal(opt.state[p]["sum"].numpy(), [0.25, 0.25])


@pytest.mark.parametrize("kwargs", [{"lr": -1.0}, {"alpha": -0.1}, {"momentum": -1.0},
                                    {"eps": -1.0}, {"weight_decay": -1.0}])
def test_rmsprop_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="RMSprop"):
        optim.RMSprop([nx.Tensor([1.0], requires_grad=True)], **kwargs)


@pytest.mark.parametrize("kwargs", [{"lr": -1.0}, {"lr_decay": -0.1}, {"eps": -1.0},
                                    {"initial_accumulator_value": -1.0}])
def test_adagrad_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="Adagrad"):
        optim.Adagrad([nx.Tensor([1.0], requires_grad=True)], **kwargs)


# ---- compiled training steps ----------------------------------------------------------------

def _mlp():
    nx.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _step(model, opt, clip: bool):
    def step(x, y):
        opt.zero_grad()
        loss = nn.MSELoss()(model(x), y)
        loss.backward()
        norm = clip_grad_norm_(model.parameters(), 0.3) if clip else loss
        if clip:
            clip_grad_value_(model.parameters(), 0.02)
        opt.step()
        return loss, norm
    return step


def _batches(n: int = 4):
    rng = np.random.default_rng(5)
    return [(nx.Tensor(rng.standard_normal((5, 4)).astype(np.float32)),
             nx.Tensor(rng.standard_normal((5, 2)).astype(np.float32))) for _ in range(n)]


@pytest.mark.parametrize("clip", [False, True], ids=["plain", "clipped"])
@pytest.mark.parametrize("config", [
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.01}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01}),
    ("Adam", {"lr": 0.01}),
], ids=config_id)
def test_compiled_training_step_matches_eager(config, clip):
    name, kwargs = config
    eager, compiled = _mlp(), _mlp()
    eager_opt = getattr(optim, name)(eager.parameters(), **kwargs)
    compiled_opt = getattr(optim, name)(compiled.parameters(), **kwargs)
    eager_step = _step(eager, eager_opt, clip)
    step = nx.compile(_step(compiled, compiled_opt, clip))
    for x, y in _batches():
        want, got = eager_step(x, y), step(x, y)
        for a, b in zip(want, got):
            np.testing.assert_allclose(b.numpy(), a.detach().numpy(), rtol=1e-5, atol=1e-6)
        for p, q in zip(eager.parameters(), compiled.parameters()):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-5,
                                       atol=1e-6)
    assert step.cache_size == 1
    for p, q in zip(eager.parameters(), compiled.parameters()):
        se, sc = eager_opt.state[p], compiled_opt.state[q]
        assert set(se) == set(sc)
        for key, value in se.items():
            if isinstance(value, nx.Tensor):
                # centered RMSprop's early buffers are large sums with cancellation
                np.testing.assert_allclose(sc[key].numpy(), value.numpy(), rtol=1e-5,
                                           atol=2e-5)
            else:
                assert sc[key] == value


def test_compiled_step_reads_a_scheduled_learning_rate_every_call():
    eager, compiled = _mlp(), _mlp()
    opts = [optim.RMSprop(m.parameters(), lr=0.01) for m in (eager, compiled)]
    scheds = [lr_scheduler.CosineAnnealingLR(o, T_max=3) for o in opts]
    eager_step = _step(eager, opts[0], False)
    step = nx.compile(_step(compiled, opts[1], False))
    for x, y in _batches(5):
        eager_step(x, y)
        step(x, y)
        for s in scheds:
            s.step()
    for p, q in zip(eager.parameters(), compiled.parameters()):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
    assert step.cache_size == 1


# ---- schedulers -----------------------------------------------------------------------------

def _optimizers(kind: str = "SGD", lrs=(0.1, 0.02)):
    ours = [{"params": [nx.Tensor([1.0], requires_grad=True)], "lr": lr} for lr in lrs]
    theirs = [{"params": [torch.tensor([1.0], requires_grad=True)], "lr": lr} for lr in lrs]
    kwargs = {"momentum": 0.9} if kind == "SGD" else {}
    return (getattr(optim, kind)(ours, lr=0.5, **kwargs),
            getattr(torch.optim, kind)(theirs, lr=0.5, **kwargs))


def _lrs(opt) -> list[float]:
    return [g["lr"] for g in opt.param_groups]


def _same(ours: list[float], theirs: list[float], what: str) -> None:
    assert len(ours) == len(theirs), what
    for a, b in zip(ours, theirs):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), f"{what}: {ours} != {theirs}"


class Warmup:
    """A picklable lr_lambda with state, as PyTorch's state_dict keeps."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __call__(self, epoch: int) -> float:
        return min(1.0, (epoch + 1) / self.steps)


SCHEDULES = [
    ("CosineAnnealingLR", {"T_max": 10}),
    ("CosineAnnealingLR", {"T_max": 7, "eta_min": 0.001}),
    ("LambdaLR", {"lr_lambda": lambda e: 0.95 ** e}),
    ("LambdaLR", {"lr_lambda": [lambda e: 1.0 / (e + 1), lambda e: 0.9 ** (e // 3)]}),
    ("MultiStepLR", {"milestones": [3, 8, 8, 20], "gamma": 0.5}),
    ("LinearLR", {}),
    ("LinearLR", {"start_factor": 0.1, "end_factor": 0.8, "total_iters": 12}),
    ("OneCycleLR", {"max_lr": 0.5, "total_steps": 40}),
    ("OneCycleLR", {"max_lr": [0.5, 0.2], "total_steps": 40, "anneal_strategy": "linear",
                    "pct_start": 0.25}),
    ("OneCycleLR", {"max_lr": 1.0, "epochs": 4, "steps_per_epoch": 10, "three_phase": True,
                    "div_factor": 10.0, "final_div_factor": 100.0}),
]


def schedule_id(item):
    name, kwargs = item
    return name + "".join(f"-{k}" for k in kwargs)


def _momenta(opt) -> list:
    return [(g.get("momentum"), tuple(g.get("betas", ()))) for g in opt.param_groups]


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
@pytest.mark.parametrize("item", SCHEDULES, ids=schedule_id)
def test_schedule_matches_torch(item, kind):
    name, kwargs = item
    ours_opt, theirs_opt = _optimizers(kind)
    ours = getattr(lr_scheduler, name)(ours_opt, **kwargs)
    theirs = getattr(torch.optim.lr_scheduler, name)(theirs_opt, **kwargs)
    _same(_lrs(ours_opt), _lrs(theirs_opt), "construction")
    assert ours.base_lrs == pytest.approx(theirs.base_lrs, rel=1e-15)
    steps = 39 if name == "OneCycleLR" else 60
    distinct = set()
    for epoch in range(steps):
        ours_opt.step()
        theirs_opt.step()
        ours.step()
        theirs.step()
        _same(_lrs(ours_opt), _lrs(theirs_opt), f"{name} epoch {epoch}")
        _same(ours.get_last_lr(), theirs.get_last_lr(), f"{name} get_last_lr {epoch}")
        assert ours.last_epoch == theirs.last_epoch
        for (m1, b1), (m2, b2) in zip(_momenta(ours_opt), _momenta(theirs_opt)):
            assert m1 == pytest.approx(m2, rel=1e-12) if m2 is not None else m1 is None
            assert b1 == pytest.approx(b2, rel=1e-12)
        distinct.add(tuple(_lrs(ours_opt)))
    assert len(distinct) > 2  # the schedule really moved
    if name == "OneCycleLR":
        with pytest.raises(ValueError, match="total_steps"):
            ours.step()
            ours.step()


@pytest.mark.parametrize("item", [s for s in SCHEDULES if s[0] not in ("OneCycleLR",)],
                         ids=schedule_id)
def test_closed_form_step_with_epoch_matches_torch(item):
    name, kwargs = item
    ours_opt, theirs_opt = _optimizers()
    ours = getattr(lr_scheduler, name)(ours_opt, **kwargs)
    theirs = getattr(torch.optim.lr_scheduler, name)(theirs_opt, **kwargs)
    for epoch in (3, 8, 15):
        ours.step(epoch)
        with pytest.warns(UserWarning):
            theirs.step(epoch)
        _same(_lrs(ours_opt), _lrs(theirs_opt), f"{name} step({epoch})")


CHAINS = [
    [("CosineAnnealingLR", {"T_max": 12}), ("LinearLR", {"total_iters": 4})],
    [("LinearLR", {"start_factor": 0.25, "total_iters": 5}), ("ExponentialLR", {"gamma": 0.9})],
    [("MultiStepLR", {"milestones": [4, 9]}), ("StepLR", {"step_size": 3, "gamma": 0.7}),
     ("LambdaLR", {"lr_lambda": lambda e: 1.0 + 0.01 * e})],
]


@pytest.mark.parametrize("wrap", [False, True], ids=["stepped", "ChainedScheduler"])
@pytest.mark.parametrize("chain", CHAINS, ids=lambda c: "+".join(n for n, _ in c))
def test_chained_schedulers_match_torch(chain, wrap):
    ours_opt, theirs_opt = _optimizers()
    ours = [getattr(lr_scheduler, n)(ours_opt, **k) for n, k in chain]
    theirs = [getattr(torch.optim.lr_scheduler, n)(theirs_opt, **k) for n, k in chain]
    if wrap:
        ours = [lr_scheduler.ChainedScheduler(ours)]
        theirs = [torch.optim.lr_scheduler.ChainedScheduler(theirs)]
    _same(_lrs(ours_opt), _lrs(theirs_opt), "construction")
    for epoch in range(40):
        ours_opt.step()
        theirs_opt.step()
        for a, b in zip(ours, theirs):
            a.step()
            b.step()
        _same(_lrs(ours_opt), _lrs(theirs_opt), f"epoch {epoch}")
        _same(ours[-1].get_last_lr(), theirs[-1].get_last_lr(), f"last lr {epoch}")


@pytest.mark.parametrize("item", SCHEDULES + [("LambdaLR", {"lr_lambda": Warmup(6)})],
                         ids=schedule_id)
def test_scheduler_state_dict_resumes_exactly(item):
    name, kwargs = item
    opt, _ = _optimizers("Adam")
    sched = getattr(lr_scheduler, name)(opt, **kwargs)
    for _ in range(10):
        opt.step()
        sched.step()
    saved, opt_saved = sched.state_dict(), opt.state_dict()
    assert "optimizer" not in saved
    fresh_opt, _ = _optimizers("Adam")
    fresh = getattr(lr_scheduler, name)(fresh_opt, **kwargs)
    fresh_opt.load_state_dict(opt_saved)
    fresh.load_state_dict(saved)
    assert fresh.get_last_lr() == sched.get_last_lr()
    for _ in range(15):
        for o, s in ((opt, sched), (fresh_opt, fresh)):
            o.step()
            s.step()
        assert _lrs(fresh_opt) == _lrs(opt)
        assert _momenta(fresh_opt) == _momenta(opt)


def test_lambda_state_dict_keeps_callable_objects_only():
    opt, _ = _optimizers()
    warm = Warmup(4)
    sched = lr_scheduler.LambdaLR(opt, [warm, lambda e: 1.0])
    saved = sched.state_dict()
    assert saved["lr_lambdas"] == [{"steps": 4}, None]
    other = Warmup(9)
    lr_scheduler.LambdaLR(_optimizers()[0], [other, lambda e: 1.0]).load_state_dict(saved)
    assert other.steps == 4


def test_scheduler_errors():
    opt, _ = _optimizers()
    with pytest.raises(ValueError, match="OneCycleLR"):
        lr_scheduler.OneCycleLR(opt, max_lr=0.1)
    with pytest.raises(ValueError, match="max_lr"):
        lr_scheduler.OneCycleLR(opt, max_lr=[0.1], total_steps=10)
    with pytest.raises(ValueError, match="cycle_momentum"):
        lr_scheduler.OneCycleLR(optim.Adagrad([nx.Tensor([1.0], requires_grad=True)]),
                                max_lr=0.1, total_steps=10)
    with pytest.raises(ValueError, match="anneal_strategy"):
        lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10, anneal_strategy="exp")
    with pytest.raises(ValueError, match="start_factor"):
        lr_scheduler.LinearLR(opt, start_factor=0.0)
    with pytest.raises(ValueError, match="lr_lambda"):
        lr_scheduler.LambdaLR(opt, [lambda e: 1.0])
    with pytest.raises(ValueError, match="another optimizer"):
        lr_scheduler.ChainedScheduler([lr_scheduler.LinearLR(opt),
                                       lr_scheduler.LinearLR(_optimizers()[0])])


def test_scheduler_step_inside_a_compiled_function_is_refused():
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=5)

    def step(x):
        sched.step()
        return model(x)

    with pytest.raises(TraceError, match="CosineAnnealingLR"):
        nx.compile(step)(_batches(1)[0][0])


# ---- gradient clipping ----------------------------------------------------------------------

def _grads(seed: int = 0, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (5,), (2, 2))]
    ours = [nx.Tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    for p, q, a in zip(ours, theirs, arrays):
        g = (scale * rng.standard_normal(a.shape)).astype(np.float32)
        p.grad, q.grad = nx.Tensor(g), torch.tensor(g)
    return ours, theirs


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0, 0.5, "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    ours, theirs = _grads()
    ours[1].grad = None  # a parameter without a gradient is skipped
    theirs[1].grad = None
    nt = float(norm_type)
    got = clip_grad_norm_(ours, max_norm, norm_type=nt)
    want = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=nt)
    assert isinstance(got, nx.Tensor) and got.shape == ()
    np.testing.assert_allclose(got.item(), want.item(), rtol=1e-6)
    for p, q in zip(ours, theirs):
        if q.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_clip_grad_norm_edge_cases():
    ours, _ = _grads()
    g = ours[0].grad
    clip_grad_norm_(ours[0], 0.1)  # a single tensor; the gradient is scaled in place
    assert ours[0].grad is g
    assert clip_grad_norm_([nx.Tensor([1.0], requires_grad=True)], 1.0).item() == 0.0
    ours[1].grad = nx.Tensor(np.full(5, np.nan, np.float32))
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    assert math.isnan(clip_grad_norm_(ours, 1.0).item())


def test_clip_grad_value_matches_torch():
    ours, theirs = _grads()
    clip_grad_value_(ours, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    for p, q in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())


def test_error_if_nonfinite_is_refused_inside_compile():
    model = _mlp()

    def step(x):
        model(x).sum().backward()
        return clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)

    with pytest.raises(TraceError, match="error_if_nonfinite"):
        nx.compile(step)(_batches(1)[0][0])


def test_clipping_on_the_opencl_device():
    needs_device("opencl")
    ours, theirs = _grads(1)
    for p in ours:
        p.to("opencl", inplace=True)
    assert ours[0].grad.device == nx.device("opencl")
    got = clip_grad_norm_(ours, 0.5)
    want = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert got.device == nx.device("opencl")
    np.testing.assert_allclose(got.cpu().item(), want.item(), rtol=1e-5)
    clip_grad_value_(ours, 0.05)
    torch.nn.utils.clip_grad_value_(theirs, 0.05)
    for p, q in zip(ours, theirs):
        assert p.grad.device == nx.device("opencl")
        np.testing.assert_allclose(p.grad.cpu().numpy(), q.grad.numpy(), rtol=1e-5,
                                   atol=1e-7)


def test_optimizers_train_on_the_opencl_device():
    needs_device("opencl")
    for name, kwargs in (("RMSprop", {"lr": 0.01, "momentum": 0.9, "centered": True}),
                         ("Adagrad", {"lr": 0.1, "lr_decay": 0.01})):
        ours, opt, x, y, theirs, topt, tx, ty = _pair(name, {})
        ours = [p.detach().to("opencl").requires_grad_() for p in ours]
        opt = getattr(optim, name)(ours, **kwargs)
        topt = getattr(torch.optim, name)(theirs, **kwargs)
        _train(ours, opt, x.to("opencl"), y.to("opencl"), 5)
        _train(theirs, topt, tx, ty, 5)
        assert ours[0].device == nx.device("opencl")
        _close([p.cpu() for p in ours], theirs, name)
