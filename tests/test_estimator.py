"""The train/evaluate estimator and the scikit-learn-style wrappers."""
import io

import numpy as np
import pytest

import neurenix
from neurenix.estimator import Estimator
from neurenix.nn import CrossEntropyLoss, Linear, MSELoss, ReLU, Sequential
from neurenix.optim import SGD, Adam, EarlyStopping
from neurenix.optim.lr_scheduler import ReduceLROnPlateau
from neurenix.sklearn import NeuralNetClassifier, NeuralNetRegressor


def _blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    y = rng.integers(0, 3, n)
    x = centers[y] + 0.5 * rng.standard_normal((n, 2))
    return x.astype(np.float32), y


def test_estimator_trains_and_reports_history():
    neurenix.manual_seed(0)
    x, y = _blobs()
    model = Sequential(Linear(2, 16), ReLU(), Linear(16, 3))
    est = Estimator(model, CrossEntropyLoss(), Adam(model.parameters(), lr=0.05))
    out = io.StringIO()
    hist = est.train(x, y, epochs=15, batch_size=16, validation_split=0.2, out=out)
    assert len(hist.loss) == len(hist.val_loss) == len(hist.lr) == 15
    assert hist.loss[-1] < 0.5 * hist.loss[0]
    assert "epoch 15/15" in out.getvalue() and "val_loss" in out.getvalue()
    metrics = est.evaluate(x, y)
    assert metrics["accuracy"] > 0.9
    assert est.predict(x).shape == (120, 3)


def test_early_stopping_stops_and_restores_best_weights():
    neurenix.manual_seed(1)
    x, y = _blobs()
    model = Sequential(Linear(2, 3))
    # lr 0 never improves after the first epoch: training must stop after `patience` more
    est = Estimator(model, CrossEntropyLoss(), SGD(model.parameters(), lr=0.0))
    hist = est.train(x, y, epochs=50, early_stopping=EarlyStopping(patience=3), shuffle=False,
                     verbose=False)
    assert hist.stopped_epoch == 3
    assert len(hist.loss) == 4


def test_plateau_scheduler_is_stepped_with_the_monitored_loss():
    x, y = _blobs()
    model = Sequential(Linear(2, 3))
    opt = SGD(model.parameters(), lr=0.0)
    sched = ReduceLROnPlateau(opt, patience=1, factor=0.5)
    hist = Estimator(model, CrossEntropyLoss(), opt, sched).train(x, y, epochs=6,
                                                                   verbose=False)
    assert hist.lr[0] == 0.0 and opt.param_groups[0]["lr"] == 0.0
    assert sched.num_bad_epochs >= 0


def test_estimator_rejects_bad_input():
    model = Sequential(Linear(2, 1))
    est = Estimator(model, MSELoss(), SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="x has 4 samples but y has 3"):
        est.train(np.zeros((4, 2)), np.zeros((3, 1)), epochs=1)
    with pytest.raises(ValueError, match="backend must be one of"):
        Estimator(model, MSELoss(), SGD(model.parameters(), lr=0.1), backend="tpu")
    with pytest.raises(TypeError, match="early_stopping"):
        est.train(np.zeros((4, 2)), np.zeros((4, 1)), epochs=1, early_stopping="yes")


def test_classifier_fits_predicts_and_scores():
    x, y = _blobs(seed=2)
    labels = np.array(["a", "b", "c"])[y]
    clf = NeuralNetClassifier(hidden_layer_sizes=(16,), epochs=30, learning_rate=0.02,
                              random_state=0)
    clf.fit(x, labels)
    assert list(clf.classes_) == ["a", "b", "c"]
    assert clf.score(x, labels) > 0.9
    proba = clf.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert set(clf.predict(x)) <= {"a", "b", "c"}


def test_classifier_is_reproducible_with_random_state():
    x, y = _blobs(seed=3)
    a = NeuralNetClassifier(epochs=3, random_state=7).fit(x, y).predict_proba(x)
    b = NeuralNetClassifier(epochs=3, random_state=7).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, b)


def test_regressor_learns_a_linear_map_and_early_stops():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3
    reg = NeuralNetRegressor(hidden_layer_sizes=(32,), epochs=60, learning_rate=0.01,
                             early_stopping=True, patience=5, random_state=0)
    reg.fit(x, y)
    assert reg.predict(x).shape == (200,)
    assert reg.score(x, y) > 0.9


def test_sklearn_protocol_get_set_params_and_errors():
    clf = NeuralNetClassifier(alpha=0.1)
    params = clf.get_params()
    assert params["alpha"] == 0.1 and "backend" in params
    assert clf.set_params(epochs=5).epochs == 5
    assert "alpha=0.1" in repr(clf)
    with pytest.raises(ValueError, match="invalid parameter 'depth'"):
        clf.set_params(depth=3)
    with pytest.raises(RuntimeError, match="not fitted"):
        clf.predict(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="activation must be one of"):
        NeuralNetClassifier(activation="swish", epochs=1).fit(*_blobs())
    with pytest.raises(ValueError, match="expected 2-D input"):
        NeuralNetRegressor().fit(np.zeros(5), np.zeros(5))


def test_sklearn_pipeline_compatibility():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _blobs(seed=5)
    pipe = make_pipeline(StandardScaler(), NeuralNetClassifier(epochs=20, random_state=0))
    pipe.fit(x, y)
    assert pipe.score(x, y) > 0.85
    assert clone(NeuralNetClassifier(alpha=0.3)).alpha == 0.3
    assert sklearn.__version__


def test_compiled_backend_trains_like_eager():
    """backend="compiled" runs each step as one compiled program: same history and weights."""
    x, y = _blobs(100, seed=3)
    runs = []
    for backend in ("eager", "compiled"):
        neurenix.manual_seed(5)
        model = Sequential(Linear(2, 16), ReLU(), Linear(16, 3))
        sched = ReduceLROnPlateau(opt := SGD(model.parameters(), lr=0.1, momentum=0.9),
                                  patience=1)
        est = Estimator(model, CrossEntropyLoss(), opt, scheduler=sched, backend=backend)
        hist = est.train(x, y, epochs=6, batch_size=32, validation_split=0.2, verbose=False,
                         early_stopping=3)
        runs.append((hist, [p.detach().numpy().copy() for p in model.parameters()],
                     est.predict(x).numpy()))
    (h_e, w_e, p_e), (h_c, w_c, p_c) = runs
    np.testing.assert_allclose(h_c.loss, h_e.loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(h_c.val_loss, h_e.val_loss, rtol=1e-4, atol=1e-6)
    assert h_c.lr == h_e.lr
    for a, b in zip(w_c, w_e):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p_c, p_e, rtol=1e-4, atol=1e-5)
    assert h_c.loss[-1] < h_c.loss[0]


def test_compiled_backend_in_the_sklearn_classifier():
    x, y = _blobs(90, seed=4)
    clf = NeuralNetClassifier(hidden_layer_sizes=(8,), epochs=20, batch_size=30,
                              learning_rate=0.05, random_state=0, backend="compiled")
    assert clf.fit(x, y).score(x, y) > 0.9
