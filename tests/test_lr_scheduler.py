"""Learning-rate schedulers against torch.optim.lr_scheduler, their log lines, and EarlyStopping."""
from __future__ import annotations

import logging

import pytest
import torch

import neurenix as nx
from neurenix import optim
from neurenix.optim import EarlyStopping, lr_scheduler

EPOCHS = 25


def optimizer_pair(lrs=(0.1, 0.02)):
    """A Neurenix and a torch SGD, each with one parameter group per learning rate."""
    nx_groups = [{"params": [nx.Tensor([1.0], requires_grad=True)], "lr": lr} for lr in lrs]
    th_groups = [{"params": [torch.tensor([1.0], requires_grad=True)], "lr": lr} for lr in lrs]
    return optim.SGD(nx_groups, lr=0.5), torch.optim.SGD(th_groups, lr=0.5)


def group_lrs(opt) -> list[float]:
    return [g["lr"] for g in opt.param_groups]


def assert_lrs_equal(ours: list[float], theirs: list[float], epoch: int) -> None:
    assert ours == pytest.approx(theirs, rel=1e-12), f"epoch {epoch}"


@pytest.mark.parametrize("name,kwargs", [
    ("StepLR", {"step_size": 3}),
    ("StepLR", {"step_size": 1, "gamma": 0.5}),
    ("StepLR", {"step_size": 7, "gamma": 0.3}),
    ("ExponentialLR", {"gamma": 0.9}),
    ("ExponentialLR", {"gamma": 0.5}),
])
def test_epoch_schedulers_match_torch(name, kwargs):
    nx_opt, th_opt = optimizer_pair()
    ours = getattr(lr_scheduler, name)(nx_opt, **kwargs)
    theirs = getattr(torch.optim.lr_scheduler, name)(th_opt, **kwargs)
    assert ours.last_epoch == theirs.last_epoch == 0
    assert ours.base_lrs == theirs.base_lrs == [0.1, 0.02]
    changed = 0
    for epoch in range(EPOCHS):
        nx_opt.step()
        th_opt.step()
        before = group_lrs(nx_opt)
        ours.step()
        theirs.step()
        assert_lrs_equal(group_lrs(nx_opt), group_lrs(th_opt), epoch)
        assert_lrs_equal(ours.get_last_lr(), theirs.get_last_lr(), epoch)
        assert ours.last_epoch == theirs.last_epoch
        changed += before != group_lrs(nx_opt)
    assert changed > 0  # the schedule really moved


@pytest.mark.parametrize("kwargs", [
    {},
    {"patience": 2},
    {"patience": 0, "factor": 0.5},
    {"mode": "max", "patience": 2},
    {"patience": 1, "cooldown": 3},
    {"patience": 1, "min_lr": 0.004},
    {"patience": 1, "min_lr": [0.05, 0.0]},
    {"patience": 1, "threshold_mode": "abs", "threshold": 0.05},
    {"mode": "max", "patience": 1, "threshold_mode": "abs", "threshold": 0.05},
    {"patience": 1, "threshold": 0.1},
    {"patience": 0, "factor": 0.9, "eps": 0.005},
])
def test_reduce_on_plateau_matches_torch(kwargs):
    # a metric that improves, stalls, creeps by small amounts and improves again
    metrics = [1.0, 0.8, 0.7, 0.7, 0.69, 0.71, 0.72, 0.6, 0.6, 0.59, 0.62, 0.65, 0.5, 0.5,
               0.52, 0.49, 0.485, 0.49, 0.5, 0.51, 0.4, 0.41, 0.42, 0.43, 0.44, 0.45, 0.46,
               0.47, 0.48, 0.49, 0.5, 0.51, 0.52]
    if kwargs.get("mode") == "max":
        metrics = [-m for m in metrics]
    if kwargs.get("threshold_mode") == "abs":
        metrics = [10 * m for m in metrics]  # large values, so abs and rel thresholds differ
    nx_opt, th_opt = optimizer_pair()
    ours = lr_scheduler.ReduceLROnPlateau(nx_opt, **kwargs)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(th_opt, **kwargs)
    reductions = 0
    for epoch, m in enumerate(metrics):
        before = group_lrs(nx_opt)
        ours.step(m)
        theirs.step(m)
        assert_lrs_equal(group_lrs(nx_opt), group_lrs(th_opt), epoch)
        assert_lrs_equal(ours.get_last_lr(), theirs.get_last_lr(), epoch)
        assert (ours.best, ours.num_bad_epochs, ours.cooldown_counter) == \
            (theirs.best, theirs.num_bad_epochs, theirs.cooldown_counter), f"epoch {epoch}"
        reductions += before != group_lrs(nx_opt)
    assert reductions > 0


def test_reduce_on_plateau_accepts_a_tensor_metric():
    nx_opt, _ = optimizer_pair()
    sched = lr_scheduler.ReduceLROnPlateau(nx_opt, patience=0)
    sched.step(nx.Tensor(1.0))
    sched.step(nx.Tensor([2.0]))
    assert group_lrs(nx_opt) == pytest.approx([0.01, 0.002])
    assert sched.best == 1.0 and sched.last_epoch == 2


