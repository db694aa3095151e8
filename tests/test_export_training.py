"""Exported training steps (`export(step, inputs, target, path, freeze=False)`) run through
`neurenix.runtime.load`: every run continues from the state the previous one left, and the
losses and trained parameters match eager steps on an identical twin (the spec's MLP with SGD
momentum, CNN and LSTM with Adam).  Exporting trains nothing; what an artifact cannot honour
(gradients accumulated across calls, state created on the first step, a step under
freeze=True) is refused; value checks (a class index out of range) raise eager's error and
commit nothing.  The C program and the browser page are tested in test_export_capi_training.py
and test_export_browser.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from devices import needs_device
from neurenix.runtime import load
from training_steps import dropout_step, training_step

import neurenix
from neurenix import nn, optim
from neurenix.export import ExportError, export

STEPS = 4
RTOL, ATOL = 2e-4, 2e-5


def _export(case, target: str, path: Path) -> Path:
    return export(case.step, tuple(neurenix.Tensor(x) for x in case.inputs), target, path,
                  freeze=False)


def _params(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().numpy().copy() for name, p in model.named_parameters()}


@pytest.mark.parametrize("target,kind", [("cpu", "mlp"), ("cpu", "cnn"), ("cpu", "lstm"),
                                         ("opencl", "mlp"), ("opencl", "lstm"),
                                         ("webgpu", "mlp"), ("webgpu", "cnn")])
def test_exported_step_trains_as_eager(target: str, kind: str, tmp_path: Path) -> None:
    if target != "cpu":
        needs_device(target)
    case = training_step(kind)
    before = _params(case.model)
    directory = _export(case, target, tmp_path / kind)
    after = _params(case.model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "export trained the model"
    assert all(p.grad is None for p in case.model.parameters())
    assert all(s.get("step", 0) == 0 for s in case.optimizer.state.values())
    model = load(directory)
    assert model.training and model.steps == 0
    losses = [model([*case.inputs])[0].item() for _ in range(STEPS)]
    assert model.steps == STEPS
    np.testing.assert_allclose(losses, case.eager_losses(STEPS), rtol=RTOL, atol=ATOL)
    state = model.state_dict()
    for name, want in case.eager_state(STEPS).items():
        _assert_trained_alike(state[name], want, case, name)


def _assert_trained_alike(got: np.ndarray, want: np.ndarray, case, name: str) -> None:
    """Parameters after STEPS steps agree; Adam may move a weight whose gradient is rounding
    noise (its normalisation makes a ±lr step of any nonzero gradient) differently, so such
    rare elements are bounded by the steps taken instead."""
    if not isinstance(case.optimizer, optim.Adam):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)
        return
    off = ~np.isclose(got, want, rtol=RTOL, atol=ATOL)
    assert off.mean() < 1e-4, f"{name}: {off.sum()} of {off.size} elements differ"
    lr = case.optimizer.param_groups[0]["lr"]
    assert np.abs(got - want)[off].max(initial=0) <= 2 * lr * STEPS, name


def test_manifest_of_a_training_step(tmp_path: Path) -> None:
    case = training_step("cnn")
    directory = _export(case, "opencl" if _has("opencl") else "cpu", tmp_path / "a")
    manifest = json.loads((directory / "manifest.json").read_text())
    training = manifest["training"]
    assert manifest["inference_only"] is False
    assert training["optimizers"] == ["Adam"]
    names = [name for name, _ in case.model.named_parameters()]
    assert set(names) <= set(training["states"])
    # Adam's moments and one step count per parameter are state too: nothing is per-call Python
    assert sum(".exp_avg" in s for s in training["states"]) == 2 * len(names)
    assert sum(s.startswith("step") for s in training["states"]) == len(names)
    assert [t["name"] for t in manifest["outputs"]] == [manifest["program"]["outputs"][0]["name"]]
    (check,) = manifest["checks"]
    assert check["kind"] == "range" and check["error"] == "ValueError"
    assert "{}" in check["message"] and (check["low"], check["high"]) == (0, 10)
    outputs = len(manifest["program"]["outputs"])
    for binding in manifest["bindings"]:
        if binding["from"] == "state":
            assert 3 <= binding["output"] < outputs  # after the loss and the check's two values


def test_two_adam_steps_per_run_count_their_steps(tmp_path: Path) -> None:
    """A step function that runs Adam twice: each run takes two step numbers from one step
    count per parameter (the artifact's state), as two eager steps do."""
    def make(model: nn.Module, opt: optim.Optimizer):
        def two_steps(x, y):
            for _ in range(2):
                opt.zero_grad()
                loss = ((model(x) - y) ** 2).mean()
                loss.backward()
                opt.step()
            return loss
        return two_steps

    neurenix.manual_seed(0)
    twin, model = nn.Linear(3, 2), nn.Linear(3, 2)
    model.load_state_dict(twin.state_dict())
    eager = make(twin, optim.Adam(twin.parameters(), lr=0.05))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = rng.standard_normal((4, 2)).astype(np.float32)
    directory = export(make(model, optim.Adam(model.parameters(), lr=0.05)),
                       (neurenix.Tensor(x), neurenix.Tensor(y)), "cpu", tmp_path / "two",
                       freeze=False)
    states = json.loads((directory / "manifest.json").read_text())["training"]["states"]
    assert sum(s.startswith("step") for s in states) == 2  # one count per parameter
    artifact = load(directory)
    for _ in range(3):
        got = artifact([x, y])[0].item()
        want = eager(neurenix.Tensor(x), neurenix.Tensor(y)).item()
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    state = artifact.state_dict()
    for name, p in twin.named_parameters():
        np.testing.assert_allclose(state[name], p.detach().numpy(), rtol=RTOL, atol=ATOL)


def _has(device: str) -> bool:
    return device in {d.type for d in neurenix.get_available_devices()}


@pytest.mark.parametrize("target", ["cpu", "opencl"])
def test_a_failing_check_raises_eagers_error_and_commits_nothing(target: str,
                                                                 tmp_path: Path) -> None:
    if target != "cpu":
        needs_device(target)
    case = training_step("mlp")
    model = load(_export(case, target, tmp_path / "a"))
    model([*case.inputs])
    state = model.state_dict()
    bad = case.inputs[-1].copy()
    bad[0] = 99
    with pytest.raises(ValueError) as info:
        case.step(*[neurenix.Tensor(x) for x in case.inputs[:-1]], neurenix.Tensor(bad))
    with pytest.raises(ValueError, match="target 99 is out of range") as got:
        model([*case.inputs[:-1], bad])
    assert str(got.value) == str(info.value)
    assert model.steps == 1
    after = model.state_dict()
    assert all(np.array_equal(state[k], after[k]) for k in state)


def test_dropout_draws_fresh_masks_per_run(tmp_path: Path) -> None:
    step, x = dropout_step(lr=0.0)  # no learning: only the masks change
    directory = export(step, (neurenix.Tensor(x),), "cpu", tmp_path / "a", freeze=False)
    seeds = [b for b in json.loads((directory / "manifest.json").read_text())["bindings"]
             if b["from"] == "seed"]
    assert len(seeds) == 1
    model = load(directory)
    losses = {model([x])[0].item() for _ in range(4)}
    assert len(losses) == 4  # a new mask per run
    first = load(directory)([x])[0].item()
    assert load(directory)([x])[0].item() == first  # a fresh load replays the stored seed


def test_what_an_artifact_cannot_honour_is_refused(tmp_path: Path) -> None:
    case = training_step("mlp")
    inputs = tuple(neurenix.Tensor(x) for x in case.inputs)
    with pytest.raises(ExportError, match="freeze=False"):
        export(case.step, inputs, "cpu", tmp_path / "a")
    model, crit = case.model, nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.1)

    def accumulating(x: neurenix.Tensor, y: neurenix.Tensor) -> neurenix.Tensor:
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss

    with pytest.raises(ExportError, match="zero_grad"):
        export(accumulating, inputs, "cpu", tmp_path / "b", freeze=False)
    damped = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.5)

    def first_step(x: neurenix.Tensor, y: neurenix.Tensor) -> neurenix.Tensor:
        damped.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        damped.step()
        return loss

    with pytest.raises(ExportError, match="run one step before exporting"):
        export(first_step, inputs, "cpu", tmp_path / "c", freeze=False)
    first_step(*inputs)  # the buffer exists now: the steady-state step exports
    directory = export(first_step, inputs, "cpu", tmp_path / "c", freeze=False)
    assert json.loads((directory / "manifest.json").read_text())["training"] is not None


def test_an_inference_export_has_no_training_fields(tmp_path: Path) -> None:
    case = training_step("mlp")
    case.model.eval()
    directory = export(case.model, (neurenix.Tensor(case.inputs[0]),), "cpu", tmp_path / "a")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["training"] is None and manifest["inference_only"] is True
    assert manifest["checks"] == []
    model = load(directory)
    assert not model.training
    with neurenix.no_grad():
        want = case.model(neurenix.Tensor(case.inputs[0])).numpy()
    np.testing.assert_allclose(model([case.inputs[0]])[0], want, rtol=1e-5, atol=1e-6)
    assert set(model.state_dict()) >= {name for name, _ in case.model.named_parameters()}
