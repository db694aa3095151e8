"""Pickling and copying: tensors, modules, optimizers, `neurenix.compile` objects and the
estimators.  Compiled programs are never pickled; a loaded object compiles again, or loads from
the disk compile cache, on its first call."""
import copy
import pickle
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
from devices import needs_device
from neurenix.compiler.targets import default_target

import neurenix
from neurenix import nn, optim
from neurenix.optim import Adam
from neurenix.sklearn import NeuralNetClassifier, NeuralNetRegressor

ROUND_TRIPS = {
    "pickle": lambda obj, tmp_path: pickle.loads(pickle.dumps(obj)),
    "joblib": lambda obj, tmp_path: _joblib(obj, tmp_path),
    "deepcopy": lambda obj, tmp_path: copy.deepcopy(obj),
}


def _joblib(obj, tmp_path):
    path = tmp_path / "model.joblib"
    joblib.dump(obj, path)
    return joblib.load(path)


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def _fit(kind, backend):
    x, y = _data()
    cls = NeuralNetClassifier if kind == "classifier" else NeuralNetRegressor
    target = y if kind == "classifier" else x[:, 0] - 2 * x[:, 2]
    return cls(hidden_layer_sizes=(6,), epochs=2, batch_size=8, random_state=0,
               backend=backend).fit(x, target)


def _predict(est, x):
    """Predictions, always from this line (a node's source line is part of the disk cache's
    key, so that a second estimator's first prediction can hit)."""
    return est.predict_proba(x) if hasattr(est, "predict_proba") else est.predict(x)


def _mlp(seed=0):
    neurenix.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).eval()


def _run(compiled, x):
    with neurenix.no_grad():
        return compiled(x).numpy().copy()


# ---- tensors, modules, optimizers -------------------------------------------------------------

@pytest.mark.parametrize("how", ROUND_TRIPS)
def test_a_tensor_round_trips_with_its_grad(how, tmp_path):
    t = neurenix.randn(2, 3, requires_grad=True)
    (t * t).sum().backward()
    u = ROUND_TRIPS[how](t, tmp_path)
    assert u is not t and u.requires_grad and u.is_leaf and u.dtype == t.dtype
    np.testing.assert_array_equal(u.detach().numpy(), t.detach().numpy())
    np.testing.assert_array_equal(u.grad.numpy(), t.grad.numpy())
    ints = ROUND_TRIPS[how](neurenix.Tensor([1, 2, 3]), tmp_path)
    assert ints.dtype == neurenix.int64 and ints.numpy().tolist() == [1, 2, 3]


def test_a_non_leaf_tensor_pickles_as_a_leaf():
    a = neurenix.randn(3, requires_grad=True)
    b = pickle.loads(pickle.dumps(a * 2))
    assert b.is_leaf and b.requires_grad
    np.testing.assert_allclose(b.detach().numpy(), 2 * a.detach().numpy())


def test_a_deep_copied_tensor_is_independent():
    t = neurenix.Tensor([1.0, 2.0])
    u = copy.deepcopy(t)
    u.add_(1.0)
    assert t.numpy().tolist() == [1.0, 2.0] and u.numpy().tolist() == [2.0, 3.0]


@pytest.mark.parametrize("how", ROUND_TRIPS)
def test_a_model_and_its_optimizer_round_trip_together(how, tmp_path):
    model = _mlp().train()
    opt = Adam(model.parameters(), lr=0.05)
    x, y = neurenix.randn(4, 3), neurenix.randn(4, 2)

    def step(m, o):
        o.zero_grad()
        loss = nn.MSELoss()(m(x), y)
        loss.backward()
        o.step()
        return loss.item()

    step(model, opt)
    model2, opt2 = ROUND_TRIPS[how]((model, opt), tmp_path)
    params2 = list(model2.parameters())
    assert all(a is b for a, b in zip(opt2.param_groups[0]["params"], params2))
    assert set(map(id, opt2.state)) == set(map(id, params2))
    assert step(model2, opt2) == step(model, opt)
    for a, b in zip(model.parameters(), params2):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


# ---- neurenix.compile -------------------------------------------------------------------------

