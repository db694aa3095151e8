"""The estimator's defaults and fast paths: compiled by default, batches from a DataLoader,
progress bars only on terminals, float64 input converted to the model's dtype."""
import io
import sys

import numpy as np
import pytest

import neurenix
from neurenix.estimator import BatchOrder, Estimator, batch_loader
from neurenix.nn import CrossEntropyLoss, Linear, MSELoss, ReLU, Sequential
from neurenix.optim import SGD, Adam
from neurenix.sklearn import NeuralNetClassifier, NeuralNetRegressor
from neurenix.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset


def _blobs(n=96, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    y = rng.integers(0, 3, n)
    x = centers[y] + 0.5 * rng.standard_normal((n, 2))
    return x.astype(np.float32), y


def _estimator(backend="eager", seed=0, **kwargs):
    neurenix.manual_seed(seed)
    model = Sequential(Linear(2, 8), ReLU(), Linear(8, 3))
    return Estimator(model, CrossEntropyLoss(), Adam(model.parameters(), lr=0.05),
                     backend=backend, **kwargs)


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self):
        return True


def test_compiled_is_the_default_backend_and_progress_is_on():
    model = Sequential(Linear(2, 1))
    est = Estimator(model, MSELoss(), SGD(model.parameters(), lr=0.1))
    assert est.backend == "compiled" and est.progress is True
    for cls in (NeuralNetClassifier, NeuralNetRegressor):
        params = cls().get_params()
        assert params["backend"] == "compiled" and params["progress"] is True
    assert "backend" not in repr(NeuralNetClassifier())
    assert "backend='eager'" in repr(NeuralNetClassifier(backend="eager"))


def test_batches_come_from_a_data_loader_in_the_sampler_order():
    x, y = _blobs(10)
    loader = batch_loader(neurenix.Tensor(x), neurenix.Tensor(y), 4, shuffle=True)
    assert isinstance(loader, DataLoader) and len(loader) == 3
    neurenix.manual_seed(3)
    batches = list(loader)
    assert [len(xb) for xb, _ in batches] == [4, 4, 2]
    neurenix.manual_seed(3)
    expected = list(BatchSampler(RandomSampler(range(10)), 4, False))
    for (xb, yb), rows in zip(batches, expected):
        np.testing.assert_array_equal(xb.numpy(), x[rows])
        np.testing.assert_array_equal(yb.numpy(), y[rows])
    in_order = batch_loader(neurenix.Tensor(x), neurenix.Tensor(y), 4, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([xb.numpy() for xb, _ in in_order]), x)
    assert len(BatchOrder(9, 4, True)) == 3


def test_training_is_reproducible_with_a_seed_and_reshuffles_per_epoch():
    x, y = _blobs()
    first = _estimator(seed=1).train(x, y, epochs=3, batch_size=16, verbose=False).loss
    again = _estimator(seed=1).train(x, y, epochs=3, batch_size=16, verbose=False).loss
    assert first == again
    neurenix.manual_seed(2)
    orders = [np.concatenate([yb.numpy() for _, yb in batch_loader(
        neurenix.Tensor(x), neurenix.Tensor(y), 16, True)]) for _ in range(2)]
    assert not np.array_equal(orders[0], orders[1])


def test_train_and_evaluate_accept_a_data_loader():
    x, y = _blobs()
    est = _estimator()
    train = DataLoader(TensorDataset(x, y.astype(np.int64)), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(x, y.astype(np.int64)), batch_size=40)
    hist = est.train(train, epochs=8, validation_data=val, verbose=False)
    assert len(hist.loss) == len(hist.val_loss) == len(hist.val_accuracy) == 8
    assert hist.loss[-1] < hist.loss[0]
    by_loader = est.evaluate(val)
    by_arrays = est.evaluate(x, y)
    assert by_loader["loss"] == pytest.approx(by_arrays["loss"], rel=1e-5)
    assert by_loader["accuracy"] == pytest.approx(by_arrays["accuracy"])
    with pytest.raises(ValueError, match="y must be None"):
        est.train(train, y, epochs=1)
    with pytest.raises(ValueError, match="validation_split needs arrays"):
        est.train(train, epochs=1, validation_split=0.2)
    with pytest.raises(ValueError, match="y is missing"):
        est.train(x, epochs=1)