def test_scheduler_drives_the_optimizer_update():
    p = nx.Tensor([0.0], requires_grad=True)
    opt = optim.SGD([p], lr=1.0)
    sched = lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        p.grad = nx.Tensor([1.0])
        opt.step()
        sched.step()
    assert p.item() == pytest.approx(-(1.0 + 0.5 + 0.25))


@pytest.mark.parametrize("make", [
    lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    lambda o: lr_scheduler.ExponentialLR(o, gamma=0.7),
], ids=["StepLR", "ExponentialLR"])
def test_scheduler_state_dict_round_trip(make):
    nx_opt, _ = optimizer_pair()
    sched = make(nx_opt)
    for _ in range(5):
        sched.step()
    saved_sched, saved_opt = sched.state_dict(), nx_opt.state_dict()
    assert "optimizer" not in saved_sched and saved_sched["last_epoch"] == 5
    expected = []
    for _ in range(4):
        sched.step()
        expected.append(sched.get_last_lr())

    fresh_opt, _ = optimizer_pair()
    fresh_opt.load_state_dict(saved_opt)
    resumed = make(fresh_opt)
    resumed.load_state_dict(saved_sched)
    assert resumed.optimizer is fresh_opt
    got = []
    for _ in range(4):
        resumed.step()
        got.append(resumed.get_last_lr())
    assert got == expected


def test_resuming_with_last_epoch_needs_initial_lr():
    nx_opt, _ = optimizer_pair()
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(nx_opt, step_size=2, last_epoch=3)


def test_step_with_an_epoch_uses_the_closed_form():
    nx_opt, th_opt = optimizer_pair()
    ours = lr_scheduler.StepLR(nx_opt, step_size=3, gamma=0.5)
    ours.step(7)
    assert group_lrs(nx_opt) == pytest.approx([0.1 * 0.25, 0.02 * 0.25])
    exp = lr_scheduler.ExponentialLR(th_opt := optimizer_pair()[0], gamma=0.5)
    exp.step(3)
    assert group_lrs(th_opt) == pytest.approx([0.1 / 8, 0.02 / 8])


def test_plateau_state_dict_round_trip():
    nx_opt, _ = optimizer_pair()
    sched = lr_scheduler.ReduceLROnPlateau(nx_opt, mode="max", patience=1, cooldown=1)
    for m in (1.0, 2.0, 1.5, 1.5):
        sched.step(m)
    saved = sched.state_dict()
    fresh_opt, _ = optimizer_pair()
    fresh_opt.load_state_dict(nx_opt.state_dict())
    resumed = lr_scheduler.ReduceLROnPlateau(fresh_opt)
    resumed.load_state_dict(saved)
    for m in (1.0, 1.0, 3.0, 2.0, 2.0):
        sched.step(m)
        resumed.step(m)
        assert group_lrs(fresh_opt) == group_lrs(nx_opt)
        assert resumed.best == sched.best and resumed.mode_worse == -float("inf")


def test_plateau_loads_a_torch_state_dict():
    nx_opt, th_opt = optimizer_pair()
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(th_opt, mode="max", patience=1)
    for m in (1.0, 2.0, 1.5):
        theirs.step(m)
    ours = lr_scheduler.ReduceLROnPlateau(nx_opt)
    ours.load_state_dict(theirs.state_dict())
    assert (ours.mode, ours.best, ours.num_bad_epochs, ours.mode_worse) == \
        ("max", 2.0, 1, -float("inf"))
    ours.step(1.0)
    theirs.step(1.0)
    assert group_lrs(nx_opt) == pytest.approx(group_lrs(th_opt)) == [0.01, 0.002]


# ---- log lines ---------------------------------------------------------------------------


PLATEAU_LINE = ("ReduceLROnPlateau: epoch 3: reducing learning rate of group 0 "
                "from 1.0000e-02 to 1.0000e-03")


def plateau_run(verbose: bool) -> None:
    p = nx.Tensor([1.0], requires_grad=True)
    sched = lr_scheduler.ReduceLROnPlateau(optim.SGD([p], lr=0.01), patience=1,
                                           verbose=verbose)
    for m in (1.0, 1.0, 1.0):
        sched.step(m)


def test_plateau_verbose_prints_the_line(capsys):
    plateau_run(verbose=True)
    assert capsys.readouterr().out == PLATEAU_LINE + "\n"


def test_plateau_is_silent_by_default(capsys):
    plateau_run(verbose=False)
    assert capsys.readouterr().out == ""


def test_plateau_logs_on_the_neurenix_optim_logger(caplog):
    with caplog.at_level(logging.INFO, logger="neurenix.optim"):
        plateau_run(verbose=False)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == \
        [("neurenix.optim", logging.INFO, PLATEAU_LINE)]


def test_step_lr_logs_only_when_the_rate_changes(capsys, caplog):
    nx_opt, _ = optimizer_pair()
    with caplog.at_level(logging.INFO, logger="neurenix.optim"):
        sched = lr_scheduler.StepLR(nx_opt, step_size=2, gamma=0.5, verbose=True)
        for _ in range(3):
            sched.step()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "StepLR: epoch 2: reducing learning rate of group 0 from 1.0000e-01 to 5.0000e-02",
        "StepLR: epoch 2: reducing learning rate of group 1 from 2.0000e-02 to 1.0000e-02",
    ]
    assert [r.getMessage() for r in caplog.records] == lines