@pytest.mark.parametrize("how", ROUND_TRIPS)
def test_a_compiled_module_round_trips(how, tmp_path):
    compiled = neurenix.compile(_mlp())
    x = neurenix.randn(4, 3)
    before = _run(compiled, x)
    copied = ROUND_TRIPS[how](compiled, tmp_path)
    assert copied.cache_size == 0 and copied.module is not compiled.module
    np.testing.assert_array_equal(_run(copied, x), before)
    with neurenix.no_grad():
        for p in copied.parameters():
            p.add_(1.0)
    np.testing.assert_array_equal(_run(compiled, x), before)
    with neurenix.no_grad():
        np.testing.assert_allclose(_run(copied, x), copied.module(x).numpy(), rtol=1e-5,
                                   atol=1e-6)
    assert not np.allclose(_run(copied, x), before)


@pytest.mark.skipif(default_target() != "llvm", reason="the disk cache holds LLVM machine code")
def test_an_unpickled_compiled_module_loads_from_the_disk_cache():
    compiled = neurenix.compile(_mlp())
    x = neurenix.randn(4, 3)
    outs, states = [], []
    for c in (compiled, pickle.loads(pickle.dumps(compiled))):
        outs.append(_run(c, x))
        states.append(c.stats()["cache"])
    assert states[1] == "hit"
    np.testing.assert_array_equal(outs[0], outs[1])


class Holder(nn.Module):
    """A module holding a compiled submodule as a plain attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = neurenix.compile(_mlp(1))
        self.scale = nn.Parameter(neurenix.Tensor([2.0]))

    def forward(self, x):
        return self.inner(x) * self.scale


@pytest.mark.parametrize("how", ROUND_TRIPS)
def test_a_module_holding_a_compiled_submodule_round_trips(how, tmp_path):
    holder = Holder()
    x = neurenix.randn(3, 3)
    with neurenix.no_grad():
        before = holder(x).numpy().copy()
    copied = ROUND_TRIPS[how](holder, tmp_path)
    assert copied.inner.module is not holder.inner.module
    with neurenix.no_grad():
        np.testing.assert_array_equal(copied(x).numpy(), before)
        copied.inner.module[0].weight.mul_(0.0)
        np.testing.assert_array_equal(holder(x).numpy(), before)
        assert not np.allclose(copied(x).numpy(), before)


MODEL = _mlp(2).train()
OPTIMIZER = Adam(MODEL.parameters(), lr=0.01)


@neurenix.compile
def train_step(x, y):
    """A compiled training step at module level: pickled by reference."""
    OPTIMIZER.zero_grad()
    loss = nn.MSELoss()(MODEL(x), y)
    loss.backward()
    OPTIMIZER.step()
    return loss


def test_a_module_level_compiled_training_step_pickles_by_reference():
    x, y = neurenix.randn(4, 3), neurenix.randn(4, 2)
    first = train_step(x, y).item()
    assert pickle.loads(pickle.dumps(train_step)) is train_step  # as pickle does functions
    copied = copy.deepcopy(train_step)
    assert copied is not train_step and copied.fn is train_step.fn and copied.cache_size == 0
    second = copied(x, y).item()
    assert np.isfinite(second) and second < first


def test_a_local_compiled_training_step_says_why_it_cannot_be_pickled():
    model = _mlp(3).train()
    opt = Adam(model.parameters(), lr=0.01)

    @neurenix.compile
    def step(x, y):
        opt.zero_grad()
        loss = nn.MSELoss()(model(x), y)
        loss.backward()
        opt.step()
        return loss

    x, y = neurenix.randn(4, 3), neurenix.randn(4, 2)
    step(x, y)
    with pytest.raises(TypeError, match=r"cannot pickle neurenix.compile\(step\).*local "
                                        r"function.*module level"):
        pickle.dumps(step)
    with pytest.raises(TypeError, match="lambda"):
        pickle.dumps(neurenix.compile(lambda t: t * 2))
    copied = copy.deepcopy(step)  # a deep copy shares the function, as deepcopy does
    assert copied.fn is step.fn and np.isfinite(copied(x, y).item())


# ---- the estimators ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ROUND_TRIPS)
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize("backend", ["compiled", "eager"])
def test_a_fitted_estimator_round_trips(backend, kind, how, tmp_path):
    est = _fit(kind, backend)
    x, _ = _data(10, seed=1)
    before = _predict(est, x)
    copied = ROUND_TRIPS[how](est, tmp_path)
    assert copied.model_ is copied.estimator_.model and copied.model_ is not est.model_
    np.testing.assert_array_equal(_predict(copied, x), before)
    copied.fit(*_data(16, seed=2))  # a loaded estimator trains on: the original is unchanged
    np.testing.assert_array_equal(_predict(est, x), before)


@pytest.mark.skipif(default_target() != "llvm", reason="the disk cache holds LLVM machine code")
def test_an_unpickled_compiled_estimator_loads_its_programs_from_the_disk_cache():
    """The symbolic program of every batch of 2 rows or more and a one-row prediction's
    static program both load from the disk cache."""
    est = _fit("regressor", "compiled")
    x, _ = _data(10, seed=1)
    before, one = _predict(est, x), _predict(est, x[:1])
    copied = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(_predict(copied, x), before)
    assert copied.estimator_._forward.stats()["cache"] == "hit"
    np.testing.assert_array_equal(_predict(copied, x[:1]), one)
    assert copied.estimator_._forward.stats()["cache"] == "hit"


FRESH_PROCESS = textwrap.dedent("""
    import os, pickle, sys
    import numpy as np
    cache = os.environ["NEURENIX_CACHE_DIR"]
    assert not os.listdir(cache)
    with open(sys.argv[1], "rb") as f:
        est = pickle.load(f)
    x = np.load(sys.argv[2])
    got = est.predict_proba(x) if hasattr(est, "predict_proba") else est.predict(x)
    np.testing.assert_array_equal(got, np.load(sys.argv[3]))
    stats = est.estimator_._forward.stats()
    assert stats["cache"] == "miss", stats  # compiled here
    assert est.estimator_._forward.cache_size == 1
    print("ok")