def test_progress_bar_on_a_terminal_shows_loss_metrics_and_lr(monkeypatch):
    pytest.importorskip("tqdm")
    x, y = _blobs()
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    out = io.StringIO()
    _estimator().train(x, y, epochs=2, batch_size=32, validation_split=0.25, out=out)
    bar = terminal.getvalue()
    assert "epoch 2/2" in bar and "loss=" in bar and "val_loss=" in bar
    assert "val_acc=" in bar and "lr=" in bar and "6/6" in bar
    assert "epoch 2/2" in out.getvalue() and "val_accuracy" in out.getvalue()


def test_no_progress_bar_off_a_terminal_or_when_turned_off(monkeypatch):
    x, y = _blobs()
    quiet = io.StringIO()  # isatty() is False
    monkeypatch.setattr(sys, "stderr", quiet)
    _estimator().train(x, y, epochs=1, verbose=False)
    assert quiet.getvalue() == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _estimator(progress=False).train(x, y, epochs=1, verbose=False)
    _estimator().train(x, y, epochs=1, verbose=False, progress=False)
    NeuralNetClassifier(hidden_layer_sizes=(4,), epochs=1, progress=False,
                        backend="eager").fit(x, y)
    assert terminal.getvalue() == ""


def test_float64_input_is_converted_to_the_model_dtype():
    x, y = _blobs()
    runs = []
    for data in (x, x.astype(np.float64), neurenix.Tensor(x.astype(np.float64))):
        est = _estimator(seed=4)
        hist = est.train(data, y, epochs=2, batch_size=32, verbose=False)
        runs.append((hist.loss, est.predict(data).numpy(), est.evaluate(data, y)["loss"]))
    for loss, pred, val in runs[1:]:
        assert loss == runs[0][0]
        np.testing.assert_array_equal(pred, runs[0][1])
        assert val == runs[0][2]
    assert runs[0][1].dtype == np.float32
    reg = NeuralNetRegressor(hidden_layer_sizes=(4,), epochs=1, backend="eager")
    assert reg.fit(x.astype(np.float64), x[:, 0].astype(np.float64)).predict(x).dtype == \
        np.float32


def test_a_direct_float64_call_of_a_float32_model_is_refused_with_the_dtypes():
    model = Linear(2, 3)
    with pytest.raises(TypeError, match="float32.*float64"):
        model(neurenix.Tensor(np.zeros((1, 2))))
    with pytest.raises(TypeError, match="Tensor"):
        model(np.zeros((1, 2)))


def test_compiled_matches_eager_with_adam_validation_and_a_loader():
    x, y = _blobs(80, seed=6)
    runs = []
    for backend in ("eager", "compiled"):
        est = _estimator(backend, seed=7)
        hist = est.train(x, y, epochs=3, batch_size=24, validation_split=0.25, verbose=False)
        runs.append((hist, est.predict(x).numpy()))
    (h_e, p_e), (h_c, p_c) = runs
    np.testing.assert_allclose(h_c.loss, h_e.loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(h_c.val_loss, h_e.val_loss, rtol=1e-4, atol=1e-6)
    assert h_c.val_accuracy == h_e.val_accuracy and h_c.lr == h_e.lr
    np.testing.assert_allclose(p_c, p_e, rtol=1e-4, atol=1e-5)


def test_sklearn_classifier_compiled_matches_eager():
    x, y = _blobs(64, seed=8)
    proba = [NeuralNetClassifier(hidden_layer_sizes=(8,), epochs=3, batch_size=16,
                                 learning_rate=0.02, random_state=0, backend=backend)
             .fit(x, y).predict_proba(x) for backend in ("eager", "compiled")]
    np.testing.assert_allclose(proba[1], proba[0], rtol=1e-4, atol=1e-5)


def test_batches_follow_a_model_on_a_device():
    from devices import needs_device

    needs_device("opencl")
    x, y = _blobs(48)
    neurenix.manual_seed(0)
    model = Sequential(Linear(2, 8), ReLU(), Linear(8, 3)).to("opencl")
    est = Estimator(model, CrossEntropyLoss(), Adam(model.parameters(), lr=0.05),
                    backend="eager")
    hist = est.train(x, y, epochs=2, batch_size=24, validation_split=0.25, verbose=False)
    assert len(hist.val_accuracy) == 2
    assert est.predict(x).device == model[0].weight.device