def test_exponential_lr_growth_says_increasing(capsys):
    nx_opt, _ = optimizer_pair(lrs=(0.1,))
    sched = lr_scheduler.ExponentialLR(nx_opt, gamma=2.0, verbose=True)
    sched.step()
    assert capsys.readouterr().out == ("ExponentialLR: epoch 1: increasing learning rate of "
                                       "group 0 from 1.0000e-01 to 2.0000e-01\n")


# ---- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("make,error,match", [
    (lambda o: lr_scheduler.StepLR(o, step_size=0), ValueError, "StepLR: invalid step_size 0"),
    (lambda o: lr_scheduler.StepLR(o, step_size=1.5), TypeError, "step_size must be an int"),
    (lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=1.0), ValueError, r"factor .*\[0, 1\)"),
    (lambda o: lr_scheduler.ReduceLROnPlateau(o, mode="up"), ValueError, "'min' or 'max'"),
    (lambda o: lr_scheduler.ReduceLROnPlateau(o, threshold_mode="pct"), ValueError,
     "'rel' or 'abs'"),
    (lambda o: lr_scheduler.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError,
     "expected 2 min_lrs"),
    (lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=-1), ValueError, "patience -1"),
    (lambda o: lr_scheduler.ExponentialLR(torch.optim.SGD([torch.zeros(1)]), gamma=0.5),
     TypeError, "expected a neurenix.optim.Optimizer, got SGD"),
    (lambda o: lr_scheduler.ReduceLROnPlateau("opt"), TypeError, "got str"),
])
def test_scheduler_bad_input(make, error, match):
    nx_opt, _ = optimizer_pair()
    with pytest.raises(error, match=match):
        make(nx_opt)


# ---- early stopping ----------------------------------------------------------------------


def run_stopper(stopper: EarlyStopping, metrics: list[float]) -> list[bool]:
    return [stopper.step(m) for m in metrics]


def test_early_stopping_min_mode():
    stopper = EarlyStopping(patience=2)
    assert run_stopper(stopper, [1.0, 0.9, 0.95, 0.8, 0.85, 0.9]) == \
        [False, False, False, False, False, True]
    assert stopper.best == 0.8 and stopper.best_epoch == 3
    assert stopper.num_bad_epochs == 2 and stopper.should_stop


def test_early_stopping_max_mode_with_min_delta():
    stopper = EarlyStopping(patience=2, min_delta=0.05, mode="max")
    # +0.03 is within min_delta: not an improvement; +0.1 is
    assert run_stopper(stopper, [0.5, 0.53, 0.63, 0.64, 0.66]) == \
        [False, False, False, False, True]
    assert stopper.best == 0.63 and stopper.num_bad_epochs == 2


def test_early_stopping_min_mode_with_min_delta():
    stopper = EarlyStopping(patience=1, min_delta=0.1)
    assert run_stopper(stopper, [1.0, 0.95]) == [False, True]
    assert stopper.best == 1.0


def test_early_stopping_patience_zero_stops_at_the_first_bad_epoch():
    stopper = EarlyStopping(patience=0)
    assert run_stopper(stopper, [3.0, 2.0, 2.0]) == [False, False, True]


def test_early_stopping_improvement_resets_the_count():
    stopper = EarlyStopping(patience=3)
    assert run_stopper(stopper, [1.0, 1.1, 1.2, 0.5, 0.6, 0.7]) == [False] * 6
    assert stopper.num_bad_epochs == 2


def test_early_stopping_nan_is_never_an_improvement():
    stopper = EarlyStopping(patience=1)
    assert run_stopper(stopper, [1.0, float("nan")]) == [False, True]
    assert stopper.best == 1.0


def test_early_stopping_accepts_tensors_and_resets():
    stopper = EarlyStopping(patience=1)
    assert stopper.step(nx.Tensor(2.0)) is False
    assert stopper.step(nx.Tensor(3.0)) is True
    stopper.reset()
    assert stopper.best == float("inf") and stopper.num_bad_epochs == 0
    assert not stopper.should_stop


def test_early_stopping_state_dict_round_trip():
    stopper = EarlyStopping(patience=3, mode="max")
    run_stopper(stopper, [0.1, 0.3, 0.2])
    resumed = EarlyStopping()
    resumed.load_state_dict(stopper.state_dict())
    assert run_stopper(resumed, [0.2, 0.25]) == [False, True]
    assert resumed.mode == "max" and resumed.best == 0.3


@pytest.mark.parametrize("kwargs,error,match", [
    ({"patience": -1}, ValueError, "patience must be >= 0"),
    ({"patience": 2.5}, TypeError, "patience must be an int"),
    ({"min_delta": -0.1}, ValueError, "min_delta must be a number >= 0"),
    ({"mode": "lowest"}, ValueError, "'min' or 'max'"),
])
def test_early_stopping_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        EarlyStopping(**kwargs)