""")


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_an_unpickled_compiled_estimator_recompiles_in_a_fresh_process(kind, tmp_path,
                                                                        monkeypatch):
    est = _fit(kind, "compiled")
    x, _ = _data(10, seed=1)
    paths = [tmp_path / name for name in ("est.pkl", "x.npy", "want.npy")]
    paths[0].write_bytes(pickle.dumps(est))
    np.save(paths[1], x)
    np.save(paths[2], _predict(est, x))
    cache = tmp_path / "empty-cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(cache))
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, *map(str, paths)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


# ---- devices ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["opencl", "webgpu"])
def test_a_compiled_model_on_a_device_round_trips(kind, tmp_path):
    needs_device(kind)
    model = _mlp().to(kind)
    compiled = neurenix.compile(model)
    x = neurenix.randn(4, 3).to(kind)
    before = _run(compiled, x)
    for how in ROUND_TRIPS:
        copied = ROUND_TRIPS[how](compiled, tmp_path)
        assert all(p.device.type.value == kind for p in copied.parameters())
        np.testing.assert_allclose(_run(copied, x), before, rtol=1e-6, atol=1e-6)
        t = ROUND_TRIPS[how](x, tmp_path)
        assert t.device.type.value == kind
        np.testing.assert_array_equal(t.numpy(), x.numpy())


def test_a_tensor_from_an_absent_device_loads_on_the_cpu(monkeypatch):
    needs_device("opencl")
    data = pickle.dumps(neurenix.Tensor([1.0, 2.0]).to("opencl"))
    monkeypatch.setattr(neurenix.Device, "is_available", lambda self: False)
    with pytest.warns(RuntimeWarning, match="loaded on the CPU"):
        t = pickle.loads(data)
    assert t.device == neurenix.Device("cpu") and t.numpy().tolist() == [1.0, 2.0]


@pytest.mark.parametrize("restore", ["pickle", "deepcopy"])
def test_a_restored_optimizer_guards_its_settings_in_traces(restore):
    """A learning rate set inside a compiled function is refused for an unpickled (or
    copied) optimizer as for a constructed one: it would change once, not every call."""
    lin = nn.Linear(2, 1)
    original = optim.SGD(lin.parameters(), lr=0.1)
    opt = pickle.loads(pickle.dumps(original)) if restore == "pickle" else copy.deepcopy(
        original)

    def with_lr(t):
        opt.param_groups[0]["lr"] *= 0.5
        return t * 2

    with pytest.raises(neurenix.compiler.trace.TraceError, match="lr 0.1 -> 0.05"):
        neurenix.compile(with_lr)(neurenix.ones(1, 2))
    assert opt.param_groups[0]["lr"] == 0.1
